//! `/drives/` and `/libdrives/`: CloudSigma's drives (a tenant's disks) and library drives
//! (the images the fleet offers), in CloudSigma's shapes. A tenant sees only its own drives:
//! another's is "not found" on every path.

use crate::api::cloudsigma::drive_views;
use crate::api::cloudsigma::listing::{page, page_of};
use crate::api::cloudsigma::server_json::{parse_meta, parse_tags};
use crate::api::cloudsigma::views::to_json;
use crate::api::json_body::JsonBody;
use crate::api::params::Params;
use crate::api::tenant::Tenant;
use crate::api::text::check_name;
use crate::api::{ApiError, AppState};
use crate::ops::drives::{CloneOpts, DriveView, NewDrive};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backfill_api::drives::{CreatedDrives, DriveList, DriveSummaryList, LibraryDriveList};
use backfill_shared::drive::{DriveId, MAX_DRIVE_BYTES, MIN_DRIVE_BYTES, Media};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

const MAX_NAME: usize = 200;
const MAX_OBJECTS: usize = 100;
/// What a drive create or edit may name.
pub(in crate::api) const FIELDS: &[&str] =
    &["name", "size", "media", "meta", "tags", "allow_multimount"];
/// Fields of the full object a client may send back in a `PUT` or an action body (ignored).
const READ_ONLY: &[&str] = &[
    "affinities",
    "grantees",
    "jobs",
    "licenses",
    "mounted_on",
    "owner",
    "permissions",
    "remote_snapshots",
    "resource_uri",
    "runtime",
    "snapshots",
    "status",
    "storage_type",
    "uuid",
];
/// Filters of the drive list (CloudSigma's `name`, `tag`, `uuid`, and `status`, `media`).
const FILTERS: &[&str] = &["name", "tag", "uuid", "status", "media"];
const LIB_FILTERS: &[&str] = &["name", "os", "uuid", "version", "arch", "image_type"];
const CONTROL: &[&str] = &["limit", "offset", "format", "fields", "order_by"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/drives/", get(|s, t, p| list(s, t, p, false)).post(create))
        .route("/drives/detail/", get(|s, t, p| list(s, t, p, true)))
        .route("/drives/{uuid}/", get(show).put(edit).delete(remove))
        .route("/drives/{uuid}/action/", post(action))
        .route("/libdrives/", get(libs))
        .route("/libdrives/detail/", get(libs))
        .route("/libdrives/{uuid}/", get(lib_show))
        .route("/libdrives/{uuid}/action/", post(lib_action))
        .merge(super::drive_move::routes())
}

fn parse_id(raw: &str) -> Result<DriveId, ApiError> {
    raw.parse()
        .map_err(|e: backfill_shared::IdError| ApiError::validation("uuid", e.to_string()))
}

/// Whether `v` (a drive's or library drive's JSON) passes every filter of `params` (comma-
/// separated alternatives; a tag filter matches any tag).
fn matches(
    v: &Value,
    params: &BTreeMap<String, String>,
    allowed: &[&str],
) -> Result<bool, ApiError> {
    for (k, want) in params {
        if CONTROL.contains(&k.as_str()) {
            continue;
        }
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::validation(
                k.clone(),
                format!("unknown filter {k:?}; filters: {}", allowed.join(", ")),
            ));
        }
        let alts: Vec<&str> = want.split(',').collect();
        let ok = match (k.as_str(), &v[if k == "tag" { "tags" } else { k.as_str() }]) {
            ("tag", Value::Array(tags)) => tags
                .iter()
                .any(|t| t.as_str().is_some_and(|t| alts.contains(&t))),
            (_, Value::String(s)) => alts.contains(&s.as_str()),
            _ => false,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn list(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Params(params): Params,
    full: bool,
) -> Result<Json<Value>, ApiError> {
    let (meta, items) = if params.keys().all(|k| CONTROL.contains(&k.as_str())) {
        // No filter: the coordinator makes the page alone (issue 16).
        let (limit, offset) = page(&params)?;
        let (total_count, views) = state.coordinator.drive_page(&account, offset, limit).await;
        let meta = backfill_api::ListMeta {
            limit,
            offset,
            total_count,
        };
        let items = views
            .into_iter()
            .map(|d| (drive_views::drive(&account, &d), d))
            .collect();
        (meta, items)
    } else {
        let mut items = Vec::new();
        for d in state.coordinator.list_drives(&account).await {
            let full_drive = drive_views::drive(&account, &d);
            if matches(&to_json(&full_drive), &params, FILTERS)? {
                items.push((full_drive, d));
            }
        }
        page_of(items, &params)?
    };
    Ok(Json(if full {
        let objects = items.into_iter().map(|(f, _)| f).collect();
        to_json(&DriveList { meta, objects })
    } else {
        let objects = items
            .iter()
            .map(|(_, d)| drive_views::summary(&account, d))
            .collect();
        to_json(&DriveSummaryList { meta, objects })
    }))
}

fn object<'v>(v: &'v Value, point: &str) -> Result<&'v Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::validation(point, "must be a JSON object"))
}

/// A drive's fields from `o`, over `base` (an edit's current drive; `None` for a create,
/// where name, size and media are required).
fn parse_drive(
    o: &Map<String, Value>,
    at: &str,
    base: Option<&NewDrive>,
) -> Result<NewDrive, ApiError> {
    let p = |f: &str| format!("{at}{f}");
    for k in o.keys() {
        if !FIELDS.contains(&k.as_str()) && !READ_ONLY.contains(&k.as_str()) {
            return Err(ApiError::validation(
                p(k),
                format!("unknown field {k:?}; drive fields: {}", FIELDS.join(", ")),
            ));
        }
    }
    let required = |f: &str| ApiError::validation(p(f), "This field is required");
    let name = match (o.get("name"), base) {
        (Some(Value::String(s)), _) if !s.trim().is_empty() && s.chars().count() <= MAX_NAME => {
            check_name(s).map_err(|e| ApiError::validation(p("name"), format!("name {e}")))?;
            s.clone()
        }
        (None, Some(b)) => b.name.clone(),
        (None, None) => return Err(required("name")),
        (Some(_), _) => {
            return Err(ApiError::validation(
                p("name"),
                format!("name must be a non-empty string of at most {MAX_NAME} characters"),
            ));
        }
    };
    let size = match (o.get("size"), base) {
        (Some(v), _) => v
            .as_u64()
            .filter(|s| (MIN_DRIVE_BYTES..=MAX_DRIVE_BYTES).contains(s))
            .ok_or_else(|| {
                ApiError::validation(
                    p("size"),
                    format!("size must be bytes, from {MIN_DRIVE_BYTES} to {MAX_DRIVE_BYTES}"),
                )
            })?,
        (None, Some(b)) => b.size,
        (None, None) => return Err(required("size")),
    };
    let media = match (o.get("media"), base) {
        (Some(v), _) => v.as_str().and_then(Media::parse).ok_or_else(|| {
            ApiError::validation(p("media"), "media must be \"disk\" or \"cdrom\"")
        })?,
        (None, Some(b)) => b.media,
        (None, None) => return Err(required("media")),
    };
    if o.get("allow_multimount")
        .is_some_and(|v| v != &Value::Bool(false))
    {
        return Err(ApiError::validation(
            p("allow_multimount"),
            "a drive is mounted on one server at a time: allow_multimount must be false",
        ));
    }
    let meta = match (o.get("meta"), base) {
        (None, Some(b)) => b.meta.clone(),
        (v, _) => parse_meta(v).map_err(|m| ApiError::validation(p("meta"), m))?,
    };
    let tags = match (o.get("tags"), base) {
        (None, Some(b)) => b.tags.clone(),
        (v, _) => parse_tags(v).map_err(|m| ApiError::validation(p("tags"), m))?,
    };
    Ok(NewDrive {
        name,
        size,
        media,
        meta,
        tags,
    })
}

async fn create(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let JsonBody(body) = body?;
    let list = object(&body, "body")?
        .get("objects")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty() && l.len() <= MAX_OBJECTS)
        .ok_or_else(|| {
            ApiError::validation(
                "objects",
                format!("expected {{\"objects\": [...]}} with 1 to {MAX_OBJECTS} drives"),
            )
        })?;
    let new = list
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let at = format!("objects[{i}].");
            parse_drive(object(o, &format!("objects[{i}]"))?, &at, None)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let made = state.coordinator.create_drives(&account, new).await?;
    let objects = made
        .iter()
        .map(|d| drive_views::drive(&account, d))
        .collect();
    let body = to_json(&CreatedDrives { objects });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn show(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = state
        .coordinator
        .get_drive(&account, parse_id(&uuid)?)
        .await?;
    Ok(Json(to_json(&drive_views::drive(&account, &d))))
}

fn current(d: &DriveView) -> NewDrive {
    NewDrive {
        name: d.record.name.clone(),
        size: d.record.size,
        media: d.record.media,
        meta: d.record.meta.clone(),
        tags: d.record.tags.clone(),
    }
}

async fn edit(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let JsonBody(body) = body?;
    let d = state.coordinator.get_drive(&account, id).await?;
    let edit = parse_drive(object(&body, "body")?, "", Some(&current(&d)))?;
    let d = state.coordinator.edit_drive(&account, id, edit).await?;
    Ok(Json(to_json(&drive_views::drive(&account, &d))))
}

async fn remove(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
) -> Result<Response, ApiError> {
    state
        .coordinator
        .delete_drive(&account, parse_id(&uuid)?)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A clone's optional body: `name`, `media`, `size` (never below the source's).
fn clone_opts(body: Option<&Value>) -> Result<CloneOpts, ApiError> {
    let Some(v) = body.filter(|v| !v.is_null()) else {
        return Ok(CloneOpts::default());
    };
    let o = object(v, "body")?;
    let mut opts = CloneOpts::default();
    if let Some(n) = o.get("name") {
        let n = n
            .as_str()
            .filter(|s| !s.trim().is_empty() && s.chars().count() <= MAX_NAME)
            .ok_or_else(|| ApiError::validation("name", "name must be a non-empty string"))?;
        check_name(n).map_err(|e| ApiError::validation("name", format!("name {e}")))?;
        opts.name = Some(n.to_owned());
    }
    if let Some(m) = o.get("media") {
        opts.media =
            Some(m.as_str().and_then(Media::parse).ok_or_else(|| {
                ApiError::validation("media", "media must be \"disk\" or \"cdrom\"")
            })?);
    }
    if let Some(s) = o.get("size") {
        opts.size = Some(
            s.as_u64()
                .filter(|s| (MIN_DRIVE_BYTES..=MAX_DRIVE_BYTES).contains(s))
                .ok_or_else(|| ApiError::validation("size", "size must be bytes"))?,
        );
    }
    Ok(opts)
}

/// The body of an action, when it has one (an empty body is none).
fn optional_body(body: &[u8]) -> Result<Option<Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    Ok(Some(crate::api::json_body::parse(body)?))
}

async fn action(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
    Params(params): Params,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&uuid)?;
    let body = optional_body(&body)?;
    let d = match params.get("do").map(String::as_str) {
        Some("clone") => {
            let opts = clone_opts(body.as_ref())?;
            state.coordinator.clone_drive(&account, id, opts).await?
        }
        Some("resize") => {
            let d = state.coordinator.get_drive(&account, id).await?;
            let body = body.ok_or_else(|| {
                ApiError::validation(
                    "body",
                    "resize takes the drive's definition with its new size",
                )
            })?;
            let edit = parse_drive(object(&body, "body")?, "", Some(&current(&d)))?;
            state.coordinator.edit_drive(&account, id, edit).await?
        }
        _ => {
            return Err(ApiError::validation(
                "do",
                "unknown action; use ?do=clone or ?do=resize",
            ));
        }
    };
    Ok(drive_views::accepted(&account, &d))
}

async fn libs(
    State(state): State<AppState>,
    Tenant(_account): Tenant,
    Params(params): Params,
) -> Result<Json<Value>, ApiError> {
    let libs = state.coordinator.libdrives().await;
    let (meta, objects) = if params.keys().all(|k| CONTROL.contains(&k.as_str())) {
        // No filter: only the page's library drives are shown (issue 16).
        let (meta, page) = page_of(libs, &params)?;
        let objects = page
            .iter()
            .map(|l| drive_views::library(&state, l))
            .collect();
        (meta, objects)
    } else {
        let mut items = Vec::new();
        for l in libs {
            let lib = drive_views::library(&state, &l);
            if matches(&to_json(&lib), &params, LIB_FILTERS)? {
                items.push(lib);
            }
        }
        page_of(items, &params)?
    };
    Ok(Json(to_json(&LibraryDriveList { meta, objects })))
}

async fn lib_show(
    State(state): State<AppState>,
    Tenant(_account): Tenant,
    Path(uuid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let l = state
        .coordinator
        .libdrives()
        .await
        .into_iter()
        .find(|l| l.uuid == id)
        .ok_or_else(|| ApiError::not_found(format!("library drive {id} does not exist")))?;
    Ok(Json(to_json(&drive_views::library(&state, &l))))
}

async fn lib_action(
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
    Params(params): Params,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&uuid)?;
    if params.get("do").map(String::as_str) != Some("clone") {
        return Err(ApiError::validation("do", "unknown action; use ?do=clone"));
    }
    let opts = clone_opts(optional_body(&body)?.as_ref())?;
    let d = state.coordinator.clone_libdrive(&account, id, opts).await?;
    Ok(drive_views::accepted(&account, &d))
}
