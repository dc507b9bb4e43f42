//! Placement on free capacity, through the index.

use super::ServerSpec;
use super::cluster::{Cluster, HostAcc};
use super::gpu;
use backfill_shared::HostId;

/// The scoring step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The host whose free CPU fits most tightly (then memory, vCPUs, GPUs must fit): packs
    /// hosts and leaves large holes for large servers.
    #[default]
    BestFit,
    /// The host with the most free CPU: spreads load.
    Spread,
}

fn fits(h: &HostAcc, spec: &ServerSpec) -> bool {
    h.spec.schedulable
        && h.spec.admits(spec)
        && h.free().fits(&spec.need)
        && (spec.gpus == 0
            || gpu::free_matching(h, spec) >= usize::try_from(spec.gpus).unwrap_or(usize::MAX))
}

/// A host with enough free capacity for `spec`, chosen by `strategy`, and the GPUs to give it.
/// Walks the free-CPU index from the right end; stops at the first host that fits.
pub fn on_free(
    cluster: &Cluster,
    spec: &ServerSpec,
    strategy: Strategy,
) -> Option<(HostId, Vec<String>)> {
    let candidates = cluster.index.cpu_at_least(spec.need.cpu_mhz);
    let pick = |id: &HostId| {
        cluster
            .hosts
            .get(id)
            .filter(|h| fits(h, spec))
            .map(|h| (id.clone(), gpu::take(h, spec)))
    };
    if let Some(found) = spec.prefer.as_ref().and_then(pick) {
        return Some(found);
    }
    match strategy {
        Strategy::BestFit => candidates.into_iter().find_map(pick),
        Strategy::Spread => candidates.rev().find_map(pick),
    }
}

/// Whether some known host could hold `spec` if it were empty (a held or down host may come
/// back, so it counts here).
pub fn could_ever_fit(cluster: &Cluster, spec: &ServerSpec) -> bool {
    let gpus = usize::try_from(spec.gpus).unwrap_or(usize::MAX);
    cluster.hosts.values().any(|h| {
        h.spec.admits(spec)
            && h.spec.capacity.fits(&spec.need)
            && (gpus == 0 || gpu::all_matching(h, spec) >= gpus)
    })
}
