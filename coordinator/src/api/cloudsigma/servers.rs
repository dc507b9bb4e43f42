//! `/servers/` and `/bservers/`: CloudSigma's servers and backfilling servers. One set of
//! handlers serves both; a collection says what it shows, what it creates, and whether the
//! account needs the backfill permission.

use crate::api::cloudsigma::listing::server_query;
use crate::api::cloudsigma::server_json;
use crate::api::cloudsigma::views::{detail, summary, to_json};
use crate::api::json_body::JsonBody;
use crate::api::params::Params;
use crate::api::tenant::{Caller, Tenant};
use crate::api::{ApiError, AppState};
use crate::domain::account::Account;
use crate::domain::server::ServerRecord;
use crate::state::coordinator::Scope;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backfill_api::ListMeta;
use backfill_api::servers::{ServerList, ServerSummaryList};
use backfill_shared::{ServerClass, ServerId};
use std::collections::BTreeMap;

/// One API collection of servers.
#[derive(Debug, Clone, Copy)]
pub struct Collection {
    pub name: &'static str,
    pub scope: Scope,
    /// The class a create in this collection makes.
    pub creates: ServerClass,
    /// Only accounts with the backfill permission get in (403 otherwise).
    pub backfill_only: bool,
}

pub const BSERVERS: Collection = Collection {
    name: "bservers",
    scope: Scope::BServers,
    creates: ServerClass::Backfill,
    backfill_only: true,
};

pub const SERVERS: Collection = Collection {
    name: "servers",
    scope: Scope::Servers,
    creates: ServerClass::Normal,
    backfill_only: false,
};

impl Collection {
    fn admit(self, account: Account) -> Result<Account, ApiError> {
        if self.backfill_only && !account.backfill {
            return Err(ApiError::permission(
                "Backfilling is not enabled for this account",
            ));
        }
        Ok(account)
    }
}

pub fn routes() -> Router<AppState> {
    collection(BSERVERS).merge(collection(SERVERS))
}

fn collection(c: Collection) -> Router<AppState> {
    let n = c.name;
    Router::new()
        .route(
            &format!("/{n}/"),
            get(move |s, t, p| listing(c, s, t, p, false)).post(move |s, t, b| create(c, s, t, b)),
        )
        .route(
            &format!("/{n}/detail/"),
            get(move |s, t, p| listing(c, s, t, p, true)),
        )
        .route(
            &format!("/{n}/{{uuid}}/"),
            get(move |s, t, id| show(c, s, t, id))
                .put(move |s, t, id, b| edit(c, s, t, id, b))
                .delete(move |s, t, id, p| remove(c, s, t, id, p)),
        )
        .route(&format!("/{n}/schema/"), get(move |t| schema(c, t)))
        .route(
            &format!("/{n}/{{uuid}}/runtime/"),
            get(move |s, t, id| runtime(c, s, t, id)),
        )
        .route(
            &format!("/{n}/{{uuid}}/action/"),
            post(move |s, t, id, p| action(c, s, t, id, p)),
        )
}

fn parse_id(raw: &str) -> Result<ServerId, ApiError> {
    raw.parse()
        .map_err(|e: backfill_shared::IdError| ApiError::validation("uuid", e.to_string()))
}

/// Each server's owning account: the caller's own, or (for the operator) every account.
async fn owners(state: &AppState, caller: &Caller) -> Result<BTreeMap<String, Account>, ApiError> {
    Ok(match caller {
        Caller::Tenant(a) => [(a.name.clone(), a.clone())].into(),
        Caller::Admin => state
            .coordinator
            .accounts()
            .await?
            .into_iter()
            .map(|(a, _)| (a.name.clone(), a))
            .collect(),
    })
}

fn owner_of<'a>(
    owners: &'a BTreeMap<String, Account>,
    s: &ServerRecord,
) -> Result<&'a Account, ApiError> {
    owners
        .get(&s.owner)
        .ok_or_else(|| ApiError::not_found(format!("server {} has no account", s.uuid)))
}

/// Lists: a tenant sees its own servers; the operator sees every account's (read-only).
async fn listing(
    c: Collection,
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params,
    full: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = server_query(&params)?;
    let (total, page) = match &caller {
        Caller::Tenant(account) => {
            let account = c.admit(account.clone())?;
            state
                .coordinator
                .page_servers(Some(&account), c.scope, &query)
                .await
        }
        Caller::Admin => state.coordinator.page_servers(None, c.scope, &query).await,
    };
    let owners = owners(&state, &caller).await?;
    let meta = ListMeta {
        limit: query.limit,
        offset: query.offset,
        total_count: total,
    };
    let with_owner = |s| owner_of(&owners, s).map(|account| (account, s));
    Ok(Json(if full {
        let objects = page
            .iter()
            .map(|s| with_owner(s).map(|(a, s)| detail(c.name, a, s)))
            .collect::<Result<_, ApiError>>()?;
        to_json(&ServerList { meta, objects })
    } else {
        let objects = page
            .iter()
            .map(|s| with_owner(s).map(|(a, s)| summary(c.name, a, s)))
            .collect::<Result<_, ApiError>>()?;
        to_json(&ServerSummaryList { meta, objects })
    }))
}

async fn create(
    c: Collection,
    State(state): State<AppState>,
    Tenant(account): Tenant,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let account = c.admit(account)?;
    let JsonBody(body) = body?;
    let flavors = state.coordinator.flavors().await;
    let new = server_json::parse_create(&body, &flavors)?;
    let created = state
        .coordinator
        .create_servers(&account, c.creates, new)
        .await?;
    let objects: Vec<_> = created
        .iter()
        .map(|s| detail(c.name, &account, s))
        .collect();
    let body = backfill_api::servers::CreatedServers { objects };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    let location = created
        .first()
        .and_then(|s| HeaderValue::from_str(&server_json::location(c.name, s)).ok());
    if let Some(v) = location {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn show(
    c: Collection,
    State(state): State<AppState>,
    caller: Caller,
    Path(uuid): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let s = match &caller {
        Caller::Tenant(account) => {
            let account = c.admit(account.clone())?;
            state.coordinator.get_server(&account, c.scope, id).await?
        }
        Caller::Admin => state.coordinator.get_any_server(c.scope, id).await?,
    };
    let owners = owners(&state, &caller).await?;
    Ok(Json(to_json(&detail(c.name, owner_of(&owners, &s)?, &s))))
}

async fn edit(
    c: Collection,
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
    body: Result<JsonBody, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = c.admit(account)?;
    let id = parse_id(&uuid)?;
    let JsonBody(body) = body?;
    let current = state.coordinator.get_server(&account, c.scope, id).await?;
    let flavors = state.coordinator.flavors().await;
    let edit = server_json::parse_edit(&current, &body, &flavors)?;
    let s = state.coordinator.edit(&account, c.scope, id, edit).await?;
    Ok(Json(to_json(&detail(c.name, &account, &s))))
}

/// `DELETE`, with CloudSigma's `?recurse=all_drives|disks|cdroms`: the server's drives of that
/// kind go with it (without it, its drives stay, detached).
async fn remove(
    c: Collection,
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    let account = c.admit(account)?;
    let id = parse_id(&uuid)?;
    let media: &[backfill_shared::Media] = match params.get("recurse").map(String::as_str) {
        None => &[],
        Some("all_drives") => &[backfill_shared::Media::Disk, backfill_shared::Media::Cdrom],
        Some("disks") => &[backfill_shared::Media::Disk],
        Some("cdroms") => &[backfill_shared::Media::Cdrom],
        Some(_) => {
            return Err(ApiError::validation(
                "recurse",
                "recurse takes all_drives, disks or cdroms",
            ));
        }
    };
    if let Some(k) = params.keys().find(|k| *k != "recurse") {
        return Err(ApiError::validation(
            k.clone(),
            "a delete takes only ?recurse=all_drives|disks|cdroms",
        ));
    }
    let server = state.coordinator.get_server(&account, c.scope, id).await?;
    state.coordinator.delete(&account, c.scope, id).await?;
    for a in server.drives.iter().filter(|a| media.contains(&a.media)) {
        if let Err(e) = state.coordinator.delete_drive(&account, a.drive).await {
            tracing::warn!(server = %id, drive = %a.drive, error = %e, "the server is deleted; its drive could not be");
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn action(
    c: Collection,
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    let account = c.admit(account)?;
    let id = parse_id(&uuid)?;
    let what = params.get("do").map(String::as_str);
    match what {
        Some("start") => {
            state.coordinator.start(&account, c.scope, id).await?;
        }
        Some("stop") => {
            state.coordinator.stop(&account, c.scope, id).await?;
        }
        Some("shutdown") => {
            state.coordinator.shutdown(&account, c.scope, id).await?;
        }
        Some("restart") => {
            state.coordinator.restart(&account, c.scope, id).await?;
        }
        _ => {
            return Err(ApiError::validation(
                "do",
                "unknown action; use ?do=start, stop, shutdown or restart",
            ));
        }
    }
    let body = backfill_api::ActionResult {
        action: what.unwrap_or_default().to_owned(),
        result: "success".into(),
        uuid: id.to_string(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn schema(
    c: Collection,
    Tenant(account): Tenant,
) -> Result<Json<serde_json::Value>, ApiError> {
    c.admit(account)?;
    Ok(Json(crate::api::cloudsigma::schema::servers(c.name)))
}

/// `GET …/{uuid}/runtime/` (pycloudsigma's `runtime()`): the runtime alone, `null` when the
/// server is not running.
async fn runtime(
    c: Collection,
    State(state): State<AppState>,
    Tenant(account): Tenant,
    Path(uuid): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let account = c.admit(account)?;
    let id = parse_id(&uuid)?;
    let s = state.coordinator.get_server(&account, c.scope, id).await?;
    Ok(Json(to_json(&crate::api::cloudsigma::views::runtime(&s))))
}
