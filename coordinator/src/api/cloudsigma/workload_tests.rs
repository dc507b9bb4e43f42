//! Workload kinds through the router: a kind no host of the fleet runs is refused at create
//! naming what the fleet runs, a server no host could run is CloudSigma's 503 at start, VMs
//! land only where their image is, and a stopped VM's disk is kept by the host it ran on.

use crate::api::operator::tests::{Fx, Who, fx_with, send};
use crate::link::session_tests::{hello, report};
use backfill_shared::protocol::WorkloadState;
use backfill_shared::{ServerId, VmDriver, VmImage};
use serde_json::{Value, json};

async fn tenant(f: &Fx, method: &str, uri: &str, body: &Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (code, _, v) = send(f, Who::Tenant, method, uri, &[], &body).await;
    (code, v)
}

fn vm(image: &str) -> Value {
    json!({"objects": [{"name": "v", "cpu": 1000, "mem": 268_435_456,
        "workload": {"vm": {"image": image}}}]})
}

/// Registers `name` with `exec` and, when `images` is given, a `vm` driver holding them; the
/// host reports (idle). Returns its session id.
async fn host(f: &Fx, name: &str, images: Option<&[&str]>) -> u64 {
    let mut h = hello(name);
    if let Some(images) = images {
        h.inventory.drivers.vm = Some(VmDriver {
            accel: "tcg".into(),
            images: images
                .iter()
                .map(|i| VmImage {
                    name: (*i).into(),
                    format: "qcow2".into(),
                    virtual_size: 1 << 30,
                })
                .collect(),
        });
    }
    let (conn, rx) = f.c.register_agent(&h).await.unwrap();
    std::mem::forget(rx); // keep the session's channel open
    let g = f.c.model.read().await.generation(&name.parse().unwrap());
    f.c.apply_report(&name.parse().unwrap(), conn, report(g, &[]))
        .await
        .unwrap();
    conn
}

async fn create(f: &Fx, body: &Value) -> ServerId {
    let (code, v) = tenant(f, "POST", "/api/2.0/bservers/", body).await;
    assert_eq!(code, 201, "{v}");
    v["objects"][0]["uuid"].as_str().unwrap().parse().unwrap()
}

async fn action(f: &Fx, id: ServerId, what: &str) -> (u16, Value) {
    let uri = format!("/api/2.0/bservers/{id}/action/?do={what}");
    tenant(f, "POST", &uri, &Value::Null).await
}

#[tokio::test]
async fn kinds_the_fleet_cannot_run_are_refused_naming_what_it_runs() {
    let f = fx_with(None, vec![]).await;
    // Before any host has connected nothing can be judged: the server is taken.
    let early = create(&f, &vm("debian.qcow2")).await;

    host(&f, "h1", None).await;
    let (code, v) = tenant(&f, "POST", "/api/2.0/bservers/", &vm("debian.qcow2")).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v[0]["error_type"], "validation", "{v}");
    let msg = v[0]["error_message"].as_str().unwrap();
    assert!(msg.contains("vm with debian.qcow2"), "{msg}");
    assert!(msg.contains("it runs: exec"), "{msg}");

    // An unknown kind is a 400 that lists the kinds there are.
    let body = json!({"objects": [{"name": "x", "cpu": 1000, "mem": 268_435_456,
        "workload": {"lambda": {"zip": "f.zip"}}}]});
    let (code, v) = tenant(&f, "POST", "/api/2.0/bservers/", &body).await;
    assert_eq!(code, 400, "{v}");
    let msg = v[0]["error_message"].as_str().unwrap();
    assert!(
        msg.contains("\"vm\"") && msg.contains("\"container\""),
        "{msg}"
    );

    // The one taken before the fleet was known cannot run anywhere: CloudSigma's backend 503.
    let (code, v) = action(&f, early, "start").await;
    assert_eq!(
        (code, v[0]["error_type"].as_str()),
        (503, Some("backend")),
        "{v}"
    );
    assert!(
        v[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("this fleet runs: exec"),
        "{v}"
    );
}

#[tokio::test]
async fn a_vm_lands_where_its_image_is_and_its_disk_stays_there_until_deleted() {
    let f = fx_with(None, vec![]).await;
    host(&f, "exec-host", None).await;
    let conn = host(&f, "vm-host", Some(&["debian.qcow2"])).await;
    let id = create(&f, &vm("debian.qcow2")).await;
    let (code, v) = action(&f, id, "start").await;
    assert_eq!(code, 202, "{v}");
    let host_id: backfill_shared::HostId = "vm-host".parse().unwrap();
    let placed = f.c.model.read().await.servers[&id].host.clone();
    assert_eq!(placed, Some(host_id.clone()));

    let state = |f: &Fx| {
        let c = f.c.clone();
        let h = host_id.clone();
        async move { c.model.read().await.desired_state(&h) }
    };
    let incarnation = f.c.model.read().await.servers[&id].incarnation;
    let g = f.c.model.read().await.generation(&host_id);
    f.c.apply_report(
        &host_id,
        conn,
        report(g, &[(id, incarnation, WorkloadState::Running)]),
    )
    .await
    .unwrap();
    assert!(state(&f).await.keep.is_empty(), "running, not kept");

    let (code, v) = action(&f, id, "stop").await;
    assert_eq!(code, 202, "{v}");
    let g = f.c.model.read().await.generation(&host_id);
    f.c.apply_report(
        &host_id,
        conn,
        report(
            g,
            &[(id, incarnation, WorkloadState::Exited { code: None })],
        ),
    )
    .await
    .unwrap();
    let s = state(&f).await;
    assert!(s.servers.is_empty());
    assert_eq!(s.keep, vec![id], "a stopped VM's disk stays on its host");

    let before = f.c.model.read().await.generation(&host_id);
    let (code, v) = tenant(
        &f,
        "DELETE",
        &format!("/api/2.0/bservers/{id}/"),
        &Value::Null,
    )
    .await;
    assert_eq!(code, 204, "{v}");
    let s = state(&f).await;
    assert!(s.keep.is_empty(), "deleted: the disk may go");
    assert!(s.generation > before, "the host is told at once: {s:?}");
}
