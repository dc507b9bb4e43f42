//! `backfill-coordinator dev`: a coordinator, one local agent (a child process running the agent
//! library's entry point) and a throwaway CA, on loopback, in one command.

use crate::cmd::config::CoordinatorConfig;
use crate::cmd::daemon::{Bound, DaemonError, client_addr};
use backfill_agent::config::{AgentConfig, CgroupMode, MetadataSettings};
use backfill_shared::HostId;
use backfill_shared::daemon::wait_for_signal;
use backfill_shared::pki::{Ca, IssueRequest, PkiError, Role};
use backfill_shared::tls::TlsFiles;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const DEV_HOST: &str = "dev-host";
const DEV_TENANT: &str = "tenant";
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the CA, the database, the agent's state and dev.env go.
    #[arg(long, default_value = "./backfill-dev")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub api_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub link_addr: SocketAddr,
    /// The management listener: the operator APIs and the dashboard with the token, no client
    /// certificate needed.
    #[arg(long, default_value = "127.0.0.1:8445")]
    pub management_addr: SocketAddr,
    /// Where the local agent's metadata service listens (as root; guests in isolated mode
    /// reach it at 169.254.169.254 only when it listens there). Another address leaves this
    /// host's 169.254.169.254:80 to another agent.
    #[arg(long, default_value = "169.254.169.254:80")]
    pub metadata_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("cannot start the agent ({exe}): {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent exited before it registered ({0})")]
    AgentDied(String),
    #[error("the agent did not register within {0:?}; see its log above")]
    AgentTimeout(Duration),
    #[error("cannot write the agent configuration: {0}")]
    AgentConfig(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Paths of everything dev mode makes.
struct Layout {
    dir: PathBuf,
    pki: PathBuf,
}

impl Layout {
    fn pem(&self, stem: &str) -> PathBuf {
        self.pki.join(format!("{stem}.pem"))
    }
    fn key(&self, stem: &str) -> PathBuf {
        self.pki.join(format!("{stem}.key"))
    }
    fn files(&self, stem: &str) -> TlsFiles {
        TlsFiles {
            ca: self.pki.join(backfill_shared::pki::CA_CERT_FILE),
            cert: self.pem(stem),
            key: self.key(stem),
        }
    }
}

/// Makes the CA and certificates on first use; later runs reuse them, so printed commands keep
/// working.
fn ensure_pki(l: &Layout, api: SocketAddr) -> Result<(), DevError> {
    let ca = if l.pki.join(backfill_shared::pki::CA_CERT_FILE).exists() {
        Ca::load(&l.pki)?
    } else {
        Ca::init(&l.pki)?
    };
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !api.ip().is_unspecified() {
        sans.push(api.ip().to_string());
    }
    let certs: [(&str, Role, &str); 4] = [
        ("coordinator", Role::Coordinator, "coordinator"),
        ("admin", Role::Admin, "admin"),
        (DEV_TENANT, Role::Account, DEV_TENANT),
        ("agent", Role::Agent, DEV_HOST),
    ];
    for (stem, role, name) in certs {
        if !l.pem(stem).exists() {
            ca.issue_to_dir(&l.pki, stem, &IssueRequest::new(role, name, &sans, 365))?;
        }
    }
    Ok(())
}

pub async fn run(args: DevArgs) -> Result<(), DevError> {
    std::fs::create_dir_all(&args.data_dir).map_err(io(&args.data_dir))?;
    let dir = std::fs::canonicalize(&args.data_dir).map_err(io(&args.data_dir))?;
    let l = Layout {
        pki: dir.join("pki"),
        dir,
    };
    ensure_pki(&l, args.api_addr)?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let cfg = CoordinatorConfig {
        api_addr: args.api_addr,
        link_addr: args.link_addr,
        metrics_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        drain_timeout_s: 5,
        database: crate::store::Database::Sqlite(l.dir.join("coordinator.sqlite")),
        backfill_accounts: vec![DEV_TENANT.into()],
        accounts: Vec::new(),
        billing: Default::default(),
        tls: l.files("coordinator"),
        scheduler: dev_scheduler(),
        classes: dev_classes(),
        operator: crate::state::settings::OperatorConfig {
            management_token: Some(token.clone()),
            management_addr: Some(args.management_addr),
            ..Default::default()
        },
        flavors: dev_flavors(),
        pools: vec![local_pool(&l)?],
        link: Default::default(),
        // Receivers on this machine, over plain HTTP, for trying webhooks out.
        webhooks: crate::state::settings::WebhookConfig {
            allow_http: true,
            allow_private: true,
            ..Default::default()
        },
        http: Default::default(),
        // Dev mode runs commands on this machine: every driver, for everyone.
        drivers: crate::state::access::DriverAccess::dev(),
        ha: Default::default(),
        drives: crate::domain::library::DrivesConfig::default(),
    };
    let bound = Bound::new(&cfg).await?;
    let api = client_addr(bound.api_addr);
    let management = bound.management_addr.map(client_addr);
    let link = client_addr(bound.link_addr);
    let coordinator = bound.coordinator.clone();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(bound.run(shutdown.clone()));

    let root = backfill_agent::driver::running_as_root();
    let run_as = if root { "nobody" } else { "" }.to_string();
    if !root {
        tracing::warn!("not root: workloads run without cgroups, limits are NOT enforced");
    }
    let agent_cfg = AgentConfig {
        coordinator: Some(link),
        coordinators: Vec::new(),
        coordinator_name: "localhost".into(),
        state_dir: l.dir.join("agent"),
        cgroup_parent: "backfill-dev".into(),
        cgroups: if root {
            CgroupMode::Auto
        } else {
            CgroupMode::None
        },
        run_as: run_as.clone(),
        default_command: crate::cmd::local_provisioner::idle_command(&run_as),
        exec_driver: true,
        stop_workloads_on_exit: true,
        inventory_file: None,
        report_interval_secs: 5,
        coordinator_silence_secs: 30,
        normal_cpu_quota: true,
        gpu_rescan_interval_secs: 30,
        tls: l.files("agent"),
        // As root: the metadata service on 169.254.169.254:80 for isolated-network guests.
        metadata: MetadataSettings {
            enabled: root,
            bind: args.metadata_addr,
            ..MetadataSettings::default()
        },
        network: Default::default(),
        pressure: Default::default(),
        container: Default::default(),
        vm: Default::default(),
        admin: backfill_agent::config::AdminSettings {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Default::default()
        },
    };
    let agent_toml = l.dir.join("agent.toml");
    let text = toml::to_string(&agent_cfg).map_err(|e| DevError::AgentConfig(e.to_string()))?;
    std::fs::write(&agent_toml, text).map_err(io(&agent_toml))?;
    let mut agent = spawn_agent(&agent_toml)?;

    let host: HostId = DEV_HOST
        .parse()
        .map_err(|e: backfill_shared::IdError| DevError::AgentConfig(e.to_string()))?;
    let registered = wait_registered(&coordinator, &host, &mut agent).await;
    if let Err(e) = registered {
        shutdown.cancel();
        let _ = server.await;
        return Err(e);
    }
    announce(&l, api, management, &token)?;
    println!("{}", drivers_line(&coordinator, &host).await);

    tokio::select! {
        () = wait_for_signal() => {}
        status = agent.wait() => {
            tracing::error!(?status, "the agent exited");
        }
    }
    tracing::info!("stopping the agents and their workloads");
    // The store says what is true: dev's servers are stopped while dev is down (and are not
    // billed), and a later `dev` does not restart them behind the tenant's back.
    let dev_hosts = coordinator.hosts_in_pool_or(&host, "local").await;
    match coordinator
        .stop_for_exit(&dev_hosts, "dev mode was stopped (Ctrl-C)")
        .await
    {
        Ok(n) => println!("stopped {n} server(s): dev mode stops its workloads on exit"),
        Err(e) => tracing::error!(error = %e, "cannot mark dev's servers stopped"),
    }
    let pool_dir = l.dir.join("pool");
    let pool_agents = tokio::task::spawn_blocking(move || {
        crate::cmd::local_provisioner::delete_all(&pool_dir);
    });
    stop_agent(&mut agent).await;
    let _ = pool_agents.await;
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}

/// Dev-only spot timers, short enough to watch a termination notice arrive and expire: a minute
/// of notice, no minimum uptime. Packaged defaults are 15 and 30 minutes.
pub const DEV_SPOT_NOTICE_S: i64 = 60;

/// Dev-only grow-back hysteresis: a downsized server may grow back 10 s after its last change
/// (packaged: 60 s), so the tour watches it without waiting a minute.
pub const DEV_GROW_AFTER_S: i64 = 10;

fn dev_scheduler() -> crate::state::settings::SchedulerConfig {
    crate::state::settings::SchedulerConfig {
        grow: crate::policy::scheduler::GrowPolicy {
            min_interval_s: DEV_GROW_AFTER_S,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn dev_classes() -> crate::policy::scheduler::Classes {
    let mut c = crate::policy::scheduler::Classes::default();
    c.spot.notice_s = DEV_SPOT_NOTICE_S;
    c.spot.min_uptime_s = 0;
    c
}

/// `dev-preemptible` (spot capacity: `"flavor": "dev-preemptible"` on `/servers/`) and
/// `dev-small` (a normal server of the same size, to preempt it with).
fn dev_flavors() -> Vec<crate::domain::flavors::Flavor> {
    let flavor = |name: &str, preemptible| crate::domain::flavors::Flavor {
        name: name.into(),
        vcpus: 1,
        cpu: Some(1_000),
        ram: 256 << 20,
        scratch: 0,
        gpus: 0,
        price: if preemptible { 0.01 } else { 0.04 },
        preemptible: Some(preemptible),
    };
    vec![flavor("dev-preemptible", true), flavor("dev-small", false)]
}

/// What dev's agent can run, as it reported it: `drivers: exec, vm (tcg, 2 images), container
/// (runc 1.1.5)`, or why a kind is missing.
async fn drivers_line(
    coordinator: &crate::state::coordinator::Coordinator,
    host: &HostId,
) -> String {
    let model = coordinator.read_model().await;
    let Some(d) = model.hosts.get(host).map(|h| &h.record.inventory.drivers) else {
        return "drivers: unknown (the agent has not reported)".into();
    };
    let mut parts = Vec::new();
    if d.exec {
        parts.push("exec".to_owned());
    }
    match &d.vm {
        Some(vm) => parts.push(format!("vm ({}, {} image(s))", vm.accel, vm.images.len())),
        None => parts.push("no vm (needs root, QEMU and [vm] images_dir)".into()),
    }
    match &d.container {
        Some(c) => parts.push(format!("container ({})", c.runtime)),
        None => parts.push("no container (needs root and runc)".into()),
    }
    format!("drivers: {}", parts.join(", "))
}

fn spawn_agent(config: &Path) -> Result<Child, DevError> {
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("agent").arg("--config").arg(config);
    // Its own process group: Ctrl-C reaches dev mode, which then stops the agent in order.
    cmd.process_group(0);
    cmd.kill_on_drop(false);
    cmd.spawn()
        .map_err(|source| DevError::Spawn { exe, source })
}

async fn wait_registered(
    coordinator: &crate::state::coordinator::Coordinator,
    host: &HostId,
    agent: &mut Child,
) -> Result<(), DevError> {
    let deadline = tokio::time::Instant::now() + REGISTER_TIMEOUT;
    loop {
        if coordinator.host_connected(host).await {
            return Ok(());
        }
        if let Ok(Some(status)) = agent.try_wait() {
            return Err(DevError::AgentDied(status.to_string()));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DevError::AgentTimeout(REGISTER_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stop_agent(agent: &mut Child) {
    if let Some(pid) = agent.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a pid we spawned and SIGTERM has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(AGENT_STOP_TIMEOUT, agent.wait()).await {
        Ok(_) => {}
        Err(_) => {
            tracing::warn!("the agent did not stop in time; killing it");
            let _ = agent.kill().await;
        }
    }
}

/// The `local` pool: up to three more agents on this machine, launched and deleted by
/// `provision-local` (by hand with `PUT /dynamiccluster/resource/local?num=1`, or by auto mode).
fn local_pool(l: &Layout) -> Result<crate::policy::pools::PoolConfig, DevError> {
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let exe = exe.display().to_string();
    let dir = l.dir.join("pool").display().to_string();
    let op = |op: &str| {
        let mut argv = vec![exe.clone(), "provision-local".into(), op.into()];
        argv.extend(["--dir".into(), dir.clone()]);
        if op == "launch" {
            argv.extend(["--pki".into(), l.pki.display().to_string()]);
            argv.extend(["--link".into(), "{link}".into()]);
        }
        argv.extend(["--host".into(), "{host}".into()]);
        argv
    };
    Ok(crate::policy::pools::PoolConfig {
        name: "local".into(),
        min: 0,
        max: 3,
        priority: 0,
        flavor: None,
        hosts: Vec::new(),
        reservation_account: None,
        reservation_queue: None,
        provisioner: Some(crate::policy::pools::ProvisionerConfig {
            launch: op("launch"),
            delete: op("delete"),
            timeout_s: 60,
        }),
    })
}

fn announce(
    l: &Layout,
    api: SocketAddr,
    management: Option<SocketAddr>,
    token: &str,
) -> Result<(), DevError> {
    let management = management
        .map(|m| format!("https://{m}/"))
        .unwrap_or_default();
    let url = format!("https://{api}/api/2.0/");
    let ca = l.pki.join(backfill_shared::pki::CA_CERT_FILE);
    let (cert, key) = (l.pem(DEV_TENANT), l.key(DEV_TENANT));
    // Exported, so that programs started from the shell (backfillctl) see them too; the
    // operator's certificate is there for `backfillctl --cert ... account ...`.
    let env = format!(
        "export BACKFILL_API={url}\nexport BACKFILL_CA={}\nexport BACKFILL_CERT={}\nexport BACKFILL_KEY={}\nexport BACKFILL_ADMIN_CERT={}\nexport BACKFILL_ADMIN_KEY={}\nexport BACKFILL_MANAGEMENT={management}\nexport BACKFILL_MANAGEMENT_TOKEN={token}\n",
        ca.display(),
        cert.display(),
        key.display(),
        l.pem("admin").display(),
        l.key("admin").display()
    );
    let env_path = l.dir.join("dev.env");
    std::fs::write(&env_path, &env).map_err(io(&env_path))?;
    println!("ready: API at {url} (tenant account {DEV_TENANT:?}, host {DEV_HOST:?})");
    println!(
        "try:   curl --cacert {} --cert {} --key {} {url}capabilities/",
        ca.display(),
        cert.display(),
        key.display()
    );
    println!(
        "env:   {} (source it: . {})",
        env_path.display(),
        env_path.display()
    );
    println!(
        "dev only: flavors dev-preemptible (spot) and dev-small (normal), 1000 MHz and 256 MiB; spot notice {DEV_SPOT_NOTICE_S} s, no minimum uptime, downsized servers grow back after {DEV_GROW_AFTER_S} s (packaged: 900 s, 1800 s and 60 s)"
    );
    println!(
        "dev only: every driver is open to every account ([drivers] exec = \"everyone\"); Ctrl-C stops dev's servers and says so on each"
    );
    Ok(())
}
