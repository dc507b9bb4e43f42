//! Incremental accounting of a fleet: per host, capacity, what normal servers are guaranteed,
//! what backfill and spot servers use at their current perf_factor, which GPUs are taken; and
//! the free-capacity index over the hosts that count. Every change is O(log n).

use super::index::FreeIndex;
use super::{Classes, ServerSpec, Termination};
use backfill_shared::domain::scale;
use backfill_shared::{HostId, PerfFactor, Resources, ServerClass, ServerId};
use std::collections::{BTreeMap, BTreeSet};

/// What the scheduler knows of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub id: HostId,
    pub capacity: Resources,
    /// Allocatable GPU devices (whole GPUs or MIG instances): each may be given to one server
    /// at a time.
    pub gpus: Vec<super::gpu::GpuSlot>,
    /// False when the host is held, draining, down or frozen: nothing new lands there and its
    /// free capacity does not count.
    pub schedulable: bool,
    /// Its pool's reservation: only matching servers land here.
    pub reserved: Option<Reservation>,
    /// The drivers its agent has: only servers whose workload it can run land here.
    pub drivers: backfill_shared::Drivers,
}

/// A pool's reservation (Dynamic Cluster's): an account, a class (queue), or both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reservation {
    pub account: Option<String>,
    pub class: Option<ServerClass>,
}

impl Reservation {
    pub fn admits(&self, spec: &ServerSpec) -> bool {
        self.account.as_ref().is_none_or(|a| *a == spec.owner)
            && self.class.is_none_or(|c| c == spec.class)
    }
}

impl HostSpec {
    /// Whether `spec` may land here at all: its reservation, if any, admits it, its agent
    /// can run the workload, and its drives (if any) are here.
    pub fn admits(&self, spec: &ServerSpec) -> bool {
        self.reserved.as_ref().is_none_or(|r| r.admits(spec))
            && self.drivers.provides(&spec.needs)
            && spec.needs.host.as_ref().is_none_or(|h| *h == self.id)
    }
}

/// A placed server: where, how squeezed, since when, and whether it is leaving.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub host: HostId,
    pub perf_factor: PerfFactor,
    pub started_at: i64,
    /// When the perf_factor last changed (for the grow-back hysteresis).
    pub perf_changed_at: i64,
    pub gpus: Vec<String>,
    pub termination: Option<Termination>,
}

#[derive(Debug, Clone)]
pub(super) struct HostAcc {
    pub spec: HostSpec,
    pub guaranteed: Resources,
    /// Backfill and spot servers at their current perf_factor.
    pub elastic: Resources,
    pub free_gpus: BTreeSet<String>,
    pub servers: BTreeSet<ServerId>,
    /// What downsizing every staying downsizable server to its floor would free (CPU, memory):
    /// lets the preemption planner rule a host in or out in O(1).
    pub squeezable: (u64, u64),
}

impl HostAcc {
    pub fn free(&self) -> Resources {
        self.spec
            .capacity
            .saturating_sub(self.guaranteed)
            .saturating_sub(self.elastic)
    }
    /// What a normal server may count on: everything not guaranteed to other normal servers.
    pub fn unguaranteed(&self) -> Resources {
        self.spec.capacity.saturating_sub(self.guaranteed)
    }
}

#[derive(Debug, Clone)]
pub(super) struct ServerAcc {
    pub spec: ServerSpec,
    pub placed: Option<Placed>,
}

impl ServerAcc {
    /// What downsizing this server to its class floor would free (CPU, memory): zero unless it
    /// is placed, staying (no termination scheduled) and of a downsizable class.
    pub fn to_floor(&self, classes: &Classes) -> (u64, u64) {
        let Some(p) = &self.placed else {
            return (0, 0);
        };
        let Some(policy) = classes.of(self.spec.class).filter(|c| c.downsizable) else {
            return (0, 0);
        };
        if p.termination.is_some() {
            return (0, 0);
        }
        let floor = policy.floor.clamp(0.0, 1.0);
        let (cpu, mem, now) = (
            self.spec.need.cpu_mhz,
            self.spec.need.mem_bytes,
            p.perf_factor,
        );
        (
            scale(cpu, now.cpu).saturating_sub(scale(cpu, floor.min(now.cpu))),
            scale(mem, now.mem).saturating_sub(scale(mem, floor.min(now.mem))),
        )
    }

    /// What this server holds on its host: all of it for normal servers; for the others the
    /// perf_factor's share of CPU and memory and no vCPUs: their vCPUs are time-sliced under
    /// their CPU quota, so only normal servers' vCPUs are reserved (a server still never gets
    /// more vCPUs than its host's unreserved ones).
    pub fn held(&self) -> Resources {
        match (&self.placed, self.spec.class) {
            (None, _) => Resources::ZERO,
            (Some(_), ServerClass::Normal) => self.spec.need,
            (Some(p), _) => Resources {
                vcpus: 0,
                ..self.spec.need.scaled(p.perf_factor)
            },
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    #[error("host {0} is not known")]
    NoHost(HostId),
    #[error("server {0} is not known")]
    NoServer(ServerId),
    #[error("server {0} is already placed")]
    AlreadyPlaced(ServerId),
    #[error("GPU {gpu} on host {host} is not free")]
    GpuTaken { host: HostId, gpu: String },
    #[error("host {0} still has servers")]
    HostBusy(HostId),
}

#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub(super) classes: Classes,
    pub(super) hosts: BTreeMap<HostId, HostAcc>,
    pub(super) servers: BTreeMap<ServerId, ServerAcc>,
    pub(super) index: FreeIndex,
}

fn add2(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0.saturating_add(b.0), a.1.saturating_add(b.1))
}

fn sub2(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1))
}

impl Cluster {
    /// An empty cluster with the default classes.
    pub fn new() -> Cluster {
        Cluster::default()
    }

    /// An empty cluster whose preemptible classes follow `classes`.
    pub fn with_classes(classes: Classes) -> Cluster {
        Cluster {
            classes,
            ..Cluster::default()
        }
    }

    pub fn classes(&self) -> &Classes {
        &self.classes
    }

    /// Applies `f` to a placed server, keeping its host's accounting (held resources and
    /// squeezable share) and the index in step.
    fn with_placed(
        &mut self,
        id: ServerId,
        f: impl FnOnce(&mut ServerAcc),
    ) -> Result<(), ClusterError> {
        let classes = self.classes;
        let s = self
            .servers
            .get_mut(&id)
            .ok_or(ClusterError::NoServer(id))?;
        let Some(host) = s.placed.as_ref().map(|p| p.host.clone()) else {
            return Ok(());
        };
        let (held0, sq0) = (s.held(), s.to_floor(&classes));
        f(s);
        let (held1, sq1) = (s.held(), s.to_floor(&classes));
        let normal = s.spec.class == ServerClass::Normal;
        self.with_host(&host, |h| {
            if normal {
                h.guaranteed = h.guaranteed.saturating_sub(held0).saturating_add(held1);
            } else {
                h.elastic = h.elastic.saturating_sub(held0).saturating_add(held1);
            }
            h.squeezable = add2(sub2(h.squeezable, sq0), sq1);
        })
    }

    /// Takes `f`'s change to one host while keeping the index right.
    fn with_host<T>(
        &mut self,
        id: &HostId,
        f: impl FnOnce(&mut HostAcc) -> T,
    ) -> Result<T, ClusterError> {
        let h = self
            .hosts
            .get_mut(id)
            .ok_or_else(|| ClusterError::NoHost(id.clone()))?;
        if h.spec.schedulable {
            self.index.remove(id, h.free());
        }
        let out = f(h);
        if h.spec.schedulable {
            self.index.insert(id, h.free());
        }
        Ok(out)
    }

    /// Adds a host or updates its capacity, GPUs and schedulability.
    pub fn upsert_host(&mut self, spec: HostSpec) {
        let id = spec.id.clone();
        if !self.hosts.contains_key(&id) {
            self.hosts.insert(
                id.clone(),
                HostAcc {
                    free_gpus: BTreeSet::new(),
                    spec: HostSpec {
                        schedulable: false,
                        reserved: None,
                        gpus: Vec::new(),
                        ..spec.clone()
                    },
                    guaranteed: Resources::ZERO,
                    elastic: Resources::ZERO,
                    servers: BTreeSet::new(),
                    squeezable: (0, 0),
                },
            );
        }
        let taken: BTreeSet<String> = self
            .servers
            .values()
            .filter_map(|s| s.placed.as_ref())
            .filter(|p| p.host == id)
            .flat_map(|p| p.gpus.iter().cloned())
            .collect();
        // with_host takes the host out of the index under its old flag and puts it back under
        // the new one, so a host that stops counting leaves the index.
        let _ = self.with_host(&id, |h| {
            h.free_gpus = spec
                .gpus
                .iter()
                .map(|g| &g.uuid)
                .filter(|g| !taken.contains(*g))
                .cloned()
                .collect();
            h.spec = spec;
        });
    }

    pub fn set_schedulable(&mut self, id: &HostId, schedulable: bool) -> Result<(), ClusterError> {
        let mut spec = self
            .hosts
            .get(id)
            .ok_or_else(|| ClusterError::NoHost(id.clone()))?
            .spec
            .clone();
        spec.schedulable = schedulable;
        self.upsert_host(spec);
        Ok(())
    }

    /// Removes a host that holds no server.
    pub fn remove_host(&mut self, id: &HostId) -> Result<(), ClusterError> {
        let h = self
            .hosts
            .get(id)
            .ok_or_else(|| ClusterError::NoHost(id.clone()))?;
        if !h.servers.is_empty() {
            return Err(ClusterError::HostBusy(id.clone()));
        }
        if h.spec.schedulable {
            self.index.remove(id, h.free());
        }
        self.hosts.remove(id);
        Ok(())
    }

    /// Adds a server that is not placed yet (or replaces the spec of an unplaced one).
    pub fn add_server(&mut self, spec: ServerSpec) {
        let id = spec.id;
        match self.servers.get_mut(&id) {
            Some(s) if s.placed.is_none() => s.spec = spec,
            Some(_) => {}
            None => {
                self.servers.insert(id, ServerAcc { spec, placed: None });
            }
        }
    }

    /// Puts a server on a host with these GPUs.
    pub fn place(&mut self, id: ServerId, placed: Placed) -> Result<(), ClusterError> {
        let s = self.servers.get(&id).ok_or(ClusterError::NoServer(id))?;
        if s.placed.is_some() {
            return Err(ClusterError::AlreadyPlaced(id));
        }
        let h = self
            .hosts
            .get(&placed.host)
            .ok_or_else(|| ClusterError::NoHost(placed.host.clone()))?;
        if let Some(g) = placed.gpus.iter().find(|g| !h.free_gpus.contains(*g)) {
            return Err(ClusterError::GpuTaken {
                host: placed.host.clone(),
                gpu: g.clone(),
            });
        }
        let host = placed.host.clone();
        let class = s.spec.class;
        let mut acc = s.clone();
        acc.placed = Some(placed);
        let held = acc.held();
        let squeeze = acc.to_floor(&self.classes);
        let gpus = acc
            .placed
            .as_ref()
            .map(|p| p.gpus.clone())
            .unwrap_or_default();
        self.with_host(&host, |h| {
            h.squeezable = add2(h.squeezable, squeeze);
            if class == ServerClass::Normal {
                h.guaranteed = h.guaranteed.saturating_add(held);
            } else {
                h.elastic = h.elastic.saturating_add(held);
            }
            for g in &gpus {
                h.free_gpus.remove(g);
            }
            h.servers.insert(id);
        })?;
        self.servers.insert(id, acc);
        Ok(())
    }

    /// Takes a server off its host (it stopped); it stays known, unplaced.
    pub fn unplace(&mut self, id: ServerId) -> Result<(), ClusterError> {
        let s = self.servers.get(&id).ok_or(ClusterError::NoServer(id))?;
        let Some(p) = s.placed.clone() else {
            return Ok(());
        };
        let held = s.held();
        let squeeze = s.to_floor(&self.classes);
        let class = s.spec.class;
        self.with_host(&p.host, |h| {
            h.squeezable = sub2(h.squeezable, squeeze);
            if class == ServerClass::Normal {
                h.guaranteed = h.guaranteed.saturating_sub(held);
            } else {
                h.elastic = h.elastic.saturating_sub(held);
            }
            for g in &p.gpus {
                if h.spec.gpus.iter().any(|s| s.uuid == *g) {
                    h.free_gpus.insert(g.clone());
                }
            }
            h.servers.remove(&id);
        })?;
        if let Some(s) = self.servers.get_mut(&id) {
            s.placed = None;
        }
        Ok(())
    }

    /// Forgets a server (deleted), taking it off its host first.
    pub fn remove_server(&mut self, id: ServerId) -> Result<(), ClusterError> {
        self.unplace(id)?;
        self.servers.remove(&id);
        Ok(())
    }

    /// Changes a placed backfill/spot server's perf_factor (normal servers are never
    /// downsized: a change to one is ignored).
    pub fn set_perf(
        &mut self,
        id: ServerId,
        perf: PerfFactor,
        now: i64,
    ) -> Result<(), ClusterError> {
        self.with_placed(id, |s| {
            if s.spec.class == ServerClass::Normal {
                return;
            }
            if let Some(p) = s.placed.as_mut() {
                p.perf_factor = perf.clamped();
                p.perf_changed_at = now;
            }
        })
    }

    pub fn set_termination(
        &mut self,
        id: ServerId,
        t: Option<Termination>,
    ) -> Result<(), ClusterError> {
        self.with_placed(id, |s| {
            if let Some(p) = s.placed.as_mut() {
                p.termination = t;
            }
        })
    }

    pub fn placed(&self, id: ServerId) -> Option<&Placed> {
        self.servers.get(&id).and_then(|s| s.placed.as_ref())
    }

    pub fn server(&self, id: ServerId) -> Option<&ServerSpec> {
        self.servers.get(&id).map(|s| &s.spec)
    }

    /// Free capacity of one host (zero for an unknown host).
    pub fn free(&self, host: &HostId) -> Resources {
        self.hosts.get(host).map(HostAcc::free).unwrap_or_default()
    }

    /// A host's capacity (zero for an unknown host).
    pub fn capacity(&self, host: &HostId) -> Resources {
        self.hosts
            .get(host)
            .map(|h| h.spec.capacity)
            .unwrap_or_default()
    }

    /// What a server holds on its host now (zero when not placed).
    pub fn held(&self, id: ServerId) -> Resources {
        self.servers
            .get(&id)
            .map(ServerAcc::held)
            .unwrap_or_default()
    }

    pub fn free_gpus(&self, host: &HostId) -> usize {
        self.hosts.get(host).map(|h| h.free_gpus.len()).unwrap_or(0)
    }

    /// Whether some host (schedulable or not: a held or down host may come back) can run a
    /// workload that needs `needs`. `None` while no host is known.
    pub fn some_host_provides(&self, needs: &backfill_shared::workload::Needs) -> Option<bool> {
        if self.hosts.is_empty() {
            return None;
        }
        Some(self.hosts.values().any(|h| h.spec.drivers.provides(needs)))
    }

    /// The driver kinds some host has, for messages ("exec, vm"; "none" without hosts).
    pub fn driver_kinds(&self) -> String {
        let kinds: std::collections::BTreeSet<backfill_shared::DriverKind> = self
            .hosts
            .values()
            .flat_map(|h| h.spec.drivers.kinds())
            .collect();
        if kinds.is_empty() {
            return "none (no host has connected yet)".into();
        }
        kinds
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// CloudSigma's `free_resources`, from the index: O(log n), no scan.
    pub fn free_resources(&self) -> FreeResources {
        let (cpu, mem) = self.index.total();
        let pick = |id: Option<&HostId>| {
            id.map(|id| self.free(id))
                .map(|f| CpuMem {
                    cpu: f.cpu_mhz,
                    mem: f.mem_bytes,
                })
                .unwrap_or_default()
        };
        FreeResources {
            total: CpuMem { cpu, mem },
            most_free_by_cpu: pick(self.index.most_free_cpu()),
            most_free_by_memory: pick(self.index.most_free_mem()),
        }
    }

    pub fn host_ids(&self) -> impl Iterator<Item = &HostId> {
        self.hosts.keys()
    }

    pub fn servers_on<'a>(&'a self, host: &HostId) -> impl Iterator<Item = ServerId> + 'a {
        self.hosts
            .get(host)
            .into_iter()
            .flat_map(|h| h.servers.iter().copied())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CpuMem {
    pub cpu: u64,
    pub mem: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct FreeResources {
    pub total: CpuMem,
    pub most_free_by_cpu: CpuMem,
    pub most_free_by_memory: CpuMem,
}
