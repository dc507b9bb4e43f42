//! The `local` provisioner: `backfill-coordinator provision-local launch|delete` starts and stops
//! `backfill-agent` processes on this machine, so a pool's whole loop (launch, register, run,
//! idle, delete) runs on one box. Dev mode configures a pool with it; a real deployment puts a
//! cloud's CLI in the same place.
//!
//! `launch` issues the host a certificate from the CA in `--pki`, writes its configuration
//! under `--dir/<host>/`, starts the agent in its own process group (it outlives this command)
//! and records its pid. `delete` stops that agent (SIGTERM, then SIGKILL after a grace period)
//! after checking the pid is still that agent's; it is idempotent.

use backfill_agent::config::{AdminSettings, AgentConfig, CgroupMode, MetadataSettings};
use backfill_shared::HostId;
use backfill_shared::pki::{Ca, IssueRequest, PkiError, Role};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const STOP_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Subcommand)]
pub enum LocalCommand {
    /// Start an agent for HOST.
    Launch {
        /// Where each host's configuration, state and log go (`DIR/<host>/`).
        #[arg(long)]
        dir: PathBuf,
        /// The CA that signs the host's certificate (ca.pem, ca.key).
        #[arg(long)]
        pki: PathBuf,
        /// The coordinator's agent link (`{link}` in the pool's provisioner).
        #[arg(long)]
        link: SocketAddr,
        #[arg(long)]
        host: String,
    },
    /// Stop HOST's agent (and, through it, its workloads).
    Delete {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        host: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("invalid host id {0:?}: {1}")]
    Host(String, String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot write the agent configuration: {0}")]
    Config(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The host's directory; the id is validated first (it becomes a path).
fn host_dir(dir: &Path, host: &str) -> Result<PathBuf, LocalError> {
    let id: HostId = host
        .parse()
        .map_err(|e: backfill_shared::IdError| LocalError::Host(host.into(), e.to_string()))?;
    Ok(dir.join(id.as_str()))
}

pub fn run(cmd: LocalCommand) -> Result<(), LocalError> {
    match cmd {
        LocalCommand::Launch {
            dir,
            pki,
            link,
            host,
        } => launch(&dir, &pki, link, &host),
        LocalCommand::Delete { dir, host } => delete(&dir, &host),
    }
}

fn launch(dir: &Path, pki: &Path, link: SocketAddr, host: &str) -> Result<(), LocalError> {
    let home = host_dir(dir, host)?;
    std::fs::create_dir_all(&home).map_err(io(&home))?;
    let ca = Ca::load(pki)?;
    ca.issue_to_dir(
        &home,
        "agent",
        &IssueRequest::new(Role::Agent, host, &[], 30),
    )?;
    let root = backfill_agent::driver::running_as_root();
    let run_as = if root { "nobody" } else { "" }.to_string();
    let cfg = AgentConfig {
        coordinator: Some(link),
        coordinators: Vec::new(),
        coordinator_name: "localhost".into(),
        state_dir: home.join("state"),
        cgroup_parent: format!("backfill-local-{host}"),
        cgroups: if root {
            CgroupMode::Auto
        } else {
            CgroupMode::None
        },
        default_command: idle_command(&run_as),
        exec_driver: true,
        run_as,
        stop_workloads_on_exit: true,
        inventory_file: None,
        report_interval_secs: 2,
        coordinator_silence_secs: 30,
        normal_cpu_quota: true,
        gpu_rescan_interval_secs: 30,
        tls: backfill_shared::tls::TlsFiles {
            ca: pki.join(backfill_shared::pki::CA_CERT_FILE),
            cert: home.join("agent.pem"),
            key: home.join("agent.key"),
        },
        // Several local agents share this machine: no 169.254.169.254 listener for them.
        metadata: MetadataSettings {
            enabled: false,
            ..MetadataSettings::default()
        },
        network: Default::default(),
        pressure: Default::default(),
        container: Default::default(),
        vm: Default::default(),
        admin: AdminSettings {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Default::default()
        },
    };
    let config = home.join("agent.toml");
    let text = toml::to_string(&cfg).map_err(|e| LocalError::Config(e.to_string()))?;
    std::fs::write(&config, text).map_err(io(&config))?;
    let log = home.join("agent.log");
    let out = std::fs::File::create(&log).map_err(io(&log))?;
    let err = out.try_clone().map_err(io(&log))?;
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let child = std::process::Command::new(&exe)
        .arg("agent")
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: it outlives this command and the provisioner's timeout.
        .process_group(0)
        .spawn()
        .map_err(io(&exe))?;
    let pid = home.join("agent.pid");
    std::fs::write(&pid, child.id().to_string()).map_err(io(&pid))?;
    println!(
        "started agent {host} (pid {}), log {}",
        child.id(),
        log.display()
    );
    Ok(())
}

/// Whether `pid` is still the agent started with `config` (not a reused pid).
fn is_our_agent(pid: i32, config: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let needle = config.as_os_str().as_encoded_bytes();
            c.windows(needle.len()).any(|w| w == needle)
        })
        .unwrap_or(false)
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid was checked to be our agent.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Stops every agent launched under `dir` (dev mode, on its way out).
pub fn delete_all(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.path().join("agent.pid").exists() {
            let host = e.file_name().to_string_lossy().into_owned();
            if let Err(err) = delete(dir, &host) {
                tracing::warn!(%host, error = %err, "cannot stop a local pool agent");
            }
        }
    }
}

fn delete(dir: &Path, host: &str) -> Result<(), LocalError> {
    let home = host_dir(dir, host)?;
    let pid_file = home.join("agent.pid");
    let pid = match std::fs::read_to_string(&pid_file) {
        Ok(p) => p.trim().parse::<i32>().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no agent recorded for {host}: nothing to delete");
            return Ok(());
        }
        Err(e) => return Err(io(&pid_file)(e)),
    };
    let config = home.join("agent.toml");
    if let Some(pid) = pid.filter(|p| *p > 0 && is_our_agent(*p, &config)) {
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while is_our_agent(pid, &config) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_our_agent(pid, &config) {
            signal(pid, libc::SIGKILL);
        }
        println!("stopped agent {host} (pid {pid})");
    }
    for p in [pid_file, home.join("agent.key"), home.join("state")] {
        let removed = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(e) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io(&p)(e));
        }
    }
    Ok(())
}

/// The agent's idle workload: this binary's hidden `agent idle`, when the workload user can
/// execute it; otherwise `sleep infinity`.
pub(crate) fn idle_command(run_as: &str) -> Vec<String> {
    let fallback = vec!["sleep".to_string(), "infinity".into()];
    let Ok(exe) = std::env::current_exe() else {
        return fallback;
    };
    if backfill_agent::driver::others_can_execute(&exe) || run_as == "root" {
        vec![exe.display().to_string(), "agent".into(), "idle".into()]
    } else {
        fallback
    }
}
