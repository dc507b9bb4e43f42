//! Servers and hosts as the store keeps them and the model holds them, and the status rules
//! every layer asks about.

use backfill_shared::{
    HostId, HostInventory, PerfFactor, ServerClass, ServerId, ServerStatus, Workload,
};
use std::collections::BTreeMap;

/// A server as stored and as the in-memory model holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerRecord {
    pub uuid: ServerId,
    pub owner: String,
    pub name: String,
    pub class: ServerClass,
    pub cpu: u64,
    pub smp: u32,
    pub mem: u64,
    pub meta: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub vnc_password: Option<String>,
    pub workload: Option<Workload>,
    pub status: ServerStatus,
    pub host: Option<HostId>,
    pub perf_factor: PerfFactor,
    pub active_since: Option<i64>,
    /// The host generation that placed this run; tells its reports from an earlier run's.
    pub incarnation: u64,
    /// A scheduled termination (preemption), if any.
    pub termination: Option<backfill_shared::Termination>,
    /// Why a server asked to start is still waiting (status `starting`, no host).
    pub queued_reason: Option<String>,
    /// Higher starts first from the queue and is preempted last.
    pub priority: i32,
    pub created_at: i64,
    /// Usage is recorded up to here while it holds resources; `None` when not metered.
    pub metered_until: Option<i64>,
    /// The perf_factor in force since `metered_until`.
    pub metered_perf: PerfFactor,
    /// A graceful shutdown in progress until then (`stopping`; back to `running` after).
    pub shutdown_until: Option<i64>,
    /// The flavor it was created as, if one was named.
    pub flavor: Option<String>,
    /// The GPUs it asks for (from its device profile), if any.
    pub gpu_request: Option<GpuRequest>,
    /// The GPU devices (UUIDs) it holds while placed.
    pub gpus: Vec<String>,
    /// The host it last ran on (kept after it stops): a VM's disk stays there.
    pub last_host: Option<HostId>,
    /// Why its last run ended, until it starts again.
    pub stop_reason: Option<String>,
    /// Its drives, as attached (CloudSigma's `drives`).
    pub drives: Vec<backfill_shared::DriveAttachment>,
    /// Runtime only (not stored): the flavor it is scheduled as, named or the cheapest that
    /// fits (filled in by the model for the API).
    pub instance_type: String,
    /// Runtime only, as its agent reports it (not stored): its own network namespace.
    pub network: Option<backfill_shared::GuestNetwork>,
    /// Runtime only, as its agent last reported them (not stored): the limits in force.
    pub limits: Option<backfill_shared::protocol::AppliedLimits>,
}

impl ServerRecord {
    pub fn resources(&self) -> backfill_shared::Resources {
        backfill_shared::Resources {
            cpu_mhz: self.cpu,
            vcpus: self.smp,
            mem_bytes: self.mem,
        }
    }
}

/// A server's GPU request, resolved from its device profile at create.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuRequest {
    pub device_profile: String,
    /// Devices in all (groups x devices per group).
    pub count: u32,
    pub matcher: crate::domain::gpu::GpuMatch,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub id: HostId,
    pub inventory: HostInventory,
    pub enforcing: bool,
    pub generation: u64,
    pub first_seen: i64,
    pub last_seen: i64,
    /// What the operator allows here (`run`, `hold`, `drain`).
    pub idle_behavior: backfill_shared::IdleBehavior,
    /// The pool it belongs to, if any.
    pub pool: Option<String>,
}

/// A server holds resources on its host in these states.
pub fn holds_resources(s: ServerStatus) -> bool {
    s.holds_resources()
}

/// A server is in its host's desired state in these states.
pub fn desired_on_host(s: ServerStatus) -> bool {
    matches!(s, ServerStatus::Starting | ServerStatus::Running)
}

/// A server asked to start that waits for capacity: `starting` with no host yet.
pub fn is_queued(s: &ServerRecord) -> bool {
    s.status == ServerStatus::Starting && s.host.is_none()
}
