//! Cyborg's API through the router: versions, device profiles, accelerator requests with their
//! bind/unbind transitions and both deletes, and servers that get GPUs by device profile.

use crate::api::operator::tests::{Fx, Who, fx_with, send};
use crate::link::session_tests::{hello, new_server, report};
use crate::state::coordinator::{NewServer, Scope};
use backfill_shared::protocol::{DesiredState, WorkloadState};
use backfill_shared::{GpuDevice, ServerClass, ServerId, ServerStatus};
use serde_json::{Value, json};
use std::sync::Arc;

const V22: (&str, &str) = ("OpenStack-API-Version", "accelerator 2.2");

fn gpus() -> Vec<GpuDevice> {
    vec![
        GpuDevice::whole(
            0,
            "GPU-A",
            "NVIDIA H100 80GB HBM3",
            80 << 30,
            "00000000:0C:00.0",
        ),
        GpuDevice::whole(1, "GPU-B", "Tesla T4", 16 << 30, "00000000:0D:00.0"),
    ]
}

async fn fx() -> Fx {
    fx_with(None, Vec::new()).await
}

/// A GPU host that has reported, its session kept open.
async fn gpu_host(f: &Fx) -> (u64, tokio::sync::watch::Receiver<Arc<DesiredState>>) {
    let mut h = hello("g1");
    h.inventory.gpus = gpus();
    let (conn, rx) = f.c.register_agent(&h).await.unwrap();
    gpu_report(f, conn, &[]).await;
    (conn, rx)
}

async fn gpu_report(f: &Fx, conn: u64, running: &[ServerId]) {
    let host = "g1".parse().unwrap();
    let g = f.c.model.read().await.generation(&host);
    let mut observed = Vec::new();
    for id in running {
        let s = f.c.get_any_server(Scope::Servers, *id).await.unwrap();
        observed.push((*id, s.incarnation, WorkloadState::Running));
    }
    let mut r = report(g, &observed);
    r.gpus = gpus();
    f.c.apply_report(&host, conn, r).await.unwrap();
}

async fn admin(f: &Fx, method: &str, uri: &str, body: &str) -> (u16, Value) {
    let (code, _, v) = send(f, Who::Admin, method, uri, &[], body).await;
    (code, v)
}

async fn tenant(f: &Fx, method: &str, uri: &str, body: &str) -> (u16, Value) {
    let (code, _, v) = send(f, Who::Tenant, method, uri, &[], body).await;
    (code, v)
}

/// The inner fault string of a Cyborg error body.
fn fault(v: &Value) -> String {
    let inner: Value = serde_json::from_str(v["error_message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["debuginfo"], Value::Null);
    inner["faultstring"].as_str().unwrap().to_owned()
}

async fn make_profile(f: &Fx, name: &str, groups: Value) -> Value {
    let body = json!([{"name": name, "description": "d", "groups": groups}]).to_string();
    let (code, v) = admin(f, "POST", "/accelerator/v2/device_profiles", &body).await;
    assert_eq!(code, 201, "{v}");
    v
}

#[tokio::test]
async fn versions_are_negotiated_with_cyborgs_headers() {
    let f = fx().await;
    let (code, h, v) = send(&f, Who::Tenant, "GET", "/accelerator/", &[], "").await;
    assert_eq!(code, 200);
    assert_eq!(v["name"], "OpenStack Cyborg API");
    assert_eq!(v["versions"][0]["id"], "v2");
    assert_eq!(v["default_version"]["max_version"], "2.3");
    assert_eq!(h["openstack-api-minimum-version"], "2.0");
    assert_eq!(h["openstack-api-maximum-version"], "2.3");
    assert_eq!(h["openstack-api-version"], "accelerator 2.0");
    assert_eq!(h["vary"], "OpenStack-API-Version");
    // Links name the host the client used (HTTP/2 gives it as the URI's authority).
    let (_, _, v) = send(
        &f,
        Who::Tenant,
        "GET",
        "https://cloud.example:8443/accelerator/v2",
        &[],
        "",
    )
    .await;
    assert_eq!(
        v["links"][0]["href"],
        "https://cloud.example:8443/accelerator/v2/"
    );
    let (_, _, v) = send(
        &f,
        Who::Tenant,
        "GET",
        "/accelerator/v2",
        &[("host", "api.example")],
        "",
    )
    .await;
    assert_eq!(v["links"][0]["href"], "https://api.example/accelerator/v2/");
    assert_eq!(
        (v["id"].as_str(), v["min_version"].as_str()),
        (Some("v2.0"), Some("2.0"))
    );
    for (header, want) in [
        ("accelerator 2.2", "accelerator 2.2"),
        ("2.1", "accelerator 2.1"),
        ("accelerator latest", "accelerator 2.3"),
    ] {
        let (code, h, _) = send(
            &f,
            Who::Tenant,
            "GET",
            "/accelerator/v2/device_profiles",
            &[("OpenStack-API-Version", header)],
            "",
        )
        .await;
        assert_eq!(
            (code, h["openstack-api-version"].to_str().unwrap()),
            (200, want)
        );
    }
    let (code, _, v) = send(
        &f,
        Who::Tenant,
        "GET",
        "/accelerator/v2/device_profiles",
        &[("OpenStack-API-Version", "accelerator 2.9")],
        "",
    )
    .await;
    assert_eq!(code, 406);
    assert_eq!(
        fault(&v),
        "Version 2.9 was requested but the minor version is not supported by this service. The supported version range is: [2.0, 2.3]."
    );
    let (code, _, _) = send(
        &f,
        Who::Tenant,
        "GET",
        "/accelerator/v2/device_profiles",
        &[("OpenStack-API-Version", "accelerator 3.0")],
        "",
    )
    .await;
    assert_eq!(code, 406);
    let (code, _, _) = send(
        &f,
        Who::Tenant,
        "GET",
        "/accelerator/v2/device_profiles",
        &[("OpenStack-API-Version", "accelerator two")],
        "",
    )
    .await;
    assert_eq!(code, 400);
    // Without v2 in the path, Cyborg routes to v2.
    assert_eq!(
        tenant(&f, "GET", "/accelerator/device_profiles", "")
            .await
            .0,
        200
    );
    // Without a certificate nothing is served here.
    assert_eq!(
        send(
            &f,
            Who::Nobody,
            "GET",
            "/accelerator/v2/accelerator_requests",
            &[],
            ""
        )
        .await
        .0,
        403
    );
}

#[tokio::test]
async fn device_profiles_follow_cyborgs_quirks() {
    let f = fx().await;
    let groups = json!([{"resources:PGPU": "1", "trait:CUSTOM_GPU_H100": "required"}]);
    let body = json!([{"name": "h100", "groups": groups}]).to_string();
    let (code, v) = tenant(&f, "POST", "/accelerator/v2/device_profiles", &body).await;
    assert_eq!(code, 403, "{v}");
    let p = make_profile(&f, "h100", groups.clone()).await;
    assert_eq!(p["name"], "h100");
    assert_eq!(p["groups"], groups);
    assert!(
        p["created_at"].as_str().unwrap().contains(' '),
        "str() of a datetime: {p}"
    );
    assert_eq!(p["updated_at"], Value::Null);
    let uuid = p["uuid"].as_str().unwrap().to_owned();
    assert!(
        p["links"][0]["href"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v2/device_profiles/{uuid}"))
    );
    // Duplicate name, bad groups, not a one-element list.
    let (code, _) = admin(&f, "POST", "/accelerator/v2/device_profiles", &body).await;
    assert_eq!(code, 409);
    let bad = json!([{"name": "x", "groups": [{"resources:PGPU": "one"}]}]).to_string();
    let (code, v) = admin(&f, "POST", "/accelerator/v2/device_profiles", &bad).await;
    assert_eq!(code, 400);
    assert!(fault(&v).contains("count"), "{v}");
    let two = json!([{"name": "a", "groups": groups}, {"name": "b", "groups": groups}]).to_string();
    assert_eq!(
        admin(&f, "POST", "/accelerator/v2/device_profiles", &two)
            .await
            .0,
        400
    );
    // List wrapped, get-one wrapped, by name only from 2.2.
    make_profile(
        &f,
        "t4",
        json!([{"resources:PGPU": "1", "trait:CUSTOM_GPU_T4": "required"}]),
    )
    .await;
    let (_, v) = tenant(&f, "GET", "/accelerator/v2/device_profiles", "").await;
    assert_eq!(v["device_profiles"].as_array().unwrap().len(), 2);
    let (_, v) = tenant(&f, "GET", "/accelerator/v2/device_profiles?name=t4", "").await;
    assert_eq!(v["device_profiles"][0]["name"], "t4");
    let (code, v) = tenant(
        &f,
        "GET",
        &format!("/accelerator/v2/device_profiles/{uuid}"),
        "",
    )
    .await;
    assert_eq!(
        (code, v["device_profile"]["name"].as_str()),
        (200, Some("h100"))
    );
    assert_eq!(
        tenant(&f, "GET", "/accelerator/v2/device_profiles/h100", "")
            .await
            .0,
        406
    );
    let (code, _, v) = send(
        &f,
        Who::Tenant,
        "GET",
        "/accelerator/v2/device_profiles/h100",
        &[V22],
        "",
    )
    .await;
    assert_eq!(
        (code, v["device_profile"]["uuid"].as_str()),
        (200, Some(uuid.as_str()))
    );
    assert_eq!(
        tenant(&f, "GET", "/accelerator/v2/device_profiles/nope", "")
            .await
            .0,
        406
    );
    // In use: refused; by ?value=, both or none.
    let (code, _) = tenant(
        &f,
        "POST",
        "/accelerator/v2/accelerator_requests",
        r#"{"device_profile_name":"h100"}"#,
    )
    .await;
    assert_eq!(code, 201);
    let (code, v) = admin(
        &f,
        "DELETE",
        "/accelerator/v2/device_profiles?value=t4,h100",
        "",
    )
    .await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(
        tenant(&f, "GET", "/accelerator/v2/device_profiles", "")
            .await
            .1["device_profiles"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        tenant(&f, "DELETE", "/accelerator/v2/device_profiles?value=t4", "")
            .await
            .0,
        403
    );
    assert_eq!(
        admin(&f, "DELETE", "/accelerator/v2/device_profiles?value=t4", "")
            .await
            .0,
        204
    );
    assert_eq!(
        admin(&f, "DELETE", "/accelerator/v2/device_profiles/t4", "")
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn arqs_are_made_bound_unbound_and_deleted_as_cyborgs() {
    let f = fx().await;
    let (_conn, _rx) = gpu_host(&f).await;
    make_profile(
        &f,
        "two-by-two",
        json!([{"resources:GPU": "2"}, {"resources:GPU": "2"}]),
    )
    .await;
    // N groups x M devices: 4 ARQs, group ids 0, 0, 1, 1, all Initial.
    let (code, v) = tenant(
        &f,
        "POST",
        "/accelerator/v2/accelerator_requests",
        r#"{"device_profile_name":"two-by-two"}"#,
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let arqs = v["arqs"].as_array().unwrap().clone();
    let groups: Vec<u64> = arqs
        .iter()
        .map(|a| a["device_profile_group_id"].as_u64().unwrap())
        .collect();
    assert_eq!(groups, vec![0, 0, 1, 1]);
    for a in &arqs {
        assert_eq!(a["state"], "Initial");
        for k in [
            "instance_uuid",
            "hostname",
            "device_rp_uuid",
            "updated_at",
            "attach_handle_uuid",
        ] {
            assert_eq!(a[k], Value::Null, "{k}");
        }
        assert_eq!(a["attach_handle_type"], "");
        assert_eq!(a["attach_handle_info"], json!({}));
        assert!(a["project_id"].is_string());
    }
    let id = |i: usize| arqs[i]["uuid"].as_str().unwrap().to_owned();
    // Errors: no name (400, not Cyborg's 500), unknown profile (404), admin has no account.
    let (code, v) = tenant(&f, "POST", "/accelerator/v2/accelerator_requests", "{}").await;
    assert_eq!(
        (code, fault(&v).contains("device_profile_name")),
        (400, true)
    );
    assert_eq!(
        tenant(
            &f,
            "POST",
            "/accelerator/v2/accelerator_requests",
            r#"{"device_profile_name":"zz"}"#
        )
        .await
        .0,
        404
    );
    assert_eq!(
        admin(
            &f,
            "POST",
            "/accelerator/v2/accelerator_requests",
            r#"{"device_profile_name":"two-by-two"}"#
        )
        .await
        .0,
        403
    );
    // Get one: bare.
    let (code, v) = tenant(
        &f,
        "GET",
        &format!("/accelerator/v2/accelerator_requests/{}", id(0)),
        "",
    )
    .await;
    assert_eq!((code, v["uuid"].as_str()), (200, Some(id(0).as_str())));
    assert_eq!(
        tenant(&f, "GET", "/accelerator/v2/accelerator_requests/nope", "")
            .await
            .0,
        404
    );

    // Bind: operators only; all three fields; not add and remove mixed.
    let inst = "506220bc-18f2-4294-9b29-80267a021dc0";
    let bind = |arq: &str, dev: &str| {
        json!({arq: [
            {"op": "add", "path": "/instance_uuid", "value": inst},
            {"op": "add", "path": "/hostname", "value": "g1"},
            {"op": "add", "path": "/device_rp_uuid", "value": dev},
        ]})
        .to_string()
    };
    assert_eq!(
        tenant(
            &f,
            "PATCH",
            "/accelerator/v2/accelerator_requests",
            &bind(&id(0), "GPU-A")
        )
        .await
        .0,
        403
    );
    let partial = json!({id(0): [{"op": "add", "path": "/hostname", "value": "g1"}]}).to_string();
    let (code, v) = admin(
        &f,
        "PATCH",
        "/accelerator/v2/accelerator_requests",
        &partial,
    )
    .await;
    assert_eq!(
        (code, fault(&v).starts_with("Fields absent in patch")),
        (400, true)
    );
    let mixed = json!({id(0): [{"op": "add", "path": "/hostname", "value": "g1"}, {"op": "remove", "path": "/hostname"}]}).to_string();
    assert_eq!(
        admin(&f, "PATCH", "/accelerator/v2/accelerator_requests", &mixed)
            .await
            .0,
        400
    );
    let project = json!({id(0): [{"op": "add", "path": "/project_id", "value": "p"}]}).to_string();
    assert_eq!(
        admin(
            &f,
            "PATCH",
            "/accelerator/v2/accelerator_requests",
            &project
        )
        .await
        .0,
        406
    );
    let (code, v) = admin(
        &f,
        "PATCH",
        "/accelerator/v2/accelerator_requests",
        &bind(&id(0), "GPU-A"),
    )
    .await;
    assert_eq!((code, v), (202, Value::Null));
    let (_, v) = tenant(
        &f,
        "GET",
        &format!("/accelerator/v2/accelerator_requests/{}", id(0)),
        "",
    )
    .await;
    assert_eq!(
        (v["state"].as_str(), v["hostname"].as_str()),
        (Some("BindStarted"), Some("g1"))
    );
    // Not resolved yet: 423; resolved once the coordinator has bound it.
    let resolved =
        format!("/accelerator/v2/accelerator_requests?instance={inst}&bind_state=resolved");
    assert_eq!(tenant(&f, "GET", &resolved, "").await, (423, Value::Null));
    assert_eq!(
        tenant(
            &f,
            "GET",
            "/accelerator/v2/accelerator_requests?bind_state=bound",
            ""
        )
        .await
        .0,
        400
    );
    f.c.tick(1_000).await.unwrap();
    let (code, v) = tenant(&f, "GET", &resolved, "").await;
    assert_eq!(code, 200, "{v}");
    let a = &v["arqs"][0];
    assert_eq!(
        (a["state"].as_str(), a["attach_handle_type"].as_str()),
        (Some("Bound"), Some("PCI"))
    );
    assert_eq!(
        a["attach_handle_info"],
        json!({"domain": "0000", "bus": "0c", "device": "00", "function": "0"})
    );
    assert_eq!(a["device_rp_uuid"], "GPU-A");
    // One binding per instance.
    let (code, v) = admin(
        &f,
        "PATCH",
        "/accelerator/v2/accelerator_requests",
        &bind(&id(1), "GPU-B"),
    )
    .await;
    assert_eq!(code, 400);
    assert!(fault(&v).contains("already has accelerator requests"));
    // A device that is not there: BindFailed.
    let other = bind(&id(2), "GPU-NOPE").replace(inst, "11111111-2222-3333-4444-555555555555");
    assert_eq!(
        admin(&f, "PATCH", "/accelerator/v2/accelerator_requests", &other)
            .await
            .0,
        202
    );
    f.c.tick(1_001).await.unwrap();
    let (_, v) = tenant(
        &f,
        "GET",
        &format!("/accelerator/v2/accelerator_requests/{}", id(2)),
        "",
    )
    .await;
    assert_eq!(v["state"], "BindFailed");

    // Unbind through PATCH .../{uuid} (openstacksdk's form): Unbound, fields cleared.
    let unbind = json!({id(0): [{"op": "remove", "path": "/hostname"}, {"op": "remove", "path": "/instance_uuid"}, {"op": "remove", "path": "/device_rp_uuid"}]}).to_string();
    assert_eq!(
        admin(
            &f,
            "PATCH",
            &format!("/accelerator/v2/accelerator_requests/{}", id(0)),
            &unbind
        )
        .await
        .0,
        202
    );
    let (_, v) = tenant(
        &f,
        "GET",
        &format!("/accelerator/v2/accelerator_requests/{}", id(0)),
        "",
    )
    .await;
    assert_eq!(
        (v["state"].as_str(), v["hostname"].clone()),
        (Some("Unbound"), Value::Null)
    );
    // Unbound -> Unbound is not a transition the reference allows.
    assert_eq!(
        admin(&f, "PATCH", "/accelerator/v2/accelerator_requests", &unbind)
            .await
            .0,
        400
    );

    // Deletes: neither or both parameters; by instance (operators, idempotent); by uuid (strict).
    assert_eq!(
        admin(&f, "DELETE", "/accelerator/v2/accelerator_requests", "")
            .await
            .0,
        400
    );
    assert_eq!(
        admin(
            &f,
            "DELETE",
            &format!(
                "/accelerator/v2/accelerator_requests?arqs={}&instance={inst}",
                id(0)
            ),
            ""
        )
        .await
        .0,
        400
    );
    let by_instance =
        "/accelerator/v2/accelerator_requests?instance=11111111-2222-3333-4444-555555555555";
    assert_eq!(tenant(&f, "DELETE", by_instance, "").await.0, 403);
    assert_eq!(admin(&f, "DELETE", by_instance, "").await.0, 204);
    assert_eq!(admin(&f, "DELETE", by_instance, "").await.0, 204);
    assert_eq!(
        tenant(
            &f,
            "GET",
            &format!("/accelerator/v2/accelerator_requests/{}", id(2)),
            ""
        )
        .await
        .0,
        404
    );
    let strict = format!("/accelerator/v2/accelerator_requests?arqs={},nope", id(1));
    assert_eq!(tenant(&f, "DELETE", &strict, "").await.0, 404);
    assert_eq!(
        tenant(
            &f,
            "GET",
            &format!("/accelerator/v2/accelerator_requests/{}", id(1)),
            ""
        )
        .await
        .0,
        200
    );
    assert_eq!(
        tenant(
            &f,
            "DELETE",
            &format!(
                "/accelerator/v2/accelerator_requests?arqs={},{}",
                id(0),
                id(1)
            ),
            ""
        )
        .await
        .0,
        204
    );
    assert_eq!(
        tenant(
            &f,
            "DELETE",
            &format!("/accelerator/v2/accelerator_requests/{}", id(3)),
            ""
        )
        .await
        .0,
        204
    );
    let (_, v) = admin(&f, "GET", "/accelerator/v2/accelerator_requests", "").await;
    assert_eq!(v["arqs"], json!([]));
}

async fn gpu_server(f: &Fx, class: ServerClass, profile: &str) -> ServerId {
    let n = NewServer {
        device_profile: Some(profile.into()),
        ..new_server()
    };
    let id = f.c.create_servers(&f.tenant, class, vec![n]).await.unwrap()[0].uuid;
    let scope = if class == ServerClass::Backfill {
        Scope::BServers
    } else {
        Scope::Servers
    };
    f.c.start(&f.tenant, scope, id).await.unwrap();
    id
}

#[tokio::test]
async fn servers_get_matching_gpus_and_their_arqs_follow_them() {
    let f = fx().await;
    let (conn, mut rx) = gpu_host(&f).await;
    make_profile(
        &f,
        "one-h100",
        json!([{"resources:PGPU": "1", "trait:CUSTOM_GPU_H100": "required"}]),
    )
    .await;
    // An unknown profile is refused at create.
    let n = NewServer {
        device_profile: Some("zz".into()),
        ..new_server()
    };
    assert!(
        f.c.create_servers(&f.tenant, ServerClass::Backfill, vec![n])
            .await
            .is_err()
    );

    let first = gpu_server(&f, ServerClass::Backfill, "one-h100").await;
    let s = f.c.get_any_server(Scope::Servers, first).await.unwrap();
    assert_eq!(s.gpus, vec!["GPU-A".to_string()], "the H100, not the T4");
    let desired = rx.borrow_and_update().clone();
    let d = desired.servers.iter().find(|d| d.server == first).unwrap();
    assert_eq!(d.gpus, vec!["GPU-A".to_string()]);
    gpu_report(&f, conn, &[first]).await;
    let (_, v) = tenant(
        &f,
        "GET",
        &format!("/accelerator/v2/accelerator_requests?instance={first}"),
        "",
    )
    .await;
    let arq = &v["arqs"][0];
    assert_eq!(
        (
            arq["state"].as_str(),
            arq["device_rp_uuid"].as_str(),
            arq["hostname"].as_str()
        ),
        (Some("Bound"), Some("GPU-A"), Some("g1"))
    );
    // A tenant cannot delete an ARQ the coordinator made for a server.
    let uri = format!(
        "/accelerator/v2/accelerator_requests/{}",
        arq["uuid"].as_str().unwrap()
    );
    assert_eq!(tenant(&f, "DELETE", &uri, "").await.0, 403);
    let (_, v) = tenant(&f, "GET", &format!("/api/2.0/bservers/{first}/"), "").await;
    assert_eq!(
        (v["device_profile"].as_str(), v["gpus"][0].as_str()),
        (Some("one-h100"), Some("GPU-A"))
    );

    // A second backfill server waits: the only H100 is taken.
    let second = gpu_server(&f, ServerClass::Backfill, "one-h100").await;
    let s2 = f.c.get_any_server(Scope::Servers, second).await.unwrap();
    assert_eq!(
        (s2.status, s2.host.is_none()),
        (ServerStatus::Starting, true)
    );
    // A normal server needing the H100 preempts the backfill one (GPUs cannot be downsized).
    let normal = gpu_server(&f, ServerClass::Normal, "one-h100").await;
    let b = f.c.get_any_server(Scope::Servers, first).await.unwrap();
    assert!(
        b.termination.is_some(),
        "the backfill server got its notice"
    );
    let n = f.c.get_any_server(Scope::Servers, normal).await.unwrap();
    assert!(n.host.is_none() && n.queued_reason.unwrap().contains("making room"));

    // Stopped: its ARQ is unbound; deleted: its ARQs are gone.
    f.c.stop(&f.tenant, Scope::BServers, first).await.unwrap();
    gpu_report(&f, conn, &[]).await;
    let (_, v) = tenant(&f, "GET", &uri, "").await;
    assert_eq!(
        (v["state"].as_str(), v["hostname"].clone()),
        (Some("Unbound"), Value::Null)
    );
    f.c.delete(&f.tenant, Scope::BServers, first).await.unwrap();
    assert_eq!(tenant(&f, "GET", &uri, "").await.0, 404);
    // The normal server now gets the H100 (the waiting backfill server is stopped first, or,
    // older, it would take it and be preempted again).
    f.c.stop(&f.tenant, Scope::BServers, second).await.unwrap();
    f.c.tick(10_000).await.unwrap();
    let n = f.c.get_any_server(Scope::Servers, normal).await.unwrap();
    assert_eq!(n.gpus, vec!["GPU-A".to_string()]);
}

#[tokio::test]
async fn a_gpu_that_goes_bad_is_no_longer_given_out() {
    let f = fx().await;
    let (conn, _rx) = gpu_host(&f).await;
    make_profile(&f, "any", json!([{"resources:GPU": "1"}])).await;
    let host = "g1".parse().unwrap();
    let g = f.c.model.read().await.generation(&host);
    let mut r = report(g, &[]);
    r.gpus = gpus();
    r.gpus[0].healthy = false;
    r.gpus[0].health = Some("XID 79".into());
    r.gpus.remove(1);
    f.c.apply_report(&host, conn, r).await.unwrap();
    let n = NewServer {
        device_profile: Some("any".into()),
        ..new_server()
    };
    let id =
        f.c.create_servers(&f.tenant, ServerClass::Backfill, vec![n])
            .await
            .unwrap()[0]
            .uuid;
    let refused = f.c.start(&f.tenant, Scope::BServers, id).await;
    assert!(
        matches!(
            refused,
            Err(crate::state::coordinator::OpError::NeverFits(_))
        ),
        "no healthy GPU is left: {refused:?}"
    );
    // The stored inventory has the new state (a restarted coordinator knows it too).
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/g1", "").await;
    assert_eq!(v["extra_attributes"]["gpus"], 1);
}

#[tokio::test]
async fn the_gpu_quota_is_enforced_at_create_and_start() {
    let f = fx().await;
    let (_conn, _rx) = gpu_host(&f).await;
    make_profile(&f, "two", json!([{"resources:GPU": "2"}])).await;
    make_profile(&f, "one", json!([{"resources:GPU": "1"}])).await;
    let change = crate::domain::account::AccountChange {
        quota: crate::domain::account::QuotaChange {
            gpus: Some(Some(1)),
            ..Default::default()
        },
        ..Default::default()
    };
    f.c.update_account("t", change).await.unwrap();
    let tenant = f.c.account("t").await.unwrap();
    let with = |p: &str| NewServer {
        device_profile: Some(p.into()),
        ..new_server()
    };
    let too_many =
        f.c.create_servers(&tenant, ServerClass::Backfill, vec![with("two")])
            .await;
    assert!(
        matches!(too_many, Err(crate::state::coordinator::OpError::Quota(_))),
        "{too_many:?}"
    );
    let a =
        f.c.create_servers(&tenant, ServerClass::Backfill, vec![with("one")])
            .await
            .unwrap()[0]
            .uuid;
    let b =
        f.c.create_servers(&tenant, ServerClass::Backfill, vec![with("one")])
            .await
            .unwrap()[0]
            .uuid;
    f.c.start(&tenant, Scope::BServers, a).await.unwrap();
    let second = f.c.start(&tenant, Scope::BServers, b).await;
    assert!(
        matches!(second, Err(crate::state::coordinator::OpError::Quota(_))),
        "{second:?}"
    );
}
