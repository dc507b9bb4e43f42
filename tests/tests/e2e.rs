//! The walking skeleton, end to end: real binaries, real TLS, real cgroups when root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::{Ca, IssueRequest, Role};
use backfill_tests::*;
use serde_json::json;

const MEM: u64 = 256 << 20;

async fn create_and_start(c: &reqwest::Client, coord: &Coordinator, smp: u32) -> String {
    let (status, body) = post(
        c,
        &coord.url("bservers/"),
        json!({"objects": [{
            "name": "e2e", "cpu": 1000, "mem": MEM, "smp": smp, "vnc_password": "x",
            "workload": {"command": ["sleep", "120"], "env": {"A": "1"}}
        }]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let uuid = body["objects"][0]["uuid"].as_str().unwrap().to_string();
    assert_eq!(body["objects"][0]["status"], "stopped");
    let (status, body) = post(
        c,
        &coord.url(&format!("bservers/{uuid}/action/?do=start")),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"action": "start", "result": "success", "uuid": uuid})
    );
    uuid
}

async fn wait_status(
    c: &reqwest::Client,
    coord: &Coordinator,
    uuid: &str,
    want: &str,
) -> serde_json::Value {
    let url = coord.url(&format!("bservers/{uuid}/"));
    eventually(&format!("{uuid} {want}"), || async {
        let (status, body) = get(c, &url).await;
        (status == 200 && body["status"] == want).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_runs_a_bserver_in_its_own_cgroup_and_stops_it() {
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let setup = AgentSetup::new(&pki, &coord, "host-a");
    let mut agent = setup.start(true, "1");
    let mhz_per_core: u64 = agent.wait_log_value("discovered", "mhz").parse().unwrap();
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));

    let (status, caps) = get(&tenant, &coord.url("capabilities/")).await;
    assert_eq!(status, 200);
    assert_eq!(caps["backfilling"], true);
    let free = &caps["free_resources"];
    for k in ["total", "most_free_by_cpu", "most_free_by_memory"] {
        assert!(free[k]["cpu"].as_u64().unwrap() > 0, "{caps}");
        assert!(free[k]["mem"].as_u64().unwrap() > 0, "{caps}");
    }
    let free_cpu_before = free["total"]["cpu"].as_u64().unwrap();

    let uuid = create_and_start(&tenant, &coord, 2).await;
    let running = wait_status(&tenant, &coord, &uuid, "running").await;
    assert_eq!(
        running["runtime"]["perf_factor"],
        json!({"cpu": 1.0, "mem": 1.0})
    );
    assert_eq!(running["runtime"]["host"], "host-a");
    assert!(
        running["runtime"]["active_since"]
            .as_str()
            .unwrap()
            .ends_with("+00:00")
    );

    // The capacity it holds is no longer free.
    let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
    assert_eq!(
        caps["free_resources"]["total"]["cpu"].as_u64().unwrap(),
        free_cpu_before - 1000
    );

    // Listed in the summary and detail lists with the CloudSigma envelope.
    let (_, list) = get(&tenant, &coord.url("bservers/")).await;
    assert_eq!(list["meta"]["total_count"], 1);
    assert_eq!(list["objects"][0]["uuid"], uuid.as_str());
    let (_, detail) = get(&tenant, &coord.url("bservers/detail/?limit=0")).await;
    assert_eq!(detail["objects"][0]["mem"], MEM);

    let pid = setup
        .recorded_pid(&uuid)
        .expect("the agent records the workload's pid");
    if setup.enforcing {
        let cpu = setup.v1_cgroup("cpu", &uuid);
        let mem = setup.v1_cgroup("memory", &uuid);
        let procs = std::fs::read_to_string(cpu.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "pid {pid} not in {procs}"
        );
        let mprocs = std::fs::read_to_string(mem.join("cgroup.procs")).unwrap();
        assert!(mprocs.lines().any(|l| l == pid.to_string()));
        // 1,000 MHz over the host's MHz per core (at most its 2 vCPUs) at perf_factor 1.0,
        // with a 100 ms period; memory as requested; the idle class's weight.
        let quota = (1000 * 100_000 / mhz_per_core).min(200_000);
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
                .unwrap()
                .trim(),
            quota.to_string()
        );
        // The idle class: cpu.idle where the kernel has it (5.15 on), else the least shares.
        let (file, idle) = if cpu.join("cpu.idle").is_file() {
            ("cpu.idle", "1")
        } else {
            ("cpu.shares", "2")
        };
        assert_eq!(
            std::fs::read_to_string(cpu.join(file)).unwrap().trim(),
            idle
        );
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.cfs_period_us"))
                .unwrap()
                .trim(),
            "100000"
        );
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.limit_in_bytes"))
                .unwrap()
                .trim(),
            MEM.to_string()
        );
        // The workload runs as nobody, not as the agent's root.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(!uid.split_whitespace().skip(1).any(|u| u == "0"), "{uid}");
    } else {
        eprintln!("skipping cgroup checks: not root, limits are not enforced");
    }

    // A running server cannot be deleted.
    let r = tenant
        .delete(coord.url(&format!("bservers/{uuid}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    let (status, _) = post(
        &tenant,
        &coord.url(&format!("bservers/{uuid}/action/?do=stop")),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    let stopped = wait_status(&tenant, &coord, &uuid, "stopped").await;
    assert_eq!(stopped["runtime"], serde_json::Value::Null);
    // The agent reaps its own child: the process is gone, not a zombie.
    wait_until("workload process gone", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    if setup.enforcing {
        wait_until("cgroup removed", || !setup.v1_cgroup("cpu", &uuid).exists());
        assert!(!setup.v1_cgroup("memory", &uuid).exists());
    }

    let r = tenant
        .delete(coord.url(&format!("bservers/{uuid}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (status, body) = get(&tenant, &coord.url(&format!("bservers/{uuid}/"))).await;
    assert_eq!(status, 404);
    assert_eq!(body[0]["error_type"], "notexist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused() {
    let pki = Pki::new();
    let coord = Coordinator::start_accounts(&pki, &["tenant", "tenant2"], &["other"], "");
    let url = coord.url("bservers/");

    // No client certificate: the handshake fails.
    assert!(client(&pki.ca(), None).get(&url).send().await.is_err());

    // A certificate from another CA: the handshake fails.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = Ca::init(foreign_dir.path()).unwrap();
    let (cert, key) = foreign
        .issue_to_dir(
            foreign_dir.path(),
            "t",
            &IssueRequest::new(Role::Account, "tenant", &[], 1),
        )
        .unwrap();
    let files = backfill_shared::tls::TlsFiles {
        ca: pki.ca(),
        cert,
        key,
    };
    assert!(
        client(&pki.ca(), Some(&files))
            .get(&url)
            .send()
            .await
            .is_err()
    );

    // An expired certificate from our CA: the handshake fails.
    let now = std::time::SystemTime::now();
    let mut req = IssueRequest::new(Role::Account, "tenant", &[], 1);
    req.not_before = (now - std::time::Duration::from_secs(7200)).into();
    req.not_after = (now - std::time::Duration::from_secs(3600)).into();
    let expired = pki.issue_with("expired", &req);
    assert!(
        client(&pki.ca(), Some(&expired))
            .get(&url)
            .send()
            .await
            .is_err()
    );

    // An agent certificate on the API: refused after the handshake.
    let agent = client(&pki.ca(), Some(&pki.issue(Role::Agent, "sneaky")));
    assert!(agent.get(&url).send().await.is_err());

    // A certificate for an account nobody created: 403, saying how to create it.
    let stranger = client(&pki.ca(), Some(&pki.issue(Role::Account, "stranger")));
    let (status, body) = get(&stranger, &coord.url("capabilities/")).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("backfillctl account create stranger"),
        "{body}"
    );

    // An account without the backfill permission: 403 with a permission error everywhere.
    let other = client(&pki.ca(), Some(&pki.issue(Role::Account, "other")));
    let (status, caps) = get(&other, &coord.url("capabilities/")).await;
    assert_eq!(status, 200);
    assert_eq!(caps, json!({"backfilling": false}));
    for path in [
        "bservers/",
        "bservers/detail/",
        "bservers/00000000-0000-0000-0000-000000000001/",
    ] {
        let (status, body) = get(&other, &coord.url(path)).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(body[0]["error_type"], "permission", "{path}");
    }
    let (status, _) = post(
        &other,
        &url,
        json!({"objects": [{"name": "x", "cpu": 1000, "mem": MEM}]}),
    )
    .await;
    assert_eq!(status, 403);

    // A tenant sees only its own servers.
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let (status, created) = post(
        &tenant,
        &url,
        json!({"objects": [{"name": "mine", "cpu": 1000, "mem": MEM}]}),
    )
    .await;
    assert_eq!(status, 201);
    let uuid = created["objects"][0]["uuid"].as_str().unwrap();
    let tenant2 = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant2")));
    let (status, body) = get(&tenant2, &coord.url(&format!("bservers/{uuid}/"))).await;
    assert_eq!(status, 404, "{body}");
    let (_, list) = get(&tenant2, &url).await;
    assert_eq!(list["meta"]["total_count"], 0);
    let (status, body) = post(
        &tenant,
        &url,
        json!({"objects": [{"name": "x", "cpu": 1000, "mem": MEM, "disks": []}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["error_point"], "objects[0].disks");
    let (status, body) = get(&tenant, &coord.url(&format!("bservers/{uuid}/"))).await;
    assert_eq!(status, 200, "{body}");

    // Wrong methods, unknown actions and paths get CloudSigma error lists too.
    let r = tenant.put(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body[0]["error_type"], "validation");
    let (status, body) = post(
        &tenant,
        &coord.url(&format!("bservers/{uuid}/action/?do=explode")),
        json!({}),
    )
    .await;
    assert_eq!((status, body[0]["error_point"].as_str()), (400, Some("do")));
    let (status, body) = get(&tenant, &coord.url("nothing/here/")).await;
    assert_eq!(
        (status, body[0]["error_type"].as_str()),
        (404, Some("notexist"))
    );

    // Every refusal above left a clear log line.
    let log = coord.daemon.log_text();
    assert!(log.contains("TLS handshake refused"), "{log}");
    assert!(log.contains("wrong role for this listener"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_keeps_the_workload() {
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let setup = AgentSetup::new(&pki, &coord, "host-r");
    let mut first = setup.start(false, "1");
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let uuid = create_and_start(&tenant, &coord, 1).await;
    wait_status(&tenant, &coord, &uuid, "running").await;
    let pid = setup.recorded_pid(&uuid).unwrap();
    let start_before = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();

    first.terminate();
    assert!(first.log_text().contains("workloads keep running"));
    let after_exit = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert_eq!(
        after_exit.split_whitespace().nth(21),
        start_before.split_whitespace().nth(21)
    );

    let second = setup.start(true, "2");
    assert!(
        second.log_text().contains("re-adopted running workload"),
        "{}",
        second.log_text()
    );
    // A second server started now reaches the agent in a desired state sent after it
    // re-registered; once it runs, the agent has applied that state to the first server too.
    let other = create_and_start(&tenant, &coord, 1).await;
    wait_status(&tenant, &coord, &other, "running").await;
    let body = wait_status(&tenant, &coord, &uuid, "running").await;
    assert_eq!(body["runtime"]["host"], "host-r");
    assert_eq!(
        setup.recorded_pid(&uuid),
        Some(pid),
        "the workload was restarted"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert_eq!(
        stat.split_whitespace().nth(21),
        start_before.split_whitespace().nth(21)
    );
    if setup.enforcing {
        let procs =
            std::fs::read_to_string(setup.v1_cgroup("cpu", &uuid).join("cgroup.procs")).unwrap();
        assert_eq!(
            procs.lines().collect::<Vec<_>>(),
            vec![pid.to_string()],
            "no duplicate workload"
        );
    }
    drop(second); // stop_workloads_on_exit: cleans up
    wait_until("workload stopped with the agent", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    });
}
