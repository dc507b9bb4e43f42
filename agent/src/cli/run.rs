//! Builds the agent from its configuration (cgroups, drivers, networks, metadata) and runs it
//! until a signal.

use super::AgentError;
use super::watch::{reload_on_sighup, watch_exits, watch_pressure};
use crate::cgroups::{CgroupManager, FsCgroups, NoCgroups};
use crate::config::{AgentConfig, CgroupMode, ConfigError};
use crate::discovery::{self, GpuMonitor, NoGpus};
use crate::driver::{self, RunAs};
use crate::link::{self, LinkParams};
use crate::metadata::{
    self, AckRequest, MetadataConfig, MetadataService, MetadataStore, RateLimiter, TokenSealer,
};
use crate::network::{AddressPool, GuestNetworks, IpNetworks, NetTag, NoNetworks};
use crate::supervisor::Supervisor;
use backfill_shared::tls::{self};
use backfill_shared::{HostId, SystemClock};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn cgroups(cfg: &AgentConfig) -> Result<Box<dyn CgroupManager>, AgentError> {
    match cfg.cgroups {
        CgroupMode::None => Ok(Box::new(NoCgroups::default())),
        CgroupMode::Auto if !driver::running_as_root() => Err(AgentError::NotRoot),
        CgroupMode::Auto => Ok(Box::new(FsCgroups::detect(&cfg.cgroup_parent)?)),
    }
}

/// The kernel mechanisms this agent protects normal servers with, for the inventory.
fn mechanisms(
    cgroups: &dyn CgroupManager,
    pressure: &crate::pressure::PressureSettings,
) -> Vec<String> {
    let mut m = cgroups.mechanisms();
    if cgroups.enforcing() {
        m.push("sched_idle".into());
        m.push("oom_score_adj".into());
    }
    let host_psi = crate::pressure::PsiFiles::default().available();
    m.extend(stall_sources(cgroups, pressure, host_psi));
    if host_psi {
        m.push("psi".into());
        if pressure.enabled {
            let privileged = crate::pressure::has_cap_sys_resource();
            m.push(
                if privileged {
                    "psi-triggers"
                } else {
                    "psi-triggers-2s"
                }
                .into(),
            );
        }
    }
    m
}

/// Which stall the agent reacts to (`[pressure]`): each normal server's own (the cgroups'
/// sources, when polled), the host's PSI (`stall:host-psi`), or, where neither can be read,
/// nothing (`stall:none`: the coordinator alone squeezes backfill; a normal server's CPU
/// throttling is only ever used to tell its own quota from backfill's doing).
pub(super) fn stall_sources(
    cgroups: &dyn CgroupManager,
    pressure: &crate::pressure::PressureSettings,
    host_psi: bool,
) -> Vec<String> {
    if !pressure.enabled || !cgroups.enforcing() {
        return vec!["stall:none".into()];
    }
    let mut out = Vec::new();
    if pressure.poll_ms > 0 {
        out.extend(cgroups.stall_sources());
    }
    if host_psi {
        out.push("stall:host-psi".into());
    }
    if out.is_empty() {
        out.push("stall:none".into());
    }
    out
}

/// The drivers this agent runs workloads with: `exec`, and those whose programs this host has.
fn drivers(cfg: &AgentConfig, _run_as: Option<RunAs>) -> driver::DriverSet {
    let mut set = driver::DriverSet::new();
    if cfg.exec_driver {
        tracing::warn!(
            "the exec driver is enabled: workloads may run as processes on this host (exec_driver)"
        );
        set = set.with(Arc::new(driver::ExecDriver));
    }
    if let Some(c) = driver::container::ContainerDriver::detect(&cfg.container, &cfg.state_dir) {
        set = set.with(Arc::new(c));
    }
    if let Some(vm) = driver::vm::VmDriver::detect(&cfg.vm, &cfg.state_dir) {
        set = set.with(Arc::new(vm));
    }
    set
}

/// This host's drives: `<state_dir>/drives`, made from `[vm] images_dir` with `[vm] qemu_img`.
fn backfill_agent_drives(cfg: &AgentConfig) -> crate::drives::DriveStore {
    crate::drives::DriveStore::new(&cfg.state_dir, &cfg.vm.images_dir, &cfg.vm.qemu_img)
}

pub(super) async fn run(
    cfg: AgentConfig,
    host_id: HostId,
    run_as: Option<RunAs>,
    gpu_rescan: Duration,
) -> Result<(), AgentError> {
    let cgroups = cgroups(&cfg)?;
    if cgroups.enforcing() {
        tracing::info!(cgroups = %cgroups.describe(), parent = %cfg.cgroup_parent, "limits enforced");
    } else {
        tracing::warn!(cgroups = %cgroups.describe(), "limits are NOT enforced");
    }
    let gpus = Arc::new(GpuMonitor::start(discovery::gpu_backend(
        cfg.inventory_file.as_deref(),
    )?)?);
    let drivers = drivers(&cfg, run_as);
    let mut inventory = discovery::discover(&NoGpus)?;
    inventory.gpus = gpus.current().devices.clone();
    inventory.drivers = drivers.inventory();
    inventory.mechanisms = mechanisms(cgroups.as_ref(), &cfg.pressure);
    tracing::info!(
        host = %host_id,
        cpus = inventory.cpus,
        mhz = inventory.cpu_mhz_per_cpu,
        mem = inventory.mem_bytes,
        gpus = inventory.gpus.len(),
        gpu_backend = gpus.backend_name(),
        drivers = ?inventory.drivers.kinds(),
        mechanisms = ?inventory.mechanisms,
        "discovered"
    );
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| AgentError::Io {
        path: cfg.state_dir.clone(),
        source,
    })?;
    let metrics = Arc::new(crate::admin::AgentMetrics::default());
    metrics.cpus.set(i64::from(inventory.cpus));
    metrics
        .mem_bytes
        .set(i64::try_from(inventory.mem_bytes).unwrap_or(i64::MAX));
    metrics.set_gpus(&gpus.current());
    metrics.set_mechanisms(&inventory.mechanisms);
    let store = Arc::new(MetadataStore::default());
    // Bound before the guests' networks: the egress policy lets guests reach its port only.
    let metadata_listener = if cfg.metadata.enabled {
        Some(metadata::bind(cfg.metadata.bind)?)
    } else {
        None
    };
    let metadata_port = metadata_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let mut supervisor = Supervisor::new(
        cgroups,
        &cfg.state_dir,
        run_as,
        cfg.default_command.clone(),
        Arc::new(SystemClock),
    )
    .with_networks(guest_networks(&cfg, &host_id, metadata_port))
    .with_metadata(store.clone(), cfg.metadata.availability_zone.clone())
    .with_cgroup_error_counter(metrics.cgroup_errors.clone())
    .with_gpus(gpus.clone())
    .with_drivers(drivers)
    .with_cpu_policy(crate::cgroups::CpuPolicy {
        mhz_per_core: inventory.cpu_mhz_per_cpu,
        period_us: crate::cgroups::DEFAULT_CPU_PERIOD_US,
        normal_quota: cfg.normal_cpu_quota,
    })
    .with_pressure_policy(cfg.pressure.floor, cfg.pressure.release_secs);
    supervisor.adopt()?;
    let supervisor = Arc::new(Mutex::new(supervisor));
    let shutdown = CancellationToken::new();
    let changed = Arc::new(Notify::new());
    watch_pressure(&cfg.pressure, &supervisor, &changed, &metrics);
    let metadata = match metadata_listener {
        Some(listener) => Some(start_metadata(
            &cfg,
            listener,
            store,
            &supervisor,
            &changed,
            &shutdown,
            &metrics,
        )?),
        None => None,
    };
    let params = LinkParams {
        addrs: cfg.coordinator_addrs(),
        server_name: LinkParams::server_name(&cfg.coordinator_name)?,
        connector: Arc::new(std::sync::RwLock::new(tokio_rustls::TlsConnector::from(
            tls::client_config(&cfg.tls)?,
        ))),
        host_id,
        inventory,
        report_interval: Duration::from_secs(cfg.report_interval_secs),
        silence_limit: Duration::from_secs(cfg.coordinator_silence_secs),
        metrics: metrics.clone(),
        drives: (cfg.vm.enabled && cfg.vm.qemu_img.is_file())
            .then(|| Arc::new(backfill_agent_drives(&cfg))),
    };
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin.bind)
        .await
        .map_err(|source| AgentError::Io {
            path: PathBuf::from(format!("admin listener {}", cfg.admin.bind)),
            source,
        })?;
    let admin_addr = admin_listener.local_addr().map_or(cfg.admin.bind, |a| a);
    tracing::info!(%admin_addr, "admin listening (/metrics, /healthz, /ready, /gpus, POST /gpus/rescan)");
    let reloader = tokio::spawn(reload_on_sighup(
        params.connector.clone(),
        cfg.tls.clone(),
        shutdown.clone(),
    ));
    let admin = tokio::spawn(crate::admin::serve(
        admin_listener,
        crate::admin::AdminState {
            metrics: metrics.clone(),
            supervisor: supervisor.clone(),
            gpus: gpus.clone(),
            changed: changed.clone(),
        },
        cfg.admin.limits(),
        shutdown.clone(),
    ));
    let rescans = tokio::spawn(discovery::run_rescans(
        gpus,
        gpu_rescan,
        changed.clone(),
        shutdown.clone(),
    ));
    let notifier = backfill_shared::notify::Notifier::from_env();
    let host_label = params.host_id.to_string();
    let coordinator_addr = params
        .addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let link = tokio::spawn(link::run(
        params,
        supervisor.clone(),
        changed.clone(),
        shutdown.clone(),
    ));
    // Listeners bound and the link's retry loop running: ready for systemd (Type=notify).
    notifier.ready(&format!("host {host_label}; link to {coordinator_addr}"));
    // The watchdog is fed only once READY=1 is sent, so systemd sees them in that order.
    let watcher = tokio::spawn(watch_exits(
        supervisor.clone(),
        changed,
        notifier.clone(),
        shutdown.clone(),
    ));
    backfill_shared::daemon::wait_for_signal().await;
    tracing::info!("shutting down");
    notifier.stopping();
    shutdown.cancel();
    let _ = link.await;
    let _ = watcher.await;
    let _ = admin.await;
    let _ = reloader.await;
    let _ = rescans.await;
    if let Some(m) = metadata {
        let _ = m.await;
    }
    if cfg.stop_workloads_on_exit {
        let s = supervisor.clone();
        let _ = tokio::task::spawn_blocking(move || {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .stop_all();
        })
        .await;
        tracing::info!("stopped every workload (stop_workloads_on_exit)");
    } else {
        tracing::info!("workloads keep running; a restarted agent re-adopts them");
    }
    Ok(())
}

/// Isolated network mode when the agent is root and iproute2 works; otherwise such servers fail
/// to start and say why.
///
/// With `[network] egress_policy` (the default), guests' traffic follows the egress policy, and
/// isolated mode is unavailable where the policy cannot be enforced: a guest never runs
/// unconfined because iptables is missing.
fn guest_networks(
    cfg: &AgentConfig,
    host: &HostId,
    metadata_port: Option<u16>,
) -> Box<dyn GuestNetworks> {
    if !driver::running_as_root() {
        return Box::new(NoNetworks);
    }
    let Ok(pool) = cfg.network.pool.parse::<AddressPool>() else {
        return Box::new(NoNetworks); // validated at load
    };
    let metadata = match cfg.metadata.bind.ip() {
        IpAddr::V4(ip) if cfg.metadata.enabled && !ip.is_loopback() && !ip.is_unspecified() => {
            Some(ip)
        }
        _ => None,
    };
    let tag = NetTag::for_host(host.as_str());
    let nets = IpNetworks::new(pool, metadata, cfg.network.route_table, tag);
    let policy = match cfg.network.egress() {
        Ok(p) => p,
        Err(_) => return Box::new(NoNetworks), // validated at load
    };
    let nets = match nets {
        Ok(n) if cfg.network.egress_policy => n.with_egress(policy, metadata_port),
        Ok(n) => {
            tracing::warn!(
                "[network] egress_policy is off: isolated guests reach whatever the host's firewall allows"
            );
            n.remove_egress_rules(policy);
            Ok(n)
        }
        Err(e) => Err(e),
    };
    match nets {
        Ok(n) => Box::new(n),
        Err(e) => {
            tracing::warn!(error = %e, "isolated network mode unavailable");
            Box::new(NoNetworks)
        }
    }
}

/// Serves the metadata listener (bound before anything else is announced); guests'
/// acknowledgements are recorded by the supervisor and trigger a report at once.
fn start_metadata(
    cfg: &AgentConfig,
    listener: tokio::net::TcpListener,
    store: Arc<MetadataStore>,
    supervisor: &Arc<Mutex<Supervisor>>,
    changed: &Arc<Notify>,
    shutdown: &CancellationToken,
    metrics: &crate::admin::AgentMetrics,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let m = &cfg.metadata;
    let mut mcfg = MetadataConfig {
        imdsv1: m.imdsv1,
        max_wait: Duration::from_secs(m.max_wait_secs),
        ..MetadataConfig::default()
    };
    let secret = cfg.proxy_secret().map_err(|e| {
        ConfigError::invalid(
            std::path::Path::new("agent config"),
            "metadata.proxy_secret_file",
            &e,
        )
    })?;
    if let Some(secret) = secret {
        mcfg = mcfg.with_proxy_secret(&secret);
    }
    let tokens = TokenSealer::random().map_err(|e| AgentError::Io {
        path: PathBuf::from("token key"),
        source: std::io::Error::other(e.to_string()),
    })?;
    let local = listener.local_addr().map_or(m.bind, |a| a);
    tracing::info!(addr = %local, imdsv1 = m.imdsv1, proxy = mcfg.proxy_key.is_some(), "metadata service listening");
    let (acks, mut ack_rx) = tokio::sync::mpsc::channel::<AckRequest>(64);
    let svc = Arc::new(
        MetadataService::new(
            store,
            mcfg,
            tokens,
            RateLimiter::new(f64::from(m.rate_per_second), m.burst),
            acks,
            Arc::new(SystemClock),
        )
        .with_request_counter(metrics.metadata_requests.clone())
        .with_limits(m.limits())
        .with_connection_counters(metrics.http_refused.clone(), metrics.http_timeouts.clone()),
    );
    let sup = supervisor.clone();
    let changed = changed.clone();
    tokio::spawn(async move {
        while let Some((server, reply)) = ack_rx.recv().await {
            let s = sup.clone();
            let r = tokio::task::spawn_blocking(move || {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .acknowledge(&server)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            if r.is_ok() {
                changed.notify_one();
            }
            let _ = reply.send(r);
        }
    });
    Ok(tokio::spawn(metadata::serve(
        listener,
        svc,
        shutdown.clone(),
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn without_enforced_cgroups_or_pressure_the_stall_source_is_none() {
        let mut p = crate::pressure::PressureSettings::default();
        assert_eq!(
            stall_sources(&NoCgroups::default(), &p, true),
            ["stall:none"]
        );
        p.enabled = false;
        assert_eq!(
            stall_sources(&crate::cgroups::RecordingCgroups::default(), &p, true),
            ["stall:none"]
        );
    }
}
