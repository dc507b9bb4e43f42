//! The workloads of this host: started, limited, watched, stopped and re-adopted. Applying a
//! desired state is idempotent: the same state twice changes nothing.

use crate::cgroups::{CgroupLimits, CgroupManager, CpuPolicy, limits_for};
use crate::discovery::GpuMonitor;
use crate::driver::{self, ExecSpec, ProcessIdentity, RunAs};
use crate::metadata::MetadataStore;
use crate::network::{GuestNet, GuestNetworks, NoNetworks};
use crate::state::{PersistedServer, StateError, StateFile};
use backfill_shared::protocol::{
    DesiredServer, DesiredState, ObservedServer, Report, WorkloadState,
};
use backfill_shared::{
    Clock, GuestNetwork, GuestProfile, NetworkMode, PerfFactor, Resources, ServerId, Termination,
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
        }
    }

    /// Quotas by the MHz sold on this host (its MHz per core), and whether normal servers
    /// have one.
    pub fn with_cpu_policy(mut self, cpu: CpuPolicy) -> Supervisor {
        self.cpu = cpu;
        self
    }

    /// The limits a server gets here. A server whose class is unknown (adopted from a state
    /// file that does not say) is treated as backfill: it yields rather than competes.
    fn limits(
        &self,
        resources: &Resources,
        perf: PerfFactor,
        guest: Option<&backfill_shared::GuestProfile>,
    ) -> CgroupLimits {
        let class = guest.map_or(backfill_shared::ServerClass::Backfill, |g| g.class);
        limits_for(resources, perf, class, &self.cpu)
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
                Run::Running { .. } => (
                    *id,
                    "running",
                    Some(self.limits(&e.resources, e.perf_factor, e.guest.as_ref())),
                ),
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
                    e.guest = Some(d.guest.clone());
                    if d.shutdown.is_some() && e.shutdown.is_none() {
                        tracing::info!(server = %id, until = d.shutdown, "graceful shutdown: asking the workload to stop");
                    }
                    e.shutdown = d.shutdown;
                    if e.perf_factor != d.perf_factor || e.resources != d.resources {
                        let limits =
                            limits_for(&d.resources, d.perf_factor, d.guest.class, &self.cpu);
                        match self.cgroups.set_limits(&id, &limits) {
                            Ok(()) => {
                                tracing::info!(server = %id, cpu = d.perf_factor.cpu, mem = d.perf_factor.mem, "limits changed");
                                e.perf_factor = d.perf_factor;
                                e.resources = d.resources;
                            }
                            Err(err) => {
                                self.cgroup_errors.inc();
                                tracing::warn!(server = %id, error = %err, "cannot change limits")
                            }
                        }
                    }
                }
                // Exited or failed: reported; the coordinator takes it out of the desired state.
                Some(_) => {}
            }
        }
        self.applied_generation = self.applied_generation.max(desired.generation);
        self.persist();
        self.publish();
    }

    fn start(&mut self, d: &DesiredServer) {
        let id = d.server;
        let failed = |reason: String| Entry {
            resources: d.resources,
            perf_factor: d.perf_factor,
            incarnation: d.incarnation,
            termination: d.termination,
            run: Run::Failed { reason },
            guest: Some(d.guest.clone()),
            network: None,
            acknowledged: false,
            shutdown: d.shutdown,
        };
        match self.try_start(d) {
            Ok((process, child, network)) => {
                tracing::info!(server = %id, pid = process.pid, "workload started");
                let run = Run::Running {
                    process,
                    child: Some(child),
                    started_at: self.clock.now(),
                };
                let entry = Entry {
                    run,
                    network,
                    ..failed(String::new())
                };
                self.entries.insert(id, entry);
                // A workload the state file does not know would be lost to a restarted agent.
                if let Err(e) = self.save() {
                    tracing::error!(server = %id, error = %e, "cannot record the workload; stopping it");
                    self.stop(&id);
                    let entry = Entry {
                        shutdown: None,
                        ..failed(format!("cannot record the workload: {e}"))
                    };
                    self.entries.insert(id, entry);
                }
            }
            Err(reason) => {
                tracing::warn!(server = %id, %reason, "workload did not start");
                self.cleanup(&id);
                self.entries.insert(id, failed(reason));
            }
        }
    }

    fn try_start(
        &self,
        d: &DesiredServer,
    ) -> Result<(ProcessIdentity, Child, Option<GuestNet>), String> {
        let id = d.server;
        let scan = self.gpu_scan();
        let gpus = gpus::resolve(&d.gpus, &scan)?;
        let limits = self.limits(&d.resources, d.perf_factor, Some(&d.guest));
        self.cgroups.create(&id, &limits).map_err(|e| {
            self.cgroup_errors.inc();
            e.to_string()
        })?;
        if !scan.devices.is_empty() {
            self.isolate_gpus(&id, &gpus)?;
        }
        let join = self.cgroups.join_files(&id).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| format!("{}: {e}", self.log_dir.display()))?;
        let empty = BTreeMap::new();
        let (command, env) = match &d.workload {
            Some(w) => (&w.command, &w.env),
            None => (&self.default_command, &empty),
        };
        let env = &gpu_env(env, &gpus.uuids);
        let log_file = self.log_dir.join(format!("{id}.log"));
        let isolated = d
            .workload
            .as_ref()
            .is_some_and(|w| w.network == NetworkMode::Isolated);
        let network = if isolated {
            Some(self.make_network(&id).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let netns = network.as_ref().map(GuestNet::netns_path);
        let spawned = driver::spawn(&ExecSpec {
            server: id,
            command,
            env,
            join_files: &join,
            run_as: self.run_as,
            log_file: &log_file,
            netns: netns.as_deref(),
            yielding: driver::Yielding::for_class(d.guest.class),
        });
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(n) = &network {
                    self.networks.destroy(n);
                }
                return Err(e.to_string());
            }
        };
        match ProcessIdentity::of(child.id()) {
            Some(p) => Ok((p, child, network)),
            None => {
                if let Some(n) = &network {
                    self.networks.destroy(n);
                }
                // It exited at once; reap it and say how.
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(format!(
                    "exited immediately ({status}); see {}",
                    log_file.display()
                ))
            }
        }
    }

    fn stop(&mut self, id: &ServerId) {
        let mut entry = self.entries.remove(id);
        if let Some(Entry {
            run: Run::Running { process, child, .. },
            ..
        }) = entry.as_mut()
        {
            stop_process(process, child.as_mut());
            tracing::info!(server = %id, "workload stopped");
        }
        self.cleanup(id);
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
        }
        let broken = self.heal_networks();
        self.reclaim_memory();
        // Graceful shutdowns: ask again every second until the grace period ends (as ACPI
        // power-button events are repeated); the workload decides.
        let now = self.clock.now();
        for e in self.entries.values() {
            if let (Run::Running { process, child, .. }, Some(until)) = (&e.run, e.shutdown)
                && now < until
                && (child.is_some() || driver::alive(process))
            {
                driver::terminate_group(process.pid);
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
                stop_process(process, child.as_mut());
            }
            self.cleanup(id);
            if let Some(n) = e.network.take() {
                self.networks.destroy(&n);
            }
            e.run = Run::Exited { code: None };
            self.entries.insert(*id, e);
        }
        let changed = !ended.is_empty() || !due.is_empty() || broken;
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
                let limits = if running {
                    self.cgroups.read_limits(id).ok()
                } else {
                    None
                }
                .unwrap_or_else(|| self.limits(&e.resources, e.perf_factor, e.guest.as_ref()));
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
                    perf_factor: e.perf_factor,
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
            usage: host_usage(),
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
mod gpus;
mod guests;
mod memory;
mod process;

pub use gpus::{CUDA_VISIBLE_DEVICES, NVIDIA_NO_DEVICES, NVIDIA_VISIBLE_DEVICES, gpu_env};
use process::{host_usage, stop_process};
#[cfg(test)]
mod tests;
