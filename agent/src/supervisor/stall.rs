//! The normal servers' own stall, polled every few milliseconds: pressure that a normal server
//! feels, not the host's (which counts backfill's own waiting too). When one normal server has
//! stalled for `stall_us` within the trailing `window_ms`, backfill is squeezed as for a PSI
//! trigger ([`Supervisor::on_pressure`]'s attribution and floor), without waiting for the
//! kernel's trigger (which, without CAP_SYS_RESOURCE, is only checked every 2 s). Where every
//! running normal server's stall can be read for a resource, the host's trigger for that
//! resource no longer squeezes: the servers' own figures are the better witness.
//!
//! A normal server held back by its own CPU quota (its `cpu.stat` throttled time grew within
//! the window) stalls by its own doing: its CPU stall is not held against backfill; nor is its
//! memory stall in a window where its memory reached its own hard limit (v1
//! `memory.failcnt`, v2 `memory.events` `max`).

use super::{Entry, Run, Supervisor};
use crate::pressure::{Resource, StallPolicy};
use backfill_shared::{ServerClass, ServerId};
use std::collections::{BTreeMap, VecDeque};

/// What the poller keeps between polls.
#[derive(Debug, Default)]
pub(super) struct StallWatch {
    /// Each normal server's stall totals, (ms, stall us, throttled us), oldest first, within
    /// the window (and the last one before it, as the baseline).
    samples: BTreeMap<(ServerId, Resource), VecDeque<Sample>>,
    /// Per resource (cpu, memory): whether every running normal server's stall was read at
    /// the last poll (and at least one runs).
    pub attributed: [bool; 2],
    /// The latest stall totals, for the metrics.
    pub latest: BTreeMap<(ServerId, Resource), u64>,
}

/// (ms, stall us, own-doing counter: CPU throttled us, or memory limit hits)
type Sample = (u64, u64, u64);

pub(super) fn index(r: Resource) -> usize {
    usize::from(r == Resource::Memory)
}

fn is_normal_running(e: &Entry) -> bool {
    matches!(e.run, Run::Running { .. })
        && e.guest
            .as_ref()
            .is_some_and(|g| g.class == ServerClass::Normal)
}

/// The stall (us) within the window ending at the newest sample: newest minus the baseline (a
/// decrease, from threads that ended, counts as none; so does a window in which the server
/// was throttled by its own quota).
fn stalled(samples: &VecDeque<Sample>) -> u64 {
    match (samples.front(), samples.back()) {
        (Some((_, first, t0)), Some((_, last, t1))) if t1 <= t0 => last.saturating_sub(*first),
        _ => 0,
    }
}

impl Supervisor {
    /// Reads each running normal server's stall at `now_ms` (a monotonic clock in
    /// milliseconds) and squeezes backfill for each resource where one of them stalled for
    /// `policy.stall_us` within `policy.window_ms`. Returns the resources that fired and
    /// whether any limit changed (the coordinator should hear of it at once).
    pub fn poll_stall(&mut self, now_ms: u64, policy: StallPolicy) -> (Vec<Resource>, bool) {
        let normal: Vec<ServerId> = self
            .entries
            .iter()
            .filter(|(_, e)| is_normal_running(e))
            .map(|(id, _)| *id)
            .collect();
        let watch = &mut self.stall;
        watch
            .samples
            .retain(|(id, _), _| normal.binary_search(id).is_ok());
        watch
            .latest
            .retain(|(id, _), _| normal.binary_search(id).is_ok());
        let mut fired = Vec::new();
        for r in Resource::ALL {
            let mut known = !normal.is_empty();
            let mut worst = 0u64;
            for id in &normal {
                let total = match self.cgroups.stall_usec(id, r) {
                    Ok(Some(t)) => t,
                    Ok(None) | Err(_) => {
                        known = false;
                        continue;
                    }
                };
                watch.latest.insert((*id, r), total);
                let throttled = match r {
                    Resource::Cpu => self.cgroups.usage(id).map_or(0, |u| u.cpu_throttled_usec),
                    Resource::Memory => self.cgroups.memory_limit_hits(id).unwrap_or(0),
                };
                let s = watch.samples.entry((*id, r)).or_default();
                s.push_back((now_ms, total, throttled));
                let start = now_ms.saturating_sub(policy.window_ms);
                while s.len() > 1 && s.get(1).is_some_and(|(t, _, _)| *t <= start) {
                    s.pop_front();
                }
                worst = worst.max(stalled(s));
            }
            watch.attributed[index(r)] = known;
            if worst >= policy.stall_us && policy.stall_us > 0 {
                fired.push(r);
                // Start over from here: the next event needs stall of its own.
                for ((_, res), s) in watch.samples.iter_mut() {
                    if *res == r
                        && let Some(last) = s.back().copied()
                    {
                        s.clear();
                        s.push_back(last);
                    }
                }
            }
        }
        let mut changed = false;
        for r in &fired {
            changed |= self.squeeze_for(*r);
        }
        (fired, changed)
    }

    /// Each running normal server's stall so far (us), by resource, where it can be read.
    pub fn stalls(&self) -> Vec<(ServerId, Resource, u64)> {
        self.stall
            .latest
            .iter()
            .map(|((id, r), us)| (*id, *r, *us))
            .collect()
    }
}
