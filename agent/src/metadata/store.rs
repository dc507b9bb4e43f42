//! What each guest may learn about itself. A guest is found by its address (isolated network
//! mode) or, through a signing proxy, by its server id; anything else finds nothing. Every
//! document carries a version that changes when the document does, for long-polls.

use backfill_shared::{PerfFactor, ServerClass, ServerId, Termination};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// One guest's document.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestInfo {
    pub server: ServerId,
    pub name: String,
    pub hostname: String,
    pub availability_zone: String,
    pub project_id: String,
    pub class: ServerClass,
    pub instance_type: String,
    /// Its address in isolated network mode; `None` in the host's network.
    pub local_ipv4: Option<IpAddr>,
    /// The host end of its link (its default gateway), in isolated network mode.
    pub gateway: Option<IpAddr>,
    pub meta: BTreeMap<String, String>,
    pub perf_factor: PerfFactor,
    /// CPU quota and memory limit in force (`None` = unlimited).
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: u64,
    pub mem_limit_bytes: Option<u64>,
    pub termination: Option<Termination>,
    /// The guest acknowledged the termination; the capacity is being given back.
    pub acknowledged: bool,
    pub user_data: Option<String>,
}

impl GuestInfo {
    /// Downsized or facing termination: what EC2 calls a rebalance recommendation.
    pub fn at_risk(&self) -> bool {
        self.termination.is_some() || self.perf_factor.cpu < 1.0 || self.perf_factor.mem < 1.0
    }
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<ServerId, (Arc<GuestInfo>, u64)>,
    by_ip: HashMap<IpAddr, ServerId>,
    next_version: u64,
}

#[derive(Debug)]
pub struct MetadataStore {
    inner: RwLock<Inner>,
    changes: watch::Sender<u64>,
}

impl Default for MetadataStore {
    fn default() -> MetadataStore {
        MetadataStore {
            inner: RwLock::new(Inner {
                next_version: 1,
                ..Inner::default()
            }),
            changes: watch::Sender::new(0),
        }
    }
}

impl MetadataStore {
    /// Replaces every document; versions move only for documents that changed.
    pub fn replace_all(&self, guests: Vec<GuestInfo>) {
        let mut changed = false;
        {
            let mut g = self
                .inner
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let inner = &mut *g;
            let before = inner.by_id.len();
            let mut next: HashMap<ServerId, (Arc<GuestInfo>, u64)> = HashMap::new();
            for info in guests {
                let version = match inner.by_id.get(&info.server) {
                    Some((old, v)) if **old == info => *v,
                    _ => {
                        changed = true;
                        inner.next_version += 1;
                        inner.next_version
                    }
                };
                next.insert(info.server, (Arc::new(info), version));
            }
            changed |= next.len() != before || inner.by_id.keys().any(|k| !next.contains_key(k));
            inner.by_ip = next
                .values()
                .filter_map(|(g, _)| g.local_ipv4.map(|ip| (ip, g.server)))
                .collect();
            inner.by_id = next;
        }
        if changed {
            self.changes.send_modify(|v| *v += 1);
        }
    }

    /// Adds or replaces one document.
    pub fn put(&self, info: GuestInfo) {
        let mut all: Vec<GuestInfo> = {
            let g = self
                .inner
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            g.by_id
                .values()
                .filter(|(o, _)| o.server != info.server)
                .map(|(o, _)| GuestInfo::clone(o))
                .collect()
        };
        all.push(info);
        self.replace_all(all);
    }

    /// The guest at `ip` and its document version.
    pub fn by_address(&self, ip: &IpAddr) -> Option<(Arc<GuestInfo>, u64)> {
        let g = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.by_ip.get(ip).and_then(|id| g.by_id.get(id)).cloned()
    }

    pub fn by_id(&self, id: &ServerId) -> Option<(Arc<GuestInfo>, u64)> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_id
            .get(id)
            .cloned()
    }

    /// Ticks whenever any document changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
