//! `backfill-agent`: parse, load and validate config, build, run, map errors to exit codes.

mod run;
mod watch;

use crate::config::{AgentConfig, ConfigError};
use crate::discovery::DiscoveryError;
use crate::driver::{self, DriverError, RunAs};
use crate::link::LinkError;
use crate::state::StateError;
use backfill_shared::HostId;
use backfill_shared::pki::{PkiError, Role, identity_from_der};
use backfill_shared::tls::{self, TlsError};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

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
    rt.block_on(run::run(cfg, host_id, run_as, rescan))
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
