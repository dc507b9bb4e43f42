//! The agent's metrics (prometheus-client) and its admin listener: `/metrics`, `/healthz`,
//! `/ready` in plain HTTP on loopback by default.

use crate::metadata::{HttpResponse, parse_request, request_len};
use crate::supervisor::Supervisor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatCode {
    pub format: String,
    pub code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

/// Everything the agent counts. The counters are shared (cheap clones) with the parts that
/// count: the supervisor, the metadata listener, the link.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    pub cgroup_errors: Counter,
    pub metadata_requests: Family<FormatCode, Counter>,
    pub link_connected: Gauge,
    pub link_sessions: Counter,
    workloads: Family<StateLabel, Gauge>,
    cpu_quota: Family<ServerLabel, Gauge>,
    mem_limit: Family<ServerLabel, Gauge>,
    pub cpus: Gauge,
    pub mem_bytes: Gauge,
    pub gpus: Gauge,
}

impl Default for AgentMetrics {
    fn default() -> AgentMetrics {
        let mut registry = Registry::with_prefix("backfill_agent");
        let m = AgentMetrics {
            registry: Registry::default(),
            cgroup_errors: Counter::default(),
            metadata_requests: Family::default(),
            link_connected: Gauge::default(),
            link_sessions: Counter::default(),
            workloads: Family::default(),
            cpu_quota: Family::default(),
            mem_limit: Family::default(),
            cpus: Gauge::default(),
            mem_bytes: Gauge::default(),
            gpus: Gauge::default(),
        };
        registry.register(
            "cgroup_errors",
            "Failed cgroup writes (create, limits)",
            m.cgroup_errors.clone(),
        );
        registry.register(
            "metadata_requests",
            "Metadata requests by format and status code",
            m.metadata_requests.clone(),
        );
        registry.register(
            "link_connected",
            "1 while the link to the coordinator is up",
            m.link_connected.clone(),
        );
        registry.register(
            "link_sessions",
            "Link sessions established with the coordinator (beyond the first: reconnects)",
            m.link_sessions.clone(),
        );
        registry.register(
            "workloads",
            "Workloads by state (running, exited, failed)",
            m.workloads.clone(),
        );
        registry.register(
            "cpu_quota_microseconds",
            "CPU quota in force per period, by server (-1: unlimited)",
            m.cpu_quota.clone(),
        );
        registry.register(
            "memory_limit_bytes",
            "Memory limit in force, by server (-1: unlimited)",
            m.mem_limit.clone(),
        );
        registry.register(
            "discovered_cpus",
            "CPUs discovered on this host",
            m.cpus.clone(),
        );
        registry.register(
            "discovered_memory_bytes",
            "Memory discovered on this host",
            m.mem_bytes.clone(),
        );
        registry.register(
            "discovered_gpus",
            "GPUs discovered on this host",
            m.gpus.clone(),
        );
        AgentMetrics { registry, ..m }
    }
}

impl AgentMetrics {
    /// Refreshes the per-workload gauges from the supervisor and encodes everything.
    pub fn text(&self, supervisor: &Supervisor) -> String {
        self.workloads.clear();
        self.cpu_quota.clear();
        self.mem_limit.clear();
        for (id, state, limits) in supervisor.gauges() {
            self.workloads
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .inc();
            if let Some(l) = limits {
                let server = ServerLabel {
                    server: id.to_string(),
                };
                let q = l
                    .cpu_quota_us
                    .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
                let m = l
                    .mem_limit_bytes
                    .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
                self.cpu_quota.get_or_create(&server).set(q);
                self.mem_limit.get_or_create(&server).set(m);
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Which format a metadata path speaks, for the request counter.
pub fn metadata_format(path: &str) -> &'static str {
    if path.starts_with("/openstack") {
        "openstack"
    } else if path.starts_with("/latest") {
        "ec2"
    } else if path.starts_with("/computeMetadata") {
        "gce"
    } else if path.starts_with("/metadata") {
        "azure"
    } else if path.starts_with("/backfill") {
        "backfill"
    } else {
        "other"
    }
}

/// Serves `/metrics`, `/healthz` and `/ready` (the supervisor answers within a second).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<AgentMetrics>,
    supervisor: Arc<Mutex<Supervisor>>,
    shutdown: CancellationToken,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let metrics = metrics.clone();
        let supervisor = supervisor.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let len = loop {
                match request_len(&buf) {
                    Ok(Some(n)) => break n,
                    Ok(None) => {}
                    Err(_) => return,
                }
                match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    _ => return,
                }
            };
            let Some(req) = parse_request(buf.get(..len).unwrap_or_default()) else {
                return;
            };
            let resp = answer(&req.path, &metrics, &supervisor).await;
            let _ = stream.write_all(&resp.to_bytes(false)).await;
        });
    }
}

async fn answer(
    path: &str,
    metrics: &Arc<AgentMetrics>,
    supervisor: &Arc<Mutex<Supervisor>>,
) -> HttpResponse {
    match path {
        "/healthz" => HttpResponse::text(200, "ok\n"),
        "/metrics" | "/ready" => {
            let (m, s, p) = (metrics.clone(), supervisor.clone(), path.to_owned());
            let job = tokio::task::spawn_blocking(move || {
                let s = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if p == "/metrics" {
                    HttpResponse::new(
                        200,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        m.text(&s),
                    )
                } else {
                    HttpResponse::text(200, "ready\n")
                }
            });
            match tokio::time::timeout(Duration::from_secs(1), job).await {
                Ok(Ok(r)) => r,
                _ => HttpResponse::text(503, "the supervisor does not answer\n"),
            }
        }
        _ => HttpResponse::text(404, "Not Found"),
    }
}
