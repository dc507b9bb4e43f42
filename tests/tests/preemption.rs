//! Preemption end to end: a normal server squeezes a running backfill server's real cgroup,
//! and the backfill server grows back when the normal server goes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::json;

const GROW_FAST: &str = "\n[scheduler.grow]\nmargin = 0.05\nmin_interval_s = 1\nmin_step = 0.1\n";

async fn perf_cpu(c: &reqwest::Client, coord: &Coordinator, uuid: &str) -> Option<f64> {
    let (_, b) = get(c, &coord.url(&format!("bservers/{uuid}/"))).await;
    b["runtime"]["perf_factor"]["cpu"].as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_server_downsizes_backfill_and_it_grows_back() {
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], GROW_FAST);
    let setup = AgentSetup::new(&pki, &coord, "host-p");
    let mut agent = setup.start(true, "1");
    let agent_admin = agent.wait_log_value("admin listening", "admin_addr");
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));

    // The backfill server takes most of the host's free CPU (one vCPU of it).
    let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
    let host_cpu = caps["free_resources"]["total"]["cpu"].as_u64().unwrap();
    assert!(
        host_cpu >= 2_000,
        "this test needs a host of at least 2,000 MHz: {caps}"
    );
    let bf_cpu = host_cpu - 500;
    let bserver = create(
        &tenant,
        &coord.url("bservers/"),
        json!({"name": "bf", "cpu": bf_cpu, "mem": 256u64 << 20,
               "workload": {"command": ["sleep", "120"]}}),
    )
    .await;
    post(
        &tenant,
        &coord.url(&format!("bservers/{bserver}/action/?do=start")),
        json!({}),
    )
    .await;
    eventually("backfill running at full size", || async {
        (perf_cpu(&tenant, &coord, &bserver).await == Some(1.0)).then_some(())
    })
    .await;
    let quota = |uuid: &str| {
        std::fs::read_to_string(setup.v1_cgroup("cpu", uuid).join("cpu.cfs_quota_us"))
            .ok()
            .and_then(|q| q.trim().parse::<i64>().ok())
    };
    // Its quota follows the MHz it was sold, at most its one vCPU.
    let mhz_per_core: i64 = agent.wait_log_value("discovered", "mhz").parse().unwrap();
    let full_quota = (i64::try_from(bf_cpu).unwrap() * 100_000 / mhz_per_core).min(100_000);
    if setup.enforcing {
        assert_eq!(quota(&bserver), Some(full_quota));
    }

    // A normal server that needs 1,500 MHz: only downsizing the backfill server makes room.
    let normal = create(
        &tenant,
        &coord.url("servers/"),
        json!({"name": "paying", "cpu": 1_500, "mem": 256u64 << 20,
               "workload": {"command": ["sleep", "120"]}}),
    )
    .await;
    let (status, _) = post(
        &tenant,
        &coord.url(&format!("servers/{normal}/action/?do=start")),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    let squeezed = eventually("backfill downsized", || async {
        perf_cpu(&tenant, &coord, &bserver)
            .await
            .filter(|f| *f < 1.0)
    })
    .await;
    // Enough for the normal server, never below the floor.
    let expected = (host_cpu - 1_500) as f64 / bf_cpu as f64;
    assert!(
        squeezed <= expected + 1e-3 && squeezed >= 0.1,
        "{squeezed} vs {expected}"
    );
    eventually("normal server running", || async {
        let (_, b) = get(&tenant, &coord.url(&format!("servers/{normal}/"))).await;
        (b["status"] == "running").then_some(())
    })
    .await;
    // The backfill server shows up in /servers/ too, with its class.
    let (_, all) = get(&tenant, &coord.url("servers/detail/?limit=0")).await;
    assert_eq!(all["meta"]["total_count"], 2);
    if setup.enforcing {
        // The agent rewrote the real cgroup: its full quota at the planned factor.
        let want = (squeezed * full_quota as f64) as i64;
        wait_until("cgroup quota lowered", || {
            quota(&bserver).is_some_and(|q| (q - want).abs() <= 1)
        });
    } else {
        eprintln!("skipping cgroup checks: not root, limits are not enforced");
    }

    // The coordinator's metrics moved: two placements (one free, one after downsizing), a
    // downsize, the API requests by route, the servers by class and status, one agent.
    let (status, m) = http_get(&coord.admin, "/metrics");
    assert_eq!(status, 200);
    let value = |line_start: &str| {
        m.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{m}"))
    };
    assert_eq!(
        value("backfill_coordinator_placements_total{kind=\"free\"}"),
        1.0
    );
    assert_eq!(
        value("backfill_coordinator_placements_total{kind=\"downsized\"}"),
        1.0
    );
    assert!(value("backfill_coordinator_preemptions_total{kind=\"downsize\"}") >= 1.0);
    assert!(
        value(
            "backfill_coordinator_api_requests_total{route=\"/api/2.0/bservers/{uuid}/\",code=\"200\"}"
        ) >= 1.0
    );
    assert_eq!(
        value("backfill_coordinator_servers{class=\"normal\",status=\"running\"}"),
        1.0
    );
    assert_eq!(value("backfill_coordinator_link_sessions"), 1.0);
    assert!(value("backfill_coordinator_plan_seconds_count") >= 2.0);
    assert!(value("backfill_coordinator_store_commit_seconds_count") >= 2.0);
    assert_eq!(
        http_get(&coord.admin, "/healthz"),
        (200, "ok\n".to_string())
    );
    assert_eq!(
        http_get(&coord.admin, "/ready"),
        (200, "ready\n".to_string())
    );
    // The agent's: two workloads running, the link up, the squeezed quota in force.
    let (status, am) = http_get(&agent_admin, "/metrics");
    assert_eq!(status, 200);
    let agent_value = |line_start: &str| {
        am.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{am}"))
    };
    assert_eq!(
        agent_value("backfill_agent_workloads{state=\"running\"}"),
        2.0
    );
    assert_eq!(agent_value("backfill_agent_link_connected"), 1.0);
    assert_eq!(agent_value("backfill_agent_link_sessions_total"), 1.0);
    assert_eq!(agent_value("backfill_agent_cgroup_errors_total"), 0.0);
    let q = agent_value(&format!(
        "backfill_agent_cpu_quota_microseconds{{server=\"{bserver}\"}}"
    ));
    assert!(
        (q - squeezed * full_quota as f64).abs() <= 1.0,
        "{q} vs {squeezed}"
    );
    // The backfill server is the idle class; the normal one weighs the 1,500 MHz it was sold.
    let weight = |id: &str| agent_value(&format!("backfill_agent_cpu_weight{{server=\"{id}\"}}"));
    assert_eq!(weight(&bserver), 0.0);
    assert_eq!(weight(&normal), (1_500 * 100 / mhz_per_core) as f64);
    assert_eq!(
        http_get(&agent_admin, "/ready"),
        (200, "ready\n".to_string())
    );

    // The normal server leaves; the backfill server grows back (hysteresis: 1 s here).
    post(
        &tenant,
        &coord.url(&format!("servers/{normal}/action/?do=stop")),
        json!({}),
    )
    .await;
    eventually("backfill grown back", || async {
        (perf_cpu(&tenant, &coord, &bserver).await == Some(1.0)).then_some(())
    })
    .await;
    if setup.enforcing {
        wait_until("cgroup quota restored", || {
            quota(&bserver) == Some(full_quota)
        });
    }
    post(
        &tenant,
        &coord.url(&format!("bservers/{bserver}/action/?do=stop")),
        json!({}),
    )
    .await;
}
