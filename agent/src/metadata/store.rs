//! What each guest may learn about itself, keyed by its address. A guest sees only its own
//! record; an address that maps to no server gets nothing.

use backfill_shared::{PerfFactor, ServerClass, ServerId, Termination};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::RwLock;

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
    pub local_ipv4: IpAddr,
    pub meta: BTreeMap<String, String>,
    pub perf_factor: PerfFactor,
    pub termination: Option<Termination>,
    pub user_data: Option<String>,
}

impl GuestInfo {
    /// Downsized or facing termination: what EC2 calls a rebalance recommendation.
    pub fn at_risk(&self) -> bool {
        self.termination.is_some() || self.perf_factor.cpu < 1.0 || self.perf_factor.mem < 1.0
    }
}

#[derive(Debug, Default)]
pub struct MetadataStore {
    guests: RwLock<HashMap<IpAddr, GuestInfo>>,
}

impl MetadataStore {
    pub fn put(&self, info: GuestInfo) {
        let mut g = self
            .guests
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.insert(info.local_ipv4, info);
    }

    pub fn remove(&self, ip: &IpAddr) {
        let mut g = self
            .guests
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.remove(ip);
    }

    /// The guest at `ip`, if any.
    pub fn guest(&self, ip: &IpAddr) -> Option<GuestInfo> {
        self.guests
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(ip)
            .cloned()
    }
}
