//! Making room for a normal server: downsize backfill servers proportionally (never below their
//! class floor), and only when that is not enough, terminate the fewest, youngest and
//! lowest-priority preemptible servers, honouring minimum uptime and notice. Normal servers are
//! never victims.

use super::cluster::{Cluster, HostAcc, ServerAcc};
use super::{ClassPolicy, Classes, Plan, ServerSpec, Termination};
use backfill_shared::domain::scale;
use backfill_shared::{HostId, PerfFactor, ServerClass, ServerId};

/// One way to make room on one host.
struct Room {
    host: HostId,
    /// The server must wait for terminations (new or already scheduled) to happen.
    wait: bool,
    downsize: Vec<(ServerId, PerfFactor)>,
    terminate: Vec<(ServerId, Termination)>,
    ready_at: i64,
    /// Lower is gentler: new terminations, of which spot, then waiting, then squeeze.
    cost: (usize, usize, i64, u64),
}

/// When a victim of `policy` started at `started_at` may be stopped if told at `now`.
pub fn terminate_at(policy: &ClassPolicy, started_at: i64, now: i64) -> i64 {
    now.saturating_add(policy.notice_s.max(0))
        .max(started_at.saturating_add(policy.min_uptime_s.max(0)))
}

pub fn plan_room(cluster: &Cluster, spec: &ServerSpec, classes: &Classes, now: i64) -> Plan {
    let gpus = usize::try_from(spec.gpus).unwrap_or(usize::MAX);
    let best = cluster
        .hosts
        .values()
        .filter(|h| h.spec.schedulable && h.unguaranteed().fits(&spec.need))
        .filter(|h| h.spec.gpus.len().saturating_sub(normal_gpus(cluster, h)) >= gpus)
        .filter_map(|h| room_on(cluster, h, spec, classes, now))
        .min_by(|a, b| (a.cost, &a.host).cmp(&(b.cost, &b.host)));
    match best {
        None => Plan::Queue {
            reason: "no host can make room: the capacity is guaranteed to normal servers".into(),
        },
        Some(r) if !r.wait => Plan::Place {
            gpus: cluster
                .hosts
                .get(&r.host)
                .map(|h| h.free_gpus.iter().take(gpus).cloned().collect())
                .unwrap_or_default(),
            host: r.host,
            downsize: r.downsize,
        },
        Some(r) => Plan::Preempt {
            host: r.host,
            downsize: r.downsize,
            terminate: r.terminate,
            ready_at: r.ready_at,
        },
    }
}

/// GPUs held by normal servers on a host (they never come back for this request).
fn normal_gpus(cluster: &Cluster, h: &HostAcc) -> usize {
    h.servers
        .iter()
        .filter_map(|id| cluster.servers.get(id))
        .filter(|s| s.spec.class == ServerClass::Normal)
        .filter_map(|s| s.placed.as_ref())
        .map(|p| p.gpus.len())
        .sum()
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
    fn after_freeing(self, s: &ServerAcc) -> Deficit {
        let held = s.held();
        Deficit {
            cpu: self.cpu.saturating_sub(held.cpu_mhz),
            mem: self.mem.saturating_sub(held.mem_bytes),
            vcpus: self.vcpus.saturating_sub(held.vcpus),
            gpus: self
                .gpus
                .saturating_sub(s.placed.as_ref().map(|p| p.gpus.len()).unwrap_or(0)),
        }
    }
}

fn room_on(
    cluster: &Cluster,
    h: &HostAcc,
    spec: &ServerSpec,
    classes: &Classes,
    now: i64,
) -> Option<Room> {
    let free = h.free();
    let mut deficit = Deficit {
        cpu: spec.need.cpu_mhz.saturating_sub(free.cpu_mhz),
        mem: spec.need.mem_bytes.saturating_sub(free.mem_bytes),
        vcpus: spec.need.vcpus.saturating_sub(free.vcpus),
        gpus: usize::try_from(spec.gpus)
            .unwrap_or(usize::MAX)
            .saturating_sub(h.free_gpus.len()),
    };
    // Preemptible servers on the host, and their policies.
    let elastic: Vec<(&ServerAcc, &ClassPolicy)> = h
        .servers
        .iter()
        .filter_map(|id| cluster.servers.get(id))
        .filter(|s| s.placed.is_some())
        .filter_map(|s| classes.of(s.spec.class).map(|p| (s, p)))
        .collect();
    let staying: Vec<(&ServerAcc, &ClassPolicy)> = elastic
        .iter()
        .filter(|(s, _)| !terminating(s))
        .copied()
        .collect();
    // Downsizing alone makes the room real at once: place now.
    if let Some(downsize) = downsize_to_cover(&staying, deficit) {
        let squeeze = squeeze(cluster, &downsize);
        return Some(Room {
            host: h.spec.id.clone(),
            wait: false,
            cost: (0, 0, 0, squeeze),
            downsize,
            terminate: Vec::new(),
            ready_at: now,
        });
    }
    // Servers already on their way out will give their share back, later.
    let mut ready_at = now;
    for (s, _) in elastic.iter().filter(|(s, _)| terminating(s)) {
        deficit = deficit.after_freeing(s);
        if let Some(t) = s.placed.as_ref().and_then(|p| p.termination) {
            ready_at = ready_at.max(t.terminate_at);
        }
    }
    // New victims, in order, until downsizing the rest covers what is left.
    let mut candidates: Vec<&(&ServerAcc, &ClassPolicy)> =
        elastic.iter().filter(|(s, _)| !terminating(s)).collect();
    candidates.sort_by(|(a, _), (b, _)| {
        let key = |s: &ServerAcc| {
            (
                s.spec.class == ServerClass::Spot,
                s.spec.priority,
                std::cmp::Reverse(s.placed.as_ref().map(|p| p.started_at).unwrap_or(0)),
                s.spec.id,
            )
        };
        key(a).cmp(&key(b))
    });
    let mut victims: Vec<ServerId> = Vec::new();
    loop {
        let rest: Vec<(&ServerAcc, &ClassPolicy)> = candidates
            .iter()
            .filter(|(s, _)| !victims.contains(&s.spec.id))
            .map(|c| **c)
            .collect();
        if let Some(downsize) = downsize_to_cover(&rest, deficit) {
            let mut terminate = Vec::new();
            let mut new_spot = 0;
            for id in &victims {
                let Some((s, p)) = elastic.iter().find(|(s, _)| s.spec.id == *id) else {
                    continue;
                };
                let started = s.placed.as_ref().map(|p| p.started_at).unwrap_or(now);
                let at = terminate_at(p, started, now);
                ready_at = ready_at.max(at);
                new_spot += usize::from(s.spec.class == ServerClass::Spot);
                terminate.push((
                    *id,
                    Termination {
                        scheduled_at: now,
                        terminate_at: at,
                    },
                ));
            }
            let squeeze = squeeze(cluster, &downsize);
            return Some(Room {
                host: h.spec.id.clone(),
                wait: true,
                cost: (
                    terminate.len(),
                    new_spot,
                    ready_at.saturating_sub(now),
                    squeeze,
                ),
                downsize,
                terminate,
                ready_at,
            });
        }
        let next = candidates
            .iter()
            .find(|(s, _)| !victims.contains(&s.spec.id))?;
        deficit = deficit.after_freeing(next.0);
        victims.push(next.0.spec.id);
    }
}

/// How much capacity a set of downsizes takes away (MHz plus MiB), to prefer gentle plans.
fn squeeze(cluster: &Cluster, downsize: &[(ServerId, PerfFactor)]) -> u64 {
    downsize
        .iter()
        .filter_map(|(id, pf)| {
            let s = cluster.servers.get(id)?;
            let before = s.placed.as_ref()?.perf_factor;
            let lost = (before.cpu - pf.cpu).max(0.0) * s.spec.need.cpu_mhz as f64
                + (before.mem - pf.mem).max(0.0) * (s.spec.need.mem_bytes >> 20) as f64;
            Some(lost as u64)
        })
        .sum()
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
