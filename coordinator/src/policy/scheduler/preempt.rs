//! Making room for a normal server: downsize backfill servers proportionally (never below their
//! class floor), and only when that is not enough, terminate the fewest, youngest and
//! lowest-priority preemptible servers, honouring minimum uptime and notice. Normal servers are
//! never victims.

use super::cluster::{Cluster, HostAcc, ServerAcc};
use super::gpu;
use super::{ClassPolicy, Classes, Plan, ServerSpec, Termination};
use backfill_shared::domain::scale;
use backfill_shared::{PerfFactor, ServerClass, ServerId};

/// One way to make room on one host, sketched cheaply: the victims it needs and its cost.
/// Only the chosen host's downsizing is computed in full.
struct Sketch<'c> {
    host: &'c HostAcc,
    /// New victims, in the order chosen.
    victims: Vec<&'c ServerAcc>,
    /// Whether already-scheduled terminations on the host are counted on.
    uses_pending: bool,
    /// What is left to free after the victims, by downsizing the others.
    deficit: Deficit,
    /// Lower is gentler: new terminations, of which spot, then the squeeze.
    cost: (usize, usize, u64),
}

/// When a victim of `policy` started at `started_at` may be stopped if told at `now`.
pub fn terminate_at(policy: &ClassPolicy, started_at: i64, now: i64) -> i64 {
    now.saturating_add(policy.notice_s.max(0))
        .max(started_at.saturating_add(policy.min_uptime_s.max(0)))
}

pub fn plan_room(cluster: &Cluster, spec: &ServerSpec, classes: &Classes, now: i64) -> Plan {
    let gpus = usize::try_from(spec.gpus).unwrap_or(usize::MAX);
    let hosts = || {
        cluster.hosts.values().filter(|h| {
            h.spec.schedulable && h.spec.admits(spec) && h.unguaranteed().fits(&spec.need)
        })
    };
    let by_cost =
        |a: &Sketch<'_>, b: &Sketch<'_>| (a.cost, &a.host.spec.id).cmp(&(b.cost, &b.host.spec.id));
    // First pass, O(1) per host: a host where downsizing alone is enough. Only if there is
    // none are terminations weighed, host by host.
    let best = hosts()
        .filter(|h| gpu::free_matching(h, spec) >= gpus)
        .filter_map(|h| sketch(cluster, h, spec, classes, true))
        .min_by(by_cost)
        .or_else(|| {
            hosts()
                .filter(|h| {
                    gpu::all_matching(h, spec).saturating_sub(normal_gpus(cluster, h, spec)) >= gpus
                })
                .filter_map(|h| sketch(cluster, h, spec, classes, false))
                .min_by(by_cost)
        });
    let Some(best) = best else {
        return Plan::Queue {
            reason: "no host can make room: the capacity is guaranteed to normal servers".into(),
        };
    };
    let h = best.host;
    let staying: Vec<(&ServerAcc, &ClassPolicy)> = elastic_on(cluster, h, classes)
        .filter(|(s, _)| !terminating(s) && !best.victims.iter().any(|v| v.spec.id == s.spec.id))
        .collect();
    // The sketch checked that the floors cover the deficit, so this finds a ratio.
    let downsize = downsize_to_cover(&staying, best.deficit).unwrap_or_default();
    if best.victims.is_empty() && !best.uses_pending {
        return Plan::Place {
            host: h.spec.id.clone(),
            gpus: gpu::take(h, spec),
            downsize,
        };
    }
    let mut ready_at = now;
    if best.uses_pending {
        for (s, _) in elastic_on(cluster, h, classes).filter(|(s, _)| terminating(s)) {
            if let Some(t) = s.placed.as_ref().and_then(|p| p.termination) {
                ready_at = ready_at.max(t.terminate_at);
            }
        }
    }
    let mut terminate = Vec::new();
    for v in &best.victims {
        let Some(policy) = classes.of(v.spec.class) else {
            continue; // never a normal server
        };
        let started = v.placed.as_ref().map(|p| p.started_at).unwrap_or(now);
        let at = terminate_at(policy, started, now);
        ready_at = ready_at.max(at);
        terminate.push((
            v.spec.id,
            Termination {
                scheduled_at: now,
                terminate_at: at,
            },
        ));
    }
    Plan::Preempt {
        host: h.spec.id.clone(),
        downsize,
        terminate,
        ready_at,
    }
}

/// Matching GPUs held by normal servers on a host (they never come back for this request).
fn normal_gpus(cluster: &Cluster, h: &HostAcc, spec: &ServerSpec) -> usize {
    h.servers
        .iter()
        .filter_map(|id| cluster.servers.get(id))
        .filter(|s| s.spec.class == ServerClass::Normal)
        .filter_map(|s| s.placed.as_ref())
        .map(|p| gpu::matching(h, spec, p.gpus.iter()))
        .sum()
}

/// The placed preemptible servers of a host with their class policies.
fn elastic_on<'c>(
    cluster: &'c Cluster,
    h: &'c HostAcc,
    classes: &'c Classes,
) -> impl Iterator<Item = (&'c ServerAcc, &'c ClassPolicy)> {
    h.servers
        .iter()
        .filter_map(|id| cluster.servers.get(id))
        .filter(|s| s.placed.is_some())
        .filter_map(|s| classes.of(s.spec.class).map(|p| (s, p)))
}

/// A deficit still to cover, per dimension.
#[derive(Debug, Clone, Copy, Default)]
struct Deficit {
    cpu: u64,
    mem: u64,
    vcpus: u32,
    gpus: usize,
}

impl Deficit {
    /// What is left once `s` is gone; `gpus` is how many of its GPUs the request can use.
    fn after_freeing(self, s: &ServerAcc, gpus: usize) -> Deficit {
        let held = s.held();
        Deficit {
            cpu: self.cpu.saturating_sub(held.cpu_mhz),
            mem: self.mem.saturating_sub(held.mem_bytes),
            vcpus: self.vcpus.saturating_sub(held.vcpus),
            gpus: self.gpus.saturating_sub(gpus),
        }
    }

    /// Whether downsizing that can free `squeezable` (CPU, memory) covers what is left.
    fn covered_by(&self, squeezable: (u64, u64)) -> bool {
        self.vcpus == 0 && self.gpus == 0 && squeezable.0 >= self.cpu && squeezable.1 >= self.mem
    }
}

/// The cheapest way to make room on `h`, in O(k log k) for its k servers.
fn sketch<'c>(
    cluster: &'c Cluster,
    h: &'c HostAcc,
    spec: &ServerSpec,
    classes: &'c Classes,
    downsize_only: bool,
) -> Option<Sketch<'c>> {
    let free = h.free();
    let mut deficit = Deficit {
        cpu: spec.need.cpu_mhz.saturating_sub(free.cpu_mhz),
        mem: spec.need.mem_bytes.saturating_sub(free.mem_bytes),
        vcpus: spec.need.vcpus.saturating_sub(free.vcpus),
        gpus: usize::try_from(spec.gpus)
            .unwrap_or(usize::MAX)
            .saturating_sub(gpu::free_matching(h, spec)),
    };
    let squeeze_cost = |d: &Deficit| d.cpu.saturating_add(d.mem >> 20);
    // Downsizing alone makes the room real at once; the host keeps the sum, so this is O(1).
    let mut squeezable = h.squeezable;
    if deficit.covered_by(squeezable) {
        return Some(Sketch {
            host: h,
            victims: Vec::new(),
            uses_pending: false,
            cost: (0, 0, squeeze_cost(&deficit)),
            deficit,
        });
    }
    if downsize_only {
        return None;
    }
    let mut candidates: Vec<(&ServerAcc, &ClassPolicy)> = elastic_on(cluster, h, classes)
        .filter(|(s, _)| !terminating(s))
        .collect();
    // Servers already on their way out will give their share back, later.
    let mut uses_pending = false;
    let usable = |s: &ServerAcc| {
        s.placed
            .as_ref()
            .map_or(0, |p| gpu::matching(h, spec, p.gpus.iter()))
    };
    for (s, _) in elastic_on(cluster, h, classes).filter(|(s, _)| terminating(s)) {
        deficit = deficit.after_freeing(s, usable(s));
        uses_pending = true;
    }
    // New victims: backfill before spot, lowest priority, youngest, then by id.
    candidates.sort_by_key(|(s, _)| {
        (
            s.spec.class == ServerClass::Spot,
            s.spec.priority,
            std::cmp::Reverse(s.placed.as_ref().map(|p| p.started_at).unwrap_or(0)),
            s.spec.id,
        )
    });
    let mut victims = Vec::new();
    let mut spot = 0;
    for (s, _) in candidates {
        if deficit.covered_by(squeezable) {
            break;
        }
        let f = s.to_floor(classes);
        squeezable = (squeezable.0 - f.0, squeezable.1 - f.1);
        deficit = deficit.after_freeing(s, usable(s));
        spot += usize::from(s.spec.class == ServerClass::Spot);
        victims.push(s);
    }
    if !deficit.covered_by(squeezable) {
        return None;
    }
    Some(Sketch {
        host: h,
        cost: (victims.len(), spot, squeeze_cost(&deficit)),
        victims,
        uses_pending,
        deficit,
    })
}

fn terminating(s: &ServerAcc) -> bool {
    s.placed.as_ref().is_some_and(|p| p.termination.is_some())
}

/// New perf_factors for downsizable servers in `rest` that free at least `d`'s CPU and memory,
/// scaling every one by the same ratio per dimension (the gentlest ratio that is enough),
/// never below its class floor. `None` when even the floors are not enough, or when vCPUs or
/// GPUs are short (those are never downsized).
fn downsize_to_cover(
    rest: &[(&ServerAcc, &ClassPolicy)],
    d: Deficit,
) -> Option<Vec<(ServerId, PerfFactor)>> {
    if d.vcpus > 0 || d.gpus > 0 {
        return None;
    }
    let squeezable: Vec<(&ServerAcc, f64)> = rest
        .iter()
        .filter(|(_, p)| p.downsizable)
        .map(|(s, p)| (*s, p.floor.clamp(0.0, 1.0)))
        .collect();
    let cpu = |s: &ServerAcc| (s.spec.need.cpu_mhz, current(s).cpu);
    let mem = |s: &ServerAcc| (s.spec.need.mem_bytes, current(s).mem);
    let r_cpu = ratio(&squeezable, d.cpu, cpu)?;
    let r_mem = ratio(&squeezable, d.mem, mem)?;
    let mut out = Vec::new();
    for (s, floor) in &squeezable {
        let now = current(s);
        let next = PerfFactor {
            cpu: scaled_factor(now.cpu, r_cpu, *floor),
            mem: scaled_factor(now.mem, r_mem, *floor),
        };
        if next != now {
            out.push((s.spec.id, next));
        }
    }
    Some(out)
}

fn current(s: &ServerAcc) -> PerfFactor {
    s.placed
        .as_ref()
        .map(|p| p.perf_factor)
        .unwrap_or(PerfFactor::FULL)
}

fn scaled_factor(p: f64, r: f64, floor: f64) -> f64 {
    if r >= 1.0 {
        p
    } else {
        (p * r).max(floor).min(p)
    }
}

/// The largest ratio r in [0, 1] such that scaling every server's factor by r (floored) frees
/// at least `need` in the dimension `dim` gives (amount, current factor).
fn ratio(
    servers: &[(&ServerAcc, f64)],
    need: u64,
    dim: impl Fn(&ServerAcc) -> (u64, f64),
) -> Option<f64> {
    if need == 0 {
        return Some(1.0);
    }
    let freed = |r: f64| -> u64 {
        servers
            .iter()
            .map(|(s, floor)| {
                let (amount, p) = dim(s);
                scale(amount, p).saturating_sub(scale(amount, scaled_factor(p, r, *floor)))
            })
            .sum()
    };
    if freed(0.0) < need {
        return None;
    }
    // freed(r) falls as r grows: find the largest r that is still enough.
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        if freed(mid) >= need {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}
