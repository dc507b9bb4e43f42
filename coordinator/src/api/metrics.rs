//! The metrics listener: `/metrics` (the registry in `crate::telemetry`, with the state gauges
//! refreshed from the model), `/healthz` and `/ready`, in plain HTTP (loopback by default: it
//! grants nothing). Configured as `admin_addr`; nothing to do with the operator's APIs.

use crate::domain::server::is_queued;
use crate::state::coordinator::Coordinator;
use crate::telemetry::{ClassStatus, State_};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

impl Coordinator {
    /// The text exposition, with the state gauges refreshed from the model.
    pub async fn metrics_text(&self) -> String {
        let now = self.clock.now();
        {
            let model = self.read_model().await;
            let m = &self.metrics;
            m.hosts.clear();
            m.servers.clear();
            let mut sessions = 0;
            for h in model.hosts.values() {
                let state = serde_json::to_value(h.worker_state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                m.hosts.get_or_create(&State_ { state }).inc();
                sessions += i64::from(h.session.is_some());
            }
            m.link_sessions.set(sessions);
            m.hosts_squeezing.set(
                model
                    .hosts
                    .values()
                    .filter(|h| h.last_report.as_ref().is_some_and(|r| r.usage.squeezing))
                    .count()
                    .try_into()
                    .unwrap_or(i64::MAX),
            );
            let mut queued = 0;
            let mut oldest = now;
            for s in model.servers.values() {
                m.servers
                    .get_or_create(&ClassStatus {
                        class: s.class.as_str().into(),
                        status: s.status.as_str().into(),
                    })
                    .inc();
                if is_queued(s) {
                    queued += 1;
                    oldest = oldest.min(s.created_at);
                }
            }
            m.queue_length.set(queued);
            m.queue_oldest_seconds
                .set(if queued > 0 { now - oldest } else { 0 });
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry)
        {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// `/metrics`, `/healthz` (the process answers), `/ready` (the store answers).
pub fn metrics_router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(coordinator)
}

async fn metrics(State(c): State<Arc<Coordinator>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        c.metrics_text().await,
    )
        .into_response()
}

async fn ready(State(c): State<Arc<Coordinator>>) -> Response {
    match c.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
    }
}

/// Serves the metrics router in plain HTTP until `shutdown`, then lets requests in flight finish
/// for up to `drain`.
pub async fn serve_metrics(
    listener: TcpListener,
    router: Router,
    (shutdown, drain): (CancellationToken, std::time::Duration),
    listening: crate::api::Listening,
) {
    crate::api::serve::serve_plain(listener, router, (shutdown, drain), listening).await;
}
