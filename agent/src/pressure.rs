//! Pressure stall information (PSI): how long tasks waited for CPU or memory. The kernel wakes
//! a watcher the moment stalls pass a threshold within a window (a PSI trigger on
//! `/proc/pressure/<resource>`, polled for `POLLPRI`), so the agent can squeeze backfill
//! within milliseconds instead of waiting for its next round or for the coordinator.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The kernel's bounds on a trigger's window.
const MIN_WINDOW_MS: u64 = 500;
const MAX_WINDOW_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum PressureError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A resource PSI reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    pub const ALL: [Resource; 2] = [Resource::Cpu, Resource::Memory];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        }
    }
}

/// `[pressure]` in the agent's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PressureSettings {
    /// Watch PSI and squeeze backfill when normal servers share the host with it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Milliseconds of CPU stall ("some" tasks waiting) within `window_ms` that trigger.
    #[serde(default = "default_cpu_stall")]
    pub cpu_stall_ms: u64,
    /// Milliseconds of memory stall within `window_ms` that trigger.
    #[serde(default = "default_memory_stall")]
    pub memory_stall_ms: u64,
    /// The trigger's window, 500 to 10000 ms (the kernel's bounds).
    #[serde(default = "default_window")]
    pub window_ms: u64,
    /// The perf_factor backfill and spot servers are squeezed to (0.01 to 1).
    #[serde(default = "default_floor")]
    pub floor: f64,
    /// Seconds without a trigger after which squeezed servers get their own limits back.
    #[serde(default = "default_release")]
    pub release_secs: u64,
    /// How often (milliseconds) the normal servers' own stall is read (their cgroup's PSI on
    /// v2, their threads' run-queue wait on v1); 0 turns the poller off and leaves the
    /// host's PSI triggers alone.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    /// Milliseconds a normal server may stall within `server_window_ms` before backfill is
    /// squeezed.
    #[serde(default = "default_server_stall")]
    pub server_stall_ms: u64,
    /// The poller's window, 10 to 10000 ms.
    #[serde(default = "default_server_window")]
    pub server_window_ms: u64,
}

/// When a normal server's stall is pressure: `stall_us` within the trailing `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallPolicy {
    pub stall_us: u64,
    pub window_ms: u64,
}

fn default_true() -> bool {
    true
}
fn default_cpu_stall() -> u64 {
    100
}
fn default_memory_stall() -> u64 {
    50
}
fn default_window() -> u64 {
    1_000
}
fn default_floor() -> f64 {
    0.1
}
fn default_release() -> u64 {
    30
}
fn default_poll() -> u64 {
    10
}
/// 10% of a second, as the host's CPU trigger: on cgroup v1 a normal server beside SCHED_IDLE
/// backfill still waits now and then for 25 to 50 ms within 100 ms (group entities are not
/// idle on v1), which squeezed backfill to its floor for most of its life at 10 ms in 100 ms
/// and protected nothing (tests/bench/interference.sh; docs/isolation.md). Real contention
/// still fires within about this many ms of stall.
fn default_server_stall() -> u64 {
    100
}
fn default_server_window() -> u64 {
    1_000
}

impl Default for PressureSettings {
    fn default() -> PressureSettings {
        PressureSettings {
            enabled: true,
            cpu_stall_ms: default_cpu_stall(),
            memory_stall_ms: default_memory_stall(),
            window_ms: default_window(),
            floor: default_floor(),
            release_secs: default_release(),
            poll_ms: default_poll(),
            server_stall_ms: default_server_stall(),
            server_window_ms: default_server_window(),
        }
    }
}

impl PressureSettings {
    /// Checks the values against what the kernel accepts; `(key, reason)` on error.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&self.window_ms) {
            return Err((
                "pressure.window_ms",
                format!("must be {MIN_WINDOW_MS} to {MAX_WINDOW_MS}"),
            ));
        }
        for (key, stall) in [
            ("pressure.cpu_stall_ms", self.cpu_stall_ms),
            ("pressure.memory_stall_ms", self.memory_stall_ms),
        ] {
            if stall == 0 || stall > self.window_ms {
                return Err((key, "must be 1 to window_ms".into()));
            }
        }
        if !(0.01..=1.0).contains(&self.floor) {
            return Err(("pressure.floor", "must be 0.01 to 1".into()));
        }
        if !(1..=3600).contains(&self.release_secs) {
            return Err(("pressure.release_secs", "must be 1 to 3600".into()));
        }
        if self.poll_ms > 1_000 {
            return Err(("pressure.poll_ms", "must be 0 (off) to 1000".into()));
        }
        if !(10..=MAX_WINDOW_MS).contains(&self.server_window_ms) {
            return Err((
                "pressure.server_window_ms",
                format!("must be 10 to {MAX_WINDOW_MS}"),
            ));
        }
        if self.server_stall_ms == 0 || self.server_stall_ms > self.server_window_ms {
            return Err((
                "pressure.server_stall_ms",
                "must be 1 to server_window_ms".into(),
            ));
        }
        Ok(())
    }

    /// The stall poller's policy (see [`StallPolicy`]).
    pub fn stall_policy(&self) -> StallPolicy {
        StallPolicy {
            stall_us: self.server_stall_ms.saturating_mul(1000),
            window_ms: self.server_window_ms,
        }
    }

    /// What is written to `/proc/pressure/<resource>` to register a trigger.
    pub fn trigger(&self, resource: Resource) -> String {
        let stall = match resource {
            Resource::Cpu => self.cpu_stall_ms,
            Resource::Memory => self.memory_stall_ms,
        };
        trigger_line(stall * 1000, self.window_ms * 1000)
    }
}

/// A PSI trigger: "some" stalls of `stall_us` within `window_us`.
pub fn trigger_line(stall_us: u64, window_us: u64) -> String {
    format!("some {stall_us} {window_us}")
}

/// The window the kernel requires of a process without CAP_SYS_RESOURCE (a multiple of 2 s;
/// such triggers are checked only every 2 s).
const UNPRIVILEGED_WINDOW_US: u64 = 2_000_000;

/// `trigger` as a process without CAP_SYS_RESOURCE may register it: the same share of stall
/// over a 2 s window. `None` when it already is one.
pub fn unprivileged(trigger: &str) -> Option<String> {
    let mut f = trigger.split_whitespace();
    let (kind, stall, window) = (f.next()?, f.next()?, f.next()?);
    let (stall, window): (u64, u64) = (stall.parse().ok()?, window.parse().ok()?);
    if window % UNPRIVILEGED_WINDOW_US == 0 || window == 0 {
        return None;
    }
    let scaled = (u128::from(stall) * u128::from(UNPRIVILEGED_WINDOW_US) / u128::from(window))
        .clamp(1, u128::from(UNPRIVILEGED_WINDOW_US));
    Some(format!("{kind} {scaled} {UNPRIVILEGED_WINDOW_US}"))
}

/// The "some" line's 10-second average (percent) of a PSI file's text.
pub fn some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

/// The "some" line's total (microseconds stalled since boot) of a PSI file's text.
pub fn some_total_us(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))
        .and_then(|v| v.parse().ok())
}

/// Whether this process has CAP_SYS_RESOURCE (PSI triggers with windows under 2 s need it).
pub fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Calls `tick` with the milliseconds since the start (a monotonic clock) every `every`, from
/// a thread of its own, until it answers false.
pub fn poll_every(
    every: std::time::Duration,
    mut tick: impl FnMut(u64) -> bool + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let started = std::time::Instant::now();
    std::thread::Builder::new()
        .name("stall-poll".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                if !tick(now_ms) {
                    return;
                }
            }
        })
}

/// Where the host's PSI files are.
#[derive(Debug, Clone)]
pub struct PsiFiles {
    dir: PathBuf,
}

impl Default for PsiFiles {
    fn default() -> PsiFiles {
        PsiFiles {
            dir: PathBuf::from("/proc/pressure"),
        }
    }
}

impl PsiFiles {
    pub fn at(dir: &Path) -> PsiFiles {
        PsiFiles {
            dir: dir.to_owned(),
        }
    }

    pub fn path(&self, r: Resource) -> PathBuf {
        self.dir.join(r.as_str())
    }

    /// Whether this kernel reports PSI (CONFIG_PSI, not disabled with psi=0).
    pub fn available(&self) -> bool {
        std::fs::read_to_string(self.path(Resource::Cpu)).is_ok()
    }

    /// The "some" avg10 of `r` in percent, 0 where unknown.
    pub fn avg10(&self, r: Resource) -> f64 {
        std::fs::read_to_string(self.path(r))
            .ok()
            .and_then(|t| some_avg10(&t))
            .unwrap_or(0.0)
    }

    /// Registers a trigger on `r` and calls `on_event` from a thread of its own each time the
    /// kernel signals it. The thread ends when `on_event` answers false or the file fails.
    pub fn watch(
        &self,
        r: Resource,
        trigger: &str,
        mut on_event: impl FnMut() -> bool + Send + 'static,
    ) -> Result<std::thread::JoinHandle<()>, PressureError> {
        let path = self.path(r);
        let io = |source| PressureError::Io {
            path: path.clone(),
            source,
        };
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
        };
        // The trigger's text must arrive in one write, NUL-terminated.
        let register = |file: &mut std::fs::File, t: &str| {
            let mut line = t.as_bytes().to_vec();
            line.push(0);
            file.write_all(&line)
        };
        let mut file = open().map_err(io)?;
        if let Err(e) = register(&mut file, trigger) {
            // Without CAP_SYS_RESOURCE the kernel takes only 2 s windows.
            let fallback = unprivileged(trigger)
                .filter(|_| e.kind() == std::io::ErrorKind::InvalidInput)
                .ok_or_else(|| io(e))?;
            file = open().map_err(io)?;
            register(&mut file, &fallback).map_err(io)?;
            tracing::warn!(resource = r.as_str(), %trigger, %fallback, "no CAP_SYS_RESOURCE: the kernel checks this trigger every 2 s instead of at once");
        }
        let name = format!("psi-{}", r.as_str());
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                loop {
                    let mut fd = libc::pollfd {
                        fd: file.as_raw_fd(),
                        events: libc::POLLPRI,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
                    let n = unsafe { libc::poll(&mut fd, 1, -1) };
                    if n < 0 {
                        let err = std::io::Error::last_os_error();
                        if err.kind() == std::io::ErrorKind::Interrupted {
                            continue;
                        }
                        tracing::warn!(path = %path.display(), error = %err, "PSI watch ended");
                        return;
                    }
                    if fd.revents & libc::POLLERR != 0 {
                        tracing::warn!(path = %path.display(), "PSI trigger was removed by the kernel");
                        return;
                    }
                    if fd.revents & libc::POLLPRI != 0 && !on_event() {
                        return;
                    }
                }
            })
            .map_err(|source| PressureError::Io {
                path: self.path(r),
                source,
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::{Duration, Instant};

    #[test]
    fn parses_the_kernels_lines() {
        let text = "some avg10=68.16 avg60=80.79 avg300=82.36 total=5816818162\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_avg10(text), Some(68.16));
        assert_eq!(some_total_us(text), Some(5_816_818_162));
        assert_eq!(some_total_us("full total=1"), None);
        assert_eq!(some_avg10("full avg10=1.00"), None);
        assert_eq!(some_avg10(""), None);
    }

    #[test]
    fn unprivileged_triggers_keep_the_share_of_stall() {
        assert_eq!(
            unprivileged("some 100000 1000000").as_deref(),
            Some("some 200000 2000000")
        );
        assert_eq!(
            unprivileged("some 10000 500000").as_deref(),
            Some("some 40000 2000000")
        );
        assert_eq!(unprivileged("some 1 2000000"), None);
        assert_eq!(unprivileged("garbage"), None);
    }

    #[test]
    fn triggers_and_their_bounds() {
        let s = PressureSettings::default();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.trigger(Resource::Cpu), "some 100000 1000000");
        assert_eq!(s.trigger(Resource::Memory), "some 50000 1000000");
        for bad in [
            PressureSettings {
                window_ms: 100,
                ..PressureSettings::default()
            },
            PressureSettings {
                cpu_stall_ms: 2_000,
                ..PressureSettings::default()
            },
            PressureSettings {
                floor: 0.0,
                ..PressureSettings::default()
            },
            PressureSettings {
                release_secs: 0,
                ..PressureSettings::default()
            },
            PressureSettings {
                poll_ms: 5_000,
                ..PressureSettings::default()
            },
            PressureSettings {
                server_window_ms: 5,
                ..PressureSettings::default()
            },
            PressureSettings {
                server_stall_ms: 2_000,
                ..PressureSettings::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    /// The real kernel: a trigger on CPU stalls fires while more threads spin than there are
    /// CPUs. Needs PSI and root (unprivileged triggers need windows of whole seconds).
    #[test]
    fn a_real_trigger_fires_under_cpu_contention() {
        let psi = PsiFiles::default();
        if !psi.available() || !crate::driver::running_as_root() {
            eprintln!("skipped: needs /proc/pressure and root");
            return;
        }
        let (tx, rx) = mpsc::channel();
        let fired = Arc::new(AtomicU64::new(0));
        let count = fired.clone();
        psi.watch(Resource::Cpu, &trigger_line(10_000, 500_000), move || {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(());
            false
        })
        .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let spinners: Vec<_> = (0..cpus * 3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    let until = Instant::now() + Duration::from_secs(20);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    x
                })
            })
            .collect();
        let got = rx.recv_timeout(Duration::from_secs(20));
        stop.store(true, Ordering::Relaxed);
        for s in spinners {
            let _ = s.join();
        }
        assert!(got.is_ok(), "no PSI event under contention");
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }
}
