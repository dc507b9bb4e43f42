//! OpenStack Cyborg's API under `/accelerator/` (`/v2`, and the same without `v2` as Cyborg
//! routes it): version documents, device profiles and accelerator requests, with microversion
//! negotiation (`OpenStack-API-Version: accelerator 2.x`, 2.0 to 2.3) and Cyborg's error body.
//! Tenants (account certificates) create and see their own ARQs and read profiles; operators
//! (admin certificates) manage profiles, bind and unbind, and see everything.

use super::AppState;
use super::tenant::Caller as AnyCaller;
use crate::accel::{AccelError, Arq, ArqFilter, BindPatch, DeviceProfile};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backfill_shared::clock::rfc3339;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

const MIN_MINOR: u32 = 0;
const MAX_MINOR: u32 = 3;

/// The negotiated microversion's minor number (2.x).
#[derive(Debug, Clone, Copy)]
struct Version(u32);

pub fn routes() -> Router<AppState> {
    let v2 = |root: bool| {
        let r = Router::new()
            .route(
                "/device_profiles",
                get(list_profiles)
                    .post(create_profile)
                    .delete(delete_profiles_by_value),
            )
            .route(
                "/device_profiles/{key}",
                get(get_profile).delete(delete_profile),
            )
            .route(
                "/accelerator_requests",
                get(list_arqs)
                    .post(create_arqs)
                    .patch(patch_arqs)
                    .delete(delete_arqs),
            )
            .route(
                "/accelerator_requests/{uuid}",
                get(get_arq).patch(patch_arqs).delete(delete_arq),
            );
        if root { r.route("/", get(v2_doc)) } else { r }
    };
    Router::new()
        .route("/accelerator", get(root_doc))
        .route("/accelerator/", get(root_doc))
        .route("/accelerator/v2/", get(v2_doc))
        .nest("/accelerator/v2", v2(true))
        .nest("/accelerator", v2(false))
        .layer(axum::middleware::from_fn(negotiate))
}

/// The caller, refused in Cyborg's error shape.
struct Who(Caller);

type Caller = AnyCaller;

impl axum::extract::FromRequestParts<AppState> for Who {
    type Rejection = CyborgError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Who, CyborgError> {
        Caller::from_request_parts(parts, state)
            .await
            .map(Who)
            .map_err(CyborgError::from)
    }
}

/// Cyborg's error body: the wsme fault as a JSON string inside `error_message`.
#[derive(Debug)]
pub struct CyborgError {
    status: StatusCode,
    message: String,
}

impl CyborgError {
    fn new(status: StatusCode, message: impl Into<String>) -> CyborgError {
        CyborgError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> CyborgError {
        CyborgError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for CyborgError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::LOCKED {
            return StatusCode::LOCKED.into_response();
        }
        let fault = if self.status.is_server_error() {
            "Server"
        } else {
            "Client"
        };
        let inner = json!({"faultcode": fault, "faultstring": self.message, "debuginfo": null});
        (
            self.status,
            axum::Json(json!({"error_message": inner.to_string()})),
        )
            .into_response()
    }
}

impl From<AccelError> for CyborgError {
    fn from(e: AccelError) -> CyborgError {
        let status = match &e {
            AccelError::Invalid(_) => StatusCode::BAD_REQUEST,
            AccelError::NotFound(_) => StatusCode::NOT_FOUND,
            AccelError::Conflict(_) => StatusCode::CONFLICT,
            AccelError::Forbidden(_) => StatusCode::FORBIDDEN,
            AccelError::Locked(_) => StatusCode::LOCKED,
            AccelError::Store(err) => {
                tracing::error!(error = %err, "store failed");
                return CyborgError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the change could not be stored; nothing was changed",
                );
            }
        };
        CyborgError::new(status, e.to_string())
    }
}

impl From<super::ApiError> for CyborgError {
    fn from(e: super::ApiError) -> CyborgError {
        CyborgError::new(e.status, e.message)
    }
}

/// `OpenStack-API-Version: accelerator 2.x` (or a bare `2.x`, or `latest`); absent is 2.0.
fn requested(headers: &HeaderMap) -> Result<u32, CyborgError> {
    let Some(v) = headers.get("openstack-api-version") else {
        return Ok(MIN_MINOR);
    };
    let v = v
        .to_str()
        .map_err(|_| CyborgError::bad("OpenStack-API-Version is not text"))?
        .trim();
    let v = v.strip_prefix("accelerator").map_or(v, str::trim);
    if v == "latest" {
        return Ok(MAX_MINOR);
    }
    let bad = || {
        CyborgError::bad(format!(
            "Invalid API version {v:?}: expected accelerator 2.x"
        ))
    };
    let (major, minor) = v.split_once('.').ok_or_else(bad)?;
    let (major, minor): (u32, u32) = (
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    );
    if major != 2 || !(MIN_MINOR..=MAX_MINOR).contains(&minor) {
        return Err(CyborgError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Version {major}.{minor} was requested but the minor version is not supported by this service. The supported version range is: [2.{MIN_MINOR}, 2.{MAX_MINOR}]."
            ),
        ));
    }
    Ok(minor)
}

async fn negotiate(mut req: Request, next: Next) -> Response {
    let (minor, mut resp) = match requested(req.headers()) {
        Ok(minor) => {
            req.extensions_mut().insert(Version(minor));
            (minor, next.run(req).await)
        }
        Err(e) => (MIN_MINOR, e.into_response()),
    };
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("openstack-api-minimum-version", format!("2.{MIN_MINOR}"));
    set("openstack-api-maximum-version", format!("2.{MAX_MINOR}"));
    set("openstack-api-version", format!("accelerator 2.{minor}"));
    set("vary", "OpenStack-API-Version".into());
    resp
}

fn version(req_ext: Option<&Version>) -> u32 {
    req_ext.map_or(MIN_MINOR, |v| v.0)
}

/// This deployment's public base, from the request (for `links`).
fn base(headers: &HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("https://{host}/accelerator")
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v2.0",
        "max_version": format!("2.{MAX_MINOR}"),
        "min_version": format!("2.{MIN_MINOR}"),
        "status": "CURRENT",
        "links": [{"href": format!("{base}/v2/"), "rel": "self"}],
    })
}

async fn root_doc(headers: HeaderMap) -> Response {
    let b = base(&headers);
    let v2 = json!({
        "id": "v2",
        "status": "CURRENT",
        "max_version": format!("2.{MAX_MINOR}"),
        "min_version": format!("2.{MIN_MINOR}"),
        "links": [{"href": format!("{b}/v2/"), "rel": "self"}],
    });
    axum::Json(json!({
        "name": "OpenStack Cyborg API",
        "description": "Cyborg-compatible accelerator management: GPU device profiles and accelerator requests of backfill.",
        "versions": [v2.clone()],
        "default_version": v2,
    }))
    .into_response()
}

async fn v2_doc(headers: HeaderMap) -> Response {
    axum::Json(version_doc(&base(&headers))).into_response()
}

fn profile_time(t: i64) -> String {
    rfc3339(t).replacen('T', " ", 1)
}

fn profile_json(p: &DeviceProfile, base: &str) -> Value {
    json!({
        "name": p.name,
        "uuid": p.uuid,
        "description": p.description,
        "groups": p.groups,
        "created_at": profile_time(p.created_at),
        "updated_at": p.updated_at.map(profile_time),
        "links": [{"href": format!("{base}/v2/device_profiles/{}", p.uuid), "rel": "self"}],
    })
}

fn arq_json(a: &Arq, base: &str) -> Value {
    json!({
        "uuid": a.uuid,
        "state": a.state.as_str(),
        "device_profile_name": a.device_profile_name,
        "device_profile_group_id": a.device_profile_group_id,
        "hostname": a.hostname,
        "device_rp_uuid": a.device_rp_uuid,
        "instance_uuid": a.instance_uuid,
        "project_id": a.project_id,
        "attach_handle_type": a.attach_handle_type,
        "attach_handle_uuid": a.attach_handle_uuid,
        "attach_handle_info": a.attach_handle_info,
        "links": [{"href": format!("{base}/v2/accelerator_requests/{}", a.uuid), "rel": "self"}],
        "created_at": rfc3339(a.created_at),
        "updated_at": a.updated_at.map(rfc3339),
    })
}

fn query(q: Option<&str>) -> BTreeMap<String, String> {
    q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn admin_only(caller: &Caller, what: &str) -> Result<(), CyborgError> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Tenant(_) => Err(CyborgError::new(
            StatusCode::FORBIDDEN,
            format!("{what} is for operators (admin certificates)"),
        )),
    }
}

fn owner(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Admin => None,
        Caller::Tenant(a) => Some(a.name.as_str()),
    }
}

fn body_json(body: &Bytes) -> Result<Value, CyborgError> {
    serde_json::from_slice(body)
        .map_err(|e| CyborgError::bad(format!("body is not valid JSON: {e}")))
}

async fn list_profiles(
    State(state): State<AppState>,
    _: Who,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, CyborgError> {
    let names = query(q.as_deref()).get("name").map(|n| list(n));
    let b = base(&headers);
    let items: Vec<Value> = state
        .coordinator
        .device_profiles()
        .await?
        .iter()
        .filter(|p| names.as_ref().is_none_or(|n| n.contains(&p.name)))
        .map(|p| profile_json(p, &b))
        .collect();
    Ok(axum::Json(json!({ "device_profiles": items })).into_response())
}

async fn get_profile(
    State(state): State<AppState>,
    _: Who,
    Path(key): Path<String>,
    req: axum::http::Extensions,
    headers: HeaderMap,
) -> Result<Response, CyborgError> {
    let minor = version(req.get::<Version>());
    let is_uuid = uuid::Uuid::parse_str(&key).is_ok();
    if !is_uuid && minor < 2 {
        return Err(CyborgError::new(
            StatusCode::NOT_ACCEPTABLE,
            "getting a device profile by name needs microversion 2.2 or later",
        ));
    }
    let p = state.coordinator.device_profile(&key, !is_uuid).await?;
    Ok(axum::Json(json!({"device_profile": profile_json(&p, &base(&headers))})).into_response())
}

async fn create_profile(
    State(state): State<AppState>,
    Who(caller): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CyborgError> {
    admin_only(&caller, "creating device profiles")?;
    let v = body_json(&body)?;
    let one = match v.as_array().map(Vec::as_slice) {
        Some([one]) => one.clone(),
        _ => {
            return Err(CyborgError::bad(
                "the body must be a list holding exactly one device profile",
            ));
        }
    };
    let Some(o) = one.as_object() else {
        return Err(CyborgError::bad("a device profile must be an object"));
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["name", "description", "groups", "uuid"].contains(&k.as_str()))
    {
        return Err(CyborgError::bad(format!("unknown field {k:?}")));
    }
    let name = o
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| CyborgError::bad("name is required"))?;
    let description = o.get("description").and_then(Value::as_str).unwrap_or("");
    let groups = parse_groups(o.get("groups"))?;
    let p = state
        .coordinator
        .create_profile(name, description, groups)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(profile_json(&p, &base(&headers))),
    )
        .into_response())
}

fn parse_groups(v: Option<&Value>) -> Result<Vec<BTreeMap<String, String>>, CyborgError> {
    let Some(list) = v.and_then(Value::as_array) else {
        return Err(CyborgError::bad("groups is required: a list of objects"));
    };
    list.iter()
        .enumerate()
        .map(|(i, g)| {
            let Some(g) = g.as_object() else {
                return Err(CyborgError::bad(format!("groups[{i}] must be an object")));
            };
            g.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(CyborgError::bad(format!(
                        "groups[{i}].{k} must be a string"
                    ))),
                })
                .collect()
        })
        .collect()
}

async fn delete_profile(
    State(state): State<AppState>,
    Who(caller): Who,
    Path(key): Path<String>,
) -> Result<StatusCode, CyborgError> {
    admin_only(&caller, "deleting device profiles")?;
    state.coordinator.delete_profiles(&[key]).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_profiles_by_value(
    State(state): State<AppState>,
    Who(caller): Who,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, CyborgError> {
    admin_only(&caller, "deleting device profiles")?;
    let names = query(q.as_deref())
        .get("value")
        .map(|v| list(v))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CyborgError::bad("give the profiles to delete: ?value=name1,name2"))?;
    state.coordinator.delete_profiles(&names).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_arqs(
    State(state): State<AppState>,
    Who(caller): Who,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, CyborgError> {
    let q = query(q.as_deref());
    let resolved = match q.get("bind_state").map(String::as_str) {
        None => false,
        Some("resolved") => true,
        Some(other) => {
            return Err(CyborgError::bad(format!(
                "bind_state {other:?} is not supported: only \"resolved\""
            )));
        }
    };
    let filter = ArqFilter {
        instance: q.get("instance").cloned(),
        resolved,
    };
    let b = base(&headers);
    let arqs = state.coordinator.list_arqs(owner(&caller), &filter).await?;
    let items: Vec<Value> = arqs.iter().map(|a| arq_json(a, &b)).collect();
    Ok(axum::Json(json!({ "arqs": items })).into_response())
}

async fn get_arq(
    State(state): State<AppState>,
    Who(caller): Who,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, CyborgError> {
    let a = state.coordinator.get_arq(owner(&caller), &uuid).await?;
    Ok(axum::Json(arq_json(&a, &base(&headers))).into_response())
}

async fn create_arqs(
    State(state): State<AppState>,
    Who(caller): Who,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CyborgError> {
    let Caller::Tenant(account) = &caller else {
        return Err(CyborgError::new(
            StatusCode::FORBIDDEN,
            "accelerator requests belong to accounts: create them with an account certificate",
        ));
    };
    let v = body_json(&body)?;
    let name = v
        .get("device_profile_name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CyborgError::bad("device_profile_name is required"))?;
    let arqs = state.coordinator.create_arqs(account, name, None).await?;
    let b = base(&headers);
    let items: Vec<Value> = arqs.iter().map(|a| arq_json(a, &b)).collect();
    Ok((StatusCode::CREATED, axum::Json(json!({ "arqs": items }))).into_response())
}

const SERVICE_ONLY: &str =
    "This operation requires a service token. Use the Compute API to manage instance accelerators.";

/// One ARQ's JSON-patch list: all `add` (with hostname, device_rp_uuid and instance_uuid) or
/// all `remove`.
fn parse_patch(uuid: &str, ops: &Value, minor: u32) -> Result<BindPatch, CyborgError> {
    let Some(ops) = ops.as_array().filter(|o| !o.is_empty()) else {
        return Err(CyborgError::bad(format!(
            "the patch for {uuid} must be a non-empty list"
        )));
    };
    let mut adds: Map<String, Value> = Map::new();
    let mut kinds = Vec::new();
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        if !["add", "remove"].contains(&kind) {
            return Err(CyborgError::bad(format!(
                "op {kind:?} is not supported: add or remove"
            )));
        }
        match path {
            "/hostname" | "/device_rp_uuid" | "/instance_uuid" => {}
            "/project_id" if minor >= 1 => {}
            "/project_id" => {
                return Err(CyborgError::new(
                    StatusCode::NOT_ACCEPTABLE,
                    "/project_id in a patch needs microversion 2.1 or later",
                ));
            }
            other => {
                return Err(CyborgError::bad(format!(
                    "path {other:?} cannot be patched"
                )));
            }
        }
        kinds.push(kind);
        if kind == "add" {
            let value = op
                .get("value")
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CyborgError::bad(format!("{path} needs a value")))?;
            adds.insert(path.trim_start_matches('/').to_owned(), json!(value));
        }
    }
    kinds.dedup();
    match kinds.as_slice() {
        ["remove"] => Ok(BindPatch::Unbind),
        ["add"] => {
            let field = |k: &str| adds.get(k).and_then(Value::as_str).map(str::to_owned);
            match (
                field("hostname"),
                field("device_rp_uuid"),
                field("instance_uuid"),
            ) {
                (Some(hostname), Some(device_rp_uuid), Some(instance_uuid)) => {
                    Ok(BindPatch::Bind {
                        hostname,
                        device_rp_uuid,
                        instance_uuid,
                        project_id: field("project_id"),
                    })
                }
                _ => Err(CyborgError::bad(
                    "Fields absent in patch: hostname, device_rp_uuid and instance_uuid are required",
                )),
            }
        }
        _ => Err(CyborgError::bad(format!(
            "the patch for {uuid} mixes add and remove"
        ))),
    }
}

async fn patch_arqs(
    State(state): State<AppState>,
    Who(caller): Who,
    ext: axum::http::Extensions,
    body: Bytes,
) -> Result<StatusCode, CyborgError> {
    if !matches!(caller, Caller::Admin) {
        return Err(CyborgError::new(StatusCode::FORBIDDEN, SERVICE_ONLY));
    }
    let minor = version(ext.get::<Version>());
    let v = body_json(&body)?;
    let Some(map) = v.as_object().filter(|m| !m.is_empty()) else {
        return Err(CyborgError::bad(
            "the body must map accelerator request uuids to JSON-patch lists",
        ));
    };
    let mut patches = BTreeMap::new();
    for (uuid, ops) in map {
        patches.insert(uuid.clone(), parse_patch(uuid, ops, minor)?);
    }
    state.coordinator.patch_arqs(&patches).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn delete_arqs(
    State(state): State<AppState>,
    Who(caller): Who,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, CyborgError> {
    let q = query(q.as_deref());
    match (q.get("arqs"), q.get("instance")) {
        (Some(arqs), None) => {
            state
                .coordinator
                .delete_arqs(owner(&caller), &list(arqs))
                .await?;
        }
        (None, Some(instance)) => {
            if !matches!(caller, Caller::Admin) {
                return Err(CyborgError::new(StatusCode::FORBIDDEN, SERVICE_ONLY));
            }
            state.coordinator.delete_arqs_of_instance(instance).await?;
        }
        _ => {
            return Err(CyborgError::bad(
                "Provide either an ARQ uuid list or an instance UUID",
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_arq(
    State(state): State<AppState>,
    Who(caller): Who,
    Path(uuid): Path<String>,
) -> Result<StatusCode, CyborgError> {
    state
        .coordinator
        .delete_arqs(owner(&caller), &[uuid])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
