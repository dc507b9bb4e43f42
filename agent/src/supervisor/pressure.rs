//! The agent's own reaction to pressure: when the kernel says tasks stall for CPU or memory
//! while normal servers run beside backfill servers, the backfill servers are squeezed to the
//! configured floor at once (before any coordinator decision), reported with the perf_factor
//! in force, and given their own limits back once the pressure has been gone for a while.

use super::{Entry, Run, Supervisor};
use crate::pressure::Resource;
use backfill_shared::{PerfFactor, ServerClass, ServerId};

/// What the supervisor knows of the host's pressure.
#[derive(Debug, Clone)]
pub(super) struct PressureState {
    /// The perf_factor backfill servers are squeezed to.
    pub floor: f64,
    /// Seconds without a trigger before the squeeze is lifted.
    pub release_secs: i64,
    /// When the last trigger that counts against backfill fired, by resource (the
    /// supervisor's clock, seconds): each resource's squeeze is held by its own events only.
    pub last_event: [Option<i64>; 2],
    /// Squeezes since the agent started, by resource.
    pub squeezes: [u64; 2],
    /// Each backfill server's CPU time at the last round: only a server that used the CPU
    /// since is squeezed for CPU pressure (the stall is then partly its doing).
    pub cpu_seen: std::collections::BTreeMap<ServerId, u64>,
}

impl Default for PressureState {
    fn default() -> PressureState {
        PressureState {
            floor: 0.1,
            release_secs: 30,
            last_event: [None, None],
            squeezes: [0, 0],
            cpu_seen: Default::default(),
        }
    }
}

/// The perf_factor in force: what the coordinator asked for, lowered by a local squeeze.
pub(super) fn effective(e: &Entry) -> PerfFactor {
    squeezed(e.perf_factor, e.squeezed)
}

/// `asked`, lowered by `squeeze` where it is lower.
pub(super) fn squeezed(asked: PerfFactor, squeeze: Option<PerfFactor>) -> PerfFactor {
    match squeeze {
        Some(s) => PerfFactor {
            cpu: asked.cpu.min(s.cpu),
            mem: asked.mem.min(s.mem),
        },
        None => asked,
    }
}

/// Memory pressure is backfill's doing only when the host is short of memory: under this
/// share of it available (MemAvailable), backfill's memory is what normal servers need. A
/// backfill server's own reclaim under its squeeze stalls too, and must not squeeze it further.
pub const LOW_MEMORY_PERCENT: u64 = 10;

pub(super) fn host_low_on_memory() -> bool {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return false;
    };
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) if total > 0 => avail * 100 < total * LOW_MEMORY_PERCENT,
        _ => false,
    }
}

fn is_backfill(e: &Entry) -> bool {
    e.guest
        .as_ref()
        .is_none_or(|g| g.class == ServerClass::Backfill)
}

impl Supervisor {
    /// Squeezes with `floor` and lifts after `release_secs` quiet seconds.
    pub fn with_pressure_policy(mut self, floor: f64, release_secs: u64) -> Supervisor {
        self.pressure.floor = PerfFactor::clamp_one(floor);
        self.pressure.release_secs = i64::try_from(release_secs).unwrap_or(i64::MAX);
        self
    }

    /// A PSI trigger fired for `r`. When normal servers run here and backfill servers are the
    /// likely cause (for CPU: they used the CPU since the last round; for memory: the host is
    /// short of it, under [`LOW_MEMORY_PERCENT`] available, and they hold more than their
    /// floor), those backfill servers' `r` is squeezed to the floor now. Pressure without
    /// normal servers here is nobody's concern: backfill may use the host. Returns whether any
    /// limit changed (the coordinator should hear of it at once).
    /// Where the stall poller reads every normal server's own stall for `r`
    /// ([`Supervisor::poll_stall`]), the host's trigger is left to it and changes nothing.
    pub fn on_pressure(&mut self, r: Resource) -> bool {
        if self.stall.attributed[super::stall::index(r)] {
            return false;
        }
        self.squeeze_for(r)
    }

    /// Squeezes the backfill servers to blame for pressure on `r` (see
    /// [`Supervisor::on_pressure`]).
    pub(super) fn squeeze_for(&mut self, r: Resource) -> bool {
        let running = |e: &Entry| matches!(e.run, Run::Running { .. });
        let normal_here = self.entries.values().any(|e| running(e) && !is_backfill(e));
        if !normal_here {
            return false;
        }
        if r == Resource::Memory && !host_low_on_memory() {
            // Not backfill's doing: it neither squeezes nor holds a squeeze (of either
            // resource) any longer.
            return false;
        }
        self.pressure.last_event[super::stall::index(r)] = Some(self.clock.now());
        let floor = self.pressure.floor;
        let targets: Vec<ServerId> = self
            .entries
            .iter()
            .filter(|(_, e)| running(e) && is_backfill(e))
            .filter(|(id, e)| {
                let now = effective(e);
                match r {
                    Resource::Cpu => now.cpu > floor && self.used_cpu_lately(id),
                    Resource::Memory => now.mem > floor,
                }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &targets {
            if let Some(e) = self.entries.get_mut(id) {
                let mut s = e.squeezed.unwrap_or(PerfFactor::FULL);
                match r {
                    Resource::Cpu => s.cpu = s.cpu.min(floor),
                    Resource::Memory => s.mem = s.mem.min(floor),
                }
                e.squeezed = Some(s);
            }
            self.enforce(id);
        }
        if !targets.is_empty() {
            let i = super::stall::index(r);
            self.pressure.squeezes[i] = self.pressure.squeezes[i].saturating_add(1);
            tracing::warn!(
                resource = r.as_str(),
                servers = targets.len(),
                floor,
                "pressure beside normal servers: backfill squeezed"
            );
        }
        !targets.is_empty()
    }

    /// Whether backfill server `id` used the CPU since the last round.
    fn used_cpu_lately(&self, id: &ServerId) -> bool {
        let now = self.cgroups.usage(id).map_or(0, |u| u.cpu_usage_usec);
        self.pressure
            .cpu_seen
            .get(id)
            .is_none_or(|&before| now > before)
    }

    /// Notes each running backfill server's CPU time (once a round).
    fn note_cpu(&mut self) {
        let seen: std::collections::BTreeMap<ServerId, u64> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.run, Run::Running { .. }) && is_backfill(e))
            .map(|(id, _)| (*id, self.cgroups.usage(id).map_or(0, |u| u.cpu_usage_usec)))
            .collect();
        self.pressure.cpu_seen = seen;
    }

    /// Lifts each resource's squeeze once no trigger for that resource has fired for
    /// `release_secs`, or every squeeze at once when no normal server runs here any more.
    /// Returns whether any limit changed.
    pub(super) fn release_pressure(&mut self) -> bool {
        self.note_cpu();
        let normal_here = self
            .entries
            .values()
            .any(|e| matches!(e.run, Run::Running { .. }) && !is_backfill(e));
        let now = self.clock.now();
        let quiet = |r: Resource| {
            !normal_here
                || self.pressure.last_event[super::stall::index(r)]
                    .is_none_or(|t| now.saturating_sub(t) >= self.pressure.release_secs)
        };
        let (cpu_quiet, mem_quiet) = (quiet(Resource::Cpu), quiet(Resource::Memory));
        if !cpu_quiet && !mem_quiet {
            return false;
        }
        let mut released = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            let Some(mut s) = e.squeezed else {
                continue;
            };
            if cpu_quiet {
                s.cpu = PerfFactor::FULL.cpu;
            }
            if mem_quiet {
                s.mem = PerfFactor::FULL.mem;
            }
            let lifted = (s != PerfFactor::FULL).then_some(s);
            if lifted != e.squeezed {
                e.squeezed = lifted;
                released.push(*id);
            }
        }
        for id in &released {
            self.enforce(id);
        }
        if !released.is_empty() {
            tracing::info!(
                servers = released.len(),
                cpu = cpu_quiet,
                memory = mem_quiet,
                "pressure gone: backfill gets its limits back"
            );
        }
        !released.is_empty()
    }

    /// Writes a running server's limits as they stand now (its perf_factor in force).
    fn enforce(&self, id: &ServerId) {
        let Some(e) = self.entries.get(id) else {
            return;
        };
        if !matches!(e.run, Run::Running { .. }) {
            return;
        }
        let limits = self.entry_limits(e);
        if let Err(err) = self.cgroups.set_limits(id, &limits) {
            self.cgroup_errors.inc();
            tracing::warn!(server = %id, error = %err, "cannot change limits");
        }
        self.resize_guest_memory(id, e.driver, &e.resources, effective(e));
    }

    /// Whether some server is squeezed by the agent itself now.
    pub fn squeezing(&self) -> bool {
        self.entries.values().any(|e| e.squeezed.is_some())
    }

    /// Each running server's time throttled by its CPU quota (microseconds).
    pub fn throttled(&self) -> Vec<(ServerId, u64)> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e.run, Run::Running { .. }))
            .filter_map(|(id, _)| {
                let u = self.cgroups.usage(id).ok()?;
                Some((*id, u.cpu_throttled_usec))
            })
            .collect()
    }

    /// Each running server's own stall so far (us), by resource, where the kernel tells (for
    /// the metrics: backfill servers too, not only the normal servers the poller watches).
    pub fn server_stalls(&self) -> Vec<(ServerId, crate::pressure::Resource, u64)> {
        let mut out = Vec::new();
        for (id, e) in &self.entries {
            if !matches!(e.run, Run::Running { .. }) {
                continue;
            }
            for r in crate::pressure::Resource::ALL {
                if let Ok(Some(us)) = self.cgroups.stall_usec(id, r) {
                    out.push((*id, r, us));
                }
            }
        }
        out
    }

    /// Each class parent's quota, weight, CPU used and throttled, and stall, where it exists.
    pub fn class_stats(&self) -> Vec<(crate::cgroups::CgroupClass, crate::cgroups::ClassStats)> {
        crate::cgroups::CgroupClass::ALL
            .into_iter()
            .filter_map(|c| Some((c, self.cgroups.class_stats(c).ok()??)))
            .collect()
    }

    /// Squeezes so far: (cpu, memory).
    pub fn squeezes(&self) -> (u64, u64) {
        (self.pressure.squeezes[0], self.pressure.squeezes[1])
    }
}
