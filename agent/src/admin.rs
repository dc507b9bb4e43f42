//! The agent's metrics (prometheus-client) and its admin listener, in plain HTTP on loopback by
//! default:
//!
//! - `GET /metrics` (Prometheus), `/healthz`, `/ready`;
//! - `GET /gpus`: the GPUs as last read, and their use (JSON);
//! - `POST /gpus/rescan`: re-reads the GPUs now (as the periodic rescan does) and answers with
//!   the result; a change of devices is reported to the coordinator at once.

use crate::discovery::{GpuMonitor, GpuScan};
use crate::http::{HttpRequest, HttpResponse};
use crate::http_conn::{Conn, End, ListenerReason};
use crate::metadata::FormatCode;
/// Kept here too for the fuzz target, which names it by this path.
pub use crate::metadata::metadata_format;
use crate::supervisor::Supervisor;
use backfill_shared::listener::{ConnectionGate, HttpLimits};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The longest `POST /gpus/rescan` waits for NVML.
const RESCAN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: String,
}

impl ResourceLabel {
    pub fn of(r: crate::pressure::Resource) -> ResourceLabel {
        ResourceLabel {
            resource: r.as_str().into(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerResourceLabel {
    pub server: String,
    pub resource: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabel {
    pub uuid: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabel {
    pub health: String,
}

/// Everything the agent counts. The counters are shared (cheap clones) with the parts that
/// count: the supervisor, the metadata listener, the link.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    pub cgroup_errors: Counter,
    pub metadata_requests: Family<FormatCode, Counter>,
    /// HTTP connections closed at accept, by listener (metadata, admin) and cap.
    pub http_refused: Family<ListenerReason, Counter>,
    /// HTTP connections closed for time, by listener and phase.
    pub http_timeouts: Family<ListenerReason, Counter>,
    pub link_connected: Gauge,
    pub link_sessions: Counter,
    workloads: Family<StateLabel, Gauge>,
    cpu_quota: Family<ServerLabel, Gauge>,
    cpu_weight: Family<ServerLabel, Gauge>,
    mem_limit: Family<ServerLabel, Gauge>,
    pub cpus: Gauge,
    pub mem_bytes: Gauge,
    pub gpus: Gauge,
    gpu_health: Family<HealthLabel, Gauge>,
    gpu_utilization: Family<GpuLabel, Gauge>,
    gpu_memory_used: Family<GpuLabel, Gauge>,
    /// PSI trigger events, by resource.
    pub pressure_events: Family<ResourceLabel, Counter>,
    /// Squeezes of backfill the agent made on its own, by resource.
    pub pressure_squeezes: Family<ResourceLabel, Counter>,
    psi_avg10: Family<ResourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    squeezing: Gauge,
    cpu_throttled: Family<ServerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    server_stall: Family<ServerResourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    kernel: crate::kernel_metrics::KernelMetrics,
}

impl Default for AgentMetrics {
    fn default() -> AgentMetrics {
        let mut registry = Registry::with_prefix("backfill_agent");
        let m = AgentMetrics {
            registry: Registry::default(),
            cgroup_errors: Counter::default(),
            metadata_requests: Family::default(),
            http_refused: Family::default(),
            http_timeouts: Family::default(),
            link_connected: Gauge::default(),
            link_sessions: Counter::default(),
            workloads: Family::default(),
            cpu_quota: Family::default(),
            cpu_weight: Family::default(),
            mem_limit: Family::default(),
            cpus: Gauge::default(),
            mem_bytes: Gauge::default(),
            gpus: Gauge::default(),
            gpu_health: Family::default(),
            gpu_utilization: Family::default(),
            gpu_memory_used: Family::default(),
            pressure_events: Family::default(),
            pressure_squeezes: Family::default(),
            psi_avg10: Family::default(),
            squeezing: Gauge::default(),
            cpu_throttled: Family::default(),
            server_stall: Family::default(),
            kernel: crate::kernel_metrics::KernelMetrics::default(),
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
            "http_connections_refused",
            "HTTP connections closed at accept, by listener and reason (max_connections, max_connections_per_client)",
            m.http_refused.clone(),
        );
        registry.register(
            "http_timeouts",
            "HTTP connections closed for time, by listener and phase (header, body, idle, send)",
            m.http_timeouts.clone(),
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
            "cpu_weight",
            "CPU weight in force, by server, in cgroup v2 units (v1: cpu.shares x 100 / 1024); 0: the idle class (backfill and spot)",
            m.cpu_weight.clone(),
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
            "GPU devices (whole GPUs and MIG instances) this host has, as last read",
            m.gpus.clone(),
        );
        registry.register(
            "gpu_devices",
            "GPU devices as last read, by health (healthy, unhealthy)",
            m.gpu_health.clone(),
        );
        registry.register(
            "gpu_utilization_percent",
            "GPU utilisation over NVML's last sample period, by device uuid",
            m.gpu_utilization.clone(),
        );
        registry.register(
            "gpu_memory_used_bytes",
            "GPU memory in use, by device uuid",
            m.gpu_memory_used.clone(),
        );
        registry.register(
            "pressure_events",
            "PSI trigger events ([pressure] stall thresholds crossed), by resource",
            m.pressure_events.clone(),
        );
        registry.register(
            "pressure_squeezes",
            "Times the agent squeezed backfill servers on its own under pressure beside normal servers, by resource",
            m.pressure_squeezes.clone(),
        );
        registry.register(
            "pressure_some_avg10_percent",
            "PSI: share of the last 10 s some task stalled, by resource (cpu, memory)",
            m.psi_avg10.clone(),
        );
        registry.register(
            "pressure_squeezing",
            "1 while the agent holds backfill servers below what the coordinator asked",
            m.squeezing.clone(),
        );
        registry.register(
            "cpu_throttled_seconds",
            "Time a server's tasks were throttled by its CPU quota since it started, by server",
            m.cpu_throttled.clone(),
        );
        registry.register(
            "server_stall_seconds",
            "A running server's own stall so far (cgroup v2 PSI some total; v1 CPU: its threads' run-queue wait), by server and resource, where the kernel tells",
            m.server_stall.clone(),
        );
        m.kernel.register(&mut registry);
        AgentMetrics { registry, ..m }
    }
}

impl AgentMetrics {
    /// Sets the GPU gauges from a scan (a GPU no longer listed loses its series).
    pub fn set_gpus(&self, scan: &GpuScan) {
        self.gpus
            .set(i64::try_from(scan.devices.len()).unwrap_or(i64::MAX));
        for (health, n) in [("healthy", scan.healthy()), ("unhealthy", scan.unhealthy())] {
            self.gpu_health
                .get_or_create(&HealthLabel {
                    health: health.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.gpu_utilization.clear();
        self.gpu_memory_used.clear();
        for u in &scan.usage {
            let label = GpuLabel {
                uuid: u.uuid.clone(),
            };
            self.gpu_utilization
                .get_or_create(&label)
                .set(i64::from(u.utilization_percent));
            self.gpu_memory_used
                .get_or_create(&label)
                .set(i64::try_from(u.memory_used_bytes).unwrap_or(i64::MAX));
        }
    }

    /// The kernel mechanisms this agent protects normal servers with (as in its inventory).
    pub fn set_mechanisms(&self, mechanisms: &[String]) {
        self.kernel.set_mechanisms(mechanisms);
    }

    /// Refreshes the per-workload and GPU gauges from the supervisor and encodes everything.
    pub fn text(&self, supervisor: &Supervisor) -> String {
        self.set_gpus(&supervisor.gpu_scan());
        self.workloads.clear();
        self.cpu_quota.clear();
        self.cpu_weight.clear();
        self.mem_limit.clear();
        self.cpu_throttled.clear();
        self.server_stall.clear();
        for (id, r, usec) in supervisor.server_stalls() {
            self.server_stall
                .get_or_create(&ServerResourceLabel {
                    server: id.to_string(),
                    resource: r.as_str().into(),
                })
                .set(usec as f64 / 1e6);
        }
        let psi = crate::pressure::PsiFiles::default();
        for r in crate::pressure::Resource::ALL {
            self.psi_avg10
                .get_or_create(&ResourceLabel::of(r))
                .set(psi.avg10(r));
        }
        self.squeezing.set(i64::from(supervisor.squeezing()));
        for (id, throttled_usec) in supervisor.throttled() {
            self.cpu_throttled
                .get_or_create(&ServerLabel {
                    server: id.to_string(),
                })
                .set(throttled_usec as f64 / 1e6);
        }
        let mut in_force = Vec::new();
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
                let w = crate::kernel_metrics::weight_value(l.cpu_weight);
                self.cpu_weight.get_or_create(&server).set(w);
                self.mem_limit.get_or_create(&server).set(m);
                in_force.push((server.server, l));
            }
        }
        self.kernel.refresh(supervisor.class_stats(), &in_force);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// What the admin listener answers from.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<AgentMetrics>,
    pub supervisor: Arc<Mutex<Supervisor>>,
    /// Re-read by `POST /gpus/rescan`.
    pub gpus: Arc<GpuMonitor>,
    /// Woken when a rescan finds the devices changed: the link reports at once.
    pub changed: Arc<Notify>,
}

/// Serves the admin endpoints (see the module documentation) until `shutdown`: one request
/// per connection, within `limits`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let refused = state.metrics.http_refused.clone();
    let gate = Arc::new(ConnectionGate::new(&limits).on_refused(move |r| {
        refused
            .get_or_create(&ListenerReason::new("admin", r.as_str()))
            .inc();
    }));
    loop {
        let (stream, _, admission) = tokio::select! {
            () = shutdown.cancelled() => return,
            a = backfill_shared::listener::accept(&listener, &gate, "agent admin") => a,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _admission = admission;
            let mut conn = Conn::new(stream, limits);
            let resp = match conn.next_request().await {
                Ok(req) => answer(&req, &state).await,
                Err(End::Bad) => HttpResponse::text(400, "Bad Request"),
                Err(End::TimedOut(phase)) => {
                    state
                        .metrics
                        .http_timeouts
                        .get_or_create(&ListenerReason::new("admin", phase.as_str()))
                        .inc();
                    return;
                }
                Err(End::Closed) => return,
            };
            if let Err(End::TimedOut(phase)) = conn.respond(&resp.to_bytes(false)).await {
                state
                    .metrics
                    .http_timeouts
                    .get_or_create(&ListenerReason::new("admin", phase.as_str()))
                    .inc();
                return;
            }
            conn.close().await;
        });
    }
}

/// The scan as JSON: `{"backend", "gpus": [GpuDevice...], "usage": [GpuUsage...]}`.
fn scan_json(backend: &str, scan: &GpuScan, changed: Option<bool>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "backend": backend,
        "gpus": scan.devices,
        "usage": scan.usage,
    });
    if let (Some(c), Some(o)) = (changed, v.as_object_mut()) {
        o.insert("changed".into(), c.into());
    }
    v
}

/// `POST /gpus/rescan`: a scan now; a change of devices wakes the link.
async fn rescan(state: &AdminState) -> HttpResponse {
    let m = state.gpus.clone();
    let job = tokio::task::spawn_blocking(move || m.rescan());
    match tokio::time::timeout(RESCAN_TIMEOUT, job).await {
        Ok(Ok(Ok(changed))) => {
            if changed {
                state.changed.notify_one();
            }
            let scan = state.gpus.current();
            state.metrics.set_gpus(&scan);
            let body = scan_json(state.gpus.backend_name(), &scan, Some(changed));
            HttpResponse::json(200, &body)
        }
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "requested GPU rescan failed; keeping the last scan");
            HttpResponse::json(503, &serde_json::json!({"error": e.to_string()}))
        }
        _ => HttpResponse::json(
            503,
            &serde_json::json!({"error": "the GPU rescan did not finish in time"}),
        ),
    }
}

async fn answer(req: &HttpRequest, state: &AdminState) -> HttpResponse {
    let (metrics, supervisor) = (&state.metrics, &state.supervisor);
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/gpus/rescan") => rescan(state).await,
        (_, "/gpus/rescan") => {
            HttpResponse::text(405, "POST to rescan\n").with_header("Allow", "POST")
        }
        (_, "/gpus") => {
            let body = scan_json(state.gpus.backend_name(), &state.gpus.current(), None);
            HttpResponse::json(200, &body)
        }
        (_, "/healthz") => HttpResponse::text(200, "ok\n"),
        (_, path @ ("/metrics" | "/ready")) => {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::cgroups::RecordingCgroups;
    use crate::discovery::FakeGpus;
    use backfill_shared::clock::ManualClock;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const INVENTORY: &str = r#"{"gpus": [
        {"index": 0, "uuid": "GPU-a", "name": "T4", "memory_bytes": 16000,
         "utilization_percent": 35, "memory_used_bytes": 1000},
        {"index": 1, "uuid": "GPU-b", "name": "T4", "memory_bytes": 16000,
         "healthy": false, "health": "XID 48"}]}"#;

    /// One request, the whole answer (the listener closes after it).
    async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let status = text.get(9..12).unwrap().parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    /// An admin state over a fake GPU inventory in `dir`.
    fn admin_state(dir: &std::path::Path) -> (AdminState, std::path::PathBuf) {
        let inv = dir.join("gpus.json");
        std::fs::write(&inv, INVENTORY).unwrap();
        let gpus =
            Arc::new(GpuMonitor::start(Box::new(FakeGpus::from_file(&inv).unwrap())).unwrap());
        let supervisor = Supervisor::new(
            Box::new(RecordingCgroups::default()),
            dir,
            None,
            vec!["sleep".into(), "1".into()],
            Arc::new(ManualClock::new(0)),
        )
        .with_gpus(gpus.clone());
        let state = AdminState {
            metrics: Arc::new(AgentMetrics::default()),
            supervisor: Arc::new(Mutex::new(supervisor)),
            gpus,
            changed: Arc::new(Notify::new()),
        };
        (state, inv)
    }

    #[tokio::test]
    async fn gpu_metrics_and_rescan_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let (state, inv) = admin_state(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            state.clone(),
            HttpLimits::ADMIN,
            shutdown.clone(),
        ));

        let (code, m) = http(addr, "GET", "/metrics").await;
        assert_eq!(code, 200);
        for line in [
            "backfill_agent_gpu_utilization_percent{uuid=\"GPU-a\"} 35",
            "backfill_agent_gpu_memory_used_bytes{uuid=\"GPU-a\"} 1000",
            "backfill_agent_gpu_utilization_percent{uuid=\"GPU-b\"} 0",
            "backfill_agent_gpu_devices{health=\"healthy\"} 1",
            "backfill_agent_gpu_devices{health=\"unhealthy\"} 1",
            "backfill_agent_discovered_gpus 2",
        ] {
            assert!(m.lines().any(|l| l == line), "no {line:?} in\n{m}");
        }
        let (code, body) = http(addr, "GET", "/gpus").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["backend"], "fake");
        assert_eq!(v["gpus"][1]["health"], "XID 48");
        assert_eq!(v["usage"][0]["utilization_percent"], 35);

        // GPU-a goes away; a rescan on request sees it, says so, and wakes the link.
        std::fs::write(&inv, INVENTORY.replace("\"GPU-a\"", "\"GPU-c\"")).unwrap();
        assert_eq!(http(addr, "GET", "/gpus/rescan").await.0, 405);
        let (code, body) = http(addr, "POST", "/gpus/rescan").await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["changed"], true);
        assert_eq!(v["gpus"][0]["uuid"], "GPU-c");
        tokio::time::timeout(Duration::from_secs(5), state.changed.notified())
            .await
            .expect("the link was not told");
        let (_, m) = http(addr, "GET", "/metrics").await;
        assert!(!m.contains("GPU-a"), "{m}");
        assert!(
            m.contains("backfill_agent_gpu_utilization_percent{uuid=\"GPU-c\"} 35"),
            "{m}"
        );
        let (_, body) = http(addr, "POST", "/gpus/rescan").await;
        assert!(body.contains("\"changed\":false"), "{body}");

        // A broken file: 503 with the reason, and the last scan stays.
        std::fs::write(&inv, "{").unwrap();
        let (code, body) = http(addr, "POST", "/gpus/rescan").await;
        assert_eq!(code, 503);
        assert!(body.contains("gpus.json"), "{body}");
        assert_eq!(state.gpus.current().devices.len(), 2);

        shutdown.cancel();
        server.await.unwrap();
    }

    const SHORT: HttpLimits = HttpLimits {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(500),
        max_connections: 100,
        max_connections_per_client: 100,
    };

    /// Reads until the listener closes; fails if it keeps the connection open.
    async fn until_closed(s: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out));
        assert!(read.await.is_ok(), "the connection stayed open");
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn listening(
        limits: HttpLimits,
    ) -> (
        std::net::SocketAddr,
        AdminState,
        tokio_util::sync::DropGuard,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = admin_state(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, state.clone(), limits, shutdown.clone()));
        (addr, state, shutdown.drop_guard(), dir)
    }

    fn timeouts(state: &AdminState, phase: &str) -> u64 {
        state
            .metrics
            .http_timeouts
            .get_or_create(&ListenerReason::new("admin", phase))
            .get()
    }

    #[tokio::test]
    async fn slow_heads_and_missing_bodies_are_cut_off() {
        let (addr, state, _stop, _dir) = listening(SHORT).await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
        partial
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let mut body = tokio::net::TcpStream::connect(addr).await.unwrap();
        body.write_all(b"POST /gpus/rescan HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        assert_eq!(until_closed(&mut silent).await, "");
        assert_eq!(until_closed(&mut partial).await, "");
        assert_eq!(until_closed(&mut body).await, "");
        assert_eq!(timeouts(&state, "header"), 2);
        assert_eq!(timeouts(&state, "body"), 1);
        // An answered request closes its connection (no keep-alive here).
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(until_closed(&mut c).await.starts_with("HTTP/1.1 200 "));
        // Too large: 400, read by the client while it is still sending.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /gpus/rescan HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n{")
            .await
            .unwrap();
        assert!(until_closed(&mut c).await.starts_with("HTTP/1.1 400 "));
    }

    #[tokio::test]
    async fn connections_over_the_caps_are_closed_at_once() {
        for (limits, reason) in [
            (
                HttpLimits {
                    max_connections_per_client: 1,
                    ..HttpLimits::ADMIN
                },
                "max_connections_per_client",
            ),
            (
                HttpLimits {
                    max_connections: 1,
                    ..HttpLimits::ADMIN
                },
                "max_connections",
            ),
        ] {
            let (addr, state, _stop, _dir) = listening(limits).await;
            // The first holds its place while it sends its head slowly.
            let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
            first.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            let refused = state
                .metrics
                .http_refused
                .get_or_create(&ListenerReason::new("admin", reason));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            // Until the first is accepted, a second may get in (and is answered, or waits).
            while refused.get() == 0 {
                let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
                assert_eq!(until_closed(&mut extra).await, "", "{reason}");
                assert!(tokio::time::Instant::now() < deadline, "never refused");
            }
            first.write_all(b"\r\n").await.unwrap();
            assert!(until_closed(&mut first).await.starts_with("HTTP/1.1 200 "));
        }
    }
}
