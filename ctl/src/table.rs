//! A tiny table formatter: a header row and left-aligned columns two spaces apart, plus the
//! flattening of a JSON object into `FIELD VALUE` rows.

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| printable(&c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w.saturating_sub(width(cell))));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Control characters (newlines, escapes) would break the columns or the terminal: escaped.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A JSON value as one cell: `-` for null, strings unquoted, lists of scalars comma-separated.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) if a.iter().all(|x| !x.is_array() && !x.is_object()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(", ")
        }
        Value::Object(o) if o.is_empty() => "-".into(),
        Value::Array(_) | Value::Object(_) => v.to_string(),
    }
}

/// An object as `FIELD VALUE` rows: the fields in `first` lead, the rest follow sorted; nested
/// objects become dotted fields (`runtime.perf_factor.cpu`).
pub fn key_values(v: &Value, first: &[&str]) -> Table {
    let mut flat = Vec::new();
    flatten("", v, &mut flat);
    let rank = |k: &str| {
        first
            .iter()
            .position(|f| k == *f || k.starts_with(&format!("{f}.")))
            .unwrap_or(first.len())
    };
    flat.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for (k, v) in flat {
        t.row(vec![k, v]);
    }
    t
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        _ if prefix.is_empty() => out.push(("value".into(), cell(v))),
        _ => out.push((prefix.to_owned(), cell(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_align_under_the_header() {
        let mut t = Table::new(&["UUID", "NAME", "STATUS"]);
        t.row(vec!["a".into(), "long name".into(), "running".into()]);
        t.row(vec!["bbbbbb".into(), "x".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "UUID    NAME       STATUS\n\
             a       long name  running\n\
             bbbbbb  x          -\n"
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
    }

    #[test]
    fn short_rows_are_padded_and_trailing_blanks_trimmed() {
        let mut t = Table::new(&["A", "B", "C"]);
        t.row(vec!["x".into()]);
        t.row(vec!["é".into(), "ü".into(), "z".into(), "dropped".into()]);
        assert_eq!(t.render(), "A  B  C\nx\né  ü  z\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut t = Table::new(&["A"]);
        t.row(vec!["two\nlines\x1b[31m".into()]);
        assert_eq!(t.render(), "A\ntwo\\nlines\\u{1b}[31m\n");
    }

    #[test]
    fn cells_show_json_plainly() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("s")), "s");
        assert_eq!(cell(&json!(1.5)), "1.5");
        assert_eq!(cell(&json!(true)), "true");
        assert_eq!(cell(&json!([])), "-");
        assert_eq!(cell(&json!(["a", 1])), "a, 1");
        assert_eq!(cell(&json!([{"a": 1}])), r#"[{"a":1}]"#);
    }

    #[test]
    fn objects_flatten_to_dotted_fields_with_the_chosen_ones_first() {
        let v = json!({"b": 1, "uuid": "u", "runtime": {"perf_factor": {"cpu": 0.5}}, "a": null});
        let t = key_values(&v, &["uuid", "runtime"]).render();
        let want: String = [
            ("FIELD", "VALUE"),
            ("uuid", "u"),
            ("runtime.perf_factor.cpu", "0.5"),
            ("a", "-"),
            ("b", "1"),
        ]
        .iter()
        .map(|(k, v)| format!("{k:<23}  {v}\n"))
        .collect();
        assert_eq!(t, want);
    }
}
