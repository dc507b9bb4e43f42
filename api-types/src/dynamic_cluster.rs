//! Dynamic Cluster's admin API (`/dynamiccluster/`, operators): worker nodes (hosts), jobs
//! (the queue), resources (pools), status. Fields are in the order the coordinator writes them
//! (by name, as a JSON object's keys sort), so an answer's bytes do not depend on these types.
//! `GET /server/config` answers the coordinator's configuration as loaded, secrets redacted:
//! that is the configuration file's shape, not a type here.

use serde::{Deserialize, Serialize};

/// `{"success": true}` (an action done) or `{"success": false, "error": "..."}` (refused).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DcResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub success: bool,
}

/// A worker node's `extra_attributes`: backfill's own view of the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct NodeExtra {
    /// MHz.
    pub cpu_mhz: u64,
    /// The last provisioner failure for it.
    pub error: Option<String>,
    pub gpus: usize,
    /// `run`, `hold` or `drain`.
    pub idle_behavior: String,
    /// Bytes.
    pub mem: u64,
    /// `unknown`, `booting`, `idle`, `running`, `shutdown` or `down`.
    pub worker_state: String,
}

/// A worker node's `instance` (the cloud side).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct CloudInstance {
    /// Always null.
    pub availability_zone: Option<String>,
    /// The pool it belongs to.
    pub cloud_resource: Option<String>,
    /// Unix seconds.
    pub creation_time: i64,
    pub dns_name: String,
    pub flavor: String,
    /// Always null.
    pub image_uuid: Option<String>,
    pub instance_name: String,
    pub ip: Option<String>,
    /// Always null.
    pub key_name: Option<String>,
    /// 1 when a provisioner failure is recorded, -1 otherwise.
    pub last_task_result: i32,
    /// Unix seconds.
    pub last_update_time: i64,
    /// Always empty.
    pub security_groups: Vec<String>,
    /// Always null.
    pub spot_id: Option<String>,
    pub spot_price: f64,
    /// Always null.
    pub spot_state: Option<String>,
    /// 1 Pending, 3 Active, 4 Ready, 5 Deleting, 6 Error, 7 Unknown.
    #[cfg_attr(feature = "utoipa", schema(minimum = 1, maximum = 7))]
    pub state: u8,
    /// Always null.
    pub subnet_id: Option<String>,
    pub tasked: bool,
    pub uuid: String,
    pub vcpu_number: u32,
}

/// An admin action on a host (`GET workernode/{host}` only: its latest 50).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct AdminAction {
    pub action: String,
    pub actor: String,
    /// Unix seconds.
    pub at: i64,
    pub reason: Option<String>,
}

/// A worker node (a host). `admin_actions` only when one node is asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct WorkerNode {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_actions: Option<Vec<AdminAction>>,
    pub extra_attributes: NodeExtra,
    pub hostname: String,
    pub instance: CloudInstance,
    /// Its jobs' ids joined by `,`; null when it has none.
    pub jobs: Option<String>,
    pub num_proc: u32,
    /// 0 Inexistent, 1 Starting, 2 Idle, 3 Busy, 4 Error, 5 Deleting, 6 Holding, 7 Held.
    #[cfg_attr(feature = "utoipa", schema(maximum = 7))]
    pub state: u8,
    /// Unix seconds.
    pub state_start_time: i64,
    /// Seconds.
    pub time_in_current_state: i64,
    #[serde(rename = "type")]
    pub kind: String,
}

/// A job's `extra_attributes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct JobExtra {
    /// MHz.
    pub cpu_mhz: u64,
    pub flavor: String,
    pub host: Option<String>,
    pub pending_reason: Option<String>,
}

/// A job (a server in the queue).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Job {
    pub account: String,
    pub cores_per_node: u32,
    /// Unix seconds, as a string.
    pub creation_time: String,
    pub extra_attributes: JobExtra,
    pub jobid: String,
    pub name: String,
    pub owner: String,
    pub priority: i32,
    /// Always null.
    pub property: Option<String>,
    /// The server's class.
    pub queue: String,
    pub requested_cores: u32,
    /// Bytes.
    pub requested_mem: u64,
    /// Always null.
    pub requested_walltime: Option<u64>,
    /// 0 queued, 1 running.
    pub state: u8,
}

/// `GET server/status`'s `cluster`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ClusterStatus {
    /// Agents connected now.
    pub agents: usize,
    pub coordinator: bool,
}

/// `GET server/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DcStatus {
    pub auto_mode: bool,
    pub cluster: ClusterStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Quantity {
    pub max: u32,
    pub min: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Reservation {
    pub account: Option<String>,
    /// Always null.
    pub property: Option<String>,
    pub queue: Option<String>,
}

/// A pool's own settings (`config.config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct PoolSettings {
    pub flavor: Option<String>,
    /// Host id patterns that belong to the pool (`*` matches any run of characters).
    pub hosts: Vec<String>,
}

/// A resource's `config`: the pool as configured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ResourceConfig {
    pub config: PoolSettings,
    pub priority: i32,
    pub quantity: Quantity,
    pub reservation: Reservation,
    /// `provisioned` or `static`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// A resource (a pool).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Resource {
    pub config: ResourceConfig,
    pub cores_per_node: u32,
    pub current_num: u32,
    /// 0 Normal, 1 Frozen, 2 Draining, 3 Drained.
    #[cfg_attr(feature = "utoipa", schema(maximum = 3))]
    pub flag: u8,
    /// The limits in force (the configured ones unless frozen or drained).
    pub max_num: u32,
    pub min_num: u32,
    pub name: String,
    pub priority: i32,
    /// Always null.
    pub proposed_allocation: Option<u32>,
    pub provisioner_failures: u64,
    pub reservation_account: Option<String>,
    /// Always null.
    pub reservation_property: Option<String>,
    pub reservation_queue: Option<String>,
    /// `provisioned` or `static`.
    #[serde(rename = "type")]
    pub kind: String,
    pub worker_nodes: Vec<WorkerNode>,
}
