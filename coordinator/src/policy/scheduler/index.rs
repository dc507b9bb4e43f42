//! The free-capacity index: hosts ordered by free CPU and by free memory, plus running totals,
//! so `free_resources` and best-fit lookups never scan every host. Every change is O(log n).

use backfill_shared::{HostId, Resources};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default)]
pub struct FreeIndex {
    by_cpu: BTreeSet<(u64, HostId)>,
    by_mem: BTreeSet<(u64, HostId)>,
    total_cpu: u128,
    total_mem: u128,
}

impl FreeIndex {
    /// Adds a host's free capacity (a host that does not count is simply never inserted).
    pub fn insert(&mut self, id: &HostId, free: Resources) {
        self.by_cpu.insert((free.cpu_mhz, id.clone()));
        self.by_mem.insert((free.mem_bytes, id.clone()));
        self.total_cpu += u128::from(free.cpu_mhz);
        self.total_mem += u128::from(free.mem_bytes);
    }

    /// Removes what `insert` added for this host with this free capacity.
    pub fn remove(&mut self, id: &HostId, free: Resources) {
        if self.by_cpu.remove(&(free.cpu_mhz, id.clone())) {
            self.total_cpu = self.total_cpu.saturating_sub(u128::from(free.cpu_mhz));
        }
        if self.by_mem.remove(&(free.mem_bytes, id.clone())) {
            self.total_mem = self.total_mem.saturating_sub(u128::from(free.mem_bytes));
        }
    }

    pub fn total(&self) -> (u64, u64) {
        (
            u64::try_from(self.total_cpu).unwrap_or(u64::MAX),
            u64::try_from(self.total_mem).unwrap_or(u64::MAX),
        )
    }

    /// The host with the most free CPU (ties: the largest id, consistently).
    pub fn most_free_cpu(&self) -> Option<&HostId> {
        self.by_cpu.last().map(|(_, id)| id)
    }

    pub fn most_free_mem(&self) -> Option<&HostId> {
        self.by_mem.last().map(|(_, id)| id)
    }

    /// Hosts with at least `cpu` MHz free, tightest first.
    pub fn cpu_at_least(&self, cpu: u64) -> impl DoubleEndedIterator<Item = &HostId> {
        self.by_cpu.range((cpu, HostId::min())..).map(|(_, id)| id)
    }
}
