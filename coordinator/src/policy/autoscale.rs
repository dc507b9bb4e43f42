//! Auto mode, PURE: (pools, queued servers, now, settings) -> what to launch and delete. No IO;
//! the coordinator's tick gathers the inputs and carries the decisions out. The rules are
//! Dynamic Cluster's:
//! - a launch whose agent has not registered within `max_launch_time_s` is given up;
//! - a pool below its min grows to it (when nothing is being launched for it);
//! - servers queued because no live host can take them make pools grow, one host per fit:
//!   pools whose reservation matches come first, then lower `priority`, then fewer hosts; a
//!   pool never goes beyond its max, and nothing grows while a launch is still booting;
//! - a host idle for `max_idle_time_s` is removed while its pool stays at or above min;
//!   held hosts and hosts with work are never removed; shut-down (drained) hosts are.
//!
//! Only pools with a provisioner launch or remove anything.

use backfill_shared::{Resources, ServerClass};

#[derive(Debug, Clone, PartialEq)]
pub struct PoolState {
    pub name: String,
    /// The limits in force (frozen and drained pools have rewritten ones).
    pub min: u32,
    pub max: u32,
    /// Lower is preferred.
    pub priority: i32,
    pub reservation_account: Option<String>,
    pub reservation_queue: Option<ServerClass>,
    pub provisioner: bool,
    /// What one new host offers, if known (the pool's flavor, else its largest host).
    pub host_capacity: Option<Resources>,
    pub hosts: Vec<HostState>,
    pub launches: Vec<LaunchState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub id: String,
    /// Since when it has had no work and its agent connected; `None` while busy or down.
    pub idle_since: Option<i64>,
    /// On hold (or draining) by an operator.
    pub held: bool,
    /// Shut down (drained or killed).
    pub shutdown: bool,
    pub has_work: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchState {
    pub id: String,
    pub launched_at: i64,
}

/// A server waiting because no live host can take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub owner: String,
    pub class: ServerClass,
    pub need: Resources,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoSettings {
    pub max_idle_time_s: i64,
    pub max_launch_time_s: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Launch {
        pool: String,
        n: u32,
    },
    /// Remove a registered host (idle too long, or shut down).
    Remove {
        host: String,
        reason: String,
    },
    /// Give up on a launch that never registered.
    GiveUp {
        host: String,
    },
}

impl PoolState {
    /// Hosts that count toward min and max: registered ones not shut down, and launches.
    fn current(&self) -> u32 {
        let hosts = self.hosts.iter().filter(|h| !h.shutdown).count();
        u32::try_from(hosts + self.launches.len()).unwrap_or(u32::MAX)
    }

    pub(crate) fn takes(&self, p: &Pending) -> bool {
        self.reservation_account
            .as_ref()
            .is_none_or(|a| *a == p.owner)
            && self.reservation_queue.is_none_or(|q| q == p.class)
            && self.host_capacity.is_none_or(|c| c.fits(&p.need))
    }

    fn reserved_for(&self, p: &Pending) -> bool {
        (self.reservation_account.is_some() || self.reservation_queue.is_some()) && self.takes(p)
    }
}

/// Whether `pool` may run `job` (reservation and host size).
pub fn takes(pool: &PoolState, job: &Pending) -> bool {
    pool.takes(job)
}

pub fn decide(
    pools: &[PoolState],
    pending: &[Pending],
    now: i64,
    s: &AutoSettings,
) -> Vec<Decision> {
    let mut out = Vec::new();
    let mut planned: Vec<u32> = vec![0; pools.len()];
    for (i, p) in pools.iter().enumerate().filter(|(_, p)| p.provisioner) {
        // Launches that never registered.
        let mut expired: u32 = 0;
        for l in &p.launches {
            if now.saturating_sub(l.launched_at) >= s.max_launch_time_s {
                out.push(Decision::GiveUp { host: l.id.clone() });
                expired += 1;
            }
        }
        let live = p.current().saturating_sub(expired);
        // Hosts shut down by a drain or a kill are removed.
        for h in p.hosts.iter().filter(|h| h.shutdown && !h.has_work) {
            out.push(Decision::Remove {
                host: h.id.clone(),
                reason: "shut down".into(),
            });
        }
        // Idle too long, while the pool stays at or above min.
        let mut left = live;
        let mut idle: Vec<&HostState> = p
            .hosts
            .iter()
            .filter(|h| !h.shutdown && !h.held && !h.has_work)
            .filter(|h| {
                h.idle_since
                    .is_some_and(|t| now.saturating_sub(t) >= s.max_idle_time_s)
            })
            .collect();
        idle.sort_by(|a, b| (a.idle_since, &a.id).cmp(&(b.idle_since, &b.id)));
        for h in idle {
            if left <= p.min {
                break;
            }
            left -= 1;
            out.push(Decision::Remove {
                host: h.id.clone(),
                reason: format!("idle for at least {} s", s.max_idle_time_s),
            });
        }
        // Up to min, when nothing is being launched for it.
        let booting = u32::try_from(p.launches.len()).unwrap_or(u32::MAX) > expired;
        if left < p.min && !booting {
            let n = p.min - left;
            planned[i] = n;
            out.push(Decision::Launch {
                pool: p.name.clone(),
                n,
            });
        }
    }
    // Demand: only when no launch is booting anywhere (their hosts may take the queue).
    let booting = pools.iter().any(|p| {
        p.launches
            .iter()
            .any(|l| now.saturating_sub(l.launched_at) < s.max_launch_time_s)
    });
    if booting || out.iter().any(|d| matches!(d, Decision::Launch { .. })) {
        return out;
    }
    // Each new host is packed with the queued servers it fits, in queue order.
    let mut bins: Vec<(usize, Resources)> = Vec::new();
    for job in pending {
        let placed = bins
            .iter_mut()
            .find(|(i, room)| pools[*i].takes(job) && room.fits(&job.need));
        if let Some((_, room)) = placed {
            *room = room.saturating_sub(job.need);
            continue;
        }
        let mut order: Vec<usize> = (0..pools.len())
            .filter(|i| pools[*i].provisioner && pools[*i].takes(job))
            .filter(|i| pools[*i].current().saturating_add(planned[*i]) < pools[*i].max)
            .collect();
        order.sort_by_key(|i| {
            let p = &pools[*i];
            (
                !p.reserved_for(job),
                p.priority,
                p.current() + planned[*i],
                p.name.clone(),
            )
        });
        let Some(&i) = order.first() else {
            continue; // no pool can grow for it: it waits
        };
        planned[i] += 1;
        let room = pools[i]
            .host_capacity
            .map_or(Resources::default(), |c| c.saturating_sub(job.need));
        bins.push((i, room));
    }
    for (i, n) in planned.iter().enumerate().filter(|(_, n)| **n > 0) {
        out.push(Decision::Launch {
            pool: pools[i].name.clone(),
            n: *n,
        });
    }
    out
}

#[cfg(test)]
#[path = "autoscale_tests.rs"]
mod tests;
