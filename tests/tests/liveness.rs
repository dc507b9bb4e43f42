//! Liveness both ways with real processes: a frozen agent (SIGSTOP) is taken for lost and its
//! capacity leaves `free_resources`; a frozen coordinator is dropped by its agents, which redial
//! as soon as it answers again; a restarted coordinator gets its agents back at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::json;
use std::time::Instant;

/// Short limits so the test takes seconds: the coordinator takes 5 s of silence for a lost
/// agent, and the agent 5 s for a lost coordinator.
const FAST_LINK: &str = "[link]\nsilence_s = 5\nheartbeat_s = 1\n";
const FAST_AGENT: &str = "coordinator_silence_secs = 5\n";

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

/// SIGCONT on drop, so a failed assertion never leaves a stopped process behind.
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        signal(pid, libc::SIGSTOP);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

async fn free_cpu(c: &reqwest::Client, coord: &Coordinator) -> u64 {
    let (status, caps) = get(c, &coord.url("capabilities/")).await;
    assert_eq!(status, 200, "{caps}");
    caps["free_resources"]["total"]["cpu"].as_u64().unwrap()
}

async fn server(c: &reqwest::Client, coord: &Coordinator, uuid: &str) -> serde_json::Value {
    let (status, body) = get(c, &coord.url(&format!("bservers/{uuid}/"))).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn start(c: &reqwest::Client, coord: &Coordinator, uuid: &str) {
    let url = coord.url(&format!("bservers/{uuid}/action/?do=start"));
    let (status, body) = post(c, &url, json!({})).await;
    assert_eq!(status, 202, "{body}");
}

fn count(d: &Daemon, needle: &str) -> usize {
    d.log_text().matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_is_taken_for_lost_and_new_work_goes_elsewhere() {
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], FAST_LINK);
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let mut a = AgentSetup::new(&pki, &coord, "host-a");
    a.top_toml = FAST_AGENT.into();
    let agent_a = a.start(true, "a");
    let body = json!({"name": "s", "cpu": 500, "mem": 64 << 20, "vnc_password": "x",
                      "workload": {"command": ["sleep", "120"]}});
    let first = create(&tenant, &coord.url("bservers/"), body.clone()).await;
    start(&tenant, &coord, &first).await;
    eventually("the first server runs on host-a", || async {
        let s = server(&tenant, &coord, &first).await;
        (s["status"] == "running").then_some(())
    })
    .await;
    assert!(free_cpu(&tenant, &coord).await > 0);

    let frozen = Frozen::freeze(agent_a.child.id());
    // Silent for 5 s: down, and its capacity is no longer offered.
    eventually("host-a leaves free_resources", || async {
        (free_cpu(&tenant, &coord).await == 0).then_some(())
    })
    .await;
    assert!(
        coord.daemon.log_text().contains("agent silent"),
        "the coordinator says why"
    );
    // A lost agent stops nothing: its server is still running there.
    let s = server(&tenant, &coord, &first).await;
    assert_eq!(
        (s["status"].as_str(), s["runtime"]["host"].as_str()),
        (Some("running"), Some("host-a"))
    );

    // New work waits for a live host instead of landing on the frozen one.
    let second = create(&tenant, &coord.url("bservers/"), body).await;
    start(&tenant, &coord, &second).await;
    let s = server(&tenant, &coord, &second).await;
    assert!(
        s["runtime"].is_null() || s["runtime"]["host"].is_null(),
        "{s}"
    );
    let mut b = AgentSetup::new(&pki, &coord, "host-b");
    b.top_toml = FAST_AGENT.into();
    let _agent_b = b.start(true, "b");
    eventually("the second server runs on host-b", || async {
        let s = server(&tenant, &coord, &second).await;
        (s["status"] == "running" && s["runtime"]["host"] == "host-b").then_some(())
    })
    .await;

    // Woken, host-a is back: its agent redials and its server is still there.
    let before = count(&agent_a, "connected to the coordinator");
    drop(frozen);
    wait_until("host-a's agent is back", || {
        count(&agent_a, "connected to the coordinator") > before
    });
    eventually("host-a's server is still running there", || async {
        let s = server(&tenant, &coord, &first).await;
        (s["status"] == "running" && s["runtime"]["host"] == "host-a").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_coordinator_is_dropped_and_redialled_when_it_wakes() {
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &[]);
    let mut a = AgentSetup::new(&pki, &coord, "host-a");
    a.top_toml = FAST_AGENT.into();
    let agent = a.start(true, "a");
    assert_eq!(count(&agent, "connected to the coordinator"), 1);

    let frozen = Frozen::freeze(coord.daemon.child.id());
    wait_until("the agent drops the silent coordinator", || {
        agent.log_text().contains("said nothing for")
    });
    drop(frozen);
    wait_until("the agent redials the woken coordinator", || {
        count(&agent, "connected to the coordinator") >= 2
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_redial_a_restarted_coordinator_at_once() {
    let pki = Pki::new();
    let mut coord = Coordinator::start(&pki, &[]);
    let a = AgentSetup::new(&pki, &coord, "host-a");
    let agent = a.start(true, "a");
    coord.kill();
    wait_until("the agent sees the link go", || {
        agent.log_text().contains("coordinator link down")
    });
    // Down for a while: long enough that an uncapped backoff would have grown to many seconds.
    let retries = |d: &Daemon| count(d, "reconnecting to the coordinator");
    let before = retries(&agent);
    wait_until("the agent retries a few times", || {
        retries(&agent) >= before + 5
    });
    let restarted = Instant::now();
    coord.restart();
    wait_until("the agent is back", || {
        count(&agent, "connected to the coordinator") >= 2
    });
    // Reported, not asserted: the machine is shared and noisy.
    eprintln!(
        "agent re-registered {:?} after the coordinator was restarted",
        restarted.elapsed()
    );
}
