//! OpenStack Cyborg's API under `/accelerator/` (`/v2`, and the same without `v2` as Cyborg
//! routes it): version documents, device profiles and accelerator requests, with microversion
//! negotiation (`OpenStack-API-Version: accelerator 2.x`, 2.0 to 2.3) and Cyborg's error body.
//! Tenants (account certificates) create and see their own ARQs and read profiles; operators
//! (admin certificates) manage profiles, bind and unbind, and see everything.

pub(in crate::api) mod arqs;
#[cfg(test)]
mod tests;

use crate::api::AppState;
use crate::api::cyborg::arqs::{
    create_arqs, delete_arq, delete_arqs, get_arq, list_arqs, patch_arqs,
};
use crate::api::tenant::Caller as AnyCaller;
use crate::api::text::{check_name, check_text};
use crate::domain::accel::DeviceProfile;
use crate::ops::accel::AccelError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backfill_api::cyborg::{
    ApiVersion, CyborgErrorBody, DeviceProfile as DeviceProfileView, DeviceProfileList,
    DeviceProfileOne, Fault, Link, RootDocument,
};
use backfill_shared::clock::rfc3339;
use serde_json::Value;
use std::collections::BTreeMap;

const MIN_MINOR: u32 = 0;
const MAX_MINOR: u32 = 3;

/// The negotiated microversion's minor number (2.x).
#[derive(Debug, Clone, Copy)]
pub(in crate::api) struct Version(pub(in crate::api) u32);

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
pub(in crate::api) struct Who(pub(in crate::api) Caller);

pub(in crate::api) type Caller = AnyCaller;

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
    pub(in crate::api) fn new(status: StatusCode, message: impl Into<String>) -> CyborgError {
        CyborgError {
            status,
            message: message.into(),
        }
    }
    pub(in crate::api) fn bad(message: impl Into<String>) -> CyborgError {
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
        let inner = Fault {
            faultcode: fault.into(),
            faultstring: self.message,
            debuginfo: None,
        };
        // A `Fault` always serializes; the empty string would only hide a fault in serde.
        let error_message = serde_json::to_string(&inner).unwrap_or_default();
        (self.status, axum::Json(CyborgErrorBody { error_message })).into_response()
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

impl From<crate::api::ApiError> for CyborgError {
    fn from(e: crate::api::ApiError) -> CyborgError {
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
    // HTTP/2 carries the authority in the URI, not a Host header: `links` need it either way.
    if !req.headers().contains_key(axum::http::header::HOST)
        && let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(axum::http::header::HOST, v);
    }
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

pub(in crate::api) fn version(req_ext: Option<&Version>) -> u32 {
    req_ext.map_or(MIN_MINOR, |v| v.0)
}

/// This deployment's public base, from the request (for `links`).
pub(in crate::api) fn base(headers: &HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("https://{host}/accelerator")
}

fn version_doc(id: &str, base: &str) -> ApiVersion {
    ApiVersion {
        id: id.into(),
        max_version: format!("2.{MAX_MINOR}"),
        min_version: format!("2.{MIN_MINOR}"),
        status: "CURRENT".into(),
        links: vec![link(format!("{base}/v2/"))],
    }
}

pub(in crate::api) fn link(href: String) -> Link {
    Link {
        href,
        rel: "self".into(),
    }
}

async fn root_doc(headers: HeaderMap) -> Response {
    let v2 = version_doc("v2", &base(&headers));
    axum::Json(RootDocument {
        name: "OpenStack Cyborg API".into(),
        description: "Cyborg-compatible accelerator management: GPU device profiles and accelerator requests of backfill.".into(),
        versions: vec![v2.clone()],
        default_version: v2,
    })
    .into_response()
}

async fn v2_doc(headers: HeaderMap) -> Response {
    axum::Json(version_doc("v2.0", &base(&headers))).into_response()
}

fn profile_time(t: i64) -> String {
    rfc3339(t).replacen('T', " ", 1)
}

fn profile_view(p: &DeviceProfile, base: &str) -> DeviceProfileView {
    DeviceProfileView {
        name: p.name.clone(),
        uuid: p.uuid.clone(),
        description: p.description.clone(),
        groups: p.groups.clone(),
        created_at: profile_time(p.created_at),
        updated_at: p.updated_at.map(profile_time),
        links: vec![link(format!("{base}/v2/device_profiles/{}", p.uuid))],
    }
}

/// The query string; a repeated parameter is refused (see `params`).
pub(in crate::api) fn query(q: Option<&str>) -> Result<BTreeMap<String, String>, CyborgError> {
    crate::api::params::parse(q).map_err(|e| CyborgError::bad(e.to_string()))
}

pub(in crate::api) fn list(v: &str) -> Vec<String> {
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

pub(in crate::api) fn owner(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Admin => None,
        Caller::Tenant(a) => Some(a.name.as_str()),
    }
}

/// A JSON body; invalid JSON and repeated keys are refused (see `json_body`).
pub(in crate::api) fn body_json(body: &Bytes) -> Result<Value, CyborgError> {
    crate::api::json_body::parse(body).map_err(|e| CyborgError::bad(e.to_string()))
}

async fn list_profiles(
    State(state): State<AppState>,
    _: Who,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, CyborgError> {
    let names = query(q.as_deref())?.get("name").map(|n| list(n));
    let b = base(&headers);
    let device_profiles = state
        .coordinator
        .device_profiles()
        .await?
        .iter()
        .filter(|p| names.as_ref().is_none_or(|n| n.contains(&p.name)))
        .map(|p| profile_view(p, &b))
        .collect();
    Ok(axum::Json(DeviceProfileList { device_profiles }).into_response())
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
    Ok(axum::Json(DeviceProfileOne {
        device_profile: profile_view(&p, &base(&headers)),
    })
    .into_response())
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
    check_text(description).map_err(|e| CyborgError::bad(format!("description {e}")))?;
    let groups = parse_groups(o.get("groups"))?;
    let p = state
        .coordinator
        .create_profile(name, description, groups)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(profile_view(&p, &base(&headers))),
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
                    Value::String(s) => {
                        check_name(k)
                            .and_then(|()| check_name(s))
                            .map_err(|e| CyborgError::bad(format!("groups[{i}].{k:?}: {e}")))?;
                        Ok((k.clone(), s.clone()))
                    }
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
    let names = query(q.as_deref())?
        .get("value")
        .map(|v| list(v))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CyborgError::bad("give the profiles to delete: ?value=name1,name2"))?;
    state.coordinator.delete_profiles(&names).await?;
    Ok(StatusCode::NO_CONTENT)
}
