//! The operator APIs through the router: Arvados dispatch and Dynamic Cluster shapes, codes and
//! authentication, and the host state machine from every state, refusals included.

use crate::domain::account::Account;
use crate::link::session_tests::{hello, new_server, report};
use crate::policy::pools::{PoolConfig, Pools, ProvisionerConfig};
use crate::state::coordinator::{Coordinator, Scope};
use axum::Router;
use axum::http::Request;
use backfill_shared::clock::ManualClock;
use backfill_shared::pki::{PeerIdentity, Role};
use backfill_shared::protocol::WorkloadState;
use backfill_shared::{ServerClass, ServerId, ServerStatus};
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

const TOKEN: &str = "0123456789abcdef-token";

pub(in crate::api) struct Fx {
    pub(in crate::api) c: Arc<Coordinator>,
    pub(in crate::api) router: Router,
    pub(in crate::api) tenant: Account,
    pub(in crate::api) clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn pool(name: &str, min: u32, max: u32, hosts: &[&str]) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        min,
        max,
        priority: 0,
        flavor: None,
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        reservation_account: None,
        reservation_queue: None,
        provisioner: None,
    }
}

pub(in crate::api) async fn fx_with(token: Option<&str>, pools: Vec<PoolConfig>) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::testing::open_in(dir.path()).await;
    let clock = Arc::new(ManualClock::new(1_000));
    let operator = crate::state::settings::OperatorConfig {
        management_token: token.map(str::to_owned),
        ..Default::default()
    };
    let pools = Pools::new(pools, &Default::default()).unwrap();
    let c = Coordinator::load(store, clock.clone(), &["t".into()], Default::default())
        .await
        .unwrap()
        .with_driver_access(crate::state::access::DriverAccess::dev())
        .with_operator(pools, operator)
        .await
        .unwrap()
        .with_config_view(serde_json::json!({"operator": {"management_token": "<redacted>"}}));
    let c = Arc::new(c);
    let tenant = c.account("t").await.unwrap();
    Fx {
        router: crate::api::router(c.clone()),
        c,
        tenant,
        clock,
        _dir: dir,
    }
}

async fn fx() -> Fx {
    fx_with(Some(TOKEN), vec![pool("edge", 0, 3, &["h*"])]).await
}

pub(in crate::api) enum Who {
    Admin,
    Tenant,
    Nobody,
    Token(&'static str),
}

async fn call(f: &Fx, who: Who, method: &str, uri: &str) -> (u16, Value) {
    let (code, _, body) = send(f, who, method, uri, &[], "").await;
    (code, body)
}

/// A request through the router as `who`, with headers and a body: (status, headers, JSON or
/// the body as a string, or Null when empty).
pub(in crate::api) async fn send(
    f: &Fx,
    who: Who,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let identity = match who {
        Who::Admin => Some(PeerIdentity {
            role: Role::Admin,
            name: "ops".into(),
        }),
        Who::Tenant => Some(PeerIdentity {
            role: Role::Account,
            name: "t".into(),
        }),
        Who::Nobody => None,
        Who::Token(t) => {
            req = req.header("authorization", format!("Bearer {t}"));
            None
        }
    };
    let mut req = req.body(axum::body::Body::from(body.to_owned())).unwrap();
    if let Some(id) = identity {
        req.extensions_mut().insert(id);
    }
    let resp = f.router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(format!("{body:?}")))
    };
    (status, headers, v)
}

async fn admin(f: &Fx, method: &str, uri: &str) -> (u16, Value) {
    call(f, Who::Admin, method, uri).await
}

/// A registered host that has reported (idle), with its session kept open.
pub(in crate::api) async fn host(
    f: &Fx,
    name: &str,
) -> (
    u64,
    tokio::sync::watch::Receiver<Arc<backfill_shared::protocol::DesiredState>>,
) {
    let (conn, rx) = f.c.register_agent(&hello(name)).await.unwrap();
    let g = f.c.model.read().await.generation(&name.parse().unwrap());
    f.c.apply_report(&name.parse().unwrap(), conn, report(g, &[]))
        .await
        .unwrap();
    (conn, rx)
}

async fn start(f: &Fx) -> ServerId {
    let id =
        f.c.create_servers(&f.tenant, ServerClass::Backfill, vec![new_server()])
            .await
            .unwrap()[0]
            .uuid;
    f.c.start(&f.tenant, Scope::BServers, id).await.unwrap();
    id
}

async fn server(f: &Fx, id: ServerId) -> crate::domain::server::ServerRecord {
    f.c.get_server(&f.tenant, Scope::BServers, id)
        .await
        .unwrap()
}

/// The agent of `host` says `id` runs.
async fn running(f: &Fx, host: &str, conn: u64, id: ServerId) {
    let s = server(f, id).await;
    let g = f.c.model.read().await.generation(&host.parse().unwrap());
    f.c.apply_report(
        &host.parse().unwrap(),
        conn,
        report(g, &[(id, s.incarnation, WorkloadState::Running)]),
    )
    .await
    .unwrap();
}

fn node_state(v: &Value) -> u64 {
    v["state"].as_u64().unwrap()
}

/// Every operator endpoint, with its method.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/arvados/v1/dispatch/containers"),
    (
        "GET",
        "/arvados/v1/dispatch/container?container_uuid=00000000-0000-0000-0000-000000000001",
    ),
    (
        "POST",
        "/arvados/v1/dispatch/containers/kill?container_uuid=00000000-0000-0000-0000-000000000001",
    ),
    ("GET", "/arvados/v1/dispatch/instances"),
    ("POST", "/arvados/v1/dispatch/instances/hold?instance_id=h1"),
    (
        "POST",
        "/arvados/v1/dispatch/instances/drain?instance_id=h1",
    ),
    ("POST", "/arvados/v1/dispatch/instances/run?instance_id=h1"),
    ("POST", "/arvados/v1/dispatch/instances/kill?instance_id=h1"),
    ("GET", "/dynamiccluster/workernode"),
    ("GET", "/dynamiccluster/workernode/h1"),
    ("PUT", "/dynamiccluster/workernode/h1/hold"),
    ("PUT", "/dynamiccluster/workernode/h1/unhold"),
    ("PUT", "/dynamiccluster/workernode/h1/vacate"),
    ("DELETE", "/dynamiccluster/workernode/h1"),
    ("GET", "/dynamiccluster/job"),
    (
        "GET",
        "/dynamiccluster/job/00000000-0000-0000-0000-000000000001",
    ),
    ("GET", "/dynamiccluster/server/config"),
    ("GET", "/dynamiccluster/server/status"),
    ("PUT", "/dynamiccluster/server/auto"),
    ("DELETE", "/dynamiccluster/server/auto"),
    ("GET", "/dynamiccluster/resource"),
    ("GET", "/dynamiccluster/resource/edge"),
    ("PUT", "/dynamiccluster/resource/edge?num=1"),
    ("PUT", "/dynamiccluster/resource/edge/freeze"),
    ("PUT", "/dynamiccluster/resource/edge/restore"),
    ("PUT", "/dynamiccluster/resource/edge/drain"),
    ("GET", "/dashboard"),
    ("GET", "/dashboard/data.json"),
];

#[tokio::test]
async fn every_operator_endpoint_refuses_everyone_else_and_changes_nothing() {
    let f = fx().await;
    let (_c, _rx) = host(&f, "h1").await;
    let before = f.c.hosts().await;
    for (method, uri) in ENDPOINTS {
        for (who, want) in [
            (Who::Tenant, 403),
            (Who::Nobody, 401),
            (Who::Token("wrong-token-wrong-token"), 403),
        ] {
            let (code, body) = call(&f, who, method, uri).await;
            assert_eq!(code, want, "{method} {uri}: {body}");
            assert!(body.is_object(), "{method} {uri}: not JSON: {body}");
        }
    }
    assert_eq!(
        f.c.hosts().await,
        before,
        "a refused request changed a host"
    );
    assert!(!f.c.auto_mode().await);
    assert!(f.c.audit_entries("host", "h1").await.unwrap().is_empty());
    // The admin certificate and the token reach every one of them (none is 401/403, none 5xx).
    for who in [0, 1] {
        for (method, uri) in ENDPOINTS {
            let f = fx().await;
            let (_c, _rx) = host(&f, "h1").await;
            let id = if who == 0 {
                Who::Admin
            } else {
                Who::Token(TOKEN)
            };
            let (code, body) = call(&f, id, method, uri).await;
            assert!(
                ![401, 403].contains(&code) && code < 500,
                "{method} {uri}: {code} {body}"
            );
        }
    }
}

#[tokio::test]
async fn only_operators_get_in_and_token_rules_are_arvados_ones() {
    let f = fx().await;
    let paths = [
        "/arvados/v1/dispatch/instances",
        "/arvados/v1/dispatch/containers",
        "/dynamiccluster/workernode",
        "/dynamiccluster/resource",
    ];
    for p in paths {
        assert_eq!(call(&f, Who::Admin, "GET", p).await.0, 200, "{p}");
        assert_eq!(call(&f, Who::Token(TOKEN), "GET", p).await.0, 200, "{p}");
        assert_eq!(call(&f, Who::Tenant, "GET", p).await.0, 403, "{p}");
        assert_eq!(call(&f, Who::Nobody, "GET", p).await.0, 401, "{p}");
        assert_eq!(
            call(&f, Who::Token("wrong-token-wrong"), "GET", p).await.0,
            403,
            "{p}"
        );
    }
    let (code, body) = call(&f, Who::Tenant, "GET", paths[0]).await;
    assert_eq!(code, 403);
    assert!(body["errors"][0].as_str().unwrap().contains("operators"));
    let q = format!("{}?api_token={TOKEN}", paths[0]);
    assert_eq!(call(&f, Who::Nobody, "GET", &q).await.0, 200);
    // Basic: the password is the token.
    let basic = {
        let raw = format!("x:{TOKEN}");
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in raw.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(table[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    let req = Request::get(paths[0])
        .header("authorization", format!("Basic {basic}"))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(f.router.clone().oneshot(req).await.unwrap().status(), 200);

    // No token configured: every token request is 403, with Arvados' message.
    let f = fx_with(None, vec![]).await;
    let (code, body) = call(&f, Who::Token(TOKEN), "GET", paths[0]).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["errors"][0],
        "Management API authentication is not configured"
    );
    let (code, body) = call(&f, Who::Token(TOKEN), "GET", paths[2]).await;
    assert_eq!(code, 403);
    assert_eq!(body["success"], false);
    assert_eq!(admin(&f, "GET", paths[0]).await.0, 200);
}

#[tokio::test]
async fn arvados_instances_hold_drain_run_kill() {
    let f = fx().await;
    let (conn, _rx) = host(&f, "h1").await;
    let (code, v) = admin(&f, "GET", "/arvados/v1/dispatch/instances").await;
    assert_eq!(code, 200);
    let i = &v["items"][0];
    assert_eq!(i["instance"], "h1");
    assert_eq!(i["worker_state"], "idle");
    assert_eq!(i["idle_behavior"], "run");
    assert_eq!(i["last_busy"], "0001-01-01T00:00:00Z");
    for k in [
        "address",
        "price",
        "arvados_instance_type",
        "provider_instance_type",
        "last_container_uuid",
        "running_container_uuids",
    ] {
        assert!(i.get(k).is_some(), "{k} missing");
    }

    // Errors: missing and unknown ids.
    let (code, v) = admin(&f, "POST", "/arvados/v1/dispatch/instances/hold").await;
    assert_eq!(
        (code, v["errors"][0].as_str()),
        (400, Some("instance_id parameter not provided"))
    );
    let (code, v) = admin(
        &f,
        "POST",
        "/arvados/v1/dispatch/instances/hold?instance_id=nope",
    )
    .await;
    assert_eq!(
        (code, v["errors"][0].as_str()),
        (404, Some("requested instance does not exist"))
    );
    let (code, v) = admin(
        &f,
        "POST",
        "/arvados/v1/dispatch/instances/kill?instance_id=nope",
    )
    .await;
    assert_eq!(
        (code, v["errors"][0].as_str()),
        (404, Some("instance not found"))
    );

    // Hold: nothing new lands; a started server waits.
    let (code, v) = admin(
        &f,
        "POST",
        "/arvados/v1/dispatch/instances/hold?instance_id=h1&reason=maintenance",
    )
    .await;
    assert_eq!((code, v), (200, Value::Null));
    let id = start(&f).await;
    assert_eq!(server(&f, id).await.host, None);
    // Run: it lands.
    admin(
        &f,
        "POST",
        "/arvados/v1/dispatch/instances/run?instance_id=h1",
    )
    .await;
    f.c.tick(1_000).await.unwrap();
    assert_eq!(
        server(&f, id).await.host.as_ref().map(ToString::to_string),
        Some("h1".into())
    );
    running(&f, "h1", conn, id).await;
    let (_, v) = admin(&f, "GET", "/arvados/v1/dispatch/instances").await;
    assert_eq!(v["items"][0]["worker_state"], "running");
    assert_eq!(v["items"][0]["last_container_uuid"], id.to_string());
    assert_eq!(v["items"][0]["running_container_uuids"][0], id.to_string());

    // Drain: running work continues; once idle the host shuts down.
    admin(
        &f,
        "POST",
        "/arvados/v1/dispatch/instances/drain?instance_id=h1",
    )
    .await;
    f.c.tick(1_001).await.unwrap();
    assert_eq!(server(&f, id).await.status, ServerStatus::Running);
    f.c.stop(&f.tenant, Scope::BServers, id).await.unwrap();
    let g = f.c.model.read().await.generation(&"h1".parse().unwrap());
    f.c.apply_report(&"h1".parse().unwrap(), conn, report(g, &[]))
        .await
        .unwrap();
    f.c.tick(1_002).await.unwrap();
    let (_, v) = admin(&f, "GET", "/arvados/v1/dispatch/instances").await;
    assert_eq!(v["items"][0]["worker_state"], "shutdown");
    assert_eq!(v["items"][0]["idle_behavior"], "drain");
    // Run brings it back.
    admin(
        &f,
        "POST",
        "/arvados/v1/dispatch/instances/run?instance_id=h1",
    )
    .await;
    let (_, v) = admin(&f, "GET", "/arvados/v1/dispatch/instances").await;
    assert_eq!(v["items"][0]["worker_state"], "idle");

    // Kill: everything on it stops now, the host is shut down.
    let id2 = start(&f).await;
    running(&f, "h1", conn, id2).await;
    let (code, _) = admin(
        &f,
        "POST",
        "/arvados/v1/dispatch/instances/kill?instance_id=h1&reason=broken",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(server(&f, id2).await.status, ServerStatus::Stopping);
    let (_, v) = admin(&f, "GET", "/arvados/v1/dispatch/instances").await;
    assert_eq!(v["items"][0]["worker_state"], "shutdown");

    // Every action is in the audit log, newest first, with the reason.
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/h1").await;
    let actions: Vec<&str> = v["admin_actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["kill", "run", "drain", "run", "hold"]);
    assert_eq!(v["admin_actions"][0]["reason"], "broken");
    assert_eq!(v["admin_actions"][0]["actor"], "ops");
    assert_eq!(v["admin_actions"][4]["reason"], "maintenance");
}

#[tokio::test]
async fn arvados_containers_and_kill() {
    let f = fx().await;
    let (code, v) = admin(&f, "GET", "/arvados/v1/dispatch/containers").await;
    assert_eq!((code, v["items"].as_array().map(Vec::len)), (200, Some(0)));
    // Queued (its only host is held), then placed (Locked), then Running.
    let (conn, _rx) = host(&f, "h1").await;
    admin(
        &f,
        "POST",
        "/arvados/v1/dispatch/instances/hold?instance_id=h1",
    )
    .await;
    let queued = start(&f).await;
    let (_, v) = admin(&f, "GET", "/arvados/v1/dispatch/containers").await;
    let e = &v["items"][0];
    assert_eq!(e["container"]["uuid"], queued.to_string());
    assert_eq!(e["container"]["state"], "Queued");
    assert_eq!(e["container"]["scheduling_parameters"]["preemptible"], true);
    assert_eq!(e["container"]["runtime_constraints"]["ram"], 1u64 << 30);
    assert!(
        e["scheduling_status"]
            .as_str()
            .unwrap()
            .starts_with("Waiting in queue at position 1.")
    );
    assert_eq!(e["instance_type"]["Name"], "backfill-c1m1");
    assert_eq!(e["instance_types"][0]["ProviderType"], "backfill-c1m1");
    assert!(e["instance_types"][0].get("Name").is_none());
    // Kill of a server that is not on a host: 404.
    let uri = format!("/arvados/v1/dispatch/containers/kill?container_uuid={queued}");
    let (code, v) = admin(&f, "POST", &uri).await;
    assert_eq!(
        (code, v["errors"][0].as_str()),
        (404, Some("container not found"))
    );
    let (code, v) = admin(&f, "POST", "/arvados/v1/dispatch/containers/kill").await;
    assert_eq!(
        (code, v["errors"][0].as_str()),
        (400, Some("container_uuid parameter not provided"))
    );
    let (code, _) = admin(
        &f,
        "GET",
        &format!("/arvados/v1/dispatch/container?container_uuid={queued}"),
    )
    .await;
    assert_eq!(code, 200);

    admin(
        &f,
        "POST",
        "/arvados/v1/dispatch/instances/run?instance_id=h1",
    )
    .await;
    f.c.tick(1_000).await.unwrap();
    let (_, v) = admin(&f, "GET", "/arvados/v1/dispatch/containers").await;
    assert_eq!(v["items"][0]["container"]["state"], "Locked");
    // Killed while being set up: back to the queue.
    let (code, _) = admin(&f, "POST", &uri).await;
    assert_eq!(code, 200);
    let s = server(&f, queued).await;
    assert_eq!((s.status, s.host), (ServerStatus::Starting, None));
    assert!(s.queued_reason.unwrap().contains("requeued by an operator"));
    f.c.tick(1_001).await.unwrap();
    running(&f, "h1", conn, queued).await;
    let (_, v) = admin(&f, "GET", "/arvados/v1/dispatch/containers").await;
    assert_eq!(v["items"][0]["container"]["state"], "Running");
    // Killed while running: it stops.
    let body = format!("container_uuid={queued}&reason=stuck");
    let req = Request::post("/arvados/v1/dispatch/containers/kill")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .unwrap();
    let mut req = req;
    req.extensions_mut().insert(PeerIdentity {
        role: Role::Admin,
        name: "ops".into(),
    });
    assert_eq!(f.router.clone().oneshot(req).await.unwrap().status(), 200);
    assert_eq!(server(&f, queued).await.status, ServerStatus::Stopping);
}

#[tokio::test]
async fn dynamic_cluster_node_states_and_actions_from_every_state() {
    let f = fx().await;
    // Starting: registered, no report yet.
    let (c1, _rx1) = f.c.register_agent(&hello("h1")).await.unwrap();
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/h1").await;
    assert_eq!(node_state(&v), 1);
    assert_eq!(v["instance"]["cloud_resource"], "edge");
    // Refusals from Starting: hold, unhold.
    for a in ["hold", "unhold"] {
        let (code, v) = admin(&f, "PUT", &format!("/dynamiccluster/workernode/h1/{a}")).await;
        assert_eq!(code, 400, "{a}");
        assert_eq!(
            v["error"],
            format!("You are not allowed to {a} worker node h1 in current state.")
        );
    }
    // Idle, for a while.
    let g = f.c.model.read().await.generation(&"h1".parse().unwrap());
    f.c.apply_report(&"h1".parse().unwrap(), c1, report(g, &[]))
        .await
        .unwrap();
    f.clock.advance(5);
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/h1").await;
    assert_eq!((node_state(&v), v["jobs"].clone()), (2, Value::Null));
    assert_eq!(v["time_in_current_state"], 5);
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/workernode/h1/unhold")
            .await
            .0,
        400
    );
    let (code, v) = admin(&f, "DELETE", "/dynamiccluster/workernode/h1").await;
    assert_eq!(code, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("please put it on hold first")
    );
    // Busy.
    let id = start(&f).await;
    running(&f, "h1", c1, id).await;
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/h1").await;
    assert_eq!(
        (node_state(&v), v["jobs"].as_str()),
        (3, Some(id.to_string().as_str()))
    );
    assert_eq!(
        admin(&f, "DELETE", "/dynamiccluster/workernode/h1").await.0,
        400
    );
    // Busy -> hold -> Held (work continues); Held with work cannot be deleted.
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/workernode/h1/hold").await,
        (200, serde_json::json!({"success": true}))
    );
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/h1").await;
    assert_eq!(node_state(&v), 7);
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/workernode/h1/hold")
            .await
            .0,
        400
    );
    assert_eq!(
        admin(&f, "DELETE", "/dynamiccluster/workernode/h1").await.0,
        400
    );
    // Vacate: the work stops; the node stays Held.
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/workernode/h1/vacate")
            .await
            .0,
        200
    );
    assert_eq!(server(&f, id).await.status, ServerStatus::Stopping);
    let g = f.c.model.read().await.generation(&"h1".parse().unwrap());
    f.c.apply_report(&"h1".parse().unwrap(), c1, report(g, &[]))
        .await
        .unwrap();
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/h1").await;
    assert_eq!(node_state(&v), 7);
    // Unhold: Idle again.
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/workernode/h1/unhold")
            .await
            .0,
        200
    );
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/h1").await;
    assert_eq!(node_state(&v), 2);

    // Holding: held while a server placed before the hold is still being set up.
    let id2 = start(&f).await;
    assert!(server(&f, id2).await.host.is_some());
    admin(&f, "PUT", "/dynamiccluster/workernode/h1/hold").await;
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/h1").await;
    assert_eq!(node_state(&v), 6);
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/workernode/h1/unhold")
            .await
            .0,
        400
    );
    let (_, list) = admin(&f, "GET", "/dynamiccluster/workernode?state=6").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, list) = admin(&f, "GET", "/dynamiccluster/workernode?state=2").await;
    assert_eq!(list.as_array().unwrap().len(), 0);
    assert_eq!(
        admin(&f, "GET", "/dynamiccluster/workernode?state=9")
            .await
            .0,
        400
    );
    running(&f, "h1", c1, id2).await;
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/h1").await;
    assert_eq!(node_state(&v), 7);
    // Held and emptied: deleted, and gone.
    admin(&f, "PUT", "/dynamiccluster/workernode/h1/vacate").await;
    let g = f.c.model.read().await.generation(&"h1".parse().unwrap());
    f.c.apply_report(&"h1".parse().unwrap(), c1, report(g, &[]))
        .await
        .unwrap();
    assert_eq!(
        admin(&f, "DELETE", "/dynamiccluster/workernode/h1").await.0,
        200
    );
    let (code, v) = admin(&f, "GET", "/dynamiccluster/workernode/h1").await;
    assert_eq!(
        (code, v["error"].as_str()),
        (404, Some("worker node h1 not found"))
    );

    // Error: its agent is gone; it may be deleted, and vacated.
    let (c2, _rx2) = host(&f, "h2").await;
    f.c.agent_gone(&"h2".parse().unwrap(), c2).await;
    let (_, v) = admin(&f, "GET", "/dynamiccluster/workernode/h2").await;
    assert_eq!(node_state(&v), 4);
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/workernode/h2/hold")
            .await
            .0,
        400
    );
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/workernode/h2/vacate")
            .await
            .0,
        200
    );
    assert_eq!(
        admin(&f, "DELETE", "/dynamiccluster/workernode/h2").await.0,
        200
    );

    // Unknown node, unknown action.
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/workernode/zz/hold")
            .await
            .0,
        404
    );
    let (_c3, _rx3) = host(&f, "h3").await;
    let (code, v) = admin(&f, "PUT", "/dynamiccluster/workernode/h3/explode").await;
    assert_eq!(
        (code, v["error"].as_str()),
        (404, Some("action not supported"))
    );
    assert_eq!(
        admin(&f, "DELETE", "/dynamiccluster/workernode/zz").await.0,
        404
    );
}

#[tokio::test]
async fn dynamic_cluster_jobs_server_and_resources() {
    let f = fx().await;
    let (_c, _rx) = host(&f, "h1").await;
    admin(&f, "PUT", "/dynamiccluster/workernode/h1/hold").await;
    let id = start(&f).await;
    let (code, jobs) = admin(&f, "GET", "/dynamiccluster/job").await;
    assert_eq!(code, 200);
    let j = &jobs[0];
    assert_eq!(j["jobid"], id.to_string());
    assert_eq!(
        (j["state"].as_u64(), j["requested_cores"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(j["owner"], "t");
    assert_eq!(j["queue"], "backfill");
    assert_eq!(
        admin(&f, "GET", &format!("/dynamiccluster/job/{id}"))
            .await
            .0,
        200
    );
    let (code, v) = admin(&f, "GET", "/dynamiccluster/job/nope").await;
    assert_eq!((code, v["error"].as_str()), (404, Some("job not found")));

    let (_, v) = admin(&f, "GET", "/dynamiccluster/server/status").await;
    assert_eq!(v["auto_mode"], false);
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/server/auto").await.1["success"],
        true
    );
    assert_eq!(
        admin(&f, "GET", "/dynamiccluster/server/status").await.1["auto_mode"],
        true
    );
    assert_eq!(
        admin(&f, "DELETE", "/dynamiccluster/server/auto").await.0,
        200
    );
    assert_eq!(
        admin(&f, "GET", "/dynamiccluster/server/status").await.1["auto_mode"],
        false
    );
    let (_, v) = admin(&f, "GET", "/dynamiccluster/server/config").await;
    assert_eq!(v["operator"]["management_token"], "<redacted>");

    // Resources: flags follow freeze, restore and drain.
    f.c.stop(&f.tenant, Scope::BServers, id).await.unwrap();
    admin(&f, "PUT", "/dynamiccluster/workernode/h1/unhold").await;
    let (_, v) = admin(&f, "GET", "/dynamiccluster/resource/edge").await;
    assert_eq!(
        (v["flag"].as_u64(), v["current_num"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(v["worker_nodes"][0]["hostname"], "h1");
    assert_eq!(v["config"]["quantity"]["max"], 3);
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/resource/edge/freeze")
            .await
            .0,
        200
    );
    let (_, v) = admin(&f, "GET", "/dynamiccluster/resource/edge").await;
    assert_eq!(
        (
            v["flag"].as_u64(),
            v["min_num"].as_u64(),
            v["max_num"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    admin(&f, "PUT", "/dynamiccluster/resource/edge/restore").await;
    assert_eq!(
        admin(&f, "GET", "/dynamiccluster/resource/edge").await.1["flag"],
        0
    );
    admin(&f, "PUT", "/dynamiccluster/resource/edge/drain").await;
    let (_, v) = admin(&f, "GET", "/dynamiccluster/resource/edge").await;
    assert_eq!(v["flag"], 2);
    assert_eq!(
        v["worker_nodes"][0]["extra_attributes"]["idle_behavior"],
        "drain"
    );
    f.c.tick(1_000).await.unwrap();
    let (_, v) = admin(&f, "GET", "/dynamiccluster/resource/edge").await;
    assert_eq!(v["flag"], 3, "{v}");
    assert_eq!(node_state(&v["worker_nodes"][0]), 5);
    // Unknown resource or action; launching without a provisioner.
    assert_eq!(admin(&f, "GET", "/dynamiccluster/resource/zz").await.0, 404);
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/resource/zz/freeze")
            .await
            .0,
        404
    );
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/resource/edge/explode")
            .await
            .0,
        404
    );
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/resource/edge?num=1")
            .await
            .0,
        400
    );
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/resource/zz?num=1")
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn launches_run_the_provisioner_and_fail_visibly() {
    let mut ok = pool("ok", 0, 2, &[]);
    ok.provisioner = Some(ProvisionerConfig {
        launch: vec!["true".into()],
        delete: vec!["true".into()],
        timeout_s: 10,
    });
    let mut bad = pool("bad", 0, 2, &[]);
    bad.provisioner = Some(ProvisionerConfig {
        launch: vec![
            "sh".into(),
            "-c".into(),
            "echo no capacity for {host} >&2; exit 3".into(),
        ],
        delete: vec!["true".into()],
        timeout_s: 10,
    });
    let f = fx_with(Some(TOKEN), vec![ok, bad]).await;
    assert_eq!(
        admin(&f, "PUT", "/dynamiccluster/resource/ok?num=3")
            .await
            .0,
        400
    );
    let (code, v) = admin(&f, "PUT", "/dynamiccluster/resource/ok?num=2").await;
    assert_eq!((code, v["success"].as_bool()), (200, Some(true)));
    let (code, v) = admin(&f, "PUT", "/dynamiccluster/resource/ok").await;
    assert_eq!(code, 400);
    assert_eq!(v["error"], "resource ok has exceeded the resource limit.");
    let (_, v) = admin(&f, "GET", "/dynamiccluster/resource/ok").await;
    assert_eq!(v["current_num"], 2);
    let nodes = v["worker_nodes"].as_array().unwrap();
    assert!(nodes.iter().all(|n| node_state(n) == 1));
    let launched = nodes[0]["hostname"].as_str().unwrap().to_owned();
    assert!(launched.starts_with("ok-"));
    // Arvados shows launches as instances being created.
    let (_, v) = admin(&f, "GET", "/arvados/v1/dispatch/instances").await;
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["instance"] == "" && i["worker_state"] == "booting")
    );
    // The launched host registers: it joins its pool.
    let (_c, _rx) = host(&f, &launched).await;
    let (_, v) = admin(&f, "GET", &format!("/dynamiccluster/workernode/{launched}")).await;
    assert_eq!(
        (node_state(&v), v["instance"]["cloud_resource"].as_str()),
        (2, Some("ok"))
    );

    // A failing provisioner: the launch shows Error, with the reason and a count.
    admin(&f, "PUT", "/dynamiccluster/resource/bad").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let v = loop {
        let (_, v) = admin(&f, "GET", "/dynamiccluster/resource/bad").await;
        if v["provisioner_failures"] == 1 || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(v["provisioner_failures"], 1);
    let n = &v["worker_nodes"][0];
    assert_eq!(node_state(n), 4);
    assert!(
        n["extra_attributes"]["error"]
            .as_str()
            .unwrap()
            .contains("exited with")
    );
    // A failed launch may be deleted.
    let uri = format!(
        "/dynamiccluster/workernode/{}",
        n["hostname"].as_str().unwrap()
    );
    assert_eq!(admin(&f, "DELETE", &uri).await.0, 200);
    assert_eq!(
        admin(&f, "GET", "/dynamiccluster/resource/bad").await.1["current_num"],
        0
    );
}

#[tokio::test]
async fn the_dashboard_serves_its_page_and_live_data() {
    let f = fx().await;
    let (conn, _rx) = host(&f, "h1").await;
    let mut observed = Vec::new();
    for _ in 0..3 {
        let id = start(&f).await;
        observed.push((id, server(&f, id).await.incarnation, WorkloadState::Running));
    }
    let g = f.c.model.read().await.generation(&"h1".parse().unwrap());
    f.c.apply_report(&"h1".parse().unwrap(), conn, report(g, &observed))
        .await
        .unwrap();
    let backfill: Vec<String> = observed.iter().map(|(id, _, _)| id.to_string()).collect();
    f.c.tick(1_000).await.unwrap();
    // A normal server that needs room: backfill servers are downsized for it.
    let normal =
        f.c.create_servers(
            &f.tenant,
            ServerClass::Normal,
            vec![crate::state::coordinator::NewServer {
                cpu: 2_000,
                ..new_server()
            }],
        )
        .await
        .unwrap()[0]
            .uuid;
    f.c.start(&f.tenant, Scope::Servers, normal).await.unwrap();

    let (code, page) = admin(&f, "GET", "/dashboard").await;
    assert_eq!(code, 200);
    let page = page.as_str().unwrap_or_default().to_owned();
    for id in [
        "hosts-body",
        "capacity-chart",
        "share-bar",
        "queue-body",
        "preemptions-body",
    ] {
        assert!(page.contains(id), "the page has no #{id}");
    }
    assert!(!page.contains("http://") || page.contains("http://www.w3.org/2000/svg"));
    assert_eq!(call(&f, Who::Tenant, "GET", "/dashboard").await.0, 403);
    assert_eq!(
        call(&f, Who::Nobody, "GET", "/dashboard/data.json").await.0,
        401
    );
    let q = format!("/dashboard/data.json?api_token={TOKEN}");
    let (code, d) = call(&f, Who::Nobody, "GET", &q).await;
    assert_eq!(code, 200);
    assert_eq!(d["hosts"][0]["id"], "h1");
    assert_eq!(d["hosts"][0]["cpu_total"], 4_000);
    assert!(d["hosts"][0]["cpu_used"].as_u64().unwrap() >= 2_000, "{d}");
    assert!(d["share"]["backfill"].as_f64().unwrap() > 0.0);
    assert!(d["share"]["normal"].as_f64().unwrap() > 0.0);
    assert!(!d["capacity"].as_array().unwrap().is_empty());
    let downsized: Vec<&str> = d["preemptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "downsized")
        .map(|p| p["server"].as_str().unwrap())
        .collect();
    assert!(!downsized.is_empty(), "{d}");
    assert!(downsized.iter().all(|s| backfill.iter().any(|b| b == s)));
}
