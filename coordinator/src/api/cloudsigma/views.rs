//! The API's JSON objects as types: the handlers serialize these, and the OpenAPI document
//! describes the same types (utoipa), so the two cannot drift apart.

use crate::domain::account::Account;
use crate::domain::server::ServerRecord;
use backfill_shared::clock::rfc3339;
use backfill_shared::{ServerClass, ServerStatus};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `{"resource_uri", "uuid"}` of the owning account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Owner {
    pub resource_uri: String,
    pub uuid: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PerfFactorView {
    /// Share of the allocated CPU in force (0 to 1].
    pub cpu: f64,
    /// Share of the allocated memory in force (0 to 1].
    pub mem: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TerminationView {
    /// When the termination was announced (RFC 3339).
    pub scheduled_at: String,
    /// When the server will be stopped (RFC 3339).
    pub terminate_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NicIo {
    pub bytes_recv: u64,
    pub bytes_sent: u64,
    pub packets_recv: u64,
    pub packets_sent: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IpRef {
    pub resource_uri: Option<String>,
    /// The address.
    pub uuid: String,
}

/// CloudSigma's NIC runtime: for a guest in isolated network mode, its address.
#[derive(Debug, Serialize, ToSchema)]
pub struct NicRuntime {
    pub interface_type: String,
    pub io: NicIo,
    pub ip_v4: IpRef,
    pub ip_v6: Option<IpRef>,
    pub mac: Option<String>,
}

/// Present while the server runs; `null` otherwise.
#[derive(Debug, Serialize, ToSchema)]
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

/// The list summary: `name, owner, resource_uri, runtime, status, uuid`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerSummary {
    pub name: String,
    pub owner: Owner,
    pub resource_uri: String,
    pub runtime: Option<Runtime>,
    /// stopped, starting, running, stopping, paused or unavailable.
    pub status: String,
    pub uuid: String,
}

/// The full server object.
#[derive(Debug, Serialize, ToSchema)]
pub struct Server {
    pub context: bool,
    /// CPU clock in MHz.
    pub cpu: u64,
    pub cpu_model: Option<String>,
    pub cpu_type: String,
    pub cpus_instead_of_cores: bool,
    #[schema(value_type = Vec<Object>)]
    pub drives: Vec<serde_json::Value>,
    pub enable_numa: bool,
    #[schema(value_type = Vec<Object>)]
    pub grantees: Vec<serde_json::Value>,
    pub hv_relaxed: bool,
    pub hv_tsc: bool,
    pub hypervisor: String,
    #[schema(value_type = Vec<Object>)]
    pub jobs: Vec<serde_json::Value>,
    /// Memory in bytes.
    pub mem: u64,
    pub meta: BTreeMap<String, String>,
    pub name: String,
    #[schema(value_type = Vec<Object>)]
    pub nics: Vec<serde_json::Value>,
    pub owner: Owner,
    #[schema(value_type = Vec<Object>)]
    pub permissions: Vec<serde_json::Value>,
    #[schema(value_type = Vec<Object>)]
    pub pubkeys: Vec<serde_json::Value>,
    #[schema(value_type = Vec<Object>)]
    pub requirements: Vec<serde_json::Value>,
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
    #[schema(value_type = Option<Object>)]
    pub workload: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListMeta {
    /// 0 = all.
    pub limit: usize,
    pub offset: usize,
    pub total_count: usize,
}

/// A page of a list, for each object type.
macro_rules! lists {
    ($($list:ident: $t:ty;)*) => {$(
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $list {
            pub meta: ListMeta,
            pub objects: Vec<$t>,
        }
    )*};
}

lists! {
    ServerList: Server;
    ServerSummaryList: ServerSummary;
    AccountList: AccountView;
    LedgerList: LedgerEntry;
}

/// `{"objects": [...]}`: what a create answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedServers {
    pub objects: Vec<Server>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAccounts {
    pub objects: Vec<AccountView>,
}

/// Any serializable view as JSON (plain structs with string keys always serialize).
pub fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The answer to `POST …/action/?do=X` (202).
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionResult {
    pub action: String,
    pub result: String,
    pub uuid: String,
}

/// One item of an error list (errors are a JSON list of these).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorItem {
    /// validation, notexist, backend, permission, database, ...
    pub error_type: String,
    /// The field or parameter at fault, or null.
    pub error_point: Option<String>,
    pub error_message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaView {
    /// MHz; null = unlimited.
    pub cpu: Option<u64>,
    /// Bytes; null = unlimited.
    pub mem: Option<u64>,
    pub gpus: Option<u64>,
    pub servers: Option<u64>,
    /// Bytes of drives; null = the configured default (`[drives] storage_quota_bytes`,
    /// unlimited when unset); `"unlimited"` = unlimited whatever the default.
    pub storage: Option<StorageQuotaView>,
}

/// An account's own storage quota: bytes, or the word `"unlimited"`.
#[derive(Debug, Serialize, ToSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum StorageQuotaView {
    Bytes(u64),
    Unlimited(Unlimited),
}

/// The word `"unlimited"`.
#[derive(Debug, Serialize, ToSchema, PartialEq, Eq)]
pub enum Unlimited {
    #[serde(rename = "unlimited")]
    Unlimited,
}

impl StorageQuotaView {
    pub fn of(bytes: u64) -> StorageQuotaView {
        if bytes == crate::domain::account::UNLIMITED_STORAGE {
            StorageQuotaView::Unlimited(Unlimited::Unlimited)
        } else {
            StorageQuotaView::Bytes(bytes)
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InUseView {
    pub cpu: u64,
    pub mem: u64,
    pub gpus: u64,
    pub servers: u64,
    /// Bytes of drives the account holds.
    pub storage: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub name: String,
    pub uuid: String,
    pub backfill: bool,
    pub quota: QuotaView,
    pub in_use: InUseView,
    pub created_at: String,
    pub resource_uri: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLine {
    pub server: String,
    pub name: String,
    pub account: String,
    pub class: String,
    pub seconds: u64,
    /// Allocated MHz times the CPU perf_factor in force, summed over the seconds.
    pub cpu_mhz_seconds: u64,
    pub mem_byte_seconds: u64,
    /// Decimal string in `currency`.
    pub amount: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageTotals {
    pub seconds: u64,
    pub cpu_mhz_seconds: u64,
    pub mem_byte_seconds: u64,
    pub amount: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub start: String,
    pub end: String,
    pub currency: String,
    /// `limit` (default 0: all lines), `offset` and the number of lines in the period.
    pub meta: ListMeta,
    /// One line per server; `totals` cover every line of the period, not only this page.
    pub objects: Vec<UsageLine>,
    pub totals: UsageTotals,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntry {
    pub id: String,
    pub time: String,
    pub start: String,
    pub end: String,
    /// Negative: a debit.
    pub amount: String,
    pub currency: String,
    pub resource: String,
    pub resource_uuid: String,
    pub user: String,
    pub reason: String,
}

fn resource_uri(collection: &str, s: &ServerRecord) -> String {
    format!("/api/2.0/{collection}/{}/", s.uuid)
}

pub(in crate::api) fn owner(account: &Account) -> Owner {
    Owner {
        resource_uri: format!("/api/2.0/user/{}/", account.uuid),
        uuid: account.uuid.clone(),
    }
}

pub fn runtime(s: &ServerRecord) -> Option<Runtime> {
    let (ServerStatus::Running | ServerStatus::Stopping, Some(since), Some(host)) =
        (s.status, s.active_since, &s.host)
    else {
        return None;
    };
    let nics = s
        .network
        .as_ref()
        .map(|n| NicRuntime {
            interface_type: "private".into(),
            io: NicIo {
                bytes_recv: 0,
                bytes_sent: 0,
                packets_recv: 0,
                packets_sent: 0,
            },
            ip_v4: IpRef {
                resource_uri: None,
                uuid: n.address.to_string(),
            },
            ip_v6: None,
            mac: None,
        })
        .into_iter()
        .collect();
    Some(Runtime {
        active_since: rfc3339(since),
        nics,
        netns: s.network.as_ref().map(|n| n.netns.clone()),
        perf_factor: PerfFactorView {
            cpu: s.perf_factor.cpu,
            mem: s.perf_factor.mem,
        },
        host: host.as_str().to_owned(),
        termination: s.termination.map(|t| TerminationView {
            scheduled_at: rfc3339(t.scheduled_at),
            terminate_at: rfc3339(t.terminate_at),
        }),
        cpu_cores: s.limits.and_then(|l| {
            let q = l.cpu_quota_us?;
            (l.cpu_period_us > 0)
                .then(|| (q as f64 / l.cpu_period_us as f64 * 1000.0).round() / 1000.0)
        }),
        mem_limit: s.limits.and_then(|l| l.mem_limit_bytes),
    })
}

pub fn summary(collection: &str, account: &Account, s: &ServerRecord) -> ServerSummary {
    ServerSummary {
        name: s.name.clone(),
        owner: owner(account),
        resource_uri: resource_uri(collection, s),
        runtime: runtime(s),
        status: s.status.as_str().to_owned(),
        uuid: s.uuid.to_string(),
    }
}

pub fn detail(collection: &str, account: &Account, s: &ServerRecord) -> Server {
    Server {
        context: true,
        cpu: s.cpu,
        cpu_model: None,
        cpu_type: "amd".into(),
        cpus_instead_of_cores: false,
        drives: match crate::api::cloudsigma::server_json::drives_json(&s.drives) {
            serde_json::Value::Array(v) => v,
            _ => Vec::new(),
        },
        enable_numa: false,
        grantees: Vec::new(),
        hv_relaxed: false,
        hv_tsc: false,
        hypervisor: "kvm".into(),
        jobs: Vec::new(),
        mem: s.mem,
        meta: s.meta.clone(),
        name: s.name.clone(),
        nics: Vec::new(),
        owner: owner(account),
        permissions: Vec::new(),
        pubkeys: Vec::new(),
        requirements: Vec::new(),
        resource_uri: resource_uri(collection, s),
        runtime: runtime(s),
        smp: s.smp,
        status: s.status.as_str().to_owned(),
        pending_reason: s.queued_reason.clone(),
        stop_reason: s.stop_reason.clone(),
        priority: s.priority,
        class: s.class.as_str().to_owned(),
        flavor: s.instance_type.clone(),
        device_profile: s.gpu_request.as_ref().map(|g| g.device_profile.clone()),
        gpus: s.gpus.clone(),
        is_grey: s.class != ServerClass::Normal,
        tags: s.tags.clone(),
        uuid: s.uuid.to_string(),
        vnc_password: s.vnc_password.clone(),
        workload: s.workload.as_ref().and_then(workload_json),
    }
}

/// A workload as the tenant gave it: a VM's drives are the server's `drives`, not shown here.
fn workload_json(w: &backfill_shared::Workload) -> Option<serde_json::Value> {
    let mut v = serde_json::to_value(w).ok()?;
    if let Some(vm) = v.get_mut("vm").and_then(serde_json::Value::as_object_mut) {
        vm.remove("drives");
    }
    Some(v)
}
