//! One cgroup per server, under a configurable parent (default `backfill`) and its class parent
//! (`normal/` or `idle/`, see [`CgroupClass`]), named by the server's id. The limits come from the server's resources and its perf_factor ([`limits_for`]); the
//! [`CgroupManager`] trait has three implementations:
//!
//! - [`FsCgroups`]: the kernel's cgroup v1 or v2 filesystem, through cgroups-rs;
//! - [`NoCgroups`]: running without root: nothing is enforced, the intended limits are kept in
//!   memory so reports still show them;
//! - [`RecordingCgroups`]: an in-memory fake for unit tests, which records what was applied.

mod claim;
mod class_stats;
mod classes;
mod devices;
mod fake;
mod files;
mod fs;
mod hierarchy;
mod memory;
mod move_class;
mod stall;
mod write;

pub use claim::ParentClaim;
pub use class_stats::ClassStats;
pub use classes::{CgroupClass, V1_MAX_SHARES};
pub use devices::{
    DeviceRule, NVIDIA_CTL_MINOR, NVIDIA_MAJOR, NVIDIA_MODESET_MINOR, nvidia_rules, uvm_majors,
};
pub use fake::{Call, NoCgroups, RecordingCgroups};
pub use fs::FsCgroups;
pub use memory::{RECLAIM_SLACK_BYTES, hard_limit_now};

use backfill_shared::domain::scale;
use backfill_shared::protocol::{AppliedLimits, ServerUsage};
use backfill_shared::{PerfFactor, Resources, ServerClass, ServerId};
use std::path::PathBuf;

/// The CFS period the agent uses unless told otherwise (the kernel's default too).
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses a CFS quota below 1 ms.
pub const MIN_CPU_QUOTA_US: u64 = 1_000;
/// The kernel accepts CFS periods from 1 ms to 1 s.
pub const MIN_CPU_PERIOD_US: u64 = 1_000;
pub const MAX_CPU_PERIOD_US: u64 = 1_000_000;
/// The smallest memory limit [`limits_for`] gives (one page): a limit of 0 is never meant.
pub const MIN_MEM_LIMIT_BYTES: u64 = 4_096;
/// The parent cgroup used when the configuration names none.
pub const DEFAULT_PARENT: &str = "backfill";

/// cgroup v2's `cpu.weight` range; 100 is the kernel's default (one core's worth here).
pub const MIN_CPU_WEIGHT: u64 = 1;
pub const MAX_CPU_WEIGHT: u64 = 10_000;
pub const DEFAULT_CPU_WEIGHT: u64 = 100;
/// cgroup v1's smallest `cpu.shares`: what idle-class servers get there.
pub const V1_MIN_SHARES: u64 = 2;

/// A server's CPU weight against its neighbours when the CPU is contended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuWeight {
    /// In cgroup v2 units (`cpu.weight`, 1 to 10000); on v1 `cpu.shares` = weight x 1024 / 100.
    Weight(u64),
    /// The idle class: cgroup v2 `cpu.idle = 1` (weight 1 where the kernel lacks it); v1 the
    /// minimum `cpu.shares` (2), plus `SCHED_IDLE` for the workload's threads (the driver).
    Idle,
}

impl CpuWeight {
    /// v1 `cpu.shares` for this weight (1024 per 100, at least 3 so 2 always means idle).
    pub fn v1_shares(self) -> u64 {
        match self {
            CpuWeight::Idle => V1_MIN_SHARES,
            CpuWeight::Weight(w) => (w.saturating_mul(1024) / 100).max(V1_MIN_SHARES + 1),
        }
    }

    /// The weight v1 `cpu.shares` stand for (the inverse of [`CpuWeight::v1_shares`]).
    pub fn from_v1_shares(shares: u64) -> CpuWeight {
        if shares <= V1_MIN_SHARES {
            CpuWeight::Idle
        } else {
            CpuWeight::Weight(
                shares
                    .saturating_mul(100)
                    .div_ceil(1024)
                    .max(MIN_CPU_WEIGHT),
            )
        }
    }
}

/// Limits for one server's cgroup. `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: u64,
    /// The hard limit (v2 `memory.max`, v1 `memory.limit_in_bytes`). While a squeezed server
    /// still uses more, the kernel holds it just above its usage ([`hard_limit_now`]).
    pub mem_limit_bytes: Option<u64>,
    pub cpu_weight: CpuWeight,
    /// Where reclaim starts (v2 `memory.high`, v1 `memory.soft_limit_in_bytes`): backfill and
    /// spot servers, at their downsized size.
    pub mem_high_bytes: Option<u64>,
    /// Memory the kernel never reclaims for others (v2 `memory.min`; v1 has none): normal
    /// servers, all of theirs.
    pub mem_min_bytes: Option<u64>,
}

impl CgroupLimits {
    pub const UNLIMITED: CgroupLimits = CgroupLimits {
        cpu_quota_us: None,
        cpu_period_us: DEFAULT_CPU_PERIOD_US,
        mem_limit_bytes: None,
        cpu_weight: CpuWeight::Weight(DEFAULT_CPU_WEIGHT),
        mem_high_bytes: None,
        mem_min_bytes: None,
    };

    /// Checks the limits against what the kernel accepts, so a write never fails half-way.
    pub fn validate(&self) -> Result<(), CgroupError> {
        let bad = |why| Err(CgroupError::BadLimits { limits: *self, why });
        if !(MIN_CPU_PERIOD_US..=MAX_CPU_PERIOD_US).contains(&self.cpu_period_us) {
            return bad("the CPU period must be between 1000 and 1000000 us");
        }
        match self.cpu_quota_us {
            Some(q) if q < MIN_CPU_QUOTA_US => {
                return bad("the CPU quota must be at least 1000 us");
            }
            Some(q) if i64::try_from(q).is_err() => return bad("the CPU quota is too large"),
            _ => {}
        }
        if let CpuWeight::Weight(w) = self.cpu_weight
            && !(MIN_CPU_WEIGHT..=MAX_CPU_WEIGHT).contains(&w)
        {
            return bad("the CPU weight must be between 1 and 10000");
        }
        for m in [
            self.mem_limit_bytes,
            self.mem_high_bytes,
            self.mem_min_bytes,
        ]
        .into_iter()
        .flatten()
        {
            if m == 0 {
                return bad("a memory limit of 0 bytes");
            }
            if i64::try_from(m).is_err() {
                return bad("the memory limit is too large");
            }
        }
        Ok(())
    }
}

impl From<CgroupLimits> for AppliedLimits {
    fn from(l: CgroupLimits) -> AppliedLimits {
        AppliedLimits {
            cpu_quota_us: l.cpu_quota_us,
            cpu_period_us: l.cpu_period_us,
            mem_limit_bytes: l.mem_limit_bytes,
        }
    }
}

/// How the agent turns what a server was sold into CPU limits on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPolicy {
    /// The host's MHz per core (from discovery); 0 = unknown, and quotas follow vCPUs alone.
    pub mhz_per_core: u64,
    /// The CFS period (clamped into the kernel's 1 ms..1 s).
    pub period_us: u64,
    /// Whether normal servers are held to the MHz they were sold, or may also use idle cycles
    /// (their weight holds either way). Backfill and spot servers always have a quota.
    pub normal_quota: bool,
}

impl Default for CpuPolicy {
    fn default() -> CpuPolicy {
        CpuPolicy {
            mhz_per_core: 0,
            period_us: DEFAULT_CPU_PERIOD_US,
            normal_quota: true,
        }
    }
}

/// The limits a server gets:
///
/// - **CPU quota** = min(`cpu` MHz / host MHz per core, vCPUs) x perf_factor.cpu x period, at
///   least 1000 us (the kernel's minimum): a 200 MHz server on 2,000 MHz cores gets a tenth of
///   a core, never more cores than it has vCPUs. No MHz (or an unknown host MHz) means vCPUs x
///   period; neither means no quota. Normal servers have none when the policy says so.
/// - **CPU weight**: normal servers 100 per core sold (v2 units, 1 to 10000: the MHz they
///   were sold, not their vCPUs); backfill and spot servers the idle class, so a normal
///   server takes the CPU from them the moment it wants it, before any coordinator decision.
/// - **Memory limit** = mem_bytes x perf_factor.mem (rounded down by [`scale`], at least
///   [`MIN_MEM_LIMIT_BYTES`]); `mem_bytes == 0` means no limit. The kernel keeps memory limits
///   in pages: a limit that is not a multiple of the page size reads back rounded down.
///   Backfill and spot servers are squeezed there gently (`memory.high` / the soft limit at the
///   same size, the hard limit following their usage down); normal servers' memory is
///   protected (`memory.min`, all of it).
pub fn limits_for(
    resources: &Resources,
    perf: PerfFactor,
    class: ServerClass,
    policy: &CpuPolicy,
) -> CgroupLimits {
    let perf = perf.clamped();
    let period = policy.period_us.clamp(MIN_CPU_PERIOD_US, MAX_CPU_PERIOD_US);
    let by_vcpus = (resources.vcpus > 0).then(|| u64::from(resources.vcpus).saturating_mul(period));
    let by_mhz = (resources.cpu_mhz > 0 && policy.mhz_per_core > 0).then(|| {
        let q =
            u128::from(resources.cpu_mhz) * u128::from(period) / u128::from(policy.mhz_per_core);
        u64::try_from(q).unwrap_or(u64::MAX)
    });
    let sold = match (by_vcpus, by_mhz) {
        (Some(v), Some(m)) => Some(v.min(m)),
        (v, m) => v.or(m),
    };
    let quota_applies = class != ServerClass::Normal || policy.normal_quota;
    let cpu_quota_us = sold
        .filter(|_| quota_applies)
        .map(|full| scale(full, perf.cpu).max(MIN_CPU_QUOTA_US));
    let cpu_weight = match class {
        ServerClass::Normal => {
            let w = match by_mhz {
                Some(_) => {
                    let cores_x100 = u128::from(resources.cpu_mhz) * 100
                        / u128::from(policy.mhz_per_core.max(1));
                    u64::try_from(cores_x100).unwrap_or(MAX_CPU_WEIGHT)
                }
                None if resources.vcpus > 0 => u64::from(resources.vcpus).saturating_mul(100),
                None => DEFAULT_CPU_WEIGHT,
            };
            CpuWeight::Weight(w.clamp(MIN_CPU_WEIGHT, MAX_CPU_WEIGHT))
        }
        ServerClass::Backfill | ServerClass::Spot => CpuWeight::Idle,
    };
    let mem_limit_bytes = (resources.mem_bytes > 0)
        .then(|| scale(resources.mem_bytes, perf.mem).max(MIN_MEM_LIMIT_BYTES));
    let normal = class == ServerClass::Normal;
    CgroupLimits {
        cpu_quota_us,
        cpu_period_us: period,
        mem_limit_bytes,
        cpu_weight,
        mem_high_bytes: mem_limit_bytes.filter(|_| !normal),
        mem_min_bytes: mem_limit_bytes.filter(|_| normal),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "invalid cgroup parent {parent:?}: {why} (use '/'-separated components of A-Z a-z 0-9 . _ -)"
    )]
    BadParent { parent: String, why: &'static str },
    #[error("invalid cgroup limits {limits:?}: {why}")]
    BadLimits {
        limits: CgroupLimits,
        why: &'static str,
    },
    #[error(
        "cgroup parent {parent:?} is in use by another agent on this host ({holder}; lock {lock}): give each agent its own cgroup_parent"
    )]
    ParentInUse {
        parent: String,
        lock: PathBuf,
        holder: String,
    },
    #[error("locking {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    #[error("the cgroup of server {id} does not exist ({path})")]
    NotFound { id: ServerId, path: PathBuf },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {data:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        data: String,
        source: std::io::Error,
    },
    #[error("writing {data:?} to {path}: {source}")]
    Control {
        path: PathBuf,
        data: String,
        source: cgroups_rs::fs::error::Error,
    },
    #[error("creating {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("removing cgroup {path}: {source}")]
    RemoveCgroup {
        path: PathBuf,
        source: cgroups_rs::fs::error::Error,
    },
    #[error("{path}: unexpected contents {content:?}: {why}")]
    Parse {
        path: PathBuf,
        content: String,
        why: &'static str,
    },
    #[error("cgroup {path} still has processes {pids:?}")]
    Busy { path: PathBuf, pids: Vec<u32> },
    #[error("sending SIGKILL to pid {pid} of {path}: {source}")]
    Signal {
        pid: u32,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("processes {pids:?} are still in {path} after {rounds} rounds of SIGKILL")]
    KillTimeout {
        path: PathBuf,
        pids: Vec<u32>,
        rounds: u32,
    },
    /// Only from [`RecordingCgroups`], when a test asked for a failure.
    #[error("injected failure in {0}")]
    Injected(&'static str),
}

/// Whether the kernel enforces a server's device rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceControl {
    /// Written to the server's v1 devices cgroup.
    Enforced,
    /// Not enforced, and why: workloads are kept to their GPUs by visibility
    /// (`CUDA_VISIBLE_DEVICES`) only.
    NotEnforced(&'static str),
}

/// One server's cgroup under a configurable parent (default "backfill"), named by its ServerId.
///
/// The [`FsCgroups`] methods do blocking file-system I/O (and [`CgroupManager::kill_all`] polls
/// for up to a few seconds): call them from a blocking context.
pub trait CgroupManager: Send + Sync + std::fmt::Debug {
    /// "cgroup v1", "cgroup v2", "fake", "none (limits not enforced)"
    fn describe(&self) -> String;
    /// Whether limits are really enforced by the kernel.
    fn enforcing(&self) -> bool;
    /// Creates (or, if it already exists, keeps) the cgroup and applies limits. Idempotent.
    fn create(&self, id: &ServerId, limits: &CgroupLimits) -> Result<(), CgroupError>;
    /// Rewrites the limits of an existing cgroup (a perf_factor change). Idempotent.
    fn set_limits(&self, id: &ServerId, limits: &CgroupLimits) -> Result<(), CgroupError>;
    /// Limits in force, read back from the control files.
    fn read_limits(&self, id: &ServerId) -> Result<CgroupLimits, CgroupError>;
    /// The `cgroup.procs` files a process must write "0" into to move itself into this server's
    /// cgroup (one per v1 controller hierarchy, one for v2). The driver writes them in the child
    /// between fork and exec, so the workload never runs unlimited. Empty when not enforcing.
    fn join_files(&self, id: &ServerId) -> Result<Vec<PathBuf>, CgroupError>;
    /// The kernel's mechanisms this manager uses to protect normal servers (for the inventory):
    /// `cgroup-v1`/`cgroup-v2`, `cpu.idle`, `memory.min`, `memory.high`,
    /// `memory.soft_limit_in_bytes`. Empty when not enforcing.
    fn mechanisms(&self) -> Vec<String> {
        Vec::new()
    }
    /// The server's cgroup path below each hierarchy's root (`/<parent>/<uuid>`), as OCI
    /// runtimes take it (`linux.cgroupsPath`). `None` when not enforcing.
    fn relative_path(&self, _id: &ServerId) -> Option<String> {
        None
    }
    /// PIDs in the cgroup (empty if it does not exist).
    fn procs(&self, id: &ServerId) -> Result<Vec<u32>, CgroupError>;
    /// CPU time used (usec) and memory used (bytes), zero where unknown.
    fn usage(&self, id: &ServerId) -> Result<ServerUsage, CgroupError>;
    /// Processes of the cgroup the kernel's OOM killer has killed (0 where it cannot tell).
    fn oom_kills(&self, id: &ServerId) -> Result<u64, CgroupError> {
        let _ = id;
        Ok(0)
    }
    /// How long the server's own tasks have stalled for `r` so far (microseconds, only ever
    /// growing while its threads live): cgroup v2's per-cgroup PSI, or on v1 the run-queue
    /// wait of its threads (CPU) and its major faults at 1 ms each (memory). None where the
    /// kernel cannot tell; the host's PSI stands in then.
    fn stall_usec(
        &self,
        id: &ServerId,
        r: crate::pressure::Resource,
    ) -> Result<Option<u64>, CgroupError> {
        let _ = (id, r);
        Ok(None)
    }
    /// A class parent's quota, weight, CPU used and throttled, and stall (for the metrics).
    /// None where there are no class parents or this one does not exist (yet).
    fn class_stats(&self, class: CgroupClass) -> Result<Option<ClassStats>, CgroupError> {
        let _ = class;
        Ok(None)
    }
    /// How often the server's memory reached its own hard limit so far (v1 `memory.failcnt`,
    /// v2 `memory.events` `max`): its memory stall in a window where this grew is its own
    /// doing. 0 where unknown.
    fn memory_limit_hits(&self, id: &ServerId) -> Result<u64, CgroupError> {
        let _ = id;
        Ok(0)
    }
    /// Where each normal server's own stall is read from, for the inventory:
    /// `stall:cgroup-psi-cpu`, `stall:cgroup-psi-memory` (v2 per-cgroup PSI),
    /// `stall:v1-schedstat-cpu` (v1: its threads' run-queue wait), `stall:v1-memory` (v1:
    /// its memory events). Empty where none can be read.
    fn stall_sources(&self) -> Vec<String> {
        Vec::new()
    }
    /// SIGKILLs every process in the cgroup (repeat until empty, bounded by a few rounds with
    /// short polls).
    fn kill_all(&self, id: &ServerId) -> Result<(), CgroupError>;
    /// Removes the cgroup; Ok if it does not exist. Fails if processes remain.
    fn remove(&self, id: &ServerId) -> Result<(), CgroupError>;
    /// Server cgroups that exist under the parent (names that are not valid ServerIds are
    /// ignored), sorted.
    fn list(&self) -> Result<Vec<ServerId>, CgroupError>;
    /// Removes the (empty) parent cgroup itself: for an agent that cleans up everything on exit.
    fn remove_parent(&self) -> Result<(), CgroupError> {
        Ok(())
    }
    /// Writes device rules (in order) for an existing server cgroup: the v1 devices controller
    /// only. Where there is none, nothing is written and the answer says why.
    fn restrict_devices(
        &self,
        id: &ServerId,
        rules: &[DeviceRule],
    ) -> Result<DeviceControl, CgroupError> {
        let _ = (id, rules);
        Ok(DeviceControl::NotEnforced(
            "there are no cgroups (limits are not enforced either)",
        ))
    }
}

/// Checks a parent cgroup name: '/'-separated components of `[A-Za-z0-9._-]`, none empty, `.`
/// or `..`.
pub fn validate_parent(parent: &str) -> Result<(), CgroupError> {
    let bad = |why| {
        Err(CgroupError::BadParent {
            parent: parent.chars().take(80).collect(),
            why,
        })
    };
    if parent.is_empty() {
        return bad("it is empty");
    }
    if parent.len() > 200 {
        return bad("it is longer than 200 characters");
    }
    for comp in parent.split('/') {
        if comp.is_empty() {
            return bad("it has an empty component (leading, trailing or double '/')");
        }
        if comp == "." || comp == ".." {
            return bad("'.' and '..' are not allowed");
        }
        let ok = comp
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return bad("it has a character outside A-Z a-z 0-9 . _ -");
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn res(vcpus: u32, mem_bytes: u64) -> Resources {
        Resources {
            cpu_mhz: u64::from(vcpus) * 2000,
            vcpus,
            mem_bytes,
        }
    }

    fn pf(cpu: f64, mem: f64) -> PerfFactor {
        PerfFactor { cpu, mem }
    }

    /// A backfill server's limits with the host's MHz unknown: quotas follow vCPUs.
    fn limits_at(resources: &Resources, perf: PerfFactor, period_us: u64) -> CgroupLimits {
        let policy = CpuPolicy {
            period_us,
            ..CpuPolicy::default()
        };
        limits_for(resources, perf, ServerClass::Backfill, &policy)
    }

    #[test]
    fn full_perf_gives_whole_vcpus_and_all_memory() {
        let l = limits_at(&res(2, 512 * MIB), PerfFactor::FULL, DEFAULT_CPU_PERIOD_US);
        assert_eq!(
            l,
            CgroupLimits {
                cpu_quota_us: Some(200_000),
                cpu_period_us: 100_000,
                mem_limit_bytes: Some(512 * MIB),
                cpu_weight: CpuWeight::Idle,
                mem_high_bytes: Some(512 * MIB),
                mem_min_bytes: None,
            }
        );
        l.validate().unwrap();
    }

    #[test]
    fn half_and_quarter_perf() {
        let l = limits_at(&res(2, 512 * MIB), pf(0.5, 0.25), 100_000);
        assert_eq!(l.cpu_quota_us, Some(100_000));
        assert_eq!(l.mem_limit_bytes, Some(128 * MIB));
        let l = limits_at(&res(3, 1000), pf(0.5, 0.5), 50_000);
        assert_eq!(l.cpu_quota_us, Some(75_000));
        assert_eq!(l.cpu_period_us, 50_000);
        assert_eq!(l.mem_limit_bytes, Some(MIN_MEM_LIMIT_BYTES));
    }

    #[test]
    fn a_tenth_rounds_down() {
        // 3 vCPUs x 0.1 x 100000 = 30000.000000000004 in floating point: floor, no surprise.
        let l = limits_at(&res(3, 1_000_000_007), pf(0.1, 0.1), 100_000);
        assert_eq!(l.cpu_quota_us, Some(30_000));
        assert_eq!(l.mem_limit_bytes, Some(100_000_000));
        let l = limits_at(&res(1, 4 * MIB), pf(0.33, 0.33), 100_000);
        assert_eq!(l.cpu_quota_us, Some(33_000));
        assert_eq!(l.mem_limit_bytes, Some(1_384_120));
    }

    #[test]
    fn zero_means_unlimited() {
        let l = limits_at(&res(0, 0), pf(0.5, 0.5), 100_000);
        assert_eq!(
            l,
            CgroupLimits {
                cpu_weight: CpuWeight::Idle,
                ..CgroupLimits::UNLIMITED
            }
        );
        let l = limits_at(&res(0, 64 * MIB), pf(0.5, 0.5), 100_000);
        assert_eq!(l.cpu_quota_us, None);
        assert_eq!(l.mem_limit_bytes, Some(32 * MIB));
        let l = limits_at(&res(1, 0), pf(0.5, 0.5), 100_000);
        assert_eq!(l.cpu_quota_us, Some(50_000));
        assert_eq!(l.mem_limit_bytes, None);
    }

    #[test]
    fn the_kernel_minimums_hold() {
        // 1 vCPU at 0.001 of a 100 ms period is 100 us: below the kernel's 1 ms minimum.
        let l = limits_at(&res(1, MIB), pf(0.001, 0.0), 100_000);
        assert_eq!(l.cpu_quota_us, Some(MIN_CPU_QUOTA_US));
        assert_eq!(l.mem_limit_bytes, Some(MIN_MEM_LIMIT_BYTES));
        let l = limits_at(&res(1, MIB), pf(0.0, 0.0), 100_000);
        assert_eq!(l.cpu_quota_us, Some(MIN_CPU_QUOTA_US));
        l.validate().unwrap();
        // Out-of-range periods are clamped, NaN and > 1 perf factors are clamped to 1.
        assert_eq!(
            limits_at(&res(1, 0), pf(1.0, 1.0), 0).cpu_period_us,
            MIN_CPU_PERIOD_US
        );
        let l = limits_at(&res(2, 0), pf(f64::NAN, 7.0), 10_000_000);
        assert_eq!(l.cpu_period_us, MAX_CPU_PERIOD_US);
        assert_eq!(l.cpu_quota_us, Some(2 * MAX_CPU_PERIOD_US));
    }

    fn sold(cpu_mhz: u64, vcpus: u32) -> Resources {
        Resources {
            cpu_mhz,
            vcpus,
            mem_bytes: 0,
        }
    }

    const HOST: CpuPolicy = CpuPolicy {
        mhz_per_core: 2000,
        period_us: 100_000,
        normal_quota: true,
    };

    #[test]
    fn the_quota_follows_the_mhz_sold_capped_by_vcpus() {
        let q = |r: Resources, f: f64, class| limits_for(&r, pf(f, 1.0), class, &HOST).cpu_quota_us;
        // 200 MHz on 2,000 MHz cores: a tenth of a core, whatever its vCPUs.
        assert_eq!(q(sold(200, 1), 1.0, ServerClass::Backfill), Some(10_000));
        assert_eq!(q(sold(200, 8), 1.0, ServerClass::Backfill), Some(10_000));
        // ... times its perf_factor, at the floor too.
        assert_eq!(q(sold(200, 1), 0.5, ServerClass::Backfill), Some(5_000));
        assert_eq!(q(sold(2000, 1), 0.1, ServerClass::Spot), Some(10_000));
        // More MHz than its vCPUs can use: capped by the vCPUs.
        assert_eq!(q(sold(9000, 2), 1.0, ServerClass::Backfill), Some(200_000));
        // Tiny MHz: the kernel's 1 ms minimum.
        assert_eq!(
            q(sold(1, 1), 1.0, ServerClass::Backfill),
            Some(MIN_CPU_QUOTA_US)
        );
        assert_eq!(
            q(sold(1, 1), 0.1, ServerClass::Backfill),
            Some(MIN_CPU_QUOTA_US)
        );
        // MHz without vCPUs; vCPUs without MHz.
        assert_eq!(q(sold(3000, 0), 1.0, ServerClass::Backfill), Some(150_000));
        assert_eq!(q(sold(0, 3), 1.0, ServerClass::Backfill), Some(300_000));
        assert_eq!(q(sold(0, 0), 1.0, ServerClass::Backfill), None);
        // Huge values saturate instead of overflowing.
        assert_eq!(
            q(sold(u64::MAX, 0), 1.0, ServerClass::Backfill),
            Some(u64::MAX)
        );
        // An unknown host MHz: vCPUs alone.
        let unknown = CpuPolicy {
            mhz_per_core: 0,
            ..HOST
        };
        let l = limits_for(
            &sold(200, 2),
            PerfFactor::FULL,
            ServerClass::Backfill,
            &unknown,
        );
        assert_eq!(l.cpu_quota_us, Some(200_000));
    }

    #[test]
    fn normal_servers_weigh_their_mhz_and_may_go_without_a_quota() {
        let l = limits_for(&sold(3000, 4), PerfFactor::FULL, ServerClass::Normal, &HOST);
        assert_eq!(
            (l.cpu_quota_us, l.cpu_weight),
            (Some(150_000), CpuWeight::Weight(150))
        );
        let burst = CpuPolicy {
            normal_quota: false,
            ..HOST
        };
        let l = limits_for(
            &sold(3000, 4),
            PerfFactor::FULL,
            ServerClass::Normal,
            &burst,
        );
        assert_eq!(
            (l.cpu_quota_us, l.cpu_weight),
            (None, CpuWeight::Weight(150))
        );
        // Backfill and spot keep their quota under that policy, and are idle-class.
        for class in [ServerClass::Backfill, ServerClass::Spot] {
            let l = limits_for(&sold(3000, 4), PerfFactor::FULL, class, &burst);
            assert_eq!(
                (l.cpu_quota_us, l.cpu_weight),
                (Some(150_000), CpuWeight::Idle)
            );
        }
        // The weight's range holds at the edges.
        let w = |mhz, vcpus| {
            limits_for(
                &sold(mhz, vcpus),
                PerfFactor::FULL,
                ServerClass::Normal,
                &HOST,
            )
            .cpu_weight
        };
        assert_eq!(w(1, 1), CpuWeight::Weight(MIN_CPU_WEIGHT));
        assert_eq!(w(u64::MAX, 0), CpuWeight::Weight(MAX_CPU_WEIGHT));
        assert_eq!(w(0, 2), CpuWeight::Weight(200));
        assert_eq!(w(0, 0), CpuWeight::Weight(DEFAULT_CPU_WEIGHT));
        for mhz in [1, 200, 2000, 3000, 123_456, u64::MAX] {
            limits_for(&sold(mhz, 1), PerfFactor::FULL, ServerClass::Normal, &HOST)
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn v1_shares_round_trip_and_two_means_idle() {
        assert_eq!(CpuWeight::Idle.v1_shares(), 2);
        assert_eq!(CpuWeight::from_v1_shares(2), CpuWeight::Idle);
        assert_eq!(CpuWeight::Weight(100).v1_shares(), 1024);
        for w in (MIN_CPU_WEIGHT..=1000).chain([9_999, MAX_CPU_WEIGHT]) {
            let shares = CpuWeight::Weight(w).v1_shares();
            assert!(shares > V1_MIN_SHARES, "{w}");
            assert_eq!(
                CpuWeight::from_v1_shares(shares),
                CpuWeight::Weight(w),
                "{w}"
            );
        }
    }

    #[test]
    fn validate_refuses_what_the_kernel_refuses() {
        let ok = CgroupLimits::UNLIMITED;
        ok.validate().unwrap();
        for bad in [
            CgroupLimits {
                cpu_period_us: 0,
                ..ok
            },
            CgroupLimits {
                cpu_period_us: 2_000_000,
                ..ok
            },
            CgroupLimits {
                cpu_quota_us: Some(999),
                ..ok
            },
            CgroupLimits {
                cpu_quota_us: Some(u64::MAX),
                ..ok
            },
            CgroupLimits {
                mem_limit_bytes: Some(0),
                ..ok
            },
            CgroupLimits {
                mem_limit_bytes: Some(u64::MAX),
                ..ok
            },
            CgroupLimits {
                cpu_weight: CpuWeight::Weight(0),
                ..ok
            },
            CgroupLimits {
                cpu_weight: CpuWeight::Weight(10_001),
                ..ok
            },
        ] {
            let e = bad.validate().unwrap_err();
            assert!(matches!(e, CgroupError::BadLimits { .. }), "{e}");
        }
    }

    #[test]
    fn parent_names() {
        for good in ["backfill", "a/b", "backfill-test-12.x_y"] {
            validate_parent(good).unwrap();
        }
        for bad in [
            "", "..", ".", "a/../b", "/abs", "a/", "a//b", "a b", "é", "a\0b",
        ] {
            let e = validate_parent(bad).unwrap_err();
            assert!(matches!(e, CgroupError::BadParent { .. }), "{bad:?}: {e}");
        }
        assert!(validate_parent(&"x".repeat(201)).is_err());
    }

    #[test]
    fn errors_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<CgroupError>();
        send_sync::<crate::discovery::DiscoveryError>();
    }

    #[test]
    fn applied_limits_conversion() {
        let l = limits_at(&res(2, MIB), PerfFactor::FULL, 100_000);
        let a = AppliedLimits::from(l);
        assert_eq!(a.cpu_quota_us, Some(200_000));
        assert_eq!(a.cpu_period_us, 100_000);
        assert_eq!(a.mem_limit_bytes, Some(MIB));
    }
}
