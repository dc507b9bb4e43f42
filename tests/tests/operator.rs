//! The operator APIs over real TLS: who gets in on the API listener (admin certificate, the
//! management token, a tenant certificate, no certificate) and on the management listener
//! (token without a certificate), with the seeds' codes and shapes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::Value;

const TOKEN: &str = "e2e-management-token-0123456789";

async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
) -> (u16, Value, String) {
    let mut req = c.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        ctype,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_get_in_with_a_certificate_or_the_token_and_nobody_else_does() {
    let pki = Pki::new();
    let extra = format!(
        "\n[operator]\nmanagement_token = \"{TOKEN}\"\nmanagement_addr = \"127.0.0.1:0\"\n[[pools]]\nname = \"edge\"\nmax = 4\nhosts = [\"op-*\"]\n"
    );
    let mut coord = Coordinator::start_with(&pki, &["tenant"], &extra);
    let mgmt = coord
        .daemon
        .wait_log_value("management listening", "management_addr");
    let setup = AgentSetup::new(&pki, &coord, "op-host");
    let _agent = setup.start(true, "1");

    let admin = client(&pki.ca(), Some(&pki.issue(Role::Admin, "ops")));
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let anonymous = client(&pki.ca(), None);
    let api = |p: &str| format!("https://{}{p}", coord.api);
    let mg = |p: &str| format!("https://{mgmt}{p}");
    use reqwest::Method as M;

    let instances = "/arvados/v1/dispatch/instances";
    let v = eventually("the host in Arvados' instance list", || async {
        let (code, v, _) = send(&admin, M::GET, &api(instances), None).await;
        (code == 200 && v["items"][0]["worker_state"] == "idle").then_some(v)
    })
    .await;
    let item = &v["items"][0];
    assert_eq!(item["instance"], "op-host");
    assert_eq!(item["address"], "127.0.0.1");
    assert_eq!(item["idle_behavior"], "run");

    // The API listener: admin certificate yes; tenant certificate no, unless it brings the
    // token; no certificate: no handshake at all.
    let (code, _, ctype) = send(&tenant, M::GET, &api(instances), None).await;
    assert_eq!((code, ctype.as_str()), (403, "application/json"));
    let (code, _, _) = send(&tenant, M::GET, &api(instances), Some(TOKEN)).await;
    assert_eq!(code, 200);
    let (code, _, _) = send(
        &tenant,
        M::GET,
        &api(instances),
        Some("nope-nope-nope-nope"),
    )
    .await;
    assert_eq!(code, 403);
    assert!(anonymous.get(api(instances)).send().await.is_err());

    // The management listener: the token without a certificate; 401 without either.
    let (code, v, ctype) = send(&anonymous, M::GET, &mg(instances), None).await;
    assert_eq!((code, ctype.as_str()), (401, "application/json"));
    assert_eq!(v["errors"][0], "Unauthorized");
    let (code, v, _) = send(
        &anonymous,
        M::GET,
        &mg(instances),
        Some("nope-nope-nope-nope"),
    )
    .await;
    assert_eq!((code, v["errors"][0].as_str()), (403, Some("Forbidden")));
    let (code, v, _) = send(&anonymous, M::GET, &mg(instances), Some(TOKEN)).await;
    assert_eq!(
        (code, v["items"][0]["instance"].as_str()),
        (200, Some("op-host"))
    );
    let (code, _, _) = send(&admin, M::GET, &mg(instances), None).await;
    assert_eq!(code, 200);
    // Only the operator APIs are there.
    let (code, _, _) = send(
        &anonymous,
        M::GET,
        &mg("/api/2.0/capabilities/"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 404);

    // Hold with the token: 200, empty body; recorded with the token as the actor.
    let hold = mg("/arvados/v1/dispatch/instances/hold?instance_id=op-host&reason=disk");
    let r = anonymous
        .post(&hold)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "");
    let (code, node, _) = send(
        &anonymous,
        M::GET,
        &mg("/dynamiccluster/workernode/op-host"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(node["state"], 7);
    assert_eq!(node["admin_actions"][0]["actor"], "management-token");
    assert_eq!(node["admin_actions"][0]["reason"], "disk");
    assert!(coord.daemon.log_text().contains("admin action"));
    // Dynamic Cluster through the admin certificate on the API listener.
    let (code, v, _) = send(
        &admin,
        M::PUT,
        &api("/dynamiccluster/workernode/op-host/unhold"),
        None,
    )
    .await;
    assert_eq!((code, v["success"].as_bool()), (200, Some(true)));
    let (code, list, ctype) = send(&admin, M::GET, &api("/dynamiccluster/resource"), None).await;
    assert_eq!((code, ctype.as_str()), (200, "application/json"));
    assert_eq!(list[0]["name"], "edge");
    assert_eq!(list[0]["current_num"], 1);
    assert_eq!(list[0]["worker_nodes"][0]["hostname"], "op-host");
    let (code, _, _) = send(&tenant, M::GET, &api("/dynamiccluster/resource"), None).await;
    assert_eq!(code, 403);
    // Admin actions are counted by kind.
    let (_, metrics) = http_get(&coord.admin, "/metrics");
    assert!(
        metrics.contains("backfill_coordinator_admin_actions_total{kind=\"hold\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("backfill_coordinator_admin_actions_total{kind=\"run\"} 1"));
}

async fn pool(admin: &reqwest::Client, coord: &Coordinator) -> Value {
    let url = format!("https://{}/dynamiccluster/resource/local", coord.api);
    let (code, v, _) = send(admin, reqwest::Method::GET, &url, None).await;
    assert_eq!(code, 200, "{v}");
    v
}

async fn bserver(tenant: &reqwest::Client, coord: &Coordinator, seconds: u32) -> String {
    let (code, v) = post(
        tenant,
        &coord.url("bservers/"),
        serde_json::json!({"objects": [{"name": "job", "cpu": 500, "mem": 128u64 << 20,
            "workload": {"command": ["sleep", seconds.to_string()]}}]}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let id = v["objects"][0]["uuid"].as_str().unwrap().to_owned();
    let (code, v) = post(
        tenant,
        &coord.url(&format!("bservers/{id}/action/?do=start")),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(code, 202, "{v}");
    id
}

async fn status(tenant: &reqwest::Client, coord: &Coordinator, id: &str) -> String {
    let (_, v) = get(tenant, &coord.url(&format!("bservers/{id}/"))).await;
    v["status"].as_str().unwrap_or("").to_owned()
}

/// Auto mode with the local provisioner: a queued server makes the pool grow by one host, the
/// server runs there, and the idle host is removed after `max_idle_time_s`; freeze stops
/// growth; drain empties the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_grows_and_shrinks_a_pool_of_local_agents() {
    let pki = Pki::new();
    let hosts = tempfile::tempdir().unwrap();
    let exe = bin("backfill-coordinator");
    let cmd = |op: &str, extra: &str| {
        format!(
            "[{exe:?}, \"provision-local\", \"{op}\", \"--dir\", {:?}, {extra}\"--host\", \"{{host}}\"]",
            hosts.path()
        )
    };
    let launch = cmd(
        "launch",
        &format!("\"--pki\", {:?}, \"--link\", \"{{link}}\", ", pki.path()),
    );
    let extra = format!(
        "\n[operator]\nauto_mode = true\nmax_idle_time_s = 3\nmax_launch_time_s = 120\n[[pools]]\nname = \"local\"\nmax = 2\n[pools.provisioner]\nlaunch = {launch}\ndelete = {}\ntimeout_s = 30\n",
        cmd("delete", "")
    );
    let coord = Coordinator::start_with(&pki, &["tenant"], &extra);
    let admin = client(&pki.ca(), Some(&pki.issue(Role::Admin, "ops")));
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let dc = |p: &str| format!("https://{}/dynamiccluster/{p}", coord.api);
    use reqwest::Method as M;

    // Frozen at zero hosts: a queued server does not make it grow.
    let (code, _, _) = send(&admin, M::PUT, &dc("resource/local/freeze"), None).await;
    assert_eq!(code, 200);
    let first = bserver(&tenant, &coord, 4).await;
    assert_eq!(status(&tenant, &coord, &first).await, "starting");
    let watch_until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < watch_until {
        let p = pool(&admin, &coord).await;
        assert_eq!(p["current_num"], 0, "a frozen pool grew: {p}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Restored: one host is launched, registers, and runs the server.
    send(&admin, M::PUT, &dc("resource/local/restore"), None).await;
    let host = eventually("a launched host registered", || async {
        let p = pool(&admin, &coord).await;
        let n = &p["worker_nodes"][0];
        (n["state"] == 2 || n["state"] == 3).then(|| n["hostname"].as_str().unwrap().to_owned())
    })
    .await;
    assert!(host.starts_with("local-"), "{host}");
    assert!(hosts.path().join(&host).join("agent.pid").exists());
    eventually("the server ran and ended", || async {
        (status(&tenant, &coord, &first).await == "stopped").then_some(())
    })
    .await;
    let p = pool(&admin, &coord).await;
    assert_eq!(p["current_num"], 1, "one host for one server: {p}");
    // Idle for max_idle_time_s: removed, its agent stopped.
    eventually("the idle host removed", || async {
        (pool(&admin, &coord).await["current_num"] == 0).then_some(())
    })
    .await;
    eventually("its agent stopped", || async {
        (!hosts.path().join(&host).join("agent.pid").exists()).then_some(())
    })
    .await;
    let (code, _, _) = send(&admin, M::GET, &dc(&format!("workernode/{host}")), None).await;
    assert_eq!(code, 404);

    // Drain: the running server finishes; then the pool is empty and says Drained.
    let second = bserver(&tenant, &coord, 600).await;
    eventually("the second server running", || async {
        (status(&tenant, &coord, &second).await == "running").then_some(())
    })
    .await;
    send(&admin, M::PUT, &dc("resource/local/drain"), None).await;
    let p = pool(&admin, &coord).await;
    assert_eq!(
        (p["flag"].as_u64(), p["current_num"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(status(&tenant, &coord, &second).await, "running");
    post(
        &tenant,
        &coord.url(&format!("bservers/{second}/action/?do=stop")),
        serde_json::json!({}),
    )
    .await;
    eventually("the drained pool empty", || async {
        let p = pool(&admin, &coord).await;
        (p["flag"] == 3 && p["worker_nodes"].as_array().is_some_and(Vec::is_empty)).then_some(())
    })
    .await;
    let log = coord.daemon.log_text();
    assert!(log.contains("auto mode"), "{log}");
    if std::env::var_os("BACKFILL_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
}
