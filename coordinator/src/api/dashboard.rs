//! The operators' dashboard at `/dashboard` (Dynamic Cluster shipped one there): one HTML page
//! with its style and script inline (no CDN, no other request than its data), fed by
//! `/dashboard/data.json`. Both need an operator: an admin certificate, or the management token
//! (a browser passes it as `?api_token=`, which the page hands on to its data requests).

use super::AppState;
use super::operator_auth::{Refused, authorize};
use crate::operator::{HostView, QueueEntry};
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

const PAGE: &str = include_str!("dashboard.html");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/data.json", get(data))
}

pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        authorize(parts, state)
            .map(|_| Operator)
            .map_err(|Refused { status, message }| {
                (status, axum::Json(json!({"error": message}))).into_response()
            })
    }
}

async fn page(_: Operator) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Nothing but this page's own inline code and its data requests.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

fn host_json(h: &HostView) -> Value {
    let used = |total: u64, free: u64| total.saturating_sub(free);
    json!({
        "id": h.id,
        "worker_state": h.worker_state.as_str(),
        "idle_behavior": h.idle_behavior.as_str(),
        "pool": h.pool,
        "launching": h.launching,
        "error": h.error,
        "cpu_total": h.capacity.cpu_mhz,
        "cpu_used": used(h.capacity.cpu_mhz, h.free.cpu_mhz),
        "mem_total": h.capacity.mem_bytes,
        "mem_used": used(h.capacity.mem_bytes, h.free.mem_bytes),
        "servers": h.work.iter().map(|w| json!({
            "uuid": w.uuid.to_string(), "class": w.class.as_str(), "status": w.status.as_str(),
        })).collect::<Vec<_>>(),
    })
}

fn queue_json(e: &QueueEntry, now: i64) -> Value {
    let s = &e.server;
    json!({
        "uuid": s.uuid.to_string(),
        "name": s.name,
        "owner": s.owner,
        "class": s.class.as_str(),
        "priority": s.priority,
        "cpu": s.cpu,
        "mem": s.mem,
        "waiting_s": now.saturating_sub(s.created_at).max(0),
        "reason": s.queued_reason,
    })
}

async fn data(State(state): State<AppState>, _: Operator) -> Response {
    let c = &state.coordinator;
    let now = c.now();
    let hosts: Vec<Value> = c.hosts().await.iter().map(host_json).collect();
    let queue: Vec<Value> = c
        .queue()
        .await
        .iter()
        .filter(|e| e.position.is_some())
        .map(|e| queue_json(e, now))
        .collect();
    let (samples, events) = c.history().await;
    let mut current = crate::history::take_sample(&*c.model.lock().await, now);
    current.at = now;
    let share = |v: u64| {
        if current.cpu_total == 0 {
            0.0
        } else {
            v as f64 / current.cpu_total as f64
        }
    };
    let body = json!({
        "now": now,
        "auto_mode": c.auto_mode().await,
        "hosts": hosts,
        "capacity": samples,
        "current": current,
        "share": {
            "normal": share(current.cpu_normal),
            "backfill": share(current.cpu_backfill),
            "spot": share(current.cpu_spot),
            "free": share(current.cpu_free),
        },
        "queue": queue,
        "preemptions": events.iter().rev().map(|e| json!({
            "at": e.at,
            "kind": e.kind,
            "server": e.server.to_string(),
            "host": e.host.as_ref().map(ToString::to_string),
            "detail": e.detail,
        })).collect::<Vec<_>>(),
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}
