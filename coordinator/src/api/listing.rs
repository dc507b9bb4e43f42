//! CloudSigma list conventions: `limit`/`offset` (limit 0 = all), filters by GET parameters
//! (separate parameters ANDed, comma-separated values ORed, `\,` escapes a comma) and
//! `order_by`.

use super::ApiError;
use crate::store::ServerRecord;
use std::collections::BTreeMap;

pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 1_000;
pub const MAX_OFFSET: usize = 1_000_000;

/// Parameters that are not filters.
const CONTROL: &[&str] = &["limit", "offset", "order_by", "format", "fields"];
pub const SERVER_FILTERS: &[&str] = &["name", "name__contains", "tag", "uuid", "status"];
pub const SERVER_ORDERING: &[&str] = &["name", "uuid", "created"];

pub fn page(params: &BTreeMap<String, String>) -> Result<(usize, usize), ApiError> {
    let num = |k: &str, d: usize, max: usize| match params.get(k) {
        None => Ok(d),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                ApiError::validation(k, format!("{k} must be an integer from 0 to {max}"))
            }),
    };
    Ok((
        num("limit", DEFAULT_LIMIT, MAX_LIMIT)?,
        num("offset", 0, MAX_OFFSET)?,
    ))
}

/// `a,b\,c` → `["a", "b,c"]`.
fn alternatives(v: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                chars.next();
                if let Some(last) = out.last_mut() {
                    last.push(',');
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// The servers that match every filter in `params`, ordered as asked.
pub fn filter_servers(
    servers: Vec<ServerRecord>,
    params: &BTreeMap<String, String>,
) -> Result<Vec<ServerRecord>, ApiError> {
    let mut filters = Vec::new();
    for (k, v) in params {
        if CONTROL.contains(&k.as_str()) {
            continue;
        }
        if !SERVER_FILTERS.contains(&k.as_str()) {
            return Err(ApiError::validation(
                k.clone(),
                format!(
                    "unknown filter {k:?}; servers filter by {}",
                    SERVER_FILTERS.join(", ")
                ),
            ));
        }
        filters.push((k.as_str(), alternatives(v)));
    }
    let matches = |s: &ServerRecord| {
        filters.iter().all(|(k, alts)| {
            alts.iter().any(|a| match *k {
                "name" => s.name == *a,
                "name__contains" => s.name.contains(a.as_str()),
                "tag" => s.tags.iter().any(|t| t == a),
                "uuid" => s.uuid.to_string() == *a,
                "status" => s.status.as_str() == a,
                _ => false,
            })
        })
    };
    let mut out: Vec<ServerRecord> = servers.into_iter().filter(|s| matches(s)).collect();
    if let Some(order) = params.get("order_by") {
        let (desc, key) = match order.strip_prefix('-') {
            Some(k) => (true, k),
            None => (false, order.as_str()),
        };
        match key {
            "name" => out.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid))),
            "uuid" => out.sort_by_key(|s| s.uuid),
            "created" => out.sort_by_key(|s| (s.created_at, s.uuid)),
            _ => {
                return Err(ApiError::validation(
                    "order_by",
                    format!(
                        "order_by takes {} (prefix - to reverse)",
                        SERVER_ORDERING.join(", ")
                    ),
                ));
            }
        }
        if desc {
            out.reverse();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_separate_alternatives_unless_escaped() {
        assert_eq!(alternatives("a,b"), vec!["a", "b"]);
        assert_eq!(alternatives(r"a\,b,c"), vec!["a,b", "c"]);
        assert_eq!(alternatives(""), vec![""]);
    }

    #[test]
    fn limits_are_bounded() {
        let p = |k: &str, v: &str| [(k.to_string(), v.to_string())].into();
        assert_eq!(page(&BTreeMap::new()).unwrap(), (20, 0));
        assert_eq!(page(&p("limit", "0")).unwrap(), (0, 0));
        assert!(page(&p("limit", "1001")).is_err());
        assert!(page(&p("offset", "-1")).is_err());
        assert!(page(&p("offset", "x")).is_err());
    }
}
