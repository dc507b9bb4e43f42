//! Parsing and printing of the values the command line deals in: sizes, `KEY=VALUE` pairs,
//! quota limits, timestamps and durations.

use backfill_api::accounts::{StorageQuota, Unlimited};

/// A quota value: a number, or no limit at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Sent as null: unlimited (for storage, the coordinator's configured default).
    Unlimited,
    Value(u64),
    /// Sent as `"unlimited"`: a storage quota that is unlimited whatever the default.
    ExplicitUnlimited,
}

impl Limit {
    /// As the API takes it: `None` (JSON null) is unlimited.
    pub fn value(self) -> Option<u64> {
        match self {
            Limit::Unlimited | Limit::ExplicitUnlimited => None,
            Limit::Value(n) => Some(n),
        }
    }

    /// As the API takes a storage quota: null is the configured default, `"unlimited"` is
    /// unlimited whatever the default.
    pub fn storage(self) -> Option<StorageQuota> {
        match self {
            Limit::Unlimited => None,
            Limit::Value(n) => Some(StorageQuota::Bytes(n)),
            Limit::ExplicitUnlimited => Some(StorageQuota::Unlimited(Unlimited::Unlimited)),
        }
    }
}

const UNITS: &[(&str, u32)] = &[
    ("", 0),
    ("b", 0),
    ("k", 1),
    ("kb", 1),
    ("kib", 1),
    ("m", 2),
    ("mb", 2),
    ("mib", 2),
    ("g", 3),
    ("gb", 3),
    ("gib", 3),
    ("t", 4),
    ("tb", 4),
    ("tib", 4),
];

/// Bytes, or a number with a binary suffix: `536870912`, `512M`, `512MiB`, `1.5G`, `1 TiB`.
/// K, M, G and T (with or without `B` / `iB`) are all powers of 1024.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let bad = || {
        format!("{s:?} is not a size; use bytes or a number with K, M, G or T (e.g. 512M, 1GiB)")
    };
    let Some(&(_, power)) = UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(bad());
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > 9 || frac.contains('.') {
        return Err(bad());
    }
    let parse = |d: &str| -> Result<u128, String> {
        if d.is_empty() {
            Ok(0)
        } else {
            d.parse::<u128>().map_err(|_| bad())
        }
    };
    let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| bad())?);
    let mantissa = parse(int)?
        .checked_mul(scale)
        .and_then(|m| m.checked_add(parse(frac).ok()?))
        .ok_or_else(bad)?;
    let bytes = mantissa
        .checked_mul(1u128 << (10 * power))
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if !bytes.is_multiple_of(scale) {
        return Err(format!("{s:?} is not a whole number of bytes"));
    }
    u64::try_from(bytes / scale).map_err(|_| format!("{s:?} is too large"))
}

/// `unlimited` (or `none`), or a size as [`parse_size`] reads it.
pub fn parse_size_limit(s: &str) -> Result<Limit, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "unlimited" | "none" => Ok(Limit::Unlimited),
        _ => parse_size(s).map(Limit::Value),
    }
}

/// A size, `default` (sent as null: the coordinator's configured default, as the API's
/// `quota.storage` takes it) or `unlimited` (unlimited whatever the default).
pub fn parse_size_or_default(s: &str) -> Result<Limit, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "default" => Ok(Limit::Unlimited),
        "unlimited" | "none" => Ok(Limit::ExplicitUnlimited),
        _ => parse_size(s).map(Limit::Value),
    }
}

/// `unlimited` (or `none`), or a non-negative integer.
pub fn parse_count_limit(s: &str) -> Result<Limit, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "unlimited" | "none" => Ok(Limit::Unlimited),
        t => t
            .parse::<u64>()
            .map(Limit::Value)
            .map_err(|_| format!("{s:?} is not a non-negative integer or \"unlimited\"")),
    }
}

/// `KEY=VALUE`: the key is what precedes the first `=` and must not be empty; the value may be.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// An RFC 3339 timestamp such as `2025-01-31T00:00:00Z`, or Unix seconds, passed on unchanged.
pub fn parse_time(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .map(|_| s.to_owned())
            .map_err(|e| format!("{s:?}: {e}"));
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|_| s.to_owned())
        .map_err(|e| {
            format!("{s:?} is neither RFC 3339 (e.g. 2025-01-31T00:00:00Z) nor Unix seconds: {e}")
        })
}

/// Bytes in the largest binary unit that keeps at least 1: `512 MiB`, `1.5 GiB`, `100 B`.
pub fn format_bytes(n: u64) -> String {
    const NAMES: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < NAMES.len() && n >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let div = 1u64 << (10 * unit);
    if n.is_multiple_of(div) {
        format!("{} {}", n / div, NAMES[unit])
    } else {
        // Display only: one decimal is plenty.
        #[allow(clippy::cast_precision_loss)]
        let v = n as f64 / div as f64;
        format!("{v:.1} {}", NAMES[unit])
    }
}

/// Seconds as `3d04h`, `2h05m`, `4m07s` or `12s`.
pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_bytes_and_binary_suffixes() {
        assert_eq!(parse_size("536870912"), Ok(536_870_912));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1 G"), Ok(1 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("100b"), Ok(100));
        assert_eq!(parse_size(".5K"), Ok(512));
    }

    #[test]
    fn sizes_refuse_nonsense() {
        for bad in [
            "",
            "M",
            "12Q",
            "-1",
            "1.2.3M",
            "1.5",
            "0.1K",
            "1e9",
            "1 PB",
            "99999999999999999999T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(
            parse_size("17179869184T")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn limits_know_unlimited() {
        assert_eq!(parse_size_limit("unlimited"), Ok(Limit::Unlimited));
        assert_eq!(parse_size_limit("1T"), Ok(Limit::Value(1 << 40)));
        assert_eq!(parse_count_limit("none"), Ok(Limit::Unlimited));
        assert_eq!(parse_count_limit("4"), Ok(Limit::Value(4)));
        assert!(parse_count_limit("-4").is_err());
        assert_eq!(Limit::Unlimited.value(), None);
        assert_eq!(Limit::Value(3).value(), Some(3));
    }

    #[test]
    fn key_values_split_at_the_first_equals() {
        assert_eq!(parse_kv("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_kv("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_kv("EMPTY="), Ok(("EMPTY".into(), String::new())));
        assert!(parse_kv("novalue").is_err());
        assert!(parse_kv("=v").is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_or_unix_seconds() {
        assert!(parse_time("2025-01-31T00:00:00Z").is_ok());
        assert!(parse_time("2025-01-31T00:00:00+02:00").is_ok());
        assert_eq!(parse_time("1735689600"), Ok("1735689600".into()));
        assert!(parse_time("2025-01-31").is_err());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("").is_err());
        assert!(parse_time("-5").is_err());
    }

    #[test]
    fn bytes_print_in_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(1 << 40), "1 TiB");
        assert_eq!(format_bytes(5000 << 40), "5000 TiB");
    }

    #[test]
    fn durations_print_two_units() {
        assert_eq!(format_duration(12), "12s");
        assert_eq!(format_duration(247), "4m07s");
        assert_eq!(format_duration(7500), "2h05m");
        assert_eq!(format_duration(3 * 86_400 + 4 * 3600 + 59), "3d04h");
    }
}
