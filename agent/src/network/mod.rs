//! Isolated network mode: each such server gets its own network namespace, a veth pair with a
//! /30 from the host's pool, a default route to the host end, and a policy rule that delivers
//! its packets for the metadata address to the agent's listener. The host's own traffic to that
//! address (a cloud VM's own metadata service) is left alone: only packets arriving on a guest's
//! veth use the metadata table.

mod ip;
mod pool;

pub use ip::IpNetworks;
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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the guest address pool is exhausted ({0} guests)")]
    Exhausted(u32),
    #[error("isolated network mode is not available on this host: {0}")]
    Unavailable(&'static str),
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

/// Names derived from the server id: a namespace `bf-<uuid>` and a host interface `bf` + the
/// first 12 hex digits (interface names hold at most 15 bytes).
pub fn names_for(server: &ServerId) -> (String, String) {
    let id = server.to_string();
    let hex: String = id.chars().filter(|c| *c != '-').take(12).collect();
    (format!("bf-{id}"), format!("bf{hex}"))
}

/// Sets up and tears down guests' network namespaces.
pub trait GuestNetworks: Send + std::fmt::Debug {
    /// Creates the namespace and link for `server` on pool slot `link`.
    fn create(&self, server: &ServerId, link: Link) -> Result<GuestNet, NetworkError>;
    /// Removes everything `create` made; missing pieces are not an error.
    fn destroy(&self, server: &ServerId);
    /// Servers that have a namespace on this host (to clean up after a crash).
    fn list(&self) -> Vec<ServerId>;
    fn pool(&self) -> Option<AddressPool>;
}

/// No isolated networking (not root, or not configured): such servers fail to start, saying why.
#[derive(Debug, Default)]
pub struct NoNetworks;

impl GuestNetworks for NoNetworks {
    fn create(&self, _: &ServerId, _: Link) -> Result<GuestNet, NetworkError> {
        Err(NetworkError::Unavailable(
            "the agent is not root or has no [network] pool",
        ))
    }
    fn destroy(&self, _: &ServerId) {}
    fn list(&self) -> Vec<ServerId> {
        Vec::new()
    }
    fn pool(&self) -> Option<AddressPool> {
        None
    }
}
