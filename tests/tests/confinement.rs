//! Tenants never touch the host: on a packaged-style configuration the `exec` driver and host
//! networking are refused with a 403 naming the setting; opening `exec` to everyone works and
//! the coordinator says so at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::json;

const MEM: u64 = 128 << 20;
const PACKAGED: &str = "\n[drivers]\nexec = \"nobody\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packaged_defaults_refuse_exec_and_host_networking_naming_the_setting() {
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], PACKAGED);
    let t = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    for (what, workload, setting) in [
        (
            "a command",
            json!({"command": ["sleep", "60"]}),
            "[drivers] exec = \"nobody\"",
        ),
        ("the default command", json!(null), "[drivers] exec"),
        (
            "a container on the host's network",
            json!({"container": {"image": "127.0.0.1:5000/x:1"}, "network": "host"}),
            "[drivers] host_network = \"operators\"",
        ),
    ] {
        let (status, body) = post(
            &t,
            &coord.url("bservers/"),
            json!({"objects": [{"name": "x", "cpu": 500, "mem": MEM, "workload": workload}]}),
        )
        .await;
        assert_eq!(status, 403, "{what}: {body}");
        assert_eq!(body[0]["error_type"], "permission", "{what}: {body}");
        let msg = body[0]["error_message"].as_str().unwrap();
        assert!(msg.contains(setting), "{what}: {msg}");
    }
    let (_, list) = get(&t, &coord.url("bservers/")).await;
    assert_eq!(list["meta"]["total_count"], 0, "nothing was created");
    // A VM or a container on its own network is a tenant's to ask for.
    let (status, body) = post(
        &t,
        &coord.url("bservers/"),
        json!({"objects": [{"name": "c", "cpu": 500, "mem": MEM,
                            "workload": {"container": {"image": "127.0.0.1:5000/x:1"}}}]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        !coord.daemon.log_text().contains("exec driver is enabled"),
        "nothing to warn about"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_for_everyone_runs_and_the_start_log_warns() {
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], "\n[drivers]\nexec = \"everyone\"\n");
    let setup = AgentSetup::new(&pki, &coord, "host-x");
    let _agent = setup.start(true, "1");
    let t = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let log = coord.daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("exec driver is enabled")),
        "{log}"
    );
    let uuid = create(
        &t,
        &coord.url("bservers/"),
        json!({"name": "x", "cpu": 500, "mem": MEM, "workload": {"command": ["sleep", "60"]}}),
    )
    .await;
    let (status, body) = post(
        &t,
        &coord.url(&format!("bservers/{uuid}/action/?do=start")),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    eventually("the exec server runs", || async {
        let (_, s) = get(&t, &coord.url(&format!("bservers/{uuid}/"))).await;
        (s["status"] == "running").then_some(())
    })
    .await;
}
