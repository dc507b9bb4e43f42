//! The scheduler, pure: a cluster's accounting and a request in, a plan out. No IO, no tokio, no
//! clock reads (`now` is an argument); ties are broken by id, never by hash order.
//!
//! Normal servers get what they were promised; backfill and spot servers live on what is left
//! and give it back in the gentlest order: downsize, then terminate with notice, then stop.

mod cluster;
pub mod gpu;
mod grow;
mod index;
mod place;
mod preempt;
#[cfg(test)]
mod tests;

pub use cluster::{Cluster, ClusterError, CpuMem, FreeResources, HostSpec, Placed, Reservation};
pub use grow::{GrowPolicy, plan_grow};
pub use place::Strategy;

use backfill_shared::{HostId, PerfFactor, Resources, ServerClass, ServerId};

/// What the scheduler knows of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub id: ServerId,
    pub class: ServerClass,
    pub need: Resources,
    /// GPU devices, each a distinct one matching `gpu_match`.
    pub gpus: u32,
    /// What each of its GPU devices must be (any device by default).
    pub gpu_match: gpu::GpuMatch,
    /// Higher goes first in the queue and is preempted last.
    pub priority: i32,
    pub created_at: i64,
    /// The owning account (pools reserved for an account take only its servers).
    pub owner: String,
    /// The driver (and VM images) its workload needs of a host.
    pub needs: backfill_shared::workload::Needs,
    /// The host it would rather land on when that host has room (a VM's disk is there).
    pub prefer: Option<HostId>,
}

pub use backfill_shared::Termination;

/// How a preemptible class gives capacity back (`[classes.backfill]`, `[classes.spot]`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassPolicy {
    /// May be downsized (perf_factor < 1).
    pub downsizable: bool,
    /// Lowest perf_factor a downsize may set.
    pub floor: f64,
    /// Seconds a server runs before it may be terminated.
    pub min_uptime_s: i64,
    /// Seconds between the announcement of a termination and the stop.
    pub notice_s: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Classes {
    /// Either may be left out of the configuration; it then keeps its default.
    #[serde(default = "ClassPolicy::backfill")]
    pub backfill: ClassPolicy,
    #[serde(default = "ClassPolicy::spot")]
    pub spot: ClassPolicy,
}

impl ClassPolicy {
    fn backfill() -> ClassPolicy {
        ClassPolicy {
            downsizable: true,
            floor: 0.1,
            min_uptime_s: 0,
            notice_s: 0,
        }
    }
    fn spot() -> ClassPolicy {
        ClassPolicy {
            downsizable: false,
            floor: 1.0,
            min_uptime_s: 30 * 60,
            notice_s: 15 * 60,
        }
    }
}

impl Default for Classes {
    fn default() -> Classes {
        Classes {
            backfill: ClassPolicy::backfill(),
            spot: ClassPolicy::spot(),
        }
    }
}

impl Classes {
    /// The policy of a preemptible class; `None` for normal servers, which are never victims.
    pub fn of(&self, class: ServerClass) -> Option<&ClassPolicy> {
        match class {
            ServerClass::Normal => None,
            ServerClass::Backfill => Some(&self.backfill),
            ServerClass::Spot => Some(&self.spot),
        }
    }
}

/// The scheduler's settings for a plan (the classes live in the [`Cluster`], whose accounting
/// depends on them).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Policy {
    pub strategy: Strategy,
}

/// What to do for one request. Applying it never puts a host over capacity and never gives a
/// GPU twice.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Start the server here, after applying `downsize` (if any) to make room.
    Place {
        host: HostId,
        gpus: Vec<String>,
        downsize: Vec<(ServerId, PerfFactor)>,
    },
    /// Room is being made on `host`: apply `downsize` and `terminate` now; the server waits in
    /// the queue until the terminations are real (`ready_at`).
    Preempt {
        host: HostId,
        downsize: Vec<(ServerId, PerfFactor)>,
        terminate: Vec<(ServerId, Termination)>,
        ready_at: i64,
    },
    /// Nothing can make room now: queue it, with the reason.
    Queue { reason: String },
    /// No host could ever hold it.
    Never { reason: String },
}

/// Plans a start for an unplaced server known to the cluster.
pub fn plan(cluster: &Cluster, server: ServerId, policy: &Policy, now: i64) -> Plan {
    let Some(spec) = cluster.server(server) else {
        return Plan::Never {
            reason: format!("server {server} is not known to the scheduler"),
        };
    };
    if cluster.placed(server).is_some() {
        return Plan::Never {
            reason: format!("server {server} is already placed"),
        };
    }
    if let Some((host, gpus)) = place::on_free(cluster, spec, policy.strategy) {
        return Plan::Place {
            host,
            gpus,
            downsize: Vec::new(),
        };
    }
    if !cluster
        .hosts
        .values()
        .any(|h| h.spec.drivers.provides(&spec.needs))
    {
        return Plan::Never {
            reason: format!(
                "no host can run a {} workload; this fleet runs: {}",
                spec.needs,
                cluster.driver_kinds()
            ),
        };
    }
    if !place::could_ever_fit(cluster, spec) {
        return Plan::Never {
            reason: format!(
                "no host has {} MHz, {} bytes, {} vCPUs and {} GPUs in all",
                spec.need.cpu_mhz, spec.need.mem_bytes, spec.need.vcpus, spec.gpus
            ),
        };
    }
    if spec.class != ServerClass::Normal {
        return Plan::Queue {
            reason: "waiting for free capacity".into(),
        };
    }
    preempt::plan_room(cluster, spec, &cluster.classes, now)
}

/// Applies a plan's changes to the cluster (the coordinator's applier and the simulator both
/// use this after committing). `Place` places the server; `Preempt` downsizes and schedules.
pub fn apply(
    cluster: &mut Cluster,
    server: ServerId,
    plan: &Plan,
    now: i64,
) -> Result<(), ClusterError> {
    match plan {
        Plan::Place {
            host,
            gpus,
            downsize,
        } => {
            for (id, pf) in downsize {
                cluster.set_perf(*id, *pf, now)?;
            }
            cluster.place(
                server,
                Placed {
                    host: host.clone(),
                    perf_factor: PerfFactor::FULL,
                    started_at: now,
                    perf_changed_at: now,
                    gpus: gpus.clone(),
                    termination: None,
                },
            )
        }
        Plan::Preempt {
            downsize,
            terminate,
            ..
        } => {
            for (id, pf) in downsize {
                cluster.set_perf(*id, *pf, now)?;
            }
            for (id, t) in terminate {
                cluster.set_termination(*id, Some(*t))?;
            }
            Ok(())
        }
        Plan::Queue { .. } | Plan::Never { .. } => Ok(()),
    }
}
