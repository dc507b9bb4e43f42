//! Prometheus metrics (prometheus-client): the registry every layer counts into. The listener
//! that serves them (with `/healthz` and `/ready`) is `api::metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Instant;

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
    pub(crate) registry: Registry,
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
    pub operator_actions: Family<Kind, Counter>,
    /// Webhook delivery attempts, by outcome (delivered, failed).
    pub webhook_attempts: Family<Kind, Counter>,
    pub plan_seconds: Histogram,
    pub commit_seconds: Histogram,
    /// Changes per group commit (one transaction, one fsync).
    pub commit_batches: Histogram,
    /// How long API reads (server lists and shows) waited for the model's lock.
    pub read_wait_seconds: Histogram,
    pub(crate) hosts: Family<State_, Gauge>,
    pub(crate) servers: Family<ClassStatus, Gauge>,
    pub(crate) queue_length: Gauge,
    pub(crate) queue_oldest_seconds: Gauge,
    pub(crate) link_sessions: Gauge,
    /// Hosts whose agent squeezes backfill on its own under pressure.
    pub(crate) hosts_squeezing: Gauge,
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
            operator_actions: Family::default(),
            webhook_attempts: Family::default(),
            // 10 µs to ~20 s.
            plan_seconds: Histogram::new(exponential_buckets(0.000_01, 4.0, 12)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_1, 3.0, 12)),
            commit_batches: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            // 1 µs to ~4 s.
            read_wait_seconds: Histogram::new(exponential_buckets(0.000_001, 4.0, 12)),
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
            m.operator_actions.clone(),
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
        registry.register(
            "model_read_wait_seconds",
            "Time a read (an API list or show, metrics, the dashboard) waited for the model's shared lock",
            m.read_wait_seconds.clone(),
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
