//! Isolated network mode: each such server gets its own network namespace, a veth pair with a
//! /30 from the host's pool, a default route to the host end, and a policy rule that delivers
//! its packets for the metadata address to the agent's listener. The host's own traffic to that
//! address (a cloud VM's own metadata service) is left alone: only packets arriving on a guest's
//! veth use the metadata table.
//!
//! Guests' traffic follows the egress policy (see [`egress`]): the metadata service and, through
//! NAT, the outside, but never the host itself, link-local addresses, other guests or the
//! denied ranges.
//!
//! An agent touches only what it made: its namespaces, interfaces and rules carry a per-agent
//! tag (see [`naming`]), and a re-adopted server's are the ones its state file recorded.

mod egress;
mod firewall;
mod ip;
mod naming;
mod nsfs;
mod pool;
mod rules;

pub use egress::{
    Cidr, CidrError, EgressPolicy, MAX_KIB_PER_SECOND, MAX_PACKETS_PER_SECOND, NEVER,
};
pub use ip::IpNetworks;
pub use naming::{IFNAME_MAX, NetTag};
pub use pool::{AddressPool, Link, PoolError};

use backfill_shared::ServerId;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `ip`: {0}")]
    Spawn(std::io::Error),
    #[error(
        "cannot run `{program}`: {source} (the egress policy needs iptables; install it, or set [network] egress_policy = false)"
    )]
    Firewall {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the guest address pool is exhausted ({0} guests)")]
    Exhausted(u32),
    #[error("isolated network mode is not available on this host: {0}")]
    Unavailable(&'static str),
    #[error(
        "pool slot {slot} is in use: its address {address} is on {interface}, not this agent's (does another agent on this host share the pool?)"
    )]
    InUse {
        slot: u32,
        address: Ipv4Addr,
        interface: String,
    },
    #[error("cannot restore the network of {netns}: {reason}")]
    Restore { netns: String, reason: String },
}

/// One server's network namespace, as recorded in the agent's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNet {
    pub slot: u32,
    pub address: Ipv4Addr,
    pub host_address: Ipv4Addr,
    /// Name under /run/netns.
    pub netns: String,
    /// The host end of the veth pair.
    pub host_if: String,
}

impl GuestNet {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// What [`GuestNetworks::restore`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Everything was in place.
    Intact,
    /// Something was missing and has been made again.
    Rebuilt,
}

/// Sets up and tears down guests' network namespaces.
pub trait GuestNetworks: Send + std::fmt::Debug {
    /// Creates the namespace and link for `server` on pool slot `link`.
    fn create(&self, server: &ServerId, link: Link) -> Result<GuestNet, NetworkError>;
    /// Removes everything `create` made for `net`; missing pieces are not an error.
    fn destroy(&self, net: &GuestNet);
    /// Makes sure a re-adopted guest whose workload is the process `pid` still has its whole
    /// network (namespace name, veth pair, addresses, default route, policy rule), making
    /// again whatever is missing.
    fn restore(&self, net: &GuestNet, pid: u32) -> Result<Restored, NetworkError>;
    /// Removes this agent's own leftovers (namespaces, host interfaces, policy rules) other
    /// than `keep`'s; what other agents made is never touched.
    fn sweep(&self, keep: &[&GuestNet]);
    /// A cheap look (no commands run) at whether `net`'s namespace name and host interface
    /// are still there; when not, [`GuestNetworks::restore`] is due.
    fn looks_whole(&self, _net: &GuestNet) -> bool {
        true
    }
    /// Called about once a second with every running guest's network: puts back, at most
    /// every few seconds, the egress rules something else removed or changed (an
    /// `iptables -F`, a firewall reload), so that guests are not left unconfined.
    fn enforce(&self, _running: &[&GuestNet]) {}
    fn pool(&self) -> Option<AddressPool>;
    /// Pool slots whose host address something else on this host holds already (another agent
    /// sharing the pool): they are skipped.
    fn taken(&self) -> Vec<u32> {
        Vec::new()
    }
}

/// No isolated networking (not root, or not configured): such servers fail to start, saying why.
#[derive(Debug, Default)]
pub struct NoNetworks;

const NOT_AVAILABLE: &str = "the agent is not root or has no [network] pool";

impl GuestNetworks for NoNetworks {
    fn create(&self, _: &ServerId, _: Link) -> Result<GuestNet, NetworkError> {
        Err(NetworkError::Unavailable(NOT_AVAILABLE))
    }
    fn destroy(&self, _: &GuestNet) {}
    fn restore(&self, _: &GuestNet, _: u32) -> Result<Restored, NetworkError> {
        Err(NetworkError::Unavailable(NOT_AVAILABLE))
    }
    fn sweep(&self, _: &[&GuestNet]) {}
    fn pool(&self) -> Option<AddressPool> {
        None
    }
}
