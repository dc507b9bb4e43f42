//! The live model: hosts and servers in memory, mirrored from the store, and the scheduler's
//! accounting (`Cluster`) kept in step with them. Everything here is derived or mutated under
//! the coordinator's lock; nothing here does IO.

use crate::domain::server::{HostRecord, ServerRecord};
use crate::domain::server::{desired_on_host, holds_resources};
use crate::policy::scheduler::{Cluster, FreeResources, HostSpec, Placed, ServerSpec};
use backfill_shared::drive::{DesiredDrive, DriveOrders};
use backfill_shared::protocol::{DesiredServer, DesiredState, Report};
use backfill_shared::{
    GuestNetwork, GuestProfile, HostId, PerfFactor, ServerId, ServerStatus, WorkerState,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug)]
pub struct HostEntry {
    pub record: HostRecord,
    pub worker_state: WorkerState,
    pub session: Option<Session>,
    pub last_report: Option<Report>,
    /// Where its agent connects from.
    pub address: Option<std::net::IpAddr>,
    /// Since when it is in `worker_state`.
    pub state_since: i64,
    /// The last server placed here, and when it last had work.
    pub last_server: Option<ServerId>,
    pub last_busy: Option<i64>,
    /// Its pool's reservation, if any: only matching servers land here.
    pub reservation: Option<crate::policy::scheduler::Reservation>,
}

impl HostEntry {
    pub fn new(record: HostRecord, worker_state: WorkerState, now: i64) -> HostEntry {
        HostEntry {
            record,
            worker_state,
            session: None,
            last_report: None,
            address: None,
            state_since: now,
            last_server: None,
            last_busy: None,
            reservation: None,
        }
    }

    /// Moves to `state`, keeping `state_since` when it does not change.
    pub fn set_state(&mut self, state: WorkerState, now: i64) {
        if self.worker_state != state {
            self.worker_state = state;
            self.state_since = now;
        }
    }

    /// Whether new work may land here: its agent is connected, the operator allows it, and it
    /// has not been shut down.
    pub fn schedulable(&self) -> bool {
        self.session.is_some()
            && self.record.idle_behavior == backfill_shared::IdleBehavior::Run
            && self.worker_state != WorkerState::Shutdown
    }
}

/// The connected agent of a host. `conn` tells a stale session from the current one.
#[derive(Debug)]
pub struct Session {
    pub conn: u64,
    pub desired: crate::state::committer::DesiredTx,
}

#[derive(Debug, Default)]
pub struct Model {
    pub hosts: BTreeMap<HostId, HostEntry>,
    pub servers: BTreeMap<ServerId, ServerRecord>,
    /// The scheduler's view: placement, perf_factors, terminations, free-capacity index.
    pub cluster: Cluster,
    /// The perf_factor each running server's agent last reported in force.
    pub in_force: BTreeMap<ServerId, PerfFactor>,
    /// The network namespace each running server's agent last reported.
    pub networks: BTreeMap<ServerId, GuestNetwork>,
    /// The configured flavors, for the instance type each server is scheduled as.
    pub flavors: Arc<crate::domain::flavors::Flavors>,
    /// Hosts a provisioner was asked to create whose agents have not registered yet.
    pub launches: BTreeMap<String, crate::store::LaunchRecord>,
    /// Pool limits an operator rewrote (freeze, drain), by pool.
    pub pool_limits: BTreeMap<String, (u32, u32)>,
    /// Auto mode: pools grow and shrink with demand.
    pub auto_mode: bool,
    /// Capacity samples and preemption timeline for the dashboard.
    pub history: crate::state::history::History,
    /// Stopped VMs by the host they last ran on: their disks stay there.
    pub kept: BTreeMap<HostId, std::collections::BTreeSet<ServerId>>,
    /// Servers in creation order, for lists that cost what their page holds.
    index: crate::state::server_index::ServerIndex,
    /// The servers each drive is attached to, kept as servers change.
    mounts: crate::state::drive_mounts::DriveMounts,
    /// The committer's epoch this model was made at (see `crate::state::committer`).
    pub epoch: u64,
    /// Every drive, deleted ones until their host reports them gone.
    pub drives: crate::state::drive_index::Drives,
    /// Each connected agent's drive orders (by its session's `conn`).
    pub drive_links: BTreeMap<HostId, (u64, watch::Sender<Arc<DriveOrders>>)>,
    /// Drives on their way to another host (`state::drive_move`), and each connected agent's
    /// channel for move orders.
    pub moves: crate::state::drive_moves::Moves,
    /// Device profiles and accelerator requests (`crate::state::accel`).
    pub accel: crate::state::accel::Accel,
}

/// Whether a server's host keeps something of it while it is stopped (a VM's disk overlay).
fn keeps_disk(s: &ServerRecord) -> bool {
    s.status == ServerStatus::Stopped
        && s.last_host.is_some()
        && backfill_shared::workload::Needs::of(s.workload.as_ref()).driver
            == backfill_shared::DriverKind::Vm
}

/// What a server's agent runs: its workload with its drives attached (a server with drives and
/// no workload is a VM that boots from its drive with boot order 1).
pub fn effective_workload(s: &ServerRecord) -> Option<backfill_shared::Workload> {
    with_drives(s.workload.as_ref(), &s.drives)
}

/// `workload` with `drives` attached (see [`effective_workload`]).
pub fn with_drives(
    workload: Option<&backfill_shared::Workload>,
    drives: &[backfill_shared::DriveAttachment],
) -> Option<backfill_shared::Workload> {
    if drives.is_empty() {
        return workload.cloned();
    }
    let mut w = workload.cloned().unwrap_or_default();
    let mut vm = w.vm.take().unwrap_or_default();
    vm.drives = backfill_shared::drive::boot_sequence(drives)
        .into_iter()
        .cloned()
        .collect();
    w.vm = Some(vm);
    Some(w)
}

pub fn spec_of(s: &ServerRecord) -> ServerSpec {
    ServerSpec {
        id: s.uuid,
        class: s.class,
        need: s.resources(),
        gpus: s.gpu_request.as_ref().map_or(0, |g| g.count),
        gpu_match: s
            .gpu_request
            .as_ref()
            .map(|g| g.matcher.clone())
            .unwrap_or_default(),
        priority: s.priority,
        created_at: s.created_at,
        owner: s.owner.clone(),
        needs: backfill_shared::workload::Needs::of(effective_workload(s).as_ref()),
        prefer: s.last_host.clone().filter(|_| {
            backfill_shared::workload::Needs::of(s.workload.as_ref()).driver
                == backfill_shared::DriverKind::Vm
        }),
    }
}

fn placed_of(s: &ServerRecord, now: i64) -> Option<Placed> {
    let host = s.host.clone().filter(|_| holds_resources(s.status))?;
    Some(Placed {
        host,
        perf_factor: s.perf_factor,
        started_at: s.active_since.unwrap_or(now),
        perf_changed_at: now,
        gpus: s.gpus.clone(),
        termination: s.termination,
    })
}

impl Model {
    pub fn with_cluster(cluster: Cluster) -> Model {
        Model {
            cluster,
            ..Model::default()
        }
    }

    pub fn servers_on<'a>(&'a self, host: &'a HostId) -> impl Iterator<Item = &'a ServerRecord> {
        self.cluster
            .servers_on(host)
            .filter_map(|id| self.servers.get(&id))
    }

    /// Puts a host's record and connection state into the scheduler's view.
    pub fn sync_host(&mut self, id: &HostId) {
        if let Some(h) = self.hosts.get(id) {
            self.cluster.upsert_host(HostSpec {
                id: id.clone(),
                capacity: h.record.inventory.capacity(),
                gpus: h
                    .record
                    .inventory
                    .gpus
                    .iter()
                    .filter(|g| g.healthy)
                    .map(|g| {
                        crate::domain::gpu::GpuSlot::new(
                            &g.uuid,
                            &g.name,
                            g.memory_bytes,
                            g.mig.as_ref().map(|m| m.profile.as_str()),
                        )
                    })
                    .collect(),
                schedulable: h.schedulable(),
                reserved: h.reservation.clone(),
                drivers: h.record.inventory.drivers.clone(),
            });
        }
    }

    /// Servers in creation order and each account's holdings, kept as servers change.
    pub fn index(&self) -> &crate::state::server_index::ServerIndex {
        &self.index
    }

    /// The servers each drive is attached to, kept as servers change.
    pub fn mounts(&self) -> &crate::state::drive_mounts::DriveMounts {
        &self.mounts
    }

    /// Stores a server record in the model and mirrors it into the scheduler's view.
    pub fn put_server(&mut self, s: ServerRecord, now: i64) {
        let id = s.uuid;
        if let Some(old) = self.servers.get(&id) {
            self.index.remove(old);
            self.mounts.remove(old);
        }
        self.index.add(&s);
        self.mounts.add(&s);
        let mut spec = spec_of(&s);
        spec.needs.host = self.drive_host(&s);
        self.cluster.add_server(spec);
        let want = placed_of(&s, now);
        let have = self.cluster.placed(id).cloned();
        match (have, want) {
            (None, None) => {}
            (Some(_), None) => {
                let _ = self.cluster.unplace(id);
            }
            (Some(h), Some(w)) if h.host == w.host => {
                if h.perf_factor != w.perf_factor {
                    let _ = self.cluster.set_perf(id, w.perf_factor, now);
                }
                if h.termination != w.termination {
                    let _ = self.cluster.set_termination(id, w.termination);
                }
            }
            (have, Some(w)) => {
                if have.is_some() {
                    let _ = self.cluster.unplace(id);
                }
                if let Err(e) = self.cluster.place(id, w) {
                    tracing::error!(server = %id, error = %e, "scheduler view out of step");
                }
            }
        }
        if !holds_resources(s.status) {
            self.in_force.remove(&id);
            self.networks.remove(&id);
        }
        self.unkeep(id);
        if keeps_disk(&s)
            && let Some(h) = &s.last_host
        {
            self.kept.entry(h.clone()).or_default().insert(id);
        }
        self.servers.insert(id, s);
    }

    /// A server as the API shows it: `perf_factor` is what its agent reports in force (the
    /// committed one until the first report).
    pub fn as_seen(&self, s: &ServerRecord) -> ServerRecord {
        let mut out = s.clone();
        if let Some(pf) = self.in_force.get(&s.uuid) {
            out.perf_factor = *pf;
        }
        out.network = self.networks.get(&s.uuid).cloned();
        out.limits = s
            .host
            .as_ref()
            .and_then(|h| self.hosts.get(h))
            .and_then(|h| h.last_report.as_ref())
            .and_then(|r| r.servers.iter().find(|o| o.server == s.uuid))
            .map(|o| o.limits);
        out.instance_type = self.instance_type(s);
        out
    }

    /// The instance type (flavor) a server is scheduled as.
    pub fn instance_type(&self, s: &ServerRecord) -> String {
        self.flavors
            .instance_type(s.flavor.as_deref(), s.class, s.cpu, s.smp, s.mem)
    }

    fn unkeep(&mut self, id: ServerId) {
        let last = self.servers.get(&id).and_then(|s| s.last_host.clone());
        if let Some(h) = last
            && let Some(set) = self.kept.get_mut(&h)
        {
            set.remove(&id);
            if set.is_empty() {
                self.kept.remove(&h);
            }
        }
    }

    pub fn remove_server(&mut self, id: ServerId) {
        if let Some(old) = self.servers.get(&id) {
            self.index.remove(old);
            self.mounts.remove(old);
        }
        self.unkeep(id);
        let _ = self.cluster.remove_server(id);
        self.in_force.remove(&id);
        self.networks.remove(&id);
        self.servers.remove(&id);
    }

    /// The host that holds a server's drives (all of them are on one host), if it has any.
    pub fn drive_host(&self, s: &ServerRecord) -> Option<HostId> {
        s.drives
            .iter()
            .find_map(|a| self.drives.get(&a.drive))
            .map(|d| d.host.clone())
    }

    /// What `host` should hold: its drives being made or made, and its deleted ones to remove.
    pub fn drive_orders(&self, host: &HostId) -> DriveOrders {
        use crate::store::DriveStatus;
        let mut orders = DriveOrders::default();
        for d in self.drives.values().filter(|d| d.host == *host) {
            match d.status {
                DriveStatus::Creating | DriveStatus::Ready => orders.drives.push(DesiredDrive {
                    id: d.uuid,
                    size: d.size,
                    source: d.source.clone(),
                }),
                DriveStatus::Deleting => orders.delete.push(d.uuid),
                DriveStatus::Failed => {}
            }
        }
        orders
            .delete
            .extend(self.moves.moved_away_from(host, &self.drives));
        orders
    }

    /// Hands `host`'s agent its current drive orders, if it is connected.
    pub fn push_drive_orders(&self, host: &HostId) {
        if let Some((_, tx)) = self.drive_links.get(host) {
            tx.send_replace(Arc::new(self.drive_orders(host)));
        }
    }

    /// CloudSigma's `free_resources`, from the scheduler's index.
    pub fn free_resources(&self) -> FreeResources {
        self.cluster.free_resources()
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
                .filter(|s| desired_on_host(s.status) || s.shutdown_until.is_some())
                .map(|s| DesiredServer {
                    server: s.uuid,
                    resources: s.resources(),
                    perf_factor: s.perf_factor,
                    workload: effective_workload(s),
                    incarnation: s.incarnation,
                    termination: s.termination,
                    guest: guest_profile(s, &self.flavors),
                    shutdown: s.shutdown_until,
                    gpus: s.gpus.clone(),
                })
                .collect(),
            keep: self
                .kept
                .get(host)
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default(),
        }
    }
}

/// What the metadata service tells a server's guest about itself.
fn guest_profile(s: &ServerRecord, flavors: &crate::domain::flavors::Flavors) -> GuestProfile {
    GuestProfile {
        name: s.name.clone(),
        hostname: hostname_of(&s.name, s.uuid),
        account: s.owner.clone(),
        class: s.class,
        instance_type: flavors.instance_type(s.flavor.as_deref(), s.class, s.cpu, s.smp, s.mem),
        meta: s.meta.clone(),
        user_data: s.meta.get("cloudinit-user-data").cloned(),
    }
}

/// A DNS label from a free-form name: lowercase letters, digits and inner hyphens, at most 63;
/// `server-<first uuid group>` when nothing usable is left.
pub fn hostname_of(name: &str, id: ServerId) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= 63 {
            break;
        }
    }
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() {
        let id = id.to_string();
        format!("server-{}", id.split('-').next().unwrap_or("0"))
    } else {
        out
    }
}
