//! Which characters user-supplied strings may hold. Names, tags and meta keys are shown in
//! lists, logs, dashboards and terminals: a control character there (NUL, an escape sequence)
//! or a bidirectional override (with U+202E, `invoice<U+202E>fdp.exe` displays as
//! `invoiceexe.pdf`) hides what the string really is, so those are refused outright. Free text (descriptions, meta values,
//! reasons) may hold tabs and line breaks, and nothing else of the kind.

/// Why a string was refused: the offending character and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "contains {what} U+{code:04X} at character {index}; control, bidirectional and invisible formatting characters are not allowed"
)]
pub struct BadChar {
    pub what: &'static str,
    pub code: u32,
    pub index: usize,
}

/// What kind of character `c` is, if it is one a name may not hold.
fn classify(c: char) -> Option<&'static str> {
    match c {
        '\u{0}'..='\u{1f}' | '\u{7f}' => Some("the control character"),
        '\u{80}'..='\u{9f}' => Some("the C1 control character"),
        // Unicode's Bidi_Control property: marks, embeddings, overrides and isolates.
        '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}' => Some("the bidirectional control"),
        // Line and paragraph separators, and invisible characters that make two different
        // strings look the same: zero width space, word joiner and invisible operators,
        // deprecated format controls, the byte order mark, interlinear annotations.
        '\u{2028}' | '\u{2029}' => Some("the line separator"),
        '\u{200b}'
        | '\u{2060}'..='\u{2064}'
        | '\u{206a}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}' => Some("the invisible formatting character"),
        _ => None,
    }
}

fn find(s: &str, allowed: impl Fn(char) -> bool) -> Result<(), BadChar> {
    let bad = s.chars().enumerate().find_map(|(index, c)| {
        let what = if allowed(c) { None } else { classify(c) }?;
        Some(BadChar {
            what,
            code: u32::from(c),
            index,
        })
    });
    bad.map_or(Ok(()), Err)
}

/// A name, tag, key or identifier-like string: no control, bidi or invisible characters.
pub fn check_name(s: &str) -> Result<(), BadChar> {
    find(s, |_| false)
}

/// Free text: as a name, but tabs and line breaks (LF, CR) are allowed.
pub fn check_text(s: &str) -> Result<(), BadChar> {
    find(s, |c| matches!(c, '\t' | '\n' | '\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_controls_bidi_and_invisibles() {
        for bad in [
            "a\0b",
            "a\nb",
            "\u{1b}[31mred",
            "a\u{7f}",
            "a\u{85}",
            "a\u{9b}",
            "invoice\u{202e}fdp.exe",
            "a\u{202a}",
            "a\u{2066}b\u{2069}",
            "a\u{200f}",
            "a\u{061c}",
            "a\u{200b}b",
            "\u{feff}a",
            "a\u{2028}",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} passed");
        }
        let e = check_name("ab\u{202e}").unwrap_err();
        assert_eq!((e.code, e.index), (0x202e, 2));
        assert!(e.to_string().contains("U+202E"), "{e}");
    }

    #[test]
    fn ordinary_unicode_is_fine() {
        for good in [
            "web-1",
            "Zürich né",
            "サーバー",
            "שרת",
            "خادم\u{200c}ها",
            "👩\u{200d}💻 dev",
            "a b",
        ] {
            assert_eq!(check_name(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn text_allows_tabs_and_line_breaks_only() {
        assert_eq!(check_text("line 1\r\n\tline 2"), Ok(()));
        assert!(check_text("a\0").is_err());
        assert!(check_text("a\u{202e}").is_err());
        assert!(check_text("a\u{1b}").is_err());
    }
}
