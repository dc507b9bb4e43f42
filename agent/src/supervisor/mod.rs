//! The workloads of this host: started, limited, watched, stopped and re-adopted. Applying a
//! desired state is idempotent: the same state twice changes nothing.

use crate::cgroups::{CgroupLimits, CgroupManager, CpuPolicy, limits_for};
use crate::discovery::GpuMonitor;
use crate::driver::{self, DriverSet, MemoryControl, ProcessIdentity, RunAs};
use crate::metadata::MetadataStore;
use crate::network::{GuestNet, GuestNetworks, NoNetworks};
use crate::state::{PersistedServer, StateError, StateFile};
use backfill_shared::protocol::{
    DesiredServer, DesiredState, HostUsage, ObservedServer, Report, WorkloadState,
};
use backfill_shared::{
    Clock, DriverKind, GuestNetwork, GuestProfile, PerfFactor, Resources, ServerId, Termination,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;

#[derive(Debug)]
enum Run {
    Running {
        process: ProcessIdentity,
        /// Present when this agent process started it (and so must reap it).
        child: Option<Child>,
        started_at: i64,
    },
    Exited {
        code: Option<i32>,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug)]
struct Entry {
    resources: Resources,
    perf_factor: PerfFactor,
    incarnation: u64,
    termination: Option<Termination>,
    run: Run,
    guest: Option<GuestProfile>,
    /// Its own network namespace (isolated network mode) while it runs.
    network: Option<GuestNet>,
    /// The guest acknowledged its scheduled termination.
    acknowledged: bool,
    /// A graceful shutdown: SIGTERM once a second until then.
    shutdown: Option<i64>,
    /// The driver that runs it.
    driver: DriverKind,
    /// The agent's own squeeze under pressure, below what the coordinator asked.
    squeezed: Option<PerfFactor>,
}

#[derive(Debug)]
pub struct Supervisor {
    cgroups: Box<dyn CgroupManager>,
    state: StateFile,
    log_dir: PathBuf,
    run_as: Option<RunAs>,
    default_command: Vec<String>,
    clock: Arc<dyn Clock>,
    entries: BTreeMap<ServerId, Entry>,
    applied_generation: u64,
    networks: Box<dyn GuestNetworks>,
    metadata: Option<Arc<MetadataStore>>,
    /// The availability zone guests are told.
    zone: String,
    /// Failed cgroup writes (shared with the metrics registry).
    cgroup_errors: prometheus_client::metrics::counter::Counter,
    /// The host's GPUs, re-read while the agent runs.
    gpus: Option<Arc<GpuMonitor>>,
    /// Where the `nvidia-uvm` major is read from.
    proc_devices: PathBuf,
    said: gpus::SaidOnce,
    /// How what a server was sold becomes CPU limits here.
    cpu: CpuPolicy,
    /// How workloads run here.
    drivers: DriverSet,
    /// The host's pressure and the agent's reaction to it.
    pressure: pressure::PressureState,
    /// The normal servers' own stall, polled.
    stall: stall::StallWatch,
}

impl Supervisor {
    pub fn new(
        cgroups: Box<dyn CgroupManager>,
        state_dir: &std::path::Path,
        run_as: Option<RunAs>,
        default_command: Vec<String>,
        clock: Arc<dyn Clock>,
    ) -> Supervisor {
        Supervisor {
            cgroups,
            state: StateFile::new(state_dir),
            log_dir: state_dir.join("logs"),
            run_as,
            default_command,
            clock,
            entries: BTreeMap::new(),
            applied_generation: 0,
            networks: Box::new(NoNetworks),
            metadata: None,
            zone: "default".into(),
            cgroup_errors: Default::default(),
            gpus: None,
            proc_devices: PathBuf::from("/proc/devices"),
            said: Default::default(),
            cpu: CpuPolicy::default(),
            drivers: DriverSet::new().with(Arc::new(driver::ExecDriver)),
            pressure: Default::default(),
            stall: Default::default(),
        }
    }

    /// The drivers this host runs workloads with (by default: `exec` only).
    pub fn with_drivers(mut self, drivers: DriverSet) -> Supervisor {
        self.drivers = drivers;
        self
    }

    /// Quotas by the MHz sold on this host (its MHz per core), and whether normal servers
    /// have one.
    pub fn with_cpu_policy(mut self, cpu: CpuPolicy) -> Supervisor {
        self.cpu = cpu;
        self
    }

    /// The limits a server gets here. A server whose class is unknown (adopted from a state
    /// file that does not say) is treated as backfill: it yields rather than competes. A
    /// driver that squeezes memory itself (a VM's balloon) keeps its cgroup at the full size
    /// plus its overhead.
    fn limits(
        &self,
        resources: &Resources,
        perf: PerfFactor,
        guest: Option<&backfill_shared::GuestProfile>,
        kind: DriverKind,
    ) -> CgroupLimits {
        let class = guest.map_or(backfill_shared::ServerClass::Backfill, |g| g.class);
        match self.memory_control(kind) {
            MemoryControl::Cgroup => limits_for(resources, perf, class, &self.cpu),
            MemoryControl::Driver { overhead_bytes } => {
                let whole = PerfFactor { mem: 1.0, ..perf };
                let mut l = limits_for(resources, whole, class, &self.cpu);
                l.mem_limit_bytes = l.mem_limit_bytes.map(|m| m.saturating_add(overhead_bytes));
                l.mem_high_bytes = None;
                l
            }
        }
    }

    fn entry_limits(&self, e: &Entry) -> CgroupLimits {
        self.limits(
            &e.resources,
            pressure::effective(e),
            e.guest.as_ref(),
            e.driver,
        )
    }

    fn memory_control(&self, kind: DriverKind) -> MemoryControl {
        self.drivers
            .get(kind)
            .map_or(MemoryControl::Cgroup, |d| d.memory_control())
    }

    /// Gives a driver that squeezes memory itself (a VM's balloon) the server's memory at
    /// `perf`.
    fn resize_guest_memory(
        &self,
        id: &ServerId,
        kind: DriverKind,
        resources: &Resources,
        perf: PerfFactor,
    ) {
        let Some(d) = self.drivers.get(kind) else {
            return;
        };
        if d.memory_control() == MemoryControl::Cgroup {
            return;
        }
        let bytes = backfill_shared::domain::scale(resources.mem_bytes, perf.clamped().mem);
        if let Err(err) = d.resize_memory(id, bytes) {
            tracing::warn!(server = %id, bytes, error = %err, "cannot resize the guest's memory");
        }
    }

    /// Reports the GPUs `monitor` last saw, and gives workloads only the GPUs their servers
    /// were given.
    pub fn with_gpus(mut self, monitor: Arc<GpuMonitor>) -> Supervisor {
        self.gpus = Some(monitor);
        self
    }

    /// Counts failed cgroup writes into `counter`.
    pub fn with_cgroup_error_counter(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Supervisor {
        self.cgroup_errors = counter;
        self
    }

    /// Each workload's state and, while it runs, the limits in force (for the metrics).
    pub fn gauges(&self) -> Vec<(ServerId, &'static str, Option<crate::cgroups::CgroupLimits>)> {
        self.entries
            .iter()
            .map(|(id, e)| match e.run {
                Run::Running { .. } => {
                    let mut l = self.entry_limits(e);
                    // A balloon's size is what the guest has, whatever its cgroup allows.
                    if let Some(bytes) = self
                        .drivers
                        .get(e.driver)
                        .and_then(|d| d.memory_in_force(id))
                    {
                        l.mem_limit_bytes = Some(bytes);
                    }
                    (*id, "running", Some(l))
                }
                Run::Exited { .. } => (*id, "exited", None),
                Run::Failed { .. } => (*id, "failed", None),
            })
            .collect()
    }

    /// Isolated network mode through `networks`.
    pub fn with_networks(mut self, networks: Box<dyn GuestNetworks>) -> Supervisor {
        self.networks = networks;
        self
    }

    /// Keeps `store` up to date with every running server's guest document.
    pub fn with_metadata(mut self, store: Arc<MetadataStore>, zone: String) -> Supervisor {
        self.metadata = Some(store);
        self.zone = zone;
        self
    }

    pub fn enforcing(&self) -> bool {
        self.cgroups.enforcing()
    }

    /// Makes the host match `desired`: starts what is missing, re-limits what changed, stops
    /// what is no longer wanted.
    pub fn apply(&mut self, desired: &DesiredState) {
        let wanted: BTreeMap<ServerId, &DesiredServer> =
            desired.servers.iter().map(|d| (d.server, d)).collect();
        let gone: Vec<ServerId> = self
            .entries
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.stop(&id);
        }
        for (id, d) in wanted {
            match self.entries.get_mut(&id) {
                None => self.start(d),
                // A new run of the server: whatever the agent holds is an earlier one.
                Some(e) if e.incarnation != d.incarnation => {
                    self.stop(&id);
                    self.start(d);
                }
                Some(e) if matches!(e.run, Run::Running { .. }) => {
                    if e.termination.is_some() && d.termination.is_none() {
                        e.acknowledged = false; // the termination was called off
                    }
                    e.termination = d.termination;
                    let was = e.guest.as_ref().map(|g| g.class);
                    let class_changed = was.is_some_and(|c| c != d.guest.class);
                    e.guest = Some(d.guest.clone());
                    if d.shutdown.is_some() && e.shutdown.is_none() {
                        tracing::info!(server = %id, until = d.shutdown, "graceful shutdown: asking the workload to stop");
                    }
                    e.shutdown = d.shutdown;
                    if e.perf_factor != d.perf_factor || e.resources != d.resources || class_changed
                    {
                        let kind = e.driver;
                        let perf = pressure::squeezed(d.perf_factor, e.squeezed);
                        let limits = self.limits(&d.resources, perf, Some(&d.guest), kind);
                        match self.cgroups.set_limits(&id, &limits) {
                            Ok(()) => {
                                tracing::info!(server = %id, cpu = d.perf_factor.cpu, mem = d.perf_factor.mem, "limits changed");
                                if let Some(e) = self.entries.get_mut(&id) {
                                    e.perf_factor = d.perf_factor;
                                    e.resources = d.resources;
                                }
                                self.resize_guest_memory(&id, kind, &d.resources, perf);
                                if class_changed {
                                    self.reyield(&id, d.guest.class);
                                }
                            }
                            Err(err) => {
                                self.cgroup_errors.inc();
                                // Tried again at the next apply.
                                if let (Some(c), Some(e)) = (was, self.entries.get_mut(&id))
                                    && let Some(g) = e.guest.as_mut()
                                {
                                    g.class = c;
                                }
                                tracing::warn!(server = %id, error = %err, "cannot change limits")
                            }
                        }
                    }
                }
                // Exited or failed: reported; the coordinator takes it out of the desired state.
                Some(_) => {}
            }
        }
        // What drivers keep between runs (VM disks) stays for these servers only.
        let keep: Vec<ServerId> = desired
            .servers
            .iter()
            .map(|d| d.server)
            .chain(desired.keep.iter().copied())
            .collect();
        for d in self.drivers.all() {
            d.sweep(&keep);
        }
        self.applied_generation = self.applied_generation.max(desired.generation);
        self.persist();
        self.publish();
    }

    fn stop(&mut self, id: &ServerId) {
        let mut entry = self.entries.remove(id);
        if let Some(Entry {
            run: Run::Running { process, child, .. },
            driver: kind,
            ..
        }) = entry.as_mut()
        {
            if let Some(d) = self.drivers.get(*kind) {
                d.stop(id, process);
            }
            stop_process(process, child.as_mut());
            tracing::info!(server = %id, "workload stopped");
        }
        self.cleanup(id);
        if let Some(e) = &entry {
            self.release_driver(id, e.driver);
        }
        if let Some(n) = entry.and_then(|e| e.network) {
            self.networks.destroy(&n);
        }
    }

    /// Kills whatever is left in the server's cgroup and removes it.
    fn cleanup(&self, id: &ServerId) {
        if let Err(e) = self.cgroups.kill_all(id) {
            tracing::warn!(server = %id, error = %e, "cannot kill the cgroup's processes");
        }
        if let Err(e) = self.cgroups.remove(id) {
            tracing::warn!(server = %id, error = %e, "cannot remove the cgroup");
        }
    }

    /// Notices workloads that ended. Returns whether anything changed.
    pub fn poll_exits(&mut self) -> bool {
        let mut ended = Vec::new();
        for (id, e) in &mut self.entries {
            if let Run::Running { process, child, .. } = &mut e.run {
                let code = match child {
                    Some(c) => match c.try_wait() {
                        Ok(Some(status)) => Some(status.code()),
                        Ok(None) => None,
                        Err(_) => (!driver::alive(process)).then_some(None),
                    },
                    None => (!driver::alive(process)).then_some(None),
                };
                if let Some(code) = code {
                    // Read before the cgroup goes: was it the kernel's OOM killer?
                    let oom = self.cgroups.oom_kills(id).unwrap_or(0);
                    if oom > 0 {
                        let reason = oom_reason(oom, &e.resources, e.perf_factor);
                        tracing::warn!(server = %id, ?code, %reason, "workload ended by the OOM killer");
                        e.run = Run::Failed { reason };
                    } else {
                        tracing::info!(server = %id, ?code, "workload exited");
                        e.run = Run::Exited { code };
                    }
                    ended.push(*id);
                }
            }
        }
        for id in &ended {
            self.cleanup(id);
            self.release_network(id);
            if let Some(kind) = self.entries.get(id).map(|e| e.driver) {
                self.release_driver(id, kind);
            }
        }
        let broken = self.heal_networks();
        let released = self.release_pressure();
        self.reclaim_memory();
        // Graceful shutdowns: ask again every second until the grace period ends (as ACPI
        // power-button events are repeated); the workload decides.
        let now = self.clock.now();
        for (id, e) in &self.entries {
            if let (Run::Running { process, .. }, Some(until)) = (&e.run, e.shutdown)
                && now < until
                && let Some(d) = self.drivers.get(e.driver)
            {
                d.request_shutdown(id, process);
            }
        }
        // Scheduled terminations that are due, whether or not the coordinator is reachable.
        let due: Vec<ServerId> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.run, Run::Running { .. }))
            .filter(|(_, e)| e.termination.is_some_and(|t| t.terminate_at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            tracing::info!(server = %id, "terminating at the scheduled time");
            let Some(mut e) = self.entries.remove(id) else {
                continue;
            };
            if let Run::Running { process, child, .. } = &mut e.run {
                if let Some(d) = self.drivers.get(e.driver) {
                    d.stop(id, process);
                }
                stop_process(process, child.as_mut());
            }
            self.cleanup(id);
            self.release_driver(id, e.driver);
            if let Some(n) = e.network.take() {
                self.networks.destroy(&n);
            }
            e.run = Run::Exited { code: None };
            self.entries.insert(*id, e);
        }
        let changed = !ended.is_empty() || !due.is_empty() || broken || released;
        if changed {
            self.persist();
            self.publish();
        }
        changed
    }

    pub fn report(&self) -> Report {
        let servers = self
            .entries
            .iter()
            .map(|(id, e)| {
                let (state, pid, started_at) = match &e.run {
                    Run::Running {
                        process,
                        started_at,
                        ..
                    } => (WorkloadState::Running, Some(process.pid), Some(*started_at)),
                    Run::Exited { code } => (WorkloadState::Exited { code: *code }, None, None),
                    Run::Failed { reason } => (
                        WorkloadState::Failed {
                            reason: reason.clone(),
                        },
                        None,
                        None,
                    ),
                };
                let running = matches!(e.run, Run::Running { .. });
                let mut limits = if running {
                    self.cgroups.read_limits(id).ok()
                } else {
                    None
                }
                .unwrap_or_else(|| self.entry_limits(e));
                // A balloon's size is what the guest has, whatever its cgroup allows.
                if running
                    && let Some(bytes) = self
                        .drivers
                        .get(e.driver)
                        .and_then(|d| d.memory_in_force(id))
                {
                    limits.mem_limit_bytes = Some(bytes);
                }
                ObservedServer {
                    network: e.network.as_ref().map(|n| GuestNetwork {
                        address: n.address.into(),
                        netns: n.netns.clone(),
                    }),
                    acknowledged: e.acknowledged,
                    server: *id,
                    incarnation: e.incarnation,
                    state,
                    pid,
                    started_at,
                    perf_factor: pressure::effective(e),
                    limits: limits.into(),
                    usage: if running {
                        self.cgroups.usage(id).unwrap_or_default()
                    } else {
                        Default::default()
                    },
                }
            })
            .collect();
        let gpus = self.gpu_scan();
        Report {
            applied_generation: self.applied_generation,
            servers,
            usage: HostUsage {
                squeezing: self.squeezing(),
                ..host_usage()
            },
            gpus: gpus.devices.clone(),
            gpu_usage: gpus.usage.clone(),
        }
    }

    /// Dev mode's exit: stop every workload and remove every cgroup.
    pub fn stop_all(&mut self) {
        let ids: Vec<ServerId> = self.entries.keys().copied().collect();
        for id in ids {
            self.stop(&id);
        }
        if let Err(e) = self.cgroups.remove_parent() {
            tracing::warn!(error = %e, "cannot remove the parent cgroup");
        }
        self.persist();
        self.publish();
    }

    fn save(&self) -> Result<(), StateError> {
        let running: Vec<PersistedServer> = self
            .entries
            .iter()
            .filter_map(|(id, e)| match &e.run {
                Run::Running {
                    process,
                    started_at,
                    ..
                } => Some(PersistedServer {
                    server: *id,
                    process: *process,
                    started_at: *started_at,
                    resources: e.resources,
                    perf_factor: e.perf_factor,
                    incarnation: e.incarnation,
                    termination: e.termination,
                    guest: e.guest.clone(),
                    network: e.network.clone(),
                    acknowledged: e.acknowledged,
                    driver: e.driver,
                }),
                _ => None,
            })
            .collect();
        self.state.save(&running)
    }

    fn persist(&self) {
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot write the agent state file");
        }
    }
}

/// What a server killed by the kernel's OOM killer is reported with (to the coordinator, and
/// from it to the tenant), so it is not taken for a crash of the workload.
fn oom_reason(kills: u64, resources: &Resources, perf: PerfFactor) -> String {
    let allowed = backfill_shared::domain::scale(resources.mem_bytes, perf.clamped().mem);
    format!(
        "killed by the kernel's OOM killer ({kills} process(es)): it needed more than the {allowed} bytes of memory it was allowed (perf_factor.mem {})",
        perf.mem
    )
}

mod adopt;
mod class_change;
mod gpus;
mod guests;
mod memory;
mod pressure;
mod process;
mod stall;
mod start;

pub use crate::pressure::StallPolicy;
pub use gpus::{CUDA_VISIBLE_DEVICES, NVIDIA_NO_DEVICES, NVIDIA_VISIBLE_DEVICES, gpu_env};
use process::{host_usage, stop_process};
#[cfg(test)]
mod pressure_tests;
#[cfg(test)]
mod tests;
