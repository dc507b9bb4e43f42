//! The domain (DESIGN.md §2): resources in MHz and bytes, hosts and their inventory, servers,
//! classes, perf_factor. Accounting is integer and saturating; only `perf_factor` is a float.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// CPU in MHz (CloudSigma's unit), whole vCPUs (`smp`), memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_mhz: u64,
    pub vcpus: u32,
    pub mem_bytes: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_mhz: 0,
        vcpus: 0,
        mem_bytes: 0,
    };

    pub fn saturating_add(self, o: Resources) -> Resources {
        Resources {
            cpu_mhz: self.cpu_mhz.saturating_add(o.cpu_mhz),
            vcpus: self.vcpus.saturating_add(o.vcpus),
            mem_bytes: self.mem_bytes.saturating_add(o.mem_bytes),
        }
    }

    pub fn saturating_sub(self, o: Resources) -> Resources {
        Resources {
            cpu_mhz: self.cpu_mhz.saturating_sub(o.cpu_mhz),
            vcpus: self.vcpus.saturating_sub(o.vcpus),
            mem_bytes: self.mem_bytes.saturating_sub(o.mem_bytes),
        }
    }

    /// Whether `need` fits inside `self` on every dimension.
    pub fn fits(&self, need: &Resources) -> bool {
        need.cpu_mhz <= self.cpu_mhz && need.vcpus <= self.vcpus && need.mem_bytes <= self.mem_bytes
    }

    /// The resources actually granted at a perf_factor (rounded down, never below 1 MHz/byte
    /// when the request was non-zero).
    pub fn scaled(&self, pf: PerfFactor) -> Resources {
        Resources {
            cpu_mhz: scale(self.cpu_mhz, pf.cpu),
            vcpus: self.vcpus,
            mem_bytes: scale(self.mem_bytes, pf.mem),
        }
    }
}

/// `v * f` for f in [0, 1], rounded down, at least 1 when v > 0 and f > 0.
pub fn scale(v: u64, f: f64) -> u64 {
    let f = PerfFactor::clamp_one(f);
    if v == 0 || f <= 0.0 {
        return 0;
    }
    // u64 -> f64 loses precision above 2^53 bytes (8 PiB): far beyond any host.
    let out = (v as f64 * f).floor();
    (out as u64).clamp(1, v)
}

/// The ratio by which a backfill server's CPU and memory are currently downsized.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PerfFactor {
    pub cpu: f64,
    pub mem: f64,
}

impl PerfFactor {
    pub const FULL: PerfFactor = PerfFactor { cpu: 1.0, mem: 1.0 };

    /// NaN and out-of-range values collapse into [0, 1].
    pub fn clamp_one(f: f64) -> f64 {
        if f.is_nan() { 1.0 } else { f.clamp(0.0, 1.0) }
    }

    pub fn clamped(self) -> PerfFactor {
        PerfFactor {
            cpu: Self::clamp_one(self.cpu),
            mem: Self::clamp_one(self.mem),
        }
    }
}

impl Default for PerfFactor {
    fn default() -> Self {
        Self::FULL
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerClass {
    /// Never preempted; its resources are guaranteed.
    Normal,
    /// Downsized at any time to a floor, stopped when that is not enough.
    Backfill,
    /// Minimum uptime and notice before termination.
    Spot,
}

impl ServerClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerClass::Normal => "normal",
            ServerClass::Backfill => "backfill",
            ServerClass::Spot => "spot",
        }
    }
    pub fn parse(s: &str) -> Option<ServerClass> {
        match s {
            "normal" => Some(ServerClass::Normal),
            "backfill" => Some(ServerClass::Backfill),
            "spot" => Some(ServerClass::Spot),
            _ => None,
        }
    }
}

/// CloudSigma's status vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerStatus {
    Stopped,
    Starting,
    Running,
    Stopping,
    Paused,
    Unavailable,
}

impl ServerStatus {
    /// A server holds resources on its host in these states.
    pub fn holds_resources(self) -> bool {
        matches!(
            self,
            ServerStatus::Starting | ServerStatus::Running | ServerStatus::Stopping
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::Stopped => "stopped",
            ServerStatus::Starting => "starting",
            ServerStatus::Running => "running",
            ServerStatus::Stopping => "stopping",
            ServerStatus::Paused => "paused",
            ServerStatus::Unavailable => "unavailable",
        }
    }
    pub fn parse(s: &str) -> Option<ServerStatus> {
        Some(match s {
            "stopped" => ServerStatus::Stopped,
            "starting" => ServerStatus::Starting,
            "running" => ServerStatus::Running,
            "stopping" => ServerStatus::Stopping,
            "paused" => ServerStatus::Paused,
            "unavailable" => ServerStatus::Unavailable,
            _ => return None,
        })
    }
}

/// One allocatable GPU device as discovered on a host: a whole GPU, or a MIG instance (which
/// has its own UUID and is given to servers on its own; its parent GPU is then not allocatable
/// as a whole). It travels in postcard frames: no field may be skipped when serializing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// NVML's index of the (parent) GPU (not necessarily its `/dev/nvidia` minor number,
    /// which the agent reads itself).
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub memory_bytes: u64,
    pub pci_bus_id: String,
    /// Set for a MIG instance.
    #[serde(default)]
    pub mig: Option<MigInstance>,
    /// CUDA compute capability, "9.0", where NVML reports it.
    #[serde(default)]
    pub compute_capability: Option<String>,
    /// False when NVML reports it unhealthy (XID errors, pending page retirement, uncorrectable
    /// ECC errors): it is not allocatable.
    #[serde(default = "healthy_default")]
    pub healthy: bool,
    /// Why it is unhealthy.
    #[serde(default)]
    pub health: Option<String>,
}

fn healthy_default() -> bool {
    true
}

/// A MIG instance: the GPU it is carved from and its profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigInstance {
    pub parent_uuid: String,
    /// NVIDIA's profile name, "1g.10gb".
    pub profile: String,
}

impl GpuDevice {
    /// A healthy whole GPU with what every backend knows.
    pub fn whole(index: u32, uuid: &str, name: &str, memory_bytes: u64, pci_bus_id: &str) -> Self {
        GpuDevice {
            index,
            uuid: uuid.to_owned(),
            name: name.to_owned(),
            memory_bytes,
            pci_bus_id: pci_bus_id.to_owned(),
            mig: None,
            compute_capability: None,
            healthy: true,
            health: None,
        }
    }
}

/// One GPU's use at a moment (NVML), for reports and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuUsage {
    pub uuid: String,
    /// 0-100 over NVML's last sample period.
    pub utilization_percent: u32,
    pub memory_used_bytes: u64,
}

/// What a host has, as its agent discovered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInventory {
    pub hostname: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Clock of one CPU in MHz.
    pub cpu_mhz_per_cpu: u64,
    pub mem_bytes: u64,
    pub gpus: Vec<GpuDevice>,
    /// The drivers this host's agent can run workloads with (older agents and stored rows
    /// that do not say: `exec` only).
    #[serde(default = "crate::workload::Drivers::exec_only")]
    pub drivers: crate::workload::Drivers,
    /// The kernel mechanisms its agent protects normal servers with (`cgroup-v1`, `cpu.idle`,
    /// `sched_idle`, `memory.min`, `memory.soft_limit_in_bytes`, `psi`, `psi-triggers` or
    /// `psi-triggers-2s` ...).
    #[serde(default)]
    pub mechanisms: Vec<String>,
}

impl HostInventory {
    /// Capacity offered to servers: all CPUs at their clock, all memory.
    pub fn capacity(&self) -> Resources {
        Resources {
            cpu_mhz: u64::from(self.cpus).saturating_mul(self.cpu_mhz_per_cpu),
            vcpus: self.cpus,
            mem_bytes: self.mem_bytes,
        }
    }
}

/// A scheduled termination: announced at `scheduled_at`, stopped at `terminate_at` (Unix
/// seconds). The coordinator decides it; the agent enforces it even if the coordinator is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    pub scheduled_at: i64,
    pub terminate_at: i64,
}

/// Who a server is, as its guest sees it through the metadata service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProfile {
    pub name: String,
    /// A DNS label derived from the name.
    pub hostname: String,
    /// The owning account (OpenStack's `project_id`).
    pub account: String,
    pub class: ServerClass,
    /// What EC2 calls the instance type.
    pub instance_type: String,
    pub meta: BTreeMap<String, String>,
    /// cloud-init user data (CloudSigma's `cloudinit-user-data` meta key).
    pub user_data: Option<String>,
}

/// A server's own network namespace, as its agent set it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// The guest's address (inside its namespace).
    pub address: std::net::IpAddr,
    /// The namespace's name under /run/netns (`ip netns exec NAME ...`).
    pub netns: String,
}

/// A host's runtime state as the coordinator tracks it (Arvados' vocabulary, plus `down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Unknown,
    Booting,
    Idle,
    Running,
    Shutdown,
    Down,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Unknown => "unknown",
            WorkerState::Booting => "booting",
            WorkerState::Idle => "idle",
            WorkerState::Running => "running",
            WorkerState::Shutdown => "shutdown",
            WorkerState::Down => "down",
        }
    }
}

/// What an operator allows on a host (Arvados' `idle_behavior`): `run` (normal), `hold` (nothing
/// new lands, running work continues), `drain` (nothing new lands; shut down once idle).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleBehavior {
    #[default]
    Run,
    Hold,
    Drain,
}

impl IdleBehavior {
    pub fn as_str(self) -> &'static str {
        match self {
            IdleBehavior::Run => "run",
            IdleBehavior::Hold => "hold",
            IdleBehavior::Drain => "drain",
        }
    }
}

impl std::str::FromStr for IdleBehavior {
    type Err = String;
    fn from_str(s: &str) -> Result<IdleBehavior, String> {
        match s {
            "run" => Ok(IdleBehavior::Run),
            "hold" => Ok(IdleBehavior::Hold),
            "drain" => Ok(IdleBehavior::Drain),
            other => Err(format!(
                "unknown idle behavior {other:?}: run, hold or drain"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_rounds_down_and_keeps_a_floor() {
        assert_eq!(scale(1000, 0.5), 500);
        assert_eq!(scale(1000, 1.0), 1000);
        assert_eq!(scale(3, 0.1), 1);
        assert_eq!(scale(0, 0.5), 0);
        assert_eq!(scale(1000, 0.0), 0);
        assert_eq!(scale(1000, 7.0), 1000);
        assert_eq!(scale(1000, f64::NAN), 1000);
    }

    #[test]
    fn resources_arithmetic_saturates() {
        let a = Resources {
            cpu_mhz: 10,
            vcpus: 1,
            mem_bytes: 5,
        };
        let b = Resources {
            cpu_mhz: 20,
            vcpus: 2,
            mem_bytes: 1,
        };
        assert_eq!(
            a.saturating_sub(b),
            Resources {
                cpu_mhz: 0,
                vcpus: 0,
                mem_bytes: 4
            }
        );
        let big = Resources {
            cpu_mhz: u64::MAX,
            vcpus: u32::MAX,
            mem_bytes: u64::MAX,
        };
        assert_eq!(big.saturating_add(a), big);
        assert!(big.fits(&a));
        assert!(!a.fits(&b));
    }

    #[test]
    fn capacity_is_cpus_times_clock() {
        let inv = HostInventory {
            hostname: "h".into(),
            cpus: 4,
            cpu_mhz_per_cpu: 2500,
            mem_bytes: 8 << 30,
            gpus: vec![],
            drivers: crate::Drivers::exec_only(),
            mechanisms: Vec::new(),
        };
        assert_eq!(
            inv.capacity(),
            Resources {
                cpu_mhz: 10_000,
                vcpus: 4,
                mem_bytes: 8 << 30
            }
        );
    }
}
