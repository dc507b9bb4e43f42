//! JSON request bodies, strictly. serde_json keeps the last of two equal keys in an object, so
//! `{"name": "a", "name": "b"}` would mean whatever the last parser in a chain of proxies
//! decided; we refuse it instead, at any depth. A first pass walks the document without
//! building anything and fails on the first repeated key; it is bounded like the parse itself
//! (the body limit, and serde_json's nesting limit of 128).

use crate::api::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

/// Why a body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body is not valid JSON: {0}")]
    Syntax(serde_json::Error),
    /// A key given twice in one object (the message names it and where).
    #[error("body repeats a key: {0}")]
    Duplicate(serde_json::Error),
}

/// Walks any JSON value; objects must not repeat a key.
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_none<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Unique, D::Error> {
        Unique::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(de::Error::custom(format_args!("duplicate key {shown:?}")));
            }
            seen.insert(key);
            map.next_value::<Unique>()?;
        }
        Ok(Unique)
    }
}

/// Parses `body` as JSON, refusing repeated keys at any depth.
pub fn parse(body: &[u8]) -> Result<Value, BodyError> {
    let value: Value = serde_json::from_slice(body).map_err(BodyError::Syntax)?;
    let mut de = serde_json::Deserializer::from_slice(body);
    match Unique::deserialize(&mut de) {
        Ok(Unique) => Ok(value),
        Err(e) => Err(BodyError::Duplicate(e)),
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        ApiError::validation("body", e.to_string())
    }
}

/// A JSON body for the CloudSigma-shaped API: a too large or unreadable body keeps its status
/// (413, 400), invalid JSON and repeated keys are a 400 naming the body.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<JsonBody, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError {
                status: e.status(),
                error_type: "validation",
                point: None,
                message: e.body_text(),
            })?;
        Ok(JsonBody(parse(&bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        for body in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"objects": [{"name": "x", "cpu": 1, "name": "y"}]}"#,
            r#"{"a": {"b": {"c": [{"d": 1}, {"e": 1, "e": null}]}}}"#,
            r#"[{"k": 1, "k": 1}]"#,
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert!(matches!(e, BodyError::Duplicate(_)), "{body}: {e}");
            assert!(
                e.to_string().contains("repeats a key: duplicate key"),
                "{e}"
            );
            assert!(e.to_string().contains("line 1 column"), "{e}");
        }
    }

    #[test]
    fn equal_keys_in_different_objects_are_fine() {
        let v = parse(br#"{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}], "c": 1.5e3}"#).unwrap();
        assert_eq!(v["b"][1]["a"], 2);
        assert_eq!(parse(b"[]").unwrap(), Value::Array(Vec::new()));
        assert_eq!(parse(b"null").unwrap(), Value::Null);
    }

    #[test]
    fn syntax_errors_and_deep_nesting_are_refused() {
        assert!(matches!(parse(b"{"), Err(BodyError::Syntax(_))));
        assert!(matches!(parse(b"{} x"), Err(BodyError::Syntax(_))));
        assert!(matches!(parse(b""), Err(BodyError::Syntax(_))));
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(matches!(parse(deep.as_bytes()), Err(BodyError::Syntax(_))));
    }
}
