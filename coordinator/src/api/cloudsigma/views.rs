//! The API's JSON objects are `backfill-api`'s types (shared with backfillctl; the OpenAPI
//! document describes the same types): here, the conversions from the coordinator's records.

use crate::domain::account::Account;
use crate::domain::server::ServerRecord;
use backfill_api::Owner;
use backfill_api::accounts::{StorageQuota, Unlimited};
use backfill_api::servers::{
    IpRef, NicIo, NicRuntime, PerfFactorView, Runtime, Server, ServerSummary, TerminationView,
};
use backfill_shared::clock::rfc3339;
use backfill_shared::{ServerClass, ServerStatus};
use serde::Serialize;

/// Any serializable view as JSON (plain structs with string keys always serialize).
pub fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// An account's own storage quota as answered: bytes, or the word `"unlimited"`.
pub fn storage_quota(bytes: u64) -> StorageQuota {
    if bytes == crate::domain::account::UNLIMITED_STORAGE {
        StorageQuota::Unlimited(Unlimited::Unlimited)
    } else {
        StorageQuota::Bytes(bytes)
    }
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
