//! `/bservers/`: CloudSigma's backfilling servers.

use super::server_json::{self, detail, summary};
use super::tenant::BackfillTenant;
use super::{ApiError, AppState};
use crate::coordinator::Scope;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backfill_shared::{ServerClass, ServerId};
use serde_json::json;
use std::collections::BTreeMap;

const COLLECTION: &str = "bservers";
const DEFAULT_LIMIT: usize = 20;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/bservers/", get(list).post(create))
        .route("/bservers/detail/", get(list_detail))
        .route("/bservers/{uuid}/", get(show).delete(remove))
        .route("/bservers/{uuid}/action/", post(action))
}

/// The query string as key/values; a malformed one is a CloudSigma-style 400.
pub struct Params(pub BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<BTreeMap<String, String>>::try_from_uri(&parts.uri)
            .map(|Query(q)| Params(q))
            .map_err(|e| ApiError::validation("query", e.body_text()))
    }
}

fn page(params: &BTreeMap<String, String>) -> Result<(usize, usize), ApiError> {
    let num = |k: &str, d: usize| match params.get(k) {
        None => Ok(d),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ApiError::validation(k, format!("{k} must be a non-negative integer"))),
    };
    Ok((num("limit", DEFAULT_LIMIT)?, num("offset", 0)?))
}

fn parse_id(raw: &str) -> Result<ServerId, ApiError> {
    raw.parse()
        .map_err(|e: backfill_shared::IdError| ApiError::validation("uuid", e.to_string()))
}

async fn listing(
    state: &AppState,
    tenant: &BackfillTenant,
    params: &BTreeMap<String, String>,
    full: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (limit, offset) = page(params)?;
    let all = state
        .coordinator
        .list_servers(&tenant.0, Scope::BServers)
        .await;
    let total = all.len();
    let take = if limit == 0 { usize::MAX } else { limit };
    let objects: Vec<_> = all
        .iter()
        .skip(offset)
        .take(take)
        .map(|s| {
            if full {
                detail(COLLECTION, &tenant.0, s)
            } else {
                summary(COLLECTION, &tenant.0, s)
            }
        })
        .collect();
    Ok(Json(json!({
        "meta": {"limit": limit, "offset": offset, "total_count": total},
        "objects": objects,
    })))
}

async fn list(
    State(state): State<AppState>,
    tenant: BackfillTenant,
    Params(params): Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    listing(&state, &tenant, &params, false).await
}

async fn list_detail(
    State(state): State<AppState>,
    tenant: BackfillTenant,
    Params(params): Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    listing(&state, &tenant, &params, true).await
}

async fn create(
    State(state): State<AppState>,
    BackfillTenant(account): BackfillTenant,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::too_large(e.body_text()))?;
    let new = server_json::parse_create(&body)?;
    let created = state
        .coordinator
        .create_servers(&account, ServerClass::Backfill, new)
        .await?;
    let objects: Vec<_> = created
        .iter()
        .map(|s| detail(COLLECTION, &account, s))
        .collect();
    let mut resp = (StatusCode::CREATED, Json(json!({ "objects": objects }))).into_response();
    let location = created
        .first()
        .and_then(|s| HeaderValue::from_str(&server_json::location(COLLECTION, s)).ok());
    if let Some(v) = location {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn show(
    State(state): State<AppState>,
    BackfillTenant(account): BackfillTenant,
    Path(uuid): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let s = state
        .coordinator
        .get_server(&account, Scope::BServers, id)
        .await?;
    Ok(Json(detail(COLLECTION, &account, &s)))
}

async fn remove(
    State(state): State<AppState>,
    BackfillTenant(account): BackfillTenant,
    Path(uuid): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&uuid)?;
    state
        .coordinator
        .delete(&account, Scope::BServers, id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn action(
    State(state): State<AppState>,
    BackfillTenant(account): BackfillTenant,
    Path(uuid): Path<String>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    let id = parse_id(&uuid)?;
    let what = params.get("do").map(String::as_str);
    match what {
        Some("start") => {
            state
                .coordinator
                .start(&account, Scope::BServers, id)
                .await?;
        }
        Some("stop") => {
            state
                .coordinator
                .stop(&account, Scope::BServers, id)
                .await?;
        }
        _ => {
            return Err(ApiError::validation(
                "do",
                "unknown action; use ?do=start or ?do=stop",
            ));
        }
    }
    let body = json!({"action": what, "result": "success", "uuid": id.to_string()});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
