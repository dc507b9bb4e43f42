//! `GET /capabilities/` (tenants) and `GET /coordinators/` (operators, several coordinators).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct CpuMemView {
    /// MHz.
    pub cpu: u64,
    /// Bytes.
    pub mem: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct FreeResourcesView {
    pub total: CpuMemView,
    pub most_free_by_cpu: CpuMemView,
    pub most_free_by_memory: CpuMemView,
}

/// `free_resources` only for an account with the backfill permission (absent otherwise:
/// "a feature not supported disappears from the result").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Capabilities {
    pub backfilling: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_resources: Option<FreeResourcesView>,
}

/// The leader's lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Leader {
    pub epoch: i64,
    /// The leading coordinator's name.
    pub holder: String,
    /// Its public API, `https://host:port`.
    pub api_url: String,
    /// Its agent link, `host:port`.
    pub link_addr: String,
    pub deadline_ms: i64,
    pub since_ms: i64,
    /// The database's clock when this was read.
    pub now_ms: i64,
}

/// A coordinator seen recently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct CoordinatorView {
    pub name: String,
    pub api_url: String,
    pub link_addr: String,
    pub seen_ms: i64,
}

/// `GET /coordinators/` (admin certificates, PostgreSQL only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct CoordinatorsStatus {
    /// The coordinator that answered.
    pub this: String,
    /// Its role as it describes it (`leader`, `follower`, ...).
    pub role: String,
    /// Null while no coordinator holds a live lease.
    pub leader: Option<Leader>,
    pub epoch: i64,
    pub coordinators: Vec<CoordinatorView>,
}
