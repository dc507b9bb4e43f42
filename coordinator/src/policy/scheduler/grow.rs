//! Growing back: when normal load leaves a host, downsized servers return towards perf_factor 1,
//! all by the same share of what they lost, keeping a margin free and changing no server more
//! often than the minimum interval, so they do not flap.

use super::cluster::{Cluster, ServerAcc};
use backfill_shared::domain::scale;
use backfill_shared::{HostId, PerfFactor, ServerId};

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrowPolicy {
    /// Share of the host's capacity (per dimension) left free after growing.
    pub margin: f64,
    /// Seconds since a server's last perf_factor change before it may grow.
    pub min_interval_s: i64,
    /// Smallest step worth taking, as a share of what was lost (avoids tiny oscillations).
    pub min_step: f64,
}

impl Default for GrowPolicy {
    fn default() -> GrowPolicy {
        GrowPolicy {
            margin: 0.05,
            min_interval_s: 60,
            min_step: 0.1,
        }
    }
}

/// New perf_factors for the downsized servers on `host` (empty when nothing should change).
pub fn plan_grow(
    cluster: &Cluster,
    host: &HostId,
    policy: &GrowPolicy,
    now: i64,
) -> Vec<(ServerId, PerfFactor)> {
    let Some(h) = cluster.hosts.get(host) else {
        return Vec::new();
    };
    let grow: Vec<&ServerAcc> = h
        .servers
        .iter()
        .filter_map(|id| cluster.servers.get(id))
        .filter(|s| {
            s.placed.as_ref().is_some_and(|p| {
                p.termination.is_none()
                    && (p.perf_factor.cpu < 1.0 || p.perf_factor.mem < 1.0)
                    && now.saturating_sub(p.perf_changed_at) >= policy.min_interval_s
            })
        })
        .collect();
    if grow.is_empty() {
        return Vec::new();
    }
    let free = h.free();
    let margin = |cap: u64| (cap as f64 * policy.margin.clamp(0.0, 1.0)) as u64;
    let room_cpu = free.cpu_mhz.saturating_sub(margin(h.spec.capacity.cpu_mhz));
    let room_mem = free
        .mem_bytes
        .saturating_sub(margin(h.spec.capacity.mem_bytes));
    let perf = |s: &ServerAcc| {
        s.placed
            .as_ref()
            .map(|p| p.perf_factor)
            .unwrap_or(PerfFactor::FULL)
    };
    let t_cpu = share(&grow, room_cpu, |s| (s.spec.need.cpu_mhz, perf(s).cpu));
    let t_mem = share(&grow, room_mem, |s| (s.spec.need.mem_bytes, perf(s).mem));
    let step = |t: f64| {
        if t >= 1.0 || t >= policy.min_step {
            t
        } else {
            0.0
        }
    };
    let (t_cpu, t_mem) = (step(t_cpu), step(t_mem));
    grow.iter()
        .filter_map(|s| {
            let p = perf(s);
            let next = PerfFactor {
                cpu: p.cpu + (1.0 - p.cpu) * t_cpu,
                mem: p.mem + (1.0 - p.mem) * t_mem,
            }
            .clamped();
            (next != p).then_some((s.spec.id, next))
        })
        .collect()
}

/// The largest share t in [0, 1] of what every server lost that fits in `room`.
fn share(servers: &[&ServerAcc], room: u64, dim: impl Fn(&ServerAcc) -> (u64, f64)) -> f64 {
    let used = |t: f64| -> u64 {
        servers
            .iter()
            .map(|s| {
                let (amount, p) = dim(s);
                scale(amount, p + (1.0 - p) * t).saturating_sub(scale(amount, p))
            })
            .sum()
    };
    if used(1.0) <= room {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        if used(mid) <= room {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}
