//! The live model: hosts and servers in memory, mirrored from the store. Everything here is
//! derived or mutated under the coordinator's lock; nothing here does IO.

use crate::placement::HostView;
use crate::store::{HostRecord, ServerRecord};
use backfill_shared::protocol::{DesiredServer, DesiredState, Report};
use backfill_shared::{HostId, Resources, ServerId, ServerStatus, WorkerState};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug)]
pub struct HostEntry {
    pub record: HostRecord,
    pub worker_state: WorkerState,
    pub session: Option<Session>,
    pub last_report: Option<Report>,
}

/// The connected agent of a host. `conn` tells a stale session from the current one.
#[derive(Debug)]
pub struct Session {
    pub conn: u64,
    pub desired: watch::Sender<Arc<DesiredState>>,
}

#[derive(Debug, Default)]
pub struct Model {
    pub hosts: BTreeMap<HostId, HostEntry>,
    pub servers: BTreeMap<ServerId, ServerRecord>,
}

/// A server holds resources on its host in these states.
pub fn holds_resources(s: ServerStatus) -> bool {
    matches!(
        s,
        ServerStatus::Starting | ServerStatus::Running | ServerStatus::Stopping
    )
}

/// A server is in its host's desired state in these states.
pub fn desired_on_host(s: ServerStatus) -> bool {
    matches!(s, ServerStatus::Starting | ServerStatus::Running)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CpuMem {
    pub cpu: u64,
    pub mem: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FreeResources {
    pub total: CpuMem,
    pub most_free_by_cpu: CpuMem,
    pub most_free_by_memory: CpuMem,
}

impl Model {
    pub fn servers_on<'a>(&'a self, host: &'a HostId) -> impl Iterator<Item = &'a ServerRecord> {
        self.servers
            .values()
            .filter(move |s| s.host.as_ref() == Some(host))
    }

    /// Resources promised on a host, backfill at its current perf_factor.
    pub fn allocated(&self, host: &HostId) -> Resources {
        self.servers_on(host)
            .filter(|s| holds_resources(s.status))
            .fold(Resources::ZERO, |acc, s| {
                acc.saturating_add(s.resources().scaled(s.perf_factor))
            })
    }

    /// Hosts that can take new work: an agent is connected.
    pub fn live_hosts(&self) -> Vec<HostView> {
        self.hosts
            .values()
            .filter(|h| h.session.is_some())
            .map(|h| HostView {
                id: h.record.id.clone(),
                capacity: h.record.inventory.capacity(),
                allocated: self.allocated(&h.record.id),
            })
            .collect()
    }

    /// CloudSigma's `free_resources`: over live hosts. Ties go to the smallest host id.
    pub fn free_resources(&self) -> FreeResources {
        let views = self.live_hosts();
        let mut total = CpuMem { cpu: 0, mem: 0 };
        let mut by_cpu = CpuMem { cpu: 0, mem: 0 };
        let mut by_mem = CpuMem { cpu: 0, mem: 0 };
        for v in &views {
            let f = v.free();
            total.cpu = total.cpu.saturating_add(f.cpu_mhz);
            total.mem = total.mem.saturating_add(f.mem_bytes);
            if f.cpu_mhz > by_cpu.cpu {
                by_cpu = CpuMem {
                    cpu: f.cpu_mhz,
                    mem: f.mem_bytes,
                };
            }
            if f.mem_bytes > by_mem.mem {
                by_mem = CpuMem {
                    cpu: f.cpu_mhz,
                    mem: f.mem_bytes,
                };
            }
        }
        FreeResources {
            total,
            most_free_by_cpu: by_cpu,
            most_free_by_memory: by_mem,
        }
    }

    pub fn generation(&self, host: &HostId) -> u64 {
        self.hosts
            .get(host)
            .map(|h| h.record.generation)
            .unwrap_or(0)
    }

    pub fn desired_state(&self, host: &HostId) -> DesiredState {
        DesiredState {
            generation: self.generation(host),
            servers: self
                .servers_on(host)
                .filter(|s| desired_on_host(s.status))
                .map(|s| DesiredServer {
                    server: s.uuid,
                    resources: s.resources(),
                    perf_factor: s.perf_factor,
                    workload: s.workload.clone(),
                    incarnation: s.incarnation,
                })
                .collect(),
        }
    }
}
