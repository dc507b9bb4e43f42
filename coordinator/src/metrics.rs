//! Prometheus metrics (prometheus-client), and the admin listener that serves them with
//! `/healthz` and `/ready` (plain HTTP, loopback by default: it grants nothing).

use crate::coordinator::Coordinator;
use crate::model::is_queued;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCode {
    pub route: String,
    pub code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReason {
    pub listener: String,
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State_ {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassStatus {
    pub class: String,
    pub status: String,
}

/// Everything the coordinator counts.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub api_requests: Family<RouteCode, Counter>,
    /// HTTP connections closed at accept, by listener and cap.
    pub http_refused: Family<ListenerReason, Counter>,
    /// HTTP connections and requests out of time, by listener and phase.
    pub http_timeouts: Family<ListenerReason, Counter>,
    /// Servers placed, by how: `place` (free room), `preempt` (room made by preemption).
    pub placements: Family<Kind, Counter>,
    /// Preemption actions: `downsize`, `terminate`.
    pub preemptions: Family<Kind, Counter>,
    /// Provisioner commands that failed, by kind (launch, delete).
    pub provision_failures: Family<Kind, Counter>,
    /// Admin actions on hosts, servers and pools, by kind.
    pub admin_actions: Family<Kind, Counter>,
    /// Webhook delivery attempts, by outcome (delivered, failed).
    pub webhook_attempts: Family<Kind, Counter>,
    pub plan_seconds: Histogram,
    pub commit_seconds: Histogram,
    /// Changes per group commit (one transaction, one fsync).
    pub commit_batches: Histogram,
    hosts: Family<State_, Gauge>,
    servers: Family<ClassStatus, Gauge>,
    queue_length: Gauge,
    queue_oldest_seconds: Gauge,
    link_sessions: Gauge,
    /// Hosts whose agent squeezes backfill on its own under pressure.
    hosts_squeezing: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("backfill_coordinator");
        let m = Metrics {
            api_requests: Family::default(),
            http_refused: Family::default(),
            http_timeouts: Family::default(),
            placements: Family::default(),
            preemptions: Family::default(),
            provision_failures: Family::default(),
            admin_actions: Family::default(),
            webhook_attempts: Family::default(),
            // 10 µs to ~20 s.
            plan_seconds: Histogram::new(exponential_buckets(0.000_01, 4.0, 12)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_1, 3.0, 12)),
            commit_batches: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            hosts: Family::default(),
            servers: Family::default(),
            queue_length: Gauge::default(),
            queue_oldest_seconds: Gauge::default(),
            link_sessions: Gauge::default(),
            hosts_squeezing: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "api_requests",
            "API requests by route and status code",
            m.api_requests.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at accept, by listener and reason (max_connections, max_connections_per_client)",
            m.http_refused.clone(),
        );
        registry.register(
            "http_timeouts",
            "HTTP connections closed or request bodies failed for time, by listener and phase (header, body, idle, send)",
            m.http_timeouts.clone(),
        );
        registry.register(
            "hosts_squeezing",
            "Hosts whose agent holds backfill below its perf_factor under pressure (PSI) beside normal servers",
            m.hosts_squeezing.clone(),
        );
        registry.register(
            "placements",
            "Servers placed on a host, by kind (place, preempt)",
            m.placements.clone(),
        );
        registry.register(
            "preemptions",
            "Preemption actions, by kind (downsize, terminate)",
            m.preemptions.clone(),
        );
        registry.register(
            "provision_failures",
            "Provisioner commands that failed, by kind (launch, delete)",
            m.provision_failures.clone(),
        );
        registry.register(
            "admin_actions",
            "Operator actions, by kind (hold, drain, run, kill, vacate, delete, launch, ...)",
            m.admin_actions.clone(),
        );
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts, by outcome (delivered, failed)",
            m.webhook_attempts.clone(),
        );
        registry.register(
            "plan_seconds",
            "Time to make a placement plan",
            m.plan_seconds.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Time to commit a change to the store",
            m.commit_seconds.clone(),
        );
        registry.register(
            "store_commit_batch_size",
            "Changes written by one group commit (one transaction)",
            m.commit_batches.clone(),
        );
        registry.register("hosts", "Hosts by worker state", m.hosts.clone());
        registry.register("servers", "Servers by class and status", m.servers.clone());
        registry.register(
            "queue_length",
            "Servers waiting for capacity",
            m.queue_length.clone(),
        );
        registry.register(
            "queue_oldest_seconds",
            "Age of the oldest server waiting for capacity",
            m.queue_oldest_seconds.clone(),
        );
        registry.register("link_sessions", "Connected agents", m.link_sessions.clone());
        Metrics { registry, ..m }
    }
}

/// Times a block into a histogram.
pub fn observe<T>(h: &Histogram, start: Instant, v: T) -> T {
    h.observe(start.elapsed().as_secs_f64());
    v
}

impl Coordinator {
    /// The text exposition, with the state gauges refreshed from the model.
    pub async fn metrics_text(&self) -> String {
        let now = self.clock.now();
        {
            let model = self.lock_model().await;
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
pub fn admin_router(coordinator: Arc<Coordinator>) -> Router {
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

/// Serves the admin router in plain HTTP until `shutdown`, then lets requests in flight finish
/// for up to `drain`.
pub async fn serve_admin(
    listener: TcpListener,
    router: Router,
    (shutdown, drain): (CancellationToken, std::time::Duration),
    listening: crate::api::Listening,
) {
    crate::api::serve::serve_plain(listener, router, (shutdown, drain), listening).await;
}
