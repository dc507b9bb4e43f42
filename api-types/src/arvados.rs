//! Arvados' dispatcher management API (`/arvados/v1/dispatch/`, operators): the container
//! queue (servers) and the instances (hosts). Shapes as Arvados' `lib/dispatchcloud` answers
//! them. Fields are in the order the coordinator writes them (by name, as a JSON object's keys
//! sort), so an answer's bytes do not depend on these types.

use serde::{Deserialize, Serialize};

/// `{"errors": ["..."]}`: every refusal of this API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvErrors {
    pub errors: Vec<String>,
}

/// An instance type's GPU (`Stack` `cuda` when it has GPUs, empty otherwise).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvGpu {
    #[serde(rename = "DeviceCount")]
    pub device_count: u32,
    #[serde(rename = "DriverVersion")]
    pub driver_version: String,
    #[serde(rename = "HardwareTarget")]
    pub hardware_target: String,
    #[serde(rename = "Stack")]
    pub stack: String,
    #[serde(rename = "VRAM")]
    pub vram: u64,
}

/// An instance type (a flavor). `Name` and `Scratch` only in a queue entry's legacy
/// `instance_type` (the seed's shape); `instance_types` leaves them out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvInstanceType {
    #[serde(rename = "AddedScratch")]
    pub added_scratch: u64,
    #[serde(rename = "GPU")]
    pub gpu: ArvGpu,
    /// Bytes.
    #[serde(rename = "IncludedScratch")]
    pub included_scratch: u64,
    #[serde(rename = "Name", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "Preemptible")]
    pub preemptible: bool,
    #[serde(rename = "Price")]
    pub price: f64,
    #[serde(rename = "ProviderType")]
    pub provider_type: String,
    /// Bytes.
    #[serde(rename = "RAM")]
    pub ram: u64,
    #[serde(rename = "Scratch", skip_serializing_if = "Option::is_none")]
    pub scratch: Option<u64>,
    #[serde(rename = "VCPUs")]
    pub vcpus: u32,
}

/// A container's `runtime_constraints.cuda` (always empty: GPUs come from device profiles).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvCuda {
    pub device_count: u32,
    pub driver_version: String,
    pub hardware_capability: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvRuntimeConstraints {
    #[serde(rename = "API")]
    pub api: bool,
    pub cuda: ArvCuda,
    pub keep_cache_disk: u64,
    pub keep_cache_ram: u64,
    /// Bytes.
    pub ram: u64,
    pub vcpus: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvSchedulingParameters {
    pub max_run_time: u64,
    pub partitions: Vec<String>,
    /// Backfill and spot servers are preemptible.
    pub preemptible: bool,
}

/// A container (a server waiting for or holding a host).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvContainer {
    /// Always empty.
    pub command: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Always empty.
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub mounts: serde_json::Map<String, serde_json::Value>,
    pub name: String,
    pub owner_uuid: String,
    pub priority: i32,
    pub runtime_constraints: ArvRuntimeConstraints,
    pub scheduling_parameters: ArvSchedulingParameters,
    /// `Queued`, `Locked` or `Running`.
    pub state: String,
    pub uuid: String,
}

/// A queue entry's `instance_resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvInstanceResources {
    #[serde(rename = "GPUVRAM")]
    pub gpu_vram: u64,
    #[serde(rename = "GPUs")]
    pub gpus: u32,
    /// Bytes.
    #[serde(rename = "RAM")]
    pub ram: u64,
    #[serde(rename = "Scratch")]
    pub scratch: u64,
    #[serde(rename = "VCPUs")]
    pub vcpus: u32,
}

/// A container queue entry (`GET containers`' items, `GET container`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvQueueEntry {
    pub container: ArvContainer,
    /// RFC 3339.
    pub first_seen_at: String,
    pub instance_resources: ArvInstanceResources,
    /// The first of `instance_types`, with `Name` and `Scratch` (the seed's shape).
    pub instance_type: Option<ArvInstanceType>,
    /// The flavors it may run as (the server's own size when none is configured).
    pub instance_types: Vec<ArvInstanceType>,
    /// Why it waits, in words; empty when running.
    pub scheduling_status: String,
}

/// `GET containers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvQueue {
    pub items: Vec<ArvQueueEntry>,
}

/// An instance (a host).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvInstance {
    /// Empty when it has none (yet).
    pub address: String,
    pub arvados_instance_type: String,
    /// `run`, `hold` or `drain`.
    pub idle_behavior: String,
    /// The host id; empty while it is being launched.
    pub instance: String,
    /// RFC 3339; `0001-01-01T00:00:00Z` when never busy.
    pub last_busy: String,
    /// Empty when none.
    pub last_container_uuid: String,
    pub price: f64,
    pub provider_instance_type: String,
    pub running_container_uuids: Vec<String>,
    /// `unknown`, `booting`, `idle`, `running` or `shutdown`.
    pub worker_state: String,
}

/// `GET instances`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArvInstances {
    pub items: Vec<ArvInstance>,
}
