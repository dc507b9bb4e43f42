//! The `container` driver: OCI images pulled from a registry, run by an OCI runtime (runc) as
//! a program.
//!
//! - Images: pulled by reference (or copied from an OCI layout directory, [`layout`]) into a
//!   content-addressed cache under `<state_dir>/images`
//!   (layer digests verified, size-bounded, LRU eviction; [`cache`], [`image`]), unpacked once
//!   per image, safely ([`unpack`]).
//! - Each run: a bundle `<state_dir>/containers/<uuid>/` with an overlayfs root (the shared
//!   unpacked image read-only below, the run's own writable layer above; dropped when the run
//!   ends), generated `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, and a `config.json`
//!   ([`spec`]): the image's entrypoint, environment and working directory with the
//!   workload's overrides, a non-root user, the server's cgroup (`linux.cgroupsPath`; no CPU
//!   or memory resources, so the agent's limits stand), its network namespace, its hostname,
//!   a minimal capability bounding set, no new privileges, a seccomp filter, Docker's masked
//!   and read-only paths.
//! - The runtime (`runc --root <state_dir>/runc`, so agents never see each other's
//!   containers): `create` (the init waits in its cgroup; backfill and spot get SCHED_IDLE
//!   here, which everything it starts inherits), then `start`. The container's init (from the
//!   pid file) is the process the supervisor watches; runc does not stay (the init's parent
//!   is the host's init or subreaper, which reaps it; a zombie counts as gone).
//! - The container id is the server's uuid, so a restarted agent's `request_shutdown`
//!   (`runc kill <id> TERM`) and `release` (`runc delete --force`, unmount, remove the
//!   bundle) find what an earlier agent process started.
//!
//! - Users: by default no user namespace; the container runs as the agent's `run_as` user
//!   (an image's numeric non-root user is kept), holding no capabilities. With
//!   `[container] userns_base` each container gets a user namespace mapping its ids 0..65536
//!   to host ids from there: its root is root of its namespace only. runc 1.1 has no
//!   id-mapped mounts, so the shared image stays owned by host root (readable, and the
//!   mount points runc needs are made at unpack time); the bundle must be reachable (o+x)
//!   by the mapped root; and such containers have no /sys (sysfs cannot be mounted from a
//!   user namespace that does not own the network namespace the agent made).
//!
//! Not here (yet): GPU device nodes inside containers (the GPU variables are passed; the
//! device cgroup allows only the usual nodes), registry credentials, a writable layer size
//! bound (it lives in the state directory, dropped with the run).

mod cache;
mod config;
mod image;
mod layout;
mod runtime;
mod spec;
mod unpack;

pub use config::ContainerConfig;
pub use image::{ImageRef, parse_reference};

use super::{DriverError, Launch, Launched, ProcessIdentity};
use backfill_shared::{DriverKind, ServerId};
use cache::{Cache, io};
use runtime::Runtime;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What can go wrong running containers.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("{0}")]
    Registry(String),
    #[error("blob {expected} is corrupt: what the registry sent hashes to {actual}")]
    Digest { expected: String, actual: String },
    #[error("blob {digest} is larger than the {size} bytes its manifest says")]
    Oversized { digest: String, size: u64 },
    #[error(
        "the image needs at least {need} bytes; the image cache holds at most {max} bytes ([container] cache_max_bytes)"
    )]
    TooLarge { need: u64, max: u64 },
    #[error(
        "the image cache is full ({used} of {max} bytes, [container] cache_max_bytes) with images in use; {need} more bytes do not fit"
    )]
    CacheFull { used: u64, need: u64, max: u64 },
    #[error("layer {layer}: {reason}")]
    Layer { layer: String, reason: String },
    #[error("image config: {0}")]
    Config(String),
    #[error("the pull took longer than {secs} s ([container] pull_timeout_secs)")]
    Timeout { secs: u64 },
    #[error(
        "image {reference} is still being pulled after {waited} s; it goes on in the background: start the server again in a while"
    )]
    StillPulling { reference: String, waited: u64 },
    #[error("{command}: {reason}")]
    Runtime { command: String, reason: String },
    #[error("mount {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<ContainerError> for DriverError {
    fn from(e: ContainerError) -> DriverError {
        DriverError::Failed(e.to_string())
    }
}

/// The `container` driver of this agent.
#[derive(Debug)]
pub struct ContainerDriver {
    runtime: Runtime,
    version: String,
    cache: Arc<Cache>,
    puller: image::Puller,
    /// `<state_dir>/containers`: one bundle per running server.
    bundles: PathBuf,
    readonly: bool,
    launch_wait: Duration,
    userns_base: Option<u32>,
}

impl ContainerDriver {
    /// The driver, or why this host cannot run containers (no runtime, not root).
    pub fn new(cfg: &ContainerConfig, state_dir: &Path) -> Result<ContainerDriver, ContainerError> {
        let version = Runtime::version(&cfg.runtime).map_err(|reason| ContainerError::Runtime {
            command: cfg.runtime.display().to_string(),
            reason,
        })?;
        if !super::running_as_root() {
            return Err(ContainerError::Runtime {
                command: version,
                reason: "containers need an agent running as root".into(),
            });
        }
        ContainerConfig::check_state_dir(state_dir).map_err(|reason| ContainerError::Runtime {
            command: version.clone(),
            reason,
        })?;
        let root = state_dir.join("runc");
        let bundles = state_dir.join("containers");
        for d in [&root, &bundles] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let cache = Arc::new(Cache::new(&state_dir.join("images"), cfg.cache_max_bytes)?);
        cache.sweep();
        let puller = image::Puller::new(
            cache.clone(),
            image::PullOptions {
                insecure: cfg.insecure_registries.clone(),
                layouts_dir: cfg.layouts_dir.clone(),
                timeout: Duration::from_secs(cfg.pull_timeout_secs),
            },
        )?;
        Ok(ContainerDriver {
            runtime: Runtime {
                program: cfg.runtime.clone(),
                root,
            },
            version,
            cache,
            puller,
            bundles,
            readonly: cfg.readonly_rootfs,
            launch_wait: image::LAUNCH_WAIT.min(Duration::from_secs(cfg.pull_timeout_secs)),
            userns_base: cfg.userns_base,
        })
    }

    /// The driver if this host can run containers; otherwise a warning saying why, and `None`.
    pub fn detect(cfg: &ContainerConfig, state_dir: &Path) -> Option<ContainerDriver> {
        if !cfg.enabled {
            return None;
        }
        match ContainerDriver::new(cfg, state_dir) {
            Ok(d) => {
                tracing::info!(runtime = %d.version, "container driver ready");
                Some(d)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no container driver on this host");
                None
            }
        }
    }

    fn bundle(&self, id: &ServerId) -> PathBuf {
        self.bundles.join(id.to_string())
    }

    /// Whether the init of the server's container (its pid file) still runs.
    fn init_alive(&self, id: &ServerId) -> bool {
        let pid_file = self.bundle(id).join("init.pid");
        match std::fs::read_to_string(&pid_file) {
            Ok(text) => text
                .trim()
                .parse::<u32>()
                .ok()
                .and_then(ProcessIdentity::of)
                .is_some(),
            // No pid file yet: a bundle being made (launch holds the supervisor's lock, so
            // not now) or a create that failed; either way nothing runs.
            Err(_) => false,
        }
    }

    /// Images that bundles use (never evicted).
    fn images_in_use(&self) -> BTreeSet<String> {
        std::fs::read_dir(&self.bundles)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("image")).ok())
            .map(|s| s.trim().to_owned())
            .collect()
    }

    fn try_launch(&self, l: &Launch<'_>, bundle: &Path) -> Result<Launched, ContainerError> {
        let id = l.server.to_string();
        let c = l
            .workload
            .container
            .as_ref()
            .ok_or_else(|| ContainerError::Config("not a container workload".into()))?;
        let started = std::time::Instant::now();
        let image = self
            .puller
            .get(&c.image, self.launch_wait, self.images_in_use())
            .map_err(|e| match e {
                e @ ContainerError::StillPulling { .. } => e,
                e => ContainerError::Registry(format!("image {}: {e}", c.image)),
            })?;
        let pulled_ms = started.elapsed().as_millis() as u64;
        self.cache.pin(&image.manifest);
        let r = self.make_bundle(l, bundle, &image, c.workdir.as_deref());
        self.cache.unpin(&image.manifest);
        r?;
        let pid_file = bundle.join("init.pid");
        self.runtime.create(&id, bundle, &pid_file, l.log_file)?;
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(io(&pid_file))?
            .trim()
            .parse::<u32>()
            .map_err(|e| ContainerError::Runtime {
                command: "runc create".into(),
                reason: format!("{}: {e}", pid_file.display()),
            })?;
        if super::Yielding::for_class(l.class).sched_idle {
            set_sched_idle(pid);
        }
        self.runtime.start(&id)?;
        let process = ProcessIdentity::of(pid).ok_or_else(|| ContainerError::Runtime {
            command: "runc start".into(),
            reason: format!("the container exited at once; see {}", l.log_file.display()),
        })?;
        tracing::info!(server = %l.server, image = %c.image, pid, pulled_ms, ms = started.elapsed().as_millis() as u64, "container started");
        Ok(Launched {
            process,
            child: None,
        })
    }

    fn make_bundle(
        &self,
        l: &Launch<'_>,
        bundle: &Path,
        image: &cache::ImageRecord,
        workdir: Option<&str>,
    ) -> Result<(), ContainerError> {
        let (upper, work, rootfs, etc) = (
            bundle.join("upper"),
            bundle.join("work"),
            bundle.join("rootfs"),
            bundle.join("etc"),
        );
        for d in [bundle, &upper, &work, &rootfs, &etc] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let image_file = bundle.join("image");
        std::fs::write(&image_file, &image.manifest).map_err(io(&image_file))?;
        let hostname = &l.guest.hostname;
        let address = l
            .network
            .map_or_else(|| "127.0.1.1".to_owned(), |n| n.address.to_string());
        let files = [
            (
                "hosts",
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
                ),
            ),
            ("hostname", format!("{hostname}\n")),
            ("resolv.conf", resolv_conf()),
        ];
        for (name, text) in &files {
            let p = etc.join(name);
            std::fs::write(&p, text).map_err(io(&p))?;
        }
        let (hosts, host_name, resolv) = (
            etc.join("hosts"),
            etc.join("hostname"),
            etc.join("resolv.conf"),
        );
        if let Some(base) = self.userns_base {
            // runc sets the container up as its mapped root: it must reach the bundle, and
            // own the writable layer.
            if !super::others_can_execute(bundle) {
                return Err(ContainerError::Runtime {
                    command: "user namespace".into(),
                    reason: format!(
                        "{} and every directory above it must be o+x for the container's mapped root ([container] userns_base)",
                        bundle.display()
                    ),
                });
            }
            for d in [&upper, &work] {
                std::os::unix::fs::chown(d, Some(base), Some(base)).map_err(io(d))?;
            }
        }
        runtime::mount_overlay(&self.cache.rootfs(&image.manifest), &upper, &work, &rootfs)?;
        let run_as = l.run_as.unwrap_or(super::RunAs {
            uid: 65534,
            gid: 65534,
        });
        let netns = l.network.map(crate::network::GuestNet::netns_path);
        let server = l.server.to_string();
        let json = spec::config_json(&spec::RunSpec {
            image: &image.config,
            command: &l.workload.command,
            env: &[l.env],
            workdir,
            rootfs: &rootfs,
            readonly: self.readonly,
            hostname,
            netns: netns.as_deref(),
            cgroups_path: l.cgroup_path.as_deref(),
            uid: run_as.uid,
            gid: run_as.gid,
            oom_score_adj: super::Yielding::for_class(l.class).oom_score_adj,
            etc_files: &[
                ("/etc/hosts", &hosts),
                ("/etc/hostname", &host_name),
                ("/etc/resolv.conf", &resolv),
            ],
            server: &server,
            userns_base: self.userns_base,
        });
        let cfg = bundle.join("config.json");
        let text = serde_json::to_vec_pretty(&json).map_err(|e| ContainerError::Io {
            path: cfg.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&cfg, text).map_err(io(&cfg))
    }

    /// Removes a run's container, mount and bundle; quiet about what is already gone.
    fn remove_run(&self, id: &ServerId) {
        let bundle = self.bundle(id);
        let state = self.runtime.root.join(id.to_string());
        if state.exists()
            && let Err(e) = self.runtime.delete(&id.to_string())
        {
            tracing::warn!(server = %id, error = %e, "cannot delete the container");
        }
        if !bundle.exists() {
            return;
        }
        reap_if_ours(&bundle.join("init.pid"));
        let rootfs = bundle.join("rootfs");
        match runtime::unmount(&rootfs) {
            Ok(()) if !runtime::is_mounted(&rootfs) => {
                if let Err(e) = std::fs::remove_dir_all(&bundle) {
                    tracing::warn!(server = %id, path = %bundle.display(), error = %e, "cannot remove the container bundle");
                }
            }
            Ok(()) => {
                tracing::warn!(server = %id, path = %rootfs.display(), "the container's root is still mounted; its bundle stays")
            }
            Err(e) => {
                tracing::warn!(server = %id, error = %e, "cannot unmount the container's root")
            }
        }
    }
}

/// The host's resolver configuration, without loopback name servers (unreachable from the
/// container's own network namespace).
fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    host.lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            !(w.next() == Some("nameserver")
                && w.next()
                    .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                    .is_some_and(|a| a.is_loopback()))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The container's init is re-parented when runc exits: to the host's init, or to the
/// nearest subreaper, which could be this agent's process (a service manager may make it
/// one). Then it is ours to reap; otherwise waitpid answers ECHILD and nothing happens.
fn reap_if_ours(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return;
    };
    let mut status = 0;
    // SAFETY: waitpid writes only `status`, a live local; WNOHANG never blocks.
    unsafe {
        libc::waitpid(pid, &mut status, libc::WNOHANG);
    }
}

/// Backfill and spot yield the CPU: SCHED_IDLE for the container's init before it runs the
/// workload (inherited by everything it starts). runc 1.1 has no `process.scheduler`.
fn set_sched_idle(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`, a live local; pid is a process we created.
    let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::warn!(pid, error = %std::io::Error::last_os_error(), "cannot give the container SCHED_IDLE");
    }
}

impl super::Driver for ContainerDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Container
    }

    fn launch(&self, l: &Launch<'_>) -> Result<Launched, DriverError> {
        let bundle = self.bundle(&l.server);
        // A run of this server the agent lost track of: gone first.
        self.remove_run(&l.server);
        match self.try_launch(l, &bundle) {
            Ok(launched) => Ok(launched),
            Err(e) => {
                self.remove_run(&l.server);
                Err(e.into())
            }
        }
    }

    fn request_shutdown(&self, server: &ServerId, process: &ProcessIdentity) {
        if !super::alive(process) {
            return;
        }
        if let Err(e) = self.runtime.kill(&server.to_string(), "TERM") {
            tracing::debug!(server = %server, error = %e, "runc kill failed; signalling the init");
            super::terminate_group(process.pid);
        }
    }

    fn release(&self, server: &ServerId) {
        self.remove_run(server);
    }

    fn sweep(&self, keep: &[ServerId]) {
        let keep: BTreeSet<String> = keep.iter().map(ToString::to_string).collect();
        // Bundles of servers no longer here, and of runs that ended while no agent watched
        // (a restarted agent does not release those). The supervisor calls this under its
        // lock, after starting what it starts: every live run's init is alive.
        let stale: Vec<ServerId> = std::fs::read_dir(&self.bundles)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| Some((n.parse::<ServerId>().ok()?, n)))
            .filter(|(id, n)| !keep.contains(n) || !self.init_alive(id))
            .map(|(id, _)| id)
            .collect();
        for id in stale {
            tracing::info!(server = %id, "removing a container that no longer runs");
            self.remove_run(&id);
        }
        // The image cache's own leftovers are swept when the driver starts, not here: a
        // pull in flight owns its scratch files.
    }

    fn report(&self, into: &mut backfill_shared::Drivers) {
        into.container = Some(backfill_shared::ContainerDriver {
            runtime: self.version.clone(),
        });
    }
}

#[cfg(test)]
mod tests;
