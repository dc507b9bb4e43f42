//! `GET /dashboard/data.json` (operators): what the dashboard page draws. Times are Unix
//! seconds (for the charts). Fields are in the order the coordinator writes them (by name, as a
//! JSON object's keys sort), so an answer's bytes do not depend on these types.

use serde::{Deserialize, Serialize};

/// `{"error": "..."}`: a refused dashboard request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashError {
    pub error: String,
}

/// A server holding resources on a host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashWork {
    pub class: String,
    pub status: String,
    pub uuid: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashHost {
    pub address: Option<String>,
    /// MHz.
    pub cpu_total: u64,
    pub cpu_used: u64,
    pub error: Option<String>,
    pub gpus: usize,
    pub id: String,
    pub idle_behavior: String,
    pub instance_type: String,
    pub launching: bool,
    /// Bytes.
    pub mem_total: u64,
    pub mem_used: u64,
    pub pool: Option<String>,
    pub servers: Vec<DashWork>,
    pub state_since: i64,
    pub vcpus: u32,
    pub worker_state: String,
}

/// `{"cpu", "mem"}` shares (0 to 1].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashPerfFactor {
    pub cpu: f64,
    pub mem: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashTermination {
    pub scheduled_at: i64,
    pub terminate_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashServer {
    pub active_since: Option<i64>,
    pub class: String,
    /// MHz.
    pub cpu: u64,
    /// The CPU its agent lets it use now, in cores (see the server's `runtime`).
    pub cpu_cores: Option<f64>,
    pub created_at: i64,
    pub flavor: Option<String>,
    /// Where it runs, else where it last ran.
    pub host: Option<String>,
    /// Bytes.
    pub mem: u64,
    pub mem_limit: Option<u64>,
    pub name: String,
    pub owner: String,
    pub perf_factor: DashPerfFactor,
    /// It holds `host` now.
    pub placed: bool,
    pub queued_reason: Option<String>,
    pub status: String,
    pub stop_reason: Option<String>,
    pub termination: Option<DashTermination>,
    pub uuid: String,
}

/// A capacity sample (MHz, bytes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashSample {
    pub at: i64,
    pub cpu_backfill: u64,
    pub cpu_free: u64,
    pub cpu_normal: u64,
    pub cpu_spot: u64,
    pub cpu_total: u64,
    pub mem_free: u64,
    pub mem_total: u64,
}

/// The share of the fleet's CPU each class holds now, and the share free.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashShare {
    pub backfill: f64,
    pub free: f64,
    pub normal: f64,
    pub spot: f64,
}

/// A server waiting for a host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashQueued {
    pub class: String,
    pub cpu: u64,
    pub mem: u64,
    pub name: String,
    pub owner: String,
    pub priority: i32,
    pub reason: Option<String>,
    pub uuid: String,
    pub waiting_s: i64,
}

/// A preemption event, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashPreemption {
    pub at: i64,
    pub detail: String,
    pub host: Option<String>,
    /// `downsized`, `noticed` or `stopped`.
    pub kind: String,
    /// A `downsized` event's new perf_factor.
    pub perf_factor: Option<DashPerfFactor>,
    pub server: String,
}

/// One server's usage over `period_s` (`?server=UUID`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashUsage {
    /// Decimal, in `currency`.
    pub amount: String,
    pub cpu_mhz_seconds: u64,
    pub currency: String,
    pub mem_byte_seconds: u64,
    pub period_s: i64,
    pub seconds: u64,
}

/// `GET /dashboard/data.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DashboardData {
    pub auto_mode: bool,
    pub capacity: Vec<DashSample>,
    pub current: DashSample,
    pub hosts: Vec<DashHost>,
    pub now: i64,
    pub preemptions: Vec<DashPreemption>,
    pub queue: Vec<DashQueued>,
    pub sample_every_s: i64,
    /// Every server that holds or waits for a host, then the newest of the rest (500 at most;
    /// the one `?server=` names is always there).
    pub servers: Vec<DashServer>,
    pub share: DashShare,
    /// Only with `?server=UUID`, when its account's report has it.
    pub usage: Option<DashUsage>,
}
