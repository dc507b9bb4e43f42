//! `backfill-coordinator dev` as a newcomer uses it: a spot server from the dev-only
//! `dev-preemptible` flavor gets its termination notice when a normal server needs the room, and
//! Ctrl-C stops dev's servers for real: after `dev` again they are stopped, saying why, and the
//! time dev was down is not billed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::tls::TlsFiles;
use backfill_tests::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Starts dev on free loopback ports in `data`; its API URL.
fn start_dev(data: &Path, log: &str) -> (Daemon, String) {
    let mut d = Daemon::spawn_env(
        &bin("backfill-coordinator"),
        &[
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--api-addr",
            "127.0.0.1:0",
            "--link-addr",
            "127.0.0.1:0",
            "--management-addr",
            "127.0.0.1:0",
            // The guests here need no metadata; 169.254.169.254:80 may be another agent's.
            "--metadata-addr",
            "127.0.0.1:0",
        ],
        data.parent().unwrap().join(log),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = d.log_text();
        if let Some(url) = text
            .lines()
            .find_map(|l| l.strip_prefix("ready: API at "))
            .and_then(|l| l.split_whitespace().next())
        {
            return (d, url.to_owned());
        }
        if let Ok(Some(status)) = d.child.try_wait() {
            panic!("dev exited ({status}):\n{text}");
        }
        assert!(Instant::now() < deadline, "dev is not ready:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tenant(data: &Path) -> reqwest::Client {
    let pki = data.join("pki");
    let files = TlsFiles {
        ca: pki.join(backfill_shared::pki::CA_CERT_FILE),
        cert: pki.join("tenant.pem"),
        key: pki.join("tenant.key"),
    };
    client(&files.ca, Some(&files))
}

/// Ctrl-C: SIGINT, and the exit.
fn interrupt(d: &mut Daemon) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(d.child.id() as i32, libc::SIGINT);
    }
    wait_until("dev exits on Ctrl-C", || {
        matches!(d.child.try_wait(), Ok(Some(_)))
    });
}

async fn server(t: &reqwest::Client, api: &str, uuid: &str) -> Value {
    get(t, &format!("{api}servers/{uuid}/")).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_servers_are_preempted_within_a_minute_and_ctrl_c_stops_what_dev_runs() {
    if !is_root() {
        eprintln!("skipped: dev's agent needs root for cgroups and its metadata address");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("dev");
    let (mut dev, api) = start_dev(&data, "dev-1.log");
    let t = tenant(&data);

    let spot = create(
        &t,
        &format!("{api}servers/"),
        json!({"name": "spot", "flavor": "dev-preemptible", "workload": {"command": ["sleep", "600"]}}),
    )
    .await;
    let s = server(&t, &api, &spot).await;
    assert_eq!(s["class"], "spot", "{s}");
    let (status, body) = post(
        &t,
        &format!("{api}servers/{spot}/action/?do=start"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    eventually("the spot server runs", || async {
        (server(&t, &api, &spot).await["status"] == "running").then_some(())
    })
    .await;
    let started = Instant::now();

    // A normal server that needs the spot server's room: all the free CPU and then some.
    let (_, caps) = get(&t, &format!("{api}capabilities/")).await;
    let free = caps["free_resources"]["most_free_by_cpu"]["cpu"]
        .as_u64()
        .unwrap_or_else(|| panic!("{caps}"));
    let normal = create(
        &t,
        &format!("{api}servers/"),
        json!({"name": "normal", "cpu": free + 500, "mem": 268_435_456,
               "workload": {"command": ["sleep", "600"]}}),
    )
    .await;
    let (status, body) = post(
        &t,
        &format!("{api}servers/{normal}/action/?do=start"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let termination = eventually("the spot server's termination notice", || async {
        let s = server(&t, &api, &spot).await;
        let t = &s["runtime"]["termination"];
        (!t.is_null()).then(|| t.clone())
    })
    .await;
    assert!(termination["terminate_at"].is_string(), "{termination}");

    interrupt(&mut dev);
    let ran = started.elapsed().as_secs();
    let log = dev.log_text();
    assert!(
        log.contains("server(s): dev mode stops its workloads on exit"),
        "{log}"
    );
    // Down for a while: none of it may be billed.
    let down = Duration::from_secs(4);
    std::thread::sleep(down);

    let (mut dev, api) = start_dev(&data, "dev-2.log");
    let s = server(&t, &api, &spot).await;
    assert_eq!(s["status"], "stopped", "{s}");
    let reason = s["stop_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("dev mode was stopped"), "{s}");
    // The normal server never got its room before Ctrl-C: it still waits in the queue, as
    // asked, and is not billed.
    let n = server(&t, &api, &normal).await;
    assert!(n["runtime"].is_null() || n["status"] == "running", "{n}");
    let (_, usage) = get(&t, &format!("{api}usage/")).await;
    let billed = |uuid: &str| -> u64 {
        usage["objects"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["server"] == uuid)
            .map(|l| l["seconds"].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(billed(&normal), 0, "{usage}");
    let billed = billed(&spot);
    assert!(
        billed <= ran + 2,
        "billed {billed} s for a server that ran {ran} s before dev stopped: {usage}"
    );
    interrupt(&mut dev);
}
