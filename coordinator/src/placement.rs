//! Placement for the walking skeleton: best fit on free CPU and memory among live hosts.
//!
//! Pure: a snapshot in, a decision out. The full scheduler (preemption, queues, indexes) replaces
//! this module behind the same shape.

use backfill_shared::{HostId, Resources};

/// What placement needs to know about one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub id: HostId,
    pub capacity: Resources,
    /// Already promised to servers on this host (at their current perf_factor).
    pub allocated: Resources,
}

impl HostView {
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(self.allocated)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no host is connected")]
    NoHosts,
    #[error(
        "no host has {need_cpu} MHz, {need_mem} bytes and {need_vcpus} vCPUs free right now (most free: {best_cpu} MHz, {best_mem} bytes)"
    )]
    NoRoomNow {
        need_cpu: u64,
        need_mem: u64,
        need_vcpus: u32,
        best_cpu: u64,
        best_mem: u64,
    },
    #[error("no host could ever hold {cpu} MHz, {mem} bytes and {vcpus} vCPUs")]
    NeverFits { cpu: u64, mem: u64, vcpus: u32 },
}

/// Picks the host whose free capacity fits `need` most tightly: the smallest sum of the
/// remaining CPU and memory fractions. Ties go to the smallest host id, so the same snapshot
/// always gives the same answer.
pub fn best_fit(hosts: &[HostView], need: &Resources) -> Result<HostId, PlacementError> {
    if hosts.is_empty() {
        return Err(PlacementError::NoHosts);
    }
    let mut best: Option<(f64, &HostId)> = None;
    for h in hosts {
        let free = h.free();
        if !free.fits(need) {
            continue;
        }
        let left = free.saturating_sub(*need);
        let score = fraction(left.cpu_mhz, h.capacity.cpu_mhz)
            + fraction(left.mem_bytes, h.capacity.mem_bytes);
        let better = match best {
            None => true,
            Some((s, id)) => score < s || (score == s && h.id < *id),
        };
        if better {
            best = Some((score, &h.id));
        }
    }
    if let Some((_, id)) = best {
        return Ok(id.clone());
    }
    if !hosts.iter().any(|h| h.capacity.fits(need)) {
        return Err(PlacementError::NeverFits {
            cpu: need.cpu_mhz,
            mem: need.mem_bytes,
            vcpus: need.vcpus,
        });
    }
    let best_cpu = hosts.iter().map(|h| h.free().cpu_mhz).max().unwrap_or(0);
    let best_mem = hosts.iter().map(|h| h.free().mem_bytes).max().unwrap_or(0);
    Err(PlacementError::NoRoomNow {
        need_cpu: need.cpu_mhz,
        need_mem: need.mem_bytes,
        need_vcpus: need.vcpus,
        best_cpu,
        best_mem,
    })
}

fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(id: &str, cpu: u64, mem: u64, used_cpu: u64, used_mem: u64) -> HostView {
        HostView {
            id: id.parse().unwrap(),
            capacity: Resources {
                cpu_mhz: cpu,
                vcpus: 8,
                mem_bytes: mem,
            },
            allocated: Resources {
                cpu_mhz: used_cpu,
                vcpus: 0,
                mem_bytes: used_mem,
            },
        }
    }

    fn need(cpu: u64, mem: u64) -> Resources {
        Resources {
            cpu_mhz: cpu,
            vcpus: 1,
            mem_bytes: mem,
        }
    }

    #[test]
    fn picks_the_tightest_fit() {
        let hosts = [
            host("a", 10_000, 10_000, 0, 0),
            host("b", 10_000, 10_000, 7_000, 7_000),
            host("c", 10_000, 10_000, 9_500, 9_500),
        ];
        // c cannot hold it, b leaves the least behind.
        assert_eq!(best_fit(&hosts, &need(2_000, 2_000)).unwrap().as_str(), "b");
    }

    #[test]
    fn ties_go_to_the_smallest_id_whatever_the_order() {
        let hosts = [host("z", 100, 100, 0, 0), host("m", 100, 100, 0, 0)];
        assert_eq!(best_fit(&hosts, &need(10, 10)).unwrap().as_str(), "m");
    }

    #[test]
    fn refuses_what_fits_nowhere() {
        let hosts = [
            host("a", 1_000, 1_000, 900, 0),
            host("b", 1_000, 1_000, 0, 900),
        ];
        assert!(matches!(
            best_fit(&hosts, &need(500, 500)),
            Err(PlacementError::NoRoomNow {
                best_cpu: 1_000,
                best_mem: 1_000,
                ..
            })
        ));
        assert!(matches!(
            best_fit(&hosts, &need(5_000, 10)),
            Err(PlacementError::NeverFits { .. })
        ));
        assert_eq!(best_fit(&[], &need(1, 1)), Err(PlacementError::NoHosts));
    }

    fn arb_host() -> impl Strategy<Value = HostView> {
        (
            0u8..40,
            1u64..100_000,
            1u64..1 << 40,
            1u32..64,
            0u64..=100,
            0u64..=100,
            0u32..=64,
        )
            .prop_map(
                |(id, cpu, mem, vcpus, used_cpu, used_mem, used_vcpus)| HostView {
                    id: format!("h{id:02}").parse().unwrap(),
                    capacity: Resources {
                        cpu_mhz: cpu,
                        vcpus,
                        mem_bytes: mem,
                    },
                    allocated: Resources {
                        cpu_mhz: cpu * used_cpu / 100,
                        vcpus: used_vcpus.min(vcpus),
                        mem_bytes: mem * used_mem / 100,
                    },
                },
            )
    }

    /// Host ids are unique in a snapshot.
    fn unique(mut hosts: Vec<HostView>) -> Vec<HostView> {
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        hosts.dedup_by(|a, b| a.id == b.id);
        hosts
    }

    fn arb_need() -> impl Strategy<Value = Resources> {
        (1u64..100_000, 1u32..8, 1u64..1 << 40).prop_map(|(cpu_mhz, vcpus, mem_bytes)| Resources {
            cpu_mhz,
            vcpus,
            mem_bytes,
        })
    }

    proptest! {
        /// The chosen host has room; if none is chosen, none had room.
        #[test]
        fn never_over_capacity(hosts in prop::collection::vec(arb_host(), 0..20), need in arb_need()) {
            let hosts = unique(hosts);
            match best_fit(&hosts, &need) {
                Ok(id) => {
                    let h = hosts.iter().find(|h| h.id == id).unwrap();
                    prop_assert!(h.free().fits(&need));
                }
                Err(_) => prop_assert!(hosts.iter().all(|h| !h.free().fits(&need))),
            }
        }

        /// Same hosts in any order, same answer.
        #[test]
        fn deterministic_whatever_the_order(
            mut hosts in prop::collection::vec(arb_host(), 1..20),
            need in arb_need(),
            seed in any::<u64>(),
        ) {
            hosts = unique(hosts);
            let first = best_fit(&hosts, &need);
            let n = hosts.len();
            hosts.rotate_left((seed as usize) % n);
            hosts.reverse();
            prop_assert_eq!(best_fit(&hosts, &need), first);
        }
    }

    #[test]
    fn vcpus_count_too() {
        let mut h = host("a", 10_000, 10_000, 0, 0);
        h.allocated.vcpus = 8;
        assert!(best_fit(&[h], &need(1, 1)).is_err());
    }
}
