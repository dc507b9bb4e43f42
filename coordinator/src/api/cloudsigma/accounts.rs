//! `/accounts/`: the operator creates accounts, grants the backfill permission and sets quotas.
//! Admin certificates only.

use crate::api::cloudsigma::listing::page;
use crate::api::cloudsigma::views::{storage_quota, to_json};
use crate::api::json_body::JsonBody;
use crate::api::params::Params;
use crate::api::tenant::Admin;
use crate::api::{ApiError, AppState};
use crate::domain::account::{Account, AccountChange, Quota, QuotaChange};
use crate::state::quota::InUse;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use backfill_api::ListMeta;
use backfill_api::accounts::{AccountList, AccountView, CreatedAccounts, InUseView, QuotaView};
use backfill_shared::clock::rfc3339;
use serde_json::{Map, Value};

const FIELDS: &[&str] = &["name", "backfill", "quota"];
const QUOTA_FIELDS: &[&str] = &["cpu", "mem", "gpus", "servers", "storage"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/accounts/", get(list).post(create))
        .route("/accounts/{name}/", get(show).put(update).delete(remove))
}

fn uri(name: &str) -> String {
    format!("/api/2.0/accounts/{name}/")
}

pub fn account_view(a: &Account, u: &InUse) -> AccountView {
    AccountView {
        name: a.name.clone(),
        uuid: a.uuid.clone(),
        backfill: a.backfill,
        quota: QuotaView {
            cpu: a.quota.cpu,
            mem: a.quota.mem,
            gpus: a.quota.gpus,
            servers: a.quota.servers,
            storage: a.quota.storage.map(storage_quota),
        },
        in_use: InUseView {
            cpu: u.cpu,
            mem: u.mem,
            gpus: u.gpus,
            servers: u.servers,
            storage: u.storage,
        },
        created_at: rfc3339(a.created_at),
        resource_uri: uri(&a.name),
    }
}

fn body_object(body: Result<JsonBody, ApiError>) -> Result<Map<String, Value>, ApiError> {
    match body? {
        JsonBody(Value::Object(o)) => Ok(o),
        JsonBody(_) => Err(ApiError::validation(
            "body",
            "the body must be a JSON object",
        )),
    }
}

fn refuse_unknown(o: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::validation(
            format!("{at}{k}"),
            format!(
                "unknown field {k:?}; accepted fields: {}",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// `{"cpu": 4000, "mem": null, ...}`: present fields change, `null` = unlimited (for
/// `storage`, the configured default; `"unlimited"` there is unlimited whatever the default).
fn parse_quota(v: Option<&Value>, at: &str) -> Result<QuotaChange, ApiError> {
    let Some(v) = v else {
        return Ok(QuotaChange::default());
    };
    let Some(o) = v.as_object() else {
        return Err(ApiError::validation(at, "quota must be an object"));
    };
    refuse_unknown(o, QUOTA_FIELDS, &format!("{at}."))?;
    let field = |k: &str| -> Result<Option<Option<u64>>, ApiError> {
        match o.get(k) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(w)) if k == "storage" && w == "unlimited" => {
                Ok(Some(Some(crate::domain::account::UNLIMITED_STORAGE)))
            }
            // The store keeps quotas as signed 64-bit integers: larger values would come back
            // changed, so they are refused.
            Some(v) => v
                .as_u64()
                .filter(|n| i64::try_from(*n).is_ok())
                .map(|n| Some(Some(n)))
                .ok_or_else(|| {
                    ApiError::validation(
                        format!("{at}.{k}"),
                        format!(
                            "{k} must be an integer from 0 to {} or null ({})",
                            i64::MAX,
                            if k == "storage" {
                                "the configured default; or \"unlimited\""
                            } else {
                                "unlimited"
                            }
                        ),
                    )
                }),
        }
    };
    Ok(QuotaChange {
        cpu: field("cpu")?,
        mem: field("mem")?,
        gpus: field("gpus")?,
        servers: field("servers")?,
        storage: field("storage")?,
    })
}

fn parse_backfill(o: &Map<String, Value>, at: &str) -> Result<Option<bool>, ApiError> {
    match o.get("backfill") {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::validation(
            format!("{at}backfill"),
            "backfill must be true or false",
        )),
    }
}

async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    Params(params): Params,
) -> Result<Json<Value>, ApiError> {
    let (limit, offset) = page(&params)?;
    let all = state.coordinator.accounts().await?;
    let take = if limit == 0 { usize::MAX } else { limit };
    let objects: Vec<AccountView> = all
        .iter()
        .skip(offset)
        .take(take)
        .map(|(a, u)| account_view(a, u))
        .collect();
    Ok(Json(to_json(&AccountList {
        meta: ListMeta {
            limit,
            offset,
            total_count: all.len(),
        },
        objects,
    })))
}

async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let o = body_object(body)?;
    let Some(list) = o.get("objects").and_then(Value::as_array) else {
        return Err(ApiError::validation(
            "objects",
            "expected {\"objects\": [{\"name\": ..., \"backfill\": ..., \"quota\": {...}}]}",
        ));
    };
    if list.is_empty() || list.len() > crate::api::cloudsigma::server_json::MAX_OBJECTS {
        return Err(ApiError::validation(
            "objects",
            "objects must hold 1 to 100 accounts",
        ));
    }
    let mut wanted = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let at = format!("objects[{i}].");
        let Some(a) = v.as_object() else {
            return Err(ApiError::validation(
                format!("objects[{i}]"),
                "must be an object",
            ));
        };
        refuse_unknown(a, FIELDS, &at)?;
        let name = a.get("name").and_then(Value::as_str).unwrap_or_default();
        backfill_shared::pki::validate_name(name)
            .map_err(|e| ApiError::validation(format!("{at}name"), e.to_string()))?;
        let q = parse_quota(a.get("quota"), &format!("{at}quota"))?;
        let quota = Quota {
            cpu: q.cpu.flatten(),
            mem: q.mem.flatten(),
            gpus: q.gpus.flatten(),
            servers: q.servers.flatten(),
            storage: q.storage.flatten(),
        };
        wanted.push((
            name.to_owned(),
            parse_backfill(a, &at)?.unwrap_or(false),
            quota,
        ));
    }
    let mut objects = Vec::new();
    for (name, backfill, quota) in wanted {
        let a = state
            .coordinator
            .create_account(&name, backfill, quota)
            .await?;
        tracing::info!(account = %a.name, backfill, by = %admin, "account created");
        objects.push(account_view(&a, &InUse::default()));
    }
    let location = objects
        .first()
        .and_then(|o| HeaderValue::from_str(&o.resource_uri).ok());
    let mut resp = (StatusCode::CREATED, Json(CreatedAccounts { objects })).into_response();
    if let Some(l) = location {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    Ok(resp)
}

async fn show(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (a, u) = state
        .coordinator
        .account_in_use(&name)
        .await
        .map_err(not_found)?;
    Ok(Json(to_json(&account_view(&a, &u))))
}

/// To the operator, an unknown account is simply not there.
fn not_found(e: crate::state::coordinator::OpError) -> ApiError {
    match e {
        crate::state::coordinator::OpError::NoAccount(n) => {
            ApiError::not_found(format!("account {n:?} does not exist"))
        }
        other => other.into(),
    }
}

async fn update(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(name): Path<String>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let o = body_object(body)?;
    refuse_unknown(&o, &["backfill", "quota"], "")?;
    let change = AccountChange {
        backfill: parse_backfill(&o, "")?,
        quota: parse_quota(o.get("quota"), "quota")?,
    };
    state
        .coordinator
        .update_account(&name, change)
        .await
        .map_err(not_found)?;
    tracing::info!(account = %name, by = %admin, ?change, "account changed");
    let (a, u) = state.coordinator.account_in_use(&name).await?;
    Ok(Json(to_json(&account_view(&a, &u))))
}

async fn remove(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state
        .coordinator
        .delete_account(&name)
        .await
        .map_err(not_found)?;
    tracing::info!(account = %name, by = %admin, "account deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
