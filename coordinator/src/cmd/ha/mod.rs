//! Several coordinators on one PostgreSQL (docs/ha.md): one leads, the others follow.
//!
//! - `lease`: who leads. A lease row with a deadline in the database's clock and an epoch that
//!   grows at every takeover; the store stamps every write transaction with the epoch and the
//!   database refuses a commit under an old one (`store::leader`), so a deposed leader cannot
//!   change anything.
//! - `serve`: the daemon in this mode. While leading: the model loaded from the store, the
//!   scheduler's tick, webhook delivery and the agent link, all stopped when the lease is lost.
//!   While following: the model reloaded from the store every second for reads.
//! - `front`: the API. The leader answers everything; a follower answers reads from its
//!   reloaded model (header `x-backfill-served-by: follower`, at most about a second behind)
//!   and forwards writes to the leader over mutual TLS, with the caller's identity.
//! - `link`: a follower answers an agent's `Hello` with `Redirect` to the leader's link.
//!
//! On SQLite none of this runs: the one coordinator always leads.

pub mod front;
pub mod lease;
pub mod link;
pub mod serve;

use crate::store::leader::LeaderRow;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("[ha] {key}: {reason}")]
    Config { key: &'static str, reason: String },
}

/// `[ha]`: how this coordinator takes part when several share a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// This coordinator's name among them (default: the host name and the API port).
    #[serde(default)]
    pub name: Option<String>,
    /// The API URL the others forward writes to, `https://name:port` (default: the bound
    /// address; set it when binding 0.0.0.0). The name must be in this coordinator's
    /// certificate.
    #[serde(default)]
    pub advertise_api: Option<String>,
    /// The agent link address agents are redirected to, `ip:port` (default: the bound one).
    #[serde(default)]
    pub advertise_link: Option<std::net::SocketAddr>,
    /// How long the lease lasts unrenewed, in milliseconds (1000 to 60000, default 3000): a
    /// leader cut off from the database for this long is replaced. A killed leader is replaced
    /// at once (its database session closes).
    #[serde(default)]
    pub lease_ms: Option<u64>,
}

pub const DEFAULT_LEASE: Duration = Duration::from_millis(3000);

impl HaConfig {
    pub fn lease(&self) -> Duration {
        self.lease_ms.map_or(DEFAULT_LEASE, Duration::from_millis)
    }

    pub fn validate(&self) -> Result<(), HaError> {
        if let Some(ms) = self.lease_ms
            && !(1000..=60_000).contains(&ms)
        {
            return Err(HaError::Config {
                key: "lease_ms",
                reason: format!("{ms} is out of range: 1000 to 60000"),
            });
        }
        if let Some(url) = &self.advertise_api {
            let ok = url::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.has_host());
            if !ok {
                return Err(HaError::Config {
                    key: "advertise_api",
                    reason: format!("{url:?} is not an https://host:port URL"),
                });
            }
        }
        if let Some(name) = &self.name
            && (name.is_empty() || name.len() > 128 || name.chars().any(char::is_control))
        {
            return Err(HaError::Config {
                key: "name",
                reason: "1 to 128 printable characters".into(),
            });
        }
        Ok(())
    }
}

/// This coordinator's part, as the lease loop last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It leads under this epoch: its commits land until another coordinator takes the lease.
    Leader { epoch: i64 },
    /// Another coordinator leads (`leader`), or none does yet (`None`).
    Follower {
        leader: Option<LeaderRow>,
        /// Why it is not leading, when it led before (for `/ready` and the log).
        stepped_down: Option<String>,
    },
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }

    /// The leader's row as a follower knows it.
    pub fn leader(&self) -> Option<&LeaderRow> {
        match self {
            Role::Follower { leader, .. } => leader.as_ref(),
            Role::Leader { .. } => None,
        }
    }
}
