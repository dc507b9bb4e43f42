//! CloudSigma list conventions: `limit`/`offset` (limit 0 = all), filters by GET parameters
//! (separate parameters ANDed, comma-separated values ORed, `\,` escapes a comma) and
//! `order_by`.

use crate::api::ApiError;
use crate::state::server_index::{FilterKey, OrderKey, ServerQuery};
use backfill_shared::clock::{UnixSeconds, parse_time};
use std::collections::BTreeMap;

pub const DEFAULT_LIMIT: usize = 20;
pub const MAX_LIMIT: usize = 1_000;
pub const MAX_OFFSET: usize = 1_000_000;

/// Parameters that are not filters.
const CONTROL: &[&str] = &["limit", "offset", "order_by", "format", "fields"];
pub const SERVER_FILTERS: &[&str] = &["name", "name__contains", "tag", "uuid", "status"];
pub const SERVER_ORDERING: &[&str] = &["name", "uuid", "created"];

/// `limit` and `offset` of a list, CloudSigma's default limit when absent. Every list
/// endpoint pages through this, so a bad value gets the same 400 everywhere.
pub fn page(params: &BTreeMap<String, String>) -> Result<(usize, usize), ApiError> {
    page_or(params, DEFAULT_LIMIT)
}

/// A page of `items` (as [`page`] reads `limit` and `offset`) and its `meta`.
pub fn page_of<T>(
    items: Vec<T>,
    params: &BTreeMap<String, String>,
) -> Result<(backfill_api::ListMeta, Vec<T>), ApiError> {
    let (limit, offset) = page(params)?;
    let total_count = items.len();
    let take = if limit == 0 { usize::MAX } else { limit };
    let items = items.into_iter().skip(offset).take(take).collect();
    let meta = backfill_api::ListMeta {
        limit,
        offset,
        total_count,
    };
    Ok((meta, items))
}

/// As [`page`], with another default limit (0 = all).
pub fn page_or(
    params: &BTreeMap<String, String>,
    default_limit: usize,
) -> Result<(usize, usize), ApiError> {
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
        num("limit", default_limit, MAX_LIMIT)?,
        num("offset", 0, MAX_OFFSET)?,
    ))
}

/// The earliest and latest instants a query may name: the epoch, and the end of year 9999.
pub const MIN_TIME: UnixSeconds = 0;
pub const MAX_TIME: UnixSeconds = 253_402_300_799;

/// `[start, end)` from `start` and `end` (RFC 3339 or Unix seconds): `end` defaults to `now`,
/// `start` to `default_len` before `end`; the period is at most `max_len` long.
pub fn period(
    params: &BTreeMap<String, String>,
    now: UnixSeconds,
    default_len: i64,
    max_len: i64,
) -> Result<(UnixSeconds, UnixSeconds), ApiError> {
    let time = |k: &str, default: UnixSeconds| {
        match params.get(k) {
        None => Ok(default),
        Some(v) => parse_time(v)
            .filter(|t| (MIN_TIME..=MAX_TIME).contains(t))
            .ok_or_else(|| {
                ApiError::validation(
                    k,
                    format!(
                        "{k} must be a time from 1970 to 9999, RFC 3339 (2026-01-31T00:00:00Z) or Unix seconds"
                    ),
                )
            }),
    }
    };
    let end = time("end", now.clamp(MIN_TIME, MAX_TIME))?;
    let start = time("start", end.saturating_sub(default_len).max(MIN_TIME))?;
    if start >= end || end.saturating_sub(start) > max_len {
        return Err(ApiError::validation(
            "start",
            format!("start must be before end, and the period at most {max_len} seconds"),
        ));
    }
    Ok((start, end))
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

/// A server list's query from its GET parameters: filters, order and page, validated.
pub fn server_query(params: &BTreeMap<String, String>) -> Result<ServerQuery, ApiError> {
    let (limit, offset) = page(params)?;
    let mut filters = Vec::new();
    for (k, v) in params {
        if CONTROL.contains(&k.as_str()) {
            continue;
        }
        let key = match k.as_str() {
            "name" => FilterKey::Name,
            "name__contains" => FilterKey::NameContains,
            "tag" => FilterKey::Tag,
            "uuid" => FilterKey::Uuid,
            "status" => FilterKey::Status,
            _ => {
                return Err(ApiError::validation(
                    k.clone(),
                    format!(
                        "unknown filter {k:?}; servers filter by {}",
                        SERVER_FILTERS.join(", ")
                    ),
                ));
            }
        };
        filters.push((key, alternatives(v)));
    }
    let order = match params.get("order_by") {
        None => None,
        Some(order) => {
            let (desc, key) = match order.strip_prefix('-') {
                Some(k) => (true, k),
                None => (false, order.as_str()),
            };
            let key = match key {
                "name" => OrderKey::Name,
                "uuid" => OrderKey::Uuid,
                "created" => OrderKey::Created,
                _ => {
                    return Err(ApiError::validation(
                        "order_by",
                        format!(
                            "order_by takes {} (prefix - to reverse)",
                            SERVER_ORDERING.join(", ")
                        ),
                    ));
                }
            };
            Some((key, desc))
        }
    };
    Ok(ServerQuery {
        filters,
        order,
        limit,
        offset,
    })
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
        assert!(page(&p("limit", "-1")).is_err());
        assert!(page(&p("limit", "1000000000000")).is_err());
        assert!(page(&p("limit", "10^12")).is_err());
        assert_eq!(page_or(&BTreeMap::new(), 0).unwrap(), (0, 0));
    }

    #[test]
    fn periods_are_bounded_and_ordered() {
        let p = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let day = 86_400;
        assert_eq!(
            period(&p(&[]), 10 * day, day, 3 * day).unwrap(),
            (9 * day, 10 * day)
        );
        assert_eq!(
            period(
                &p(&[("start", "1970-01-02T00:00:00Z"), ("end", "172800")]),
                0,
                day,
                3 * day
            )
            .unwrap(),
            (day, 2 * day)
        );
        // Never before the epoch, whatever the clock says.
        assert_eq!(period(&p(&[]), 10, day, 3 * day).unwrap(), (0, 10));
        for (k, v) in [
            ("start", "abc"),
            ("start", ""),
            ("end", "-1"),
            ("end", "9223372036854775807"),
            ("start", "-9223372036854775808"),
            ("end", "2026-13-01T00:00:00Z"),
        ] {
            let e = period(&p(&[(k, v)]), 10 * day, day, 3 * day).unwrap_err();
            assert_eq!(e.point.as_deref(), Some(k), "{k}={v}");
            assert_eq!(e.status, 400);
        }
        let e = period(&p(&[("start", "0"), ("end", "864000")]), 0, day, 3 * day).unwrap_err();
        assert_eq!(e.point.as_deref(), Some("start"));
        assert!(period(&p(&[("start", "5"), ("end", "5")]), 0, day, 3 * day).is_err());
    }
}
