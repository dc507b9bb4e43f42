//! The tenant's API against CloudSigma's shapes, and the operator's accounts API: status
//! codes, envelopes, field names and types, errors, isolation, quotas and usage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::{Value, json};

const MEM: u64 = 128 << 20;
const FAST: &str = "\n[scheduler]\nshutdown_grace_s = 2\n[billing]\ninterval_s = 1\n";

fn is_error_list(body: &Value, error_type: &str) -> bool {
    body.as_array().is_some_and(|l| {
        l.len() == 1
            && l[0]["error_type"] == error_type
            && l[0]["error_message"].is_string()
            && l[0].get("error_point").is_some()
    })
}

async fn create(c: &reqwest::Client, url: &str, body: Value) -> Value {
    let (status, created) = post(c, url, json!({ "objects": [body] })).await;
    assert_eq!(status, 201, "{created}");
    created["objects"][0].clone()
}

async fn status_of(c: &reqwest::Client, coord: &Coordinator, coll: &str, uuid: &str) -> Value {
    get(c, &coord.url(&format!("{coll}/{uuid}/"))).await.1
}

async fn wait_for(
    c: &reqwest::Client,
    coord: &Coordinator,
    coll: &str,
    uuid: &str,
    want: &str,
) -> Value {
    eventually(&format!("{uuid} {want}"), || async {
        let b = status_of(c, coord, coll, uuid).await;
        (b["status"] == want).then_some(b)
    })
    .await
}

async fn act(
    c: &reqwest::Client,
    coord: &Coordinator,
    coll: &str,
    uuid: &str,
    what: &str,
) -> (u16, Value) {
    post(
        c,
        &coord.url(&format!("{coll}/{uuid}/action/?do={what}")),
        json!({}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_and_bservers_follow_cloudsigma() {
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], FAST);
    let setup = AgentSetup::new(&pki, &coord, "host-c");
    let _agent = setup.start(true, "1");
    let t = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));

    // Create: 201, Location, the full object with CloudSigma's field types.
    let r = t
        .post(coord.url("bservers/"))
        .json(
            &json!({"objects": [{"name": "b1", "cpu": 500, "mem": MEM, "tags": ["blue"],
                                    "meta": {"k": "v"},
                                    "workload": {"command": ["sleep", "300"]}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert!(r.headers().contains_key("x-request-id"));
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = r.json().await.unwrap();
    let b = &created["objects"][0];
    let uuid = b["uuid"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/2.0/bservers/{uuid}/"));
    for (k, kind) in [
        ("cpu", "u64"),
        ("mem", "u64"),
        ("smp", "u64"),
        ("name", "str"),
        ("status", "str"),
        ("meta", "obj"),
        ("tags", "arr"),
        ("drives", "arr"),
        ("nics", "arr"),
        ("owner", "obj"),
        ("resource_uri", "str"),
        ("uuid", "str"),
        ("is_grey", "bool"),
    ] {
        let v = &b[k];
        let ok = match kind {
            "u64" => v.is_u64(),
            "str" => v.is_string(),
            "obj" => v.is_object(),
            "arr" => v.is_array(),
            _ => v.is_boolean(),
        };
        assert!(ok, "{k} should be {kind}: {b}");
    }
    assert_eq!(
        (
            b["status"].as_str(),
            b["runtime"].is_null(),
            b["is_grey"].as_bool()
        ),
        (Some("stopped"), true, Some(true))
    );

    // A normal server too; /servers/ lists both, /bservers/ only the backfill one.
    let n = create(
        &t,
        &coord.url("servers/"),
        json!({"name": "n1", "cpu": 500, "mem": MEM}),
    )
    .await;
    let nid = n["uuid"].as_str().unwrap().to_owned();
    let (_, all) = get(&t, &coord.url("servers/?limit=0")).await;
    assert_eq!(all["meta"]["total_count"], 2);
    for o in all["objects"].as_array().unwrap() {
        let keys: Vec<&str> = o.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["name", "owner", "resource_uri", "runtime", "status", "uuid"],
            "summary shape"
        );
    }
    let (_, bs) = get(&t, &coord.url("bservers/detail/")).await;
    assert_eq!(
        bs["meta"],
        json!({"limit": 20, "offset": 0, "total_count": 1})
    );
    assert_eq!(bs["objects"][0]["uuid"], uuid.as_str());
    // Paging, filters and ordering.
    let (_, page) = get(&t, &coord.url("servers/?limit=1&offset=1&order_by=name")).await;
    assert_eq!(
        (
            page["objects"].as_array().unwrap().len(),
            page["objects"][0]["name"].as_str()
        ),
        (1, Some("n1"))
    );
    let (_, f) = get(&t, &coord.url("servers/?tag=blue")).await;
    assert_eq!(f["meta"]["total_count"], 1);
    let (_, f) = get(&t, &coord.url("servers/?name=n1,b1&name__contains=1")).await;
    assert_eq!(f["meta"]["total_count"], 2);
    let (status, e) = get(&t, &coord.url("servers/?colour=red")).await;
    assert!(status == 400 && is_error_list(&e, "validation"), "{e}");
    let (status, e) = get(&t, &coord.url("servers/?limit=100000")).await;
    assert!(status == 400 && e[0]["error_point"] == "limit", "{e}");

    // The OpenAPI document.
    let (status, doc) = get(&t, &coord.url("openapi.json")).await;
    assert_eq!(status, 200);
    assert!(
        doc["paths"]["/bservers/{uuid}/action/"]["post"].is_object(),
        "{doc}"
    );
    assert!(doc["components"]["schemas"]["Server"]["properties"]["runtime"].is_object());

    // Schema.
    let (status, schema) = get(&t, &coord.url("bservers/schema/")).await;
    assert_eq!(status, 200);
    assert_eq!(schema["fields"]["cpu"]["type"], "integer");
    assert_eq!(schema["default_limit"], 20);
    assert!(
        schema["allowed_detail_http_methods"]
            .as_array()
            .unwrap()
            .contains(&json!("put"))
    );

    // PUT while stopped: everything changes; unknown fields are refused; read-only fields
    // sent back from a GET are ignored.
    let mut edit = status_of(&t, &coord, "bservers", &uuid).await;
    edit["cpu"] = json!(600);
    edit["name"] = json!("b1-renamed");
    let (status, edited) = put(&t, &coord.url(&format!("bservers/{uuid}/")), edit).await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(
        (edited["cpu"].as_u64(), edited["name"].as_str()),
        (Some(600), Some("b1-renamed"))
    );
    let (status, e) = put(
        &t,
        &coord.url(&format!("bservers/{uuid}/")),
        json!({"colour": "red"}),
    )
    .await;
    assert!(status == 400 && e[0]["error_point"] == "colour", "{e}");
    let (status, e) = put(
        &t,
        &coord.url(&format!("bservers/{uuid}/")),
        json!({"mem": 5}),
    )
    .await;
    assert!(status == 400 && e[0]["error_point"] == "mem", "{e}");

    // Start: 202 with the documented body; running carries runtime.
    let (status, body) = act(&t, &coord, "bservers", &uuid, "start").await;
    assert_eq!(
        (status, body),
        (
            202,
            json!({"action": "start", "result": "success", "uuid": uuid})
        )
    );
    let running = wait_for(&t, &coord, "bservers", &uuid, "running").await;
    assert!(running["runtime"]["active_since"].is_string());
    assert_eq!(
        running["runtime"]["perf_factor"],
        json!({"cpu": 1.0, "mem": 1.0})
    );
    let (_, rt) = get(&t, &coord.url(&format!("bservers/{uuid}/runtime/"))).await;
    assert_eq!(rt["active_since"], running["runtime"]["active_since"]);
    // The CPU in force, in cores: 600 MHz sold, one vCPU, at full perf_factor.
    let cores = eventually("the quota in force is shown", || async {
        let b = status_of(&t, &coord, "bservers", &uuid).await;
        b["runtime"]["cpu_cores"].as_f64()
    })
    .await;
    assert!(cores > 0.0 && cores <= 1.0, "{cores}");

    // PUT while running: only name, meta and tags change; the rest is ignored (200).
    let (status, edited) = put(
        &t,
        &coord.url(&format!("bservers/{uuid}/")),
        json!({"name": "live", "cpu": 900, "meta": {"k": "w"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            edited["name"].as_str(),
            edited["cpu"].as_u64(),
            edited["meta"]["k"].as_str()
        ),
        (Some("live"), Some(600), Some("w"))
    );

    // A running server cannot be deleted: 403 with a permission error.
    let (status, text) = delete(&t, &coord.url(&format!("bservers/{uuid}/"))).await;
    assert_eq!(status, 403, "{text}");
    assert!(is_error_list(
        &serde_json::from_str(&text).unwrap(),
        "permission"
    ));

    // Restart: a fresh run on the same host.
    let before = setup.recorded_pid(&uuid).unwrap();
    let (status, _) = act(&t, &coord, "bservers", &uuid, "restart").await;
    assert_eq!(status, 202);
    eventually("a new run", || async {
        let b = status_of(&t, &coord, "bservers", &uuid).await;
        (b["status"] == "running" && setup.recorded_pid(&uuid).is_some_and(|p| p != before))
            .then_some(())
    })
    .await;

    // Shutdown: sleep exits on SIGTERM, so the server stops.
    let (status, body) = act(&t, &coord, "bservers", &uuid, "shutdown").await;
    assert_eq!((status, body["action"].as_str()), (202, Some("shutdown")));
    wait_for(&t, &coord, "bservers", &uuid, "stopped").await;

    // A workload that ignores SIGTERM: stopping, then running again after the grace period.
    let stubborn = create(
        &t,
        &coord.url("bservers/"),
        json!({"name": "stubborn", "cpu": 500, "mem": MEM,
               "workload": {"command": ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]}}),
    )
    .await;
    let sid = stubborn["uuid"].as_str().unwrap().to_owned();
    act(&t, &coord, "bservers", &sid, "start").await;
    wait_for(&t, &coord, "bservers", &sid, "running").await;
    act(&t, &coord, "bservers", &sid, "shutdown").await;
    assert_eq!(
        status_of(&t, &coord, "bservers", &sid).await["status"],
        "stopping"
    );
    wait_for(&t, &coord, "bservers", &sid, "running").await;
    // A hard stop ends it.
    act(&t, &coord, "bservers", &sid, "stop").await;
    wait_for(&t, &coord, "bservers", &sid, "stopped").await;

    // Delete: 204 with an empty body; then 404.
    let (status, text) = delete(&t, &coord.url(&format!("bservers/{sid}/"))).await;
    assert_eq!((status, text.as_str()), (204, ""));
    let (status, e) = get(&t, &coord.url(&format!("bservers/{sid}/"))).await;
    assert!(status == 404 && is_error_list(&e, "notexist"));

    // A server no host could ever hold: 503 with a backend error.
    let huge = create(
        &t,
        &coord.url("servers/"),
        json!({"name": "huge", "cpu": 9_000_000, "mem": MEM}),
    )
    .await;
    let (status, e) = act(
        &t,
        &coord,
        "servers",
        huge["uuid"].as_str().unwrap(),
        "start",
    )
    .await;
    assert!(
        status == 503 && is_error_list(&e, "backend"),
        "{status} {e}"
    );

    // No subscription may cover backfill capacity.
    let (status, e) = post(
        &t,
        &coord.url("subscriptions/"),
        json!({"objects": [{"resource": "cpu", "amount": 1000, "period": "1 month"}]}),
    )
    .await;
    assert!(status == 403 && is_error_list(&e, "permission"), "{e}");
    assert!(e[0]["error_message"].as_str().unwrap().contains("burst"));

    // Usage: the bserver ran, at the burst rate.
    let (status, u) = get(&t, &coord.url("usage/")).await;
    assert_eq!(status, 200, "{u}");
    let mine = u["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["server"] == uuid.as_str())
        .cloned()
        .unwrap();
    assert_eq!(mine["class"], "backfill");
    assert!(
        mine["seconds"].as_u64().unwrap() > 0 && mine["amount"].is_string(),
        "{mine}"
    );
    let _ = nid;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_and_operators_manage_accounts() {
    let pki = Pki::new();
    let coord = Coordinator::start_accounts(&pki, &["alice", "bob"], &["poor"], "");
    let alice = client(&pki.ca(), Some(&pki.issue(Role::Account, "alice")));
    let bob = client(&pki.ca(), Some(&pki.issue(Role::Account, "bob")));
    let poor = client(&pki.ca(), Some(&pki.issue(Role::Account, "poor")));
    let ops = client(&pki.ca(), Some(&pki.issue(Role::Admin, "ops")));

    let a = create(
        &alice,
        &coord.url("bservers/"),
        json!({"name": "a", "cpu": 500, "mem": MEM}),
    )
    .await;
    let id = a["uuid"].as_str().unwrap().to_owned();
    // Bob: 404 on everything of Alice's, and nothing in his lists.
    for coll in ["bservers", "servers"] {
        let one = coord.url(&format!("{coll}/{id}/"));
        assert_eq!(get(&bob, &one).await.0, 404, "{coll} get");
        assert_eq!(
            put(&bob, &one, json!({"name": "x"})).await.0,
            404,
            "{coll} put"
        );
        assert_eq!(delete(&bob, &one).await.0, 404, "{coll} delete");
        for what in ["start", "stop", "shutdown", "restart"] {
            assert_eq!(
                act(&bob, &coord, coll, &id, what).await.0,
                404,
                "{coll} {what}"
            );
        }
        assert_eq!(
            get(&bob, &coord.url(&format!("{coll}/{id}/runtime/")))
                .await
                .0,
            404
        );
        let (_, list) = get(&bob, &coord.url(&format!("{coll}/detail/"))).await;
        assert_eq!(list["meta"]["total_count"], 0);
    }
    // Tenants cannot reach the operator's endpoints.
    for path in ["accounts/", "accounts/alice/"] {
        let (status, e) = get(&alice, &coord.url(path)).await;
        assert!(
            status == 403 && is_error_list(&e, "permission"),
            "{path}: {e}"
        );
    }
    assert_eq!(get(&alice, &coord.url("usage/?account=bob")).await.0, 403);
    // No backfill permission: 403 on every bservers path, and no free_resources.
    let (_, caps) = get(&poor, &coord.url("capabilities/")).await;
    assert!(caps.get("free_resources").is_none());
    for path in [
        "bservers/",
        "bservers/detail/",
        "bservers/schema/",
        &format!("bservers/{id}/"),
        &format!("bservers/{id}/runtime/"),
    ] {
        let (status, e) = get(&poor, &coord.url(path)).await;
        assert!(
            status == 403 && is_error_list(&e, "permission"),
            "{path}: {e}"
        );
    }
    assert_eq!(
        post(
            &poor,
            &coord.url("bservers/"),
            json!({"objects": [{"name": "p", "cpu": 500, "mem": MEM}]})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        put(&poor, &coord.url(&format!("bservers/{id}/")), json!({}))
            .await
            .0,
        403
    );
    assert_eq!(
        delete(&poor, &coord.url(&format!("bservers/{id}/")))
            .await
            .0,
        403
    );
    assert_eq!(act(&poor, &coord, "bservers", &id, "start").await.0, 403);

    // The operator: create, show, list, change, delete accounts.
    let (status, created) = post(
        &ops,
        &coord.url("accounts/"),
        json!({"objects": [{"name": "carol", "backfill": true, "quota": {"servers": 1, "cpu": 1000}}]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let carol_json = &created["objects"][0];
    assert_eq!(
        (
            carol_json["quota"]["servers"].as_u64(),
            carol_json["quota"]["mem"].is_null()
        ),
        (Some(1), true)
    );
    let (status, e) = post(
        &ops,
        &coord.url("accounts/"),
        json!({"objects": [{"name": "carol"}]}),
    )
    .await;
    assert!(status == 400 && is_error_list(&e, "validation"), "{e}");
    let (status, e) = post(
        &ops,
        &coord.url("accounts/"),
        json!({"objects": [{"name": "x", "colour": 1}]}),
    )
    .await;
    assert!(
        status == 400 && e[0]["error_point"] == "objects[0].colour",
        "{e}"
    );
    let (_, list) = get(&ops, &coord.url("accounts/")).await;
    assert_eq!(list["meta"]["total_count"], 4);
    let (_, alice_acc) = get(&ops, &coord.url("accounts/alice/")).await;
    assert_eq!(alice_acc["in_use"]["servers"], 1);
    assert_eq!(get(&ops, &coord.url("accounts/nobody/")).await.0, 404);
    // The operator sees every account's servers (read-only); it cannot act as a tenant.
    let (status, all) = get(&ops, &coord.url("bservers/detail/")).await;
    assert_eq!(
        (status, all["meta"]["total_count"].as_u64()),
        (200, Some(1)),
        "{all}"
    );
    assert_eq!(all["objects"][0]["uuid"], id.as_str());
    let (status, one) = get(&ops, &coord.url(&format!("servers/{id}/"))).await;
    assert_eq!((status, one["name"].as_str()), (200, Some("a")));
    assert_eq!(
        post(
            &ops,
            &coord.url("bservers/"),
            json!({"objects": [{"name": "o", "cpu": 500, "mem": MEM}]})
        )
        .await
        .0,
        403
    );
    assert_eq!(act(&ops, &coord, "bservers", &id, "start").await.0, 403);

    // Carol's quota: one server, 1000 MHz.
    let carol = client(&pki.ca(), Some(&pki.issue(Role::Account, "carol")));
    let (status, e) = post(
        &carol,
        &coord.url("bservers/"),
        json!({"objects": [{"name": "big", "cpu": 2000, "mem": MEM}]}),
    )
    .await;
    assert!(
        status == 403 && e[0]["error_message"].as_str().unwrap().contains("quota"),
        "{e}"
    );
    create(
        &carol,
        &coord.url("bservers/"),
        json!({"name": "c", "cpu": 1000, "mem": MEM}),
    )
    .await;
    let (status, _) = post(
        &carol,
        &coord.url("bservers/"),
        json!({"objects": [{"name": "c2", "cpu": 100, "mem": MEM}]}),
    )
    .await;
    assert_eq!(status, 403);
    // The operator raises it; a removed permission closes bservers.
    let (status, changed) = put(
        &ops,
        &coord.url("accounts/carol/"),
        json!({"quota": {"servers": null}, "backfill": false}),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed["quota"]["servers"].is_null());
    assert_eq!(get(&carol, &coord.url("bservers/")).await.0, 403);
    // An account that owns servers cannot be deleted; an empty one can.
    let (status, _) = delete(&ops, &coord.url("accounts/carol/")).await;
    assert_eq!(status, 409);
    let (status, text) = delete(&ops, &coord.url("accounts/poor/")).await;
    assert_eq!((status, text.as_str()), (204, ""));
    let (status, _) = get(&poor, &coord.url("capabilities/")).await;
    assert_eq!(
        status, 403,
        "a deleted account's certificate no longer gets in"
    );
    // The operator sees every account's usage.
    let (status, u) = get(&ops, &coord.url("usage/")).await;
    assert_eq!(status, 200, "{u}");
    let (status, l) = get(&ops, &coord.url("ledger/?account=alice")).await;
    assert!(status == 200 && l["meta"].is_object(), "{l}");
}
