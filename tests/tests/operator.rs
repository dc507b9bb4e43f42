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
}
