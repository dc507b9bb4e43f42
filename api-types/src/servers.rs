//! `/servers/` and `/bservers/`: the same shapes in both collections.

use crate::common::{Owner, lists, objects};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct PerfFactorView {
    /// Share of the allocated CPU in force (0 to 1].
    pub cpu: f64,
    /// Share of the allocated memory in force (0 to 1].
    pub mem: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct TerminationView {
    /// When the termination was announced (RFC 3339).
    pub scheduled_at: String,
    /// When the server will be stopped (RFC 3339).
    pub terminate_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct NicIo {
    pub bytes_recv: u64,
    pub bytes_sent: u64,
    pub packets_recv: u64,
    pub packets_sent: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct IpRef {
    pub resource_uri: Option<String>,
    /// The address.
    pub uuid: String,
}

/// CloudSigma's NIC runtime: for a guest in isolated network mode, its address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct NicRuntime {
    pub interface_type: String,
    pub io: NicIo,
    pub ip_v4: IpRef,
    pub ip_v6: Option<IpRef>,
    pub mac: Option<String>,
}

/// Present while the server runs; `null` otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Runtime {
    pub active_since: String,
    pub nics: Vec<NicRuntime>,
    /// Its network namespace (`ip netns exec NAME ...`), in isolated network mode.
    pub netns: Option<String>,
    /// The perf_factor its agent has in force.
    pub perf_factor: PerfFactorView,
    pub host: String,
    pub termination: Option<TerminationView>,
    /// The CPU its agent lets it use now, in cores (null without a quota, or until reported).
    pub cpu_cores: Option<f64>,
    /// The memory limit in force, in bytes, as its agent reports it.
    pub mem_limit: Option<u64>,
}

/// The list summary (`GET /bservers/`): `name, owner, resource_uri, runtime, status, uuid`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ServerSummary {
    pub name: String,
    pub owner: Owner,
    pub resource_uri: String,
    pub runtime: Option<Runtime>,
    pub status: String,
    pub uuid: String,
}

/// A server in full (`GET /bservers/{uuid}/`, `/bservers/detail/`, a create's `objects`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Server {
    pub context: bool,
    /// MHz.
    pub cpu: u64,
    pub cpu_model: Option<String>,
    pub cpu_type: String,
    pub cpus_instead_of_cores: bool,
    /// `[{"boot_order", "dev_channel", "device", "drive": {...}}]`.
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub drives: Vec<Value>,
    pub enable_numa: bool,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub grantees: Vec<Value>,
    pub hv_relaxed: bool,
    pub hv_tsc: bool,
    pub hypervisor: String,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub jobs: Vec<Value>,
    /// Bytes.
    pub mem: u64,
    pub meta: BTreeMap<String, String>,
    pub name: String,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub nics: Vec<Value>,
    pub owner: Owner,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub permissions: Vec<Value>,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub pubkeys: Vec<Value>,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub requirements: Vec<Value>,
    pub resource_uri: String,
    pub runtime: Option<Runtime>,
    pub smp: u32,
    pub status: String,
    /// Why a pending server waits.
    pub pending_reason: Option<String>,
    /// Why the server last stopped.
    pub stop_reason: Option<String>,
    pub priority: i32,
    /// `normal`, `spot` or `backfill`.
    pub class: String,
    pub flavor: String,
    pub device_profile: Option<String>,
    pub gpus: Vec<String>,
    pub is_grey: bool,
    pub tags: Vec<String>,
    pub uuid: String,
    pub vnc_password: Option<String>,
    /// `{"command": [...], "env": {...}, "network": "host"|"isolated"}` and the other
    /// workload kinds; null runs the host's default command.
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub workload: Option<Value>,
}

lists! {
    /// `GET /bservers/detail/`.
    ServerList: Server;
    /// `GET /bservers/`.
    ServerSummaryList: ServerSummary;
}

objects! {
    /// A create's answer.
    CreatedServers: Server;
    /// `POST /bservers/`: the servers to create.
    ServerCreate: ServerFields;
}

/// One of a server's drives, as a create or edit sends it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ServerDrive {
    pub boot_order: u32,
    /// `0:0`, `0:1`, ...
    pub dev_channel: String,
    /// `virtio` or `ide`.
    pub device: String,
    /// The drive's uuid.
    pub drive: String,
}

/// What an exec workload runs: `{"command": [...], "env": {...}, "network": ...}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct CommandWorkload {
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `host` or `isolated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// The fields a server create (`{"objects": [...]}`) or edit (`PUT`) carries; absent fields
/// are left out (an edit leaves them unchanged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ServerFields {
    /// Required on create; 1 to 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// MHz; required on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    /// Bytes, at least 64 MiB; required on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<u64>,
    /// Cores (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smp: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc_password: Option<String>,
    /// One workload kind (see the OpenAPI document's `ServerFields.workload`);
    /// [`CommandWorkload`] serializes the exec kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub workload: Option<Value>,
    /// -1000 to 1000 (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drives: Option<Vec<ServerDrive>>,
}
