//! `GET /capabilities/`: `backfilling`, and for a backfilling account `free_resources`.

use super::tenant::Tenant;
use super::{ApiError, AppState};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn routes() -> Router<AppState> {
    Router::new().route("/capabilities/", get(capabilities))
}

async fn capabilities(
    State(state): State<AppState>,
    Tenant(account): Tenant,
) -> Result<Json<Value>, ApiError> {
    if !account.backfill {
        // "If a feature is not supported or is disabled, it will disappear from the result."
        return Ok(Json(json!({ "backfilling": false })));
    }
    let free = state.coordinator.free_resources().await;
    Ok(Json(json!({
        "backfilling": true,
        "free_resources": free,
    })))
}
