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
    /// The perf_factor its agent has in force (backfill servers are downsized instead of
    /// stopped).
    pub perf_factor: PerfFactorView,
    pub host: String,
    pub termination: Option<TerminationView>,
    /// The CPU its agent lets it use now, in cores: its quota per period, as read back from
    /// its cgroup. The quota follows what was sold: `cpu` MHz / the host's MHz per core, at
    /// most `smp` cores, times `perf_factor.cpu` (normal servers may run without a quota:
    /// then null). Null also until its agent has reported.
    pub cpu_cores: Option<f64>,
    /// The memory limit in force, in bytes (a VM's balloon size), as its agent reports it.
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
    /// stopped, starting, running, stopping, paused or unavailable.
    pub status: String,
    pub uuid: String,
}

/// A server in full (`GET /bservers/{uuid}/`, `/bservers/detail/`, a create's `objects`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Server {
    pub context: bool,
    /// CPU clock in MHz.
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
    /// Memory in bytes.
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
    /// Number of virtual cores.
    pub smp: u32,
    pub status: String,
    /// Why a started server is still waiting for capacity.
    pub pending_reason: Option<String>,
    /// Why its last run ended (the workload's exit code, why it failed to start, the kernel's
    /// OOM killer, its host lost), until it starts again.
    pub stop_reason: Option<String>,
    /// -1000 to 1000: higher starts first and is preempted last.
    pub priority: i32,
    /// normal, backfill or spot.
    pub class: String,
    /// The flavor (instance type) it is scheduled as: the one it was created as, else the
    /// cheapest configured flavor that fits.
    pub flavor: String,
    /// The device profile it was created with (its GPUs), if any.
    pub device_profile: Option<String>,
    /// The GPU devices (UUIDs) it holds while placed.
    pub gpus: Vec<String>,
    /// A server that fills free capacity (a backfill server).
    pub is_grey: bool,
    pub tags: Vec<String>,
    pub uuid: String,
    pub vnc_password: Option<String>,
    /// `{"command": [...], "env": {...}, "network": "host"|"isolated"}`; null runs the host's
    /// default command.
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
    /// Required on create; 1 to 200 characters, not only spaces, without control,
    /// bidirectional or invisible formatting characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(value_type = String, required = true, min_length = 1, max_length = 200)
    )]
    pub name: Option<String>,
    /// MHz; required on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(value_type = u64, required = true, minimum = 1, maximum = 10_000_000)
    )]
    pub cpu: Option<u64>,
    /// Bytes, at least 64 MiB; required on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(
            value_type = u64,
            required = true,
            minimum = 67_108_864_u64,
            maximum = 17_592_186_044_416_u64
        )
    )]
    pub mem: Option<u64>,
    /// Cores (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 1, maximum = 1024))]
    pub smp: Option<u32>,
    /// Keys of 1 to 64 bytes (no control or bidirectional characters), string values of at
    /// most 4096 bytes (tabs and line breaks allowed); at most 100 keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<BTreeMap<String, String>>,
    /// 1 to 64 bytes each, as meta keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(max_items = 100))]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(max_length = 64))]
    pub vnc_password: Option<String>,
    /// What the server runs, one kind: `{"command": [prog, args...]}` (exec, a process on the
    /// host), `{"vm": {"image": "name.qcow2"}}` or `{"vm": {"kernel": ..., "initrd": ...,
    /// "cmdline": ...}}` (a QEMU virtual machine booted from a fleet image), or
    /// `{"container": {"image": "registry/name:tag", "workdir": "/..."}}` (an OCI container;
    /// `command` and `env` override the image's). Each may add `"env": {...}` (not for vm) and
    /// `"network": "host"|"isolated"` (vm and container default to isolated, exec to host). A
    /// kind or VM image no host of the fleet has is refused (400).
    // `CommandWorkload` serializes the exec kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub workload: Option<Value>,
    /// -1000 to 1000 (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(minimum = -1000, maximum = 1000))]
    pub priority: Option<i32>,
    /// A configured flavor: it gives cpu, smp and mem (those named besides must fit in it); a
    /// preemptible flavor makes a spot server in `/servers/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    /// A device profile's name (`/accelerator/v2/device_profiles`): the server gets the GPUs
    /// its groups ask for, and accelerator requests bound to them while it is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_profile: Option<String>,
    /// The tenant's drives (`/drives/`), changed only while the server is stopped:
    /// `[{"boot_order": 1, "dev_channel": "0:0", "device": "virtio"|"ide", "drive": "<uuid>"}]`.
    /// The server then runs as a VM booting from its drive with boot_order 1 on the host that
    /// holds its drives; a `cdrom` drive attaches as a CD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // The coordinator also takes `drive` as the `{uuid, resource_uri}` a GET shows, and a
    // null or absent `boot_order` or `dev_channel`: hence `Object` in the document.
    #[cfg_attr(
        feature = "utoipa",
        schema(value_type = Option<Vec<Object>>, max_items = 16)
    )]
    pub drives: Option<Vec<ServerDrive>>,
}
