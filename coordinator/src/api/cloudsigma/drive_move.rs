//! `POST /operator/drives/{uuid}/move/`: the operator moves a drive to another host (a stopped
//! server's drives, before its host is drained). Admin certificates only; any account's drive.
//! Answers 202 with the drive (status `cloning_src` while the copy runs in the background).

use crate::api::json_body::JsonBody;
use crate::api::tenant::Admin;
use crate::api::{ApiError, AppState};
use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::post;
use backfill_shared::drive::DriveId;
use serde_json::Value;

pub fn routes() -> Router<AppState> {
    Router::new().route("/operator/drives/{uuid}/move/", post(move_drive))
}

async fn move_drive(
    State(state): State<AppState>,
    _admin: Admin,
    Path(uuid): Path<String>,
    body: Result<JsonBody, ApiError>,
) -> Result<Response, ApiError> {
    let id: DriveId = uuid
        .parse()
        .map_err(|e: backfill_shared::IdError| ApiError::validation("uuid", e.to_string()))?;
    let JsonBody(body) = body?;
    let o = body
        .as_object()
        .ok_or_else(|| ApiError::validation("body", "expected {\"host\": \"<host id>\"}"))?;
    if let Some(k) = o.keys().find(|k| k.as_str() != "host") {
        return Err(ApiError::validation(
            k.clone(),
            format!("unknown field {k:?}; the only field is host"),
        ));
    }
    let host = o
        .get("host")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation("host", "host (the target host's id) is required"))?;
    let d = state.coordinator.move_drive(id, host).await?;
    let owner = state.coordinator.account(&d.record.owner).await?;
    Ok(crate::api::cloudsigma::drive_views::accepted(&owner, &d))
}
