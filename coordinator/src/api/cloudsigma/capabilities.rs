//! `GET /capabilities/`: `backfilling`, and for a backfilling account `free_resources`.

use crate::api::cloudsigma::views::to_json;
use crate::api::tenant::Tenant;
use crate::api::{ApiError, AppState};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use backfill_api::status::{Capabilities, CpuMemView, FreeResourcesView};
use serde_json::Value;

pub fn routes() -> Router<AppState> {
    Router::new().route("/capabilities/", get(capabilities))
}

async fn capabilities(
    State(state): State<AppState>,
    Tenant(account): Tenant,
) -> Result<Json<Value>, ApiError> {
    if !account.backfill {
        // "If a feature is not supported or is disabled, it will disappear from the result."
        return Ok(Json(to_json(&Capabilities {
            backfilling: false,
            free_resources: None,
        })));
    }
    let f = state.coordinator.free_resources().await;
    let view = |c: crate::policy::scheduler::CpuMem| CpuMemView {
        cpu: c.cpu,
        mem: c.mem,
    };
    Ok(Json(to_json(&Capabilities {
        backfilling: true,
        free_resources: Some(FreeResourcesView {
            total: view(f.total),
            most_free_by_cpu: view(f.most_free_by_cpu),
            most_free_by_memory: view(f.most_free_by_memory),
        }),
    })))
}
