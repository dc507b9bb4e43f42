//! The API's JSON request parsing for servers: the create body (`POST /api/2.0/servers/` and
//! `/bservers/`, `{"objects": [...]}`) and the edit body (`PUT .../{uuid}/`, applied over an
//! existing server). Nothing may panic; a refusal is a 4xx with a field to point at, never a
//! 5xx; what is accepted is within the documented bounds, and accepting it again from its own
//! JSON gives the same server (nothing is silently lost or changed on the way in).
#![no_main]

use backfill_coordinator::api::{ApiError, parse_create_body, parse_edit_body};
use backfill_coordinator::domain::flavors::Flavors;
use backfill_coordinator::domain::server::ServerRecord;
use backfill_coordinator::state::coordinator::NewServer;
use backfill_shared::{PerfFactor, ServerClass, ServerId, ServerStatus, Workload};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::sync::LazyLock;

static FLAVORS: LazyLock<Flavors> = LazyLock::new(|| {
    let list = serde_json::from_value(json!([
        {"name": "c2m4", "vcpus": 2, "ram": 4u64 << 30, "price": 0.1},
        {"name": "c2m4-preemptible", "vcpus": 2, "ram": 4u64 << 30, "price": 0.05},
        {"name": "c1m1", "vcpus": 1, "cpu": 500, "ram": 1u64 << 30, "price": 0.01},
    ]))
    .expect("flavor JSON");
    Flavors::new(list).expect("valid flavors")
});

/// The server an edit applies to.
static CURRENT: LazyLock<ServerRecord> = LazyLock::new(|| ServerRecord {
    uuid: ServerId::from_u128(7),
    owner: "tenant".into(),
    name: "current".into(),
    class: ServerClass::Backfill,
    cpu: 2000,
    smp: 2,
    mem: 1 << 30,
    meta: [("role".to_string(), "batch".to_string())].into(),
    tags: vec!["t1".into()],
    vnc_password: None,
    workload: Some(Workload {
        command: vec!["sleep".into(), "60".into()],
        ..Workload::default()
    }),
    status: ServerStatus::Stopped,
    host: None,
    perf_factor: PerfFactor::FULL,
    active_since: None,
    incarnation: 0,
    termination: None,
    queued_reason: None,
    priority: 0,
    created_at: 1_700_000_000,
    metered_until: None,
    metered_perf: PerfFactor::FULL,
    shutdown_until: None,
    flavor: None,
    gpu_request: None,
    gpus: Vec::new(),
    last_host: None,
    stop_reason: None,
    drives: Vec::new(),
    instance_type: "c2m4".into(),
    network: None,
    limits: None,
});

fn refused(e: &ApiError) {
    assert!(
        e.status.is_client_error(),
        "a bad body got {} ({e:?})",
        e.status
    );
    assert_eq!(e.error_type, "validation", "{e:?}");
    assert!(
        e.point.is_some(),
        "a validation error points nowhere: {e:?}"
    );
}

/// The documented bounds (coordinator/src/api/server_json.rs).
fn within_bounds(s: &NewServer) {
    assert!(
        !s.name.trim().is_empty() && s.name.chars().count() <= 200,
        "{s:?}"
    );
    assert!((1..=10_000_000).contains(&s.cpu), "{s:?}");
    assert!((64 << 20..=16u64 << 40).contains(&s.mem), "{s:?}");
    assert!((1..=1024).contains(&s.smp), "{s:?}");
    assert!(s.meta.len() <= 100 && s.tags.len() <= 100, "{s:?}");
    assert!(
        s.meta
            .iter()
            .all(|(k, v)| !k.is_empty() && k.len() <= 64 && v.len() <= 4096),
        "{s:?}"
    );
    assert!(
        s.tags.iter().all(|t| !t.is_empty() && t.len() <= 64),
        "{s:?}"
    );
    assert!((-1000..=1000).contains(&s.priority), "{s:?}");
    if let Some(w) = &s.workload {
        assert!(!w.command.is_empty() && w.command.len() <= 256, "{s:?}");
        assert!(!w.command[0].is_empty(), "{s:?}");
        assert!(
            w.command
                .iter()
                .all(|a| !a.contains('\0') && a.len() <= 4096),
            "{s:?}"
        );
        assert!(
            w.env
                .iter()
                .all(|(k, v)| !k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0')),
            "{s:?}"
        );
    }
    if let Some(f) = &s.flavor {
        assert!(
            FLAVORS.get(f).is_some(),
            "an unknown flavor {f:?} got through"
        );
    }
}

/// The server as a create body names it.
fn as_json(s: &NewServer) -> Value {
    json!({
        "name": s.name, "cpu": s.cpu, "mem": s.mem, "smp": s.smp, "meta": s.meta,
        "tags": s.tags, "vnc_password": s.vnc_password, "workload": s.workload,
        "priority": s.priority, "flavor": s.flavor, "device_profile": s.device_profile,
    })
}

fn same(a: &NewServer, b: &NewServer) -> bool {
    (
        &a.name,
        a.cpu,
        a.smp,
        a.mem,
        &a.meta,
        &a.tags,
        &a.vnc_password,
        &a.workload,
        a.priority,
        &a.flavor,
        a.preemptible,
        &a.device_profile,
    ) == (
        &b.name,
        b.cpu,
        b.smp,
        b.mem,
        &b.meta,
        &b.tags,
        &b.vnc_password,
        &b.workload,
        b.priority,
        &b.flavor,
        b.preemptible,
        &b.device_profile,
    )
}

fn accepted(s: &NewServer) {
    within_bounds(s);
    let body = json!({"objects": [as_json(s)]}).to_string();
    match parse_create_body(body.as_bytes(), &FLAVORS) {
        Ok(again) => assert!(
            again.len() == 1 && same(&again[0], s),
            "accepting {s:?} again gave {again:?}"
        ),
        Err(e) => panic!("{s:?} was accepted, but not from its own JSON {body}: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: create (even) or edit (odd).
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        match parse_create_body(body, &FLAVORS) {
            Ok(list) => {
                assert!((1..=100).contains(&list.len()));
                list.iter().for_each(accepted);
            }
            Err(e) => refused(&e),
        }
    } else {
        match parse_edit_body(&CURRENT, body, &FLAVORS) {
            Ok(s) => accepted(&s),
            Err(e) => refused(&e),
        }
    }
});
