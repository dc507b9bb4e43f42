//! `backfill-agent`: parse, load and validate config, build, run, map errors to exit codes.

use crate::cgroups::{CgroupManager, FsCgroups, NoCgroups};
use crate::config::{AgentConfig, CgroupMode, ConfigError};
use crate::discovery::{self, DiscoveryError, GpuMonitor, NoGpus};
use crate::driver::{self, DriverError, RunAs};
use crate::link::{self, LinkError, LinkParams};
use crate::metadata::{
    self, AckRequest, MetadataConfig, MetadataService, MetadataStore, RateLimiter, TokenSealer,
};
use crate::network::{AddressPool, GuestNetworks, IpNetworks, NetTag, NoNetworks};
use crate::state::StateError;
use crate::supervisor::Supervisor;
use backfill_shared::pki::{PkiError, Role, identity_from_der};
use backfill_shared::tls::{self, TlsError};
use backfill_shared::{HostId, SystemClock};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "backfill-agent", version, about = "backfill per-host agent")]
pub struct Cli {
    #[arg(long, default_value = "/etc/backfill/agent.toml")]
    pub config: PathBuf,
    /// Validate the configuration and exit (64 when it is wrong).
    #[arg(long)]
    pub check_config: bool,
    /// Declare GPUs from a JSON file instead of asking NVML (overrides `inventory_file`).
    #[arg(long)]
    pub inventory_file: Option<PathBuf>,
    /// Seconds between re-reads of the GPUs (1 to 3600), over the configuration's
    /// `gpu_rescan_interval_secs`; `POST /gpus/rescan` on the admin listener re-reads them at
    /// once.
    #[arg(long, env = "BACKFILL_GPU_RESCAN_SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub gpu_rescan_interval_secs: Option<u64>,
    /// Log lines for people or JSON for shippers (default: BACKFILL_LOG_FORMAT, else human).
    #[arg(long, value_enum)]
    pub log_format: Option<backfill_shared::daemon::LogFormat>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The built-in idle workload: sleeps until killed.
    #[command(hide = true)]
    Idle,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("agent certificate: {0}")]
    Identity(#[from] PkiError),
    #[error("agent certificate has role {0}; an agent needs an agent certificate")]
    WrongRole(Role),
    #[error("cgroups: {0}")]
    Cgroups(#[from] crate::cgroups::CgroupError),
    #[error("cgroups = \"auto\" needs root; set cgroups = \"none\" to run without limits")]
    NotRoot,
    #[error("run_as = {0:?} needs root; leave it empty when the agent is not root")]
    RunAsNeedsRoot(String),
    #[error(
        "run_as = {0:?} would run workloads as root; name an unprivileged user such as \"nobody\""
    )]
    RunAsRoot(String),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("inventory file: {0}")]
    Inventory(DiscoveryError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AgentError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_)
            | AgentError::Tls(_)
            | AgentError::Identity(_)
            | AgentError::WrongRole(_)
            | AgentError::NotRoot
            | AgentError::RunAsNeedsRoot(_)
            | AgentError::RunAsRoot(_)
            | AgentError::Inventory(_)
            | AgentError::Link(_) => 64,
            AgentError::State(_) | AgentError::Io { .. } => 74,
            AgentError::Cgroups(_)
            | AgentError::Driver(_)
            | AgentError::Discovery(_)
            | AgentError::Metadata(_) => 71,
        }
    }
}

/// The whole agent, from arguments to exit code (also used by `backfill-coordinator dev`).
pub fn main_with_args(args: Vec<OsString>) -> u8 {
    backfill_shared::tls::install_default_provider();
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 64 } else { 0 };
        }
    };
    if let Some(Command::Idle) = cli.command {
        idle();
    }
    backfill_shared::daemon::init_tracing(backfill_shared::daemon::LogFormat::resolve(
        cli.log_format,
    ));
    match main_exec(&cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("backfill-agent: {e}");
            e.exit_code()
        }
    }
}

fn idle() -> ! {
    loop {
        std::thread::park();
    }
}

fn main_exec(cli: &Cli) -> Result<(), AgentError> {
    let mut cfg = AgentConfig::load(&cli.config)?;
    if let Some(f) = &cli.inventory_file {
        cfg.inventory_file = Some(f.clone());
        cfg.validate(&cli.config)?;
    }
    // A broken inventory file is a configuration error, reported before anything starts.
    if let Some(f) = &cfg.inventory_file {
        crate::discovery::FakeGpus::from_file(f).map_err(AgentError::Inventory)?;
    }
    let host_id = host_id_from_cert(&cfg)?;
    let run_as = resolve_run_as(&cfg)?;
    if cli.check_config {
        println!("{}: ok (host {host_id})", cli.config.display());
        for line in driver_warnings(&cfg) {
            println!("warning: {line}");
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| AgentError::Io {
            path: PathBuf::from("tokio runtime"),
            source,
        })?;
    let rescan = Duration::from_secs(
        cli.gpu_rescan_interval_secs
            .unwrap_or(cfg.gpu_rescan_interval_secs),
    );
    rt.block_on(run(cfg, host_id, run_as, rescan))
}

/// The host id is the CN of the agent certificate.
fn host_id_from_cert(cfg: &AgentConfig) -> Result<HostId, AgentError> {
    let certs = tls::load_certs(&cfg.tls.cert)?;
    let leaf = certs.first().ok_or_else(|| TlsError::NoCertificate {
        path: cfg.tls.cert.clone(),
    })?;
    let id = identity_from_der(leaf)?;
    if id.role != Role::Agent {
        return Err(AgentError::WrongRole(id.role));
    }
    id.name
        .parse()
        .map_err(|_| AgentError::Identity(PkiError::BadName(id.name.clone())))
}

/// The workload user: never root; only settable when the agent is root.
fn resolve_run_as(cfg: &AgentConfig) -> Result<Option<RunAs>, AgentError> {
    let root = driver::running_as_root();
    let run_as = match cfg.run_as.as_str() {
        "" if root => return Err(AgentError::RunAsRoot(String::new())),
        "" => None,
        user if !root => return Err(AgentError::RunAsNeedsRoot(user.to_owned())),
        user => Some(RunAs::lookup(user)?),
    };
    if run_as.is_some_and(|u| u.uid == 0) {
        return Err(AgentError::RunAsRoot(cfg.run_as.clone()));
    }
    Ok(run_as)
}

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
    if crate::pressure::PsiFiles::default().available() {
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

/// PSI triggers on CPU and memory: each event may squeeze backfill at once (in the watcher's
/// thread, not at the next round), and a squeeze is reported to the coordinator at once.
fn watch_pressure(
    settings: &crate::pressure::PressureSettings,
    supervisor: &Arc<Mutex<Supervisor>>,
    changed: &Arc<Notify>,
    metrics: &Arc<crate::admin::AgentMetrics>,
) {
    use crate::pressure::{PsiFiles, Resource};
    let psi = PsiFiles::default();
    if !settings.enabled {
        tracing::info!("pressure reaction disabled ([pressure] enabled = false)");
        return;
    }
    poll_stall(settings, supervisor, changed, metrics);
    if !psi.available() {
        tracing::warn!(
            "this kernel reports no pressure (no /proc/pressure): backfill is squeezed only by the coordinator"
        );
        return;
    }
    for r in Resource::ALL {
        let supervisor = supervisor.clone();
        let changed = changed.clone();
        let metrics = metrics.clone();
        let watched = psi.watch(r, &settings.trigger(r), move || {
            let squeezed = match supervisor.lock() {
                Ok(mut s) => s.on_pressure(r),
                Err(_) => return false,
            };
            metrics
                .pressure_events
                .get_or_create(&crate::admin::ResourceLabel::of(r))
                .inc();
            if squeezed {
                metrics
                    .pressure_squeezes
                    .get_or_create(&crate::admin::ResourceLabel::of(r))
                    .inc();
                changed.notify_one();
            }
            true
        });
        match watched {
            Ok(_) => {
                tracing::info!(resource = r.as_str(), trigger = %settings.trigger(r), "watching pressure")
            }
            Err(e) => tracing::warn!(resource = r.as_str(), error = %e, "cannot watch pressure"),
        }
    }
}

/// Every `poll_ms`, the normal servers' own stall (see `supervisor::stall`): backfill is
/// squeezed within a poll of a normal server stalling, privileged or not.
fn poll_stall(
    settings: &crate::pressure::PressureSettings,
    supervisor: &Arc<Mutex<Supervisor>>,
    changed: &Arc<Notify>,
    metrics: &Arc<crate::admin::AgentMetrics>,
) {
    if settings.poll_ms == 0 {
        return;
    }
    let (supervisor, changed, metrics) = (supervisor.clone(), changed.clone(), metrics.clone());
    let (every, policy) = (
        std::time::Duration::from_millis(settings.poll_ms),
        settings.stall_policy(),
    );
    let spawned = crate::pressure::poll_every(every, move |now_ms| {
        let (fired, squeezed) = match supervisor.lock() {
            Ok(mut s) => s.poll_stall(now_ms, policy),
            Err(_) => return false,
        };
        for r in &fired {
            let label = crate::admin::ResourceLabel::of(*r);
            metrics.pressure_events.get_or_create(&label).inc();
            if squeezed {
                metrics.pressure_squeezes.get_or_create(&label).inc();
            }
        }
        if squeezed {
            changed.notify_one();
        }
        true
    });
    match spawned {
        Ok(_) => tracing::info!(
            every_ms = settings.poll_ms,
            stall_ms = settings.server_stall_ms,
            window_ms = settings.server_window_ms,
            "watching the normal servers' own stall"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot poll the normal servers' stall"),
    }
}

/// What `--check-config` says of the drivers: a missing QEMU, image directory or OCI runtime
/// disables that driver (a warning, not an error), and an enabled exec driver is named.
fn driver_warnings(cfg: &AgentConfig) -> Vec<String> {
    let mut w = Vec::new();
    if cfg.exec_driver {
        w.push("exec_driver = true: workloads may run as processes on this host (development and tests only)".into());
    }
    if cfg.vm.enabled {
        if !cfg.vm.qemu.is_file() {
            w.push(format!(
                "no QEMU at {}: the vm driver will not be offered (install qemu-system-x86 or set [vm] qemu)",
                cfg.vm.qemu.display()
            ));
        } else if !cfg.vm.images_dir.is_dir() {
            w.push(format!(
                "no image directory {}: the vm driver will not be offered",
                cfg.vm.images_dir.display()
            ));
        }
    }
    if cfg.container.enabled && !cfg.container.runtime.is_file() {
        w.push(format!(
            "no OCI runtime at {}: the container driver will not be offered (install runc or set [container] runtime)",
            cfg.container.runtime.display()
        ));
    }
    w
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

async fn run(
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
    let watcher = tokio::spawn(watch_exits(
        supervisor.clone(),
        changed.clone(),
        notifier.clone(),
        shutdown.clone(),
    ));
    let link = tokio::spawn(link::run(
        params,
        supervisor.clone(),
        changed,
        shutdown.clone(),
    ));
    // Listeners bound and the link's retry loop running: ready for systemd (Type=notify).
    notifier.ready(&format!("host {host_label}; link to {coordinator_addr}"));
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

/// SIGHUP re-reads the agent's CA, certificate and key; the next connection to the coordinator
/// uses them. A broken set is refused and the old one kept.
async fn reload_on_sighup(
    connector: Arc<std::sync::RwLock<tokio_rustls::TlsConnector>>,
    files: tls::TlsFiles,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; certificate reload needs a restart");
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = hup.recv() => {}
        }
        match tls::client_config(&files) {
            Ok(cfg) => {
                *connector
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    tokio_rustls::TlsConnector::from(cfg);
                tracing::info!(cert = %files.cert.display(), "certificates reloaded; the next connection uses them");
            }
            Err(e) => {
                tracing::error!(error = %e, "certificate reload failed; keeping the certificates in use");
            }
        }
    }
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

/// Notices ended workloads every second, whether or not the coordinator is reachable. The
/// agent's main loop: the systemd watchdog is fed from here.
async fn watch_exits(
    supervisor: Arc<Mutex<Supervisor>>,
    changed: Arc<Notify>,
    notifier: backfill_shared::notify::Notifier,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = supervisor.clone();
        let ended = tokio::task::spawn_blocking(move || {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .poll_exits()
        })
        .await
        .unwrap_or(false);
        if ended {
            changed.notify_one();
        }
        notifier.watchdog();
    }
}
