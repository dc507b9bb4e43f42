//! The answers' schemas as exact as the coordinator sends them. `backfill-api`'s answer types
//! take `#[serde(default)]` so that a client tolerates a field the coordinator adds or drops;
//! utoipa reads that as "every field optional, with a default". The coordinator always sends
//! every field (null where a value is absent), so in the document every property of such a
//! type that is not nullable is required, and no property has a default. Request types (no
//! `#[serde(default)]` on the type, so no defaults) keep utoipa's reading of their fields.

use serde_json::Value;
use utoipa::openapi::OpenApi;

/// Answer types whose fields stay optional: they are also part of a request, where fields may
/// be left out.
const OPTIONAL_FIELDS: &[&str] = &["Filters"];

/// Whether a property's schema admits `null` (an `Option` field, which may also be absent).
fn nullable(p: &Value) -> bool {
    let null_type = |t: &Value| t.get("type").and_then(Value::as_str) == Some("null");
    match p.get("type") {
        Some(Value::Array(types)) if types.iter().any(|t| t == "null") => return true,
        _ => {}
    }
    ["oneOf", "anyOf"].iter().any(|k| {
        p.get(*k)
            .and_then(Value::as_array)
            .is_some_and(|items| items.iter().any(null_type))
    })
}

/// One object schema: no defaults; if it had some (a `#[serde(default)]` type) and `optional`
/// is false, every non-nullable property required.
fn exact(schema: &mut Value, optional: bool) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let Some(Value::Object(props)) = obj.get_mut("properties") else {
        return;
    };
    let mut defaults = false;
    let mut required = Vec::new();
    for (name, p) in props.iter_mut() {
        if let Some(p) = p.as_object_mut() {
            defaults |= p.remove("default").is_some();
        }
        if !nullable(p) {
            required.push(Value::String(name.clone()));
        }
    }
    if !defaults || optional {
        return;
    }
    if required.is_empty() {
        obj.remove("required");
    } else {
        obj.insert("required".into(), Value::Array(required));
    }
}

/// The document with its component schemas made exact; unchanged should it not round-trip
/// through JSON (it always does: a test reads the result back).
pub(super) fn answers_exact(doc: OpenApi) -> OpenApi {
    let Ok(mut v) = serde_json::to_value(&doc) else {
        return doc;
    };
    if let Some(Value::Object(schemas)) = v.pointer_mut("/components/schemas") {
        for (name, schema) in schemas.iter_mut() {
            exact(schema, OPTIONAL_FIELDS.contains(&name.as_str()));
        }
    }
    serde_json::from_value(v).unwrap_or(doc)
}
