//! Both daemons speak systemd's notify protocol: `READY=1` once they serve, then `WATCHDOG=1`
//! from their main loops, to a socket the test owns (as systemd's would be).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_tests::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// A notify socket and the environment that points a daemon at it.
fn socket(dir: &std::path::Path) -> (UnixDatagram, Vec<(String, String)>) {
    let path = dir.join("notify.sock");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let env = vec![
        ("NOTIFY_SOCKET".to_string(), path.display().to_string()),
        ("WATCHDOG_USEC".to_string(), "2000000".to_string()),
    ];
    (rx, env)
}

/// Messages until both `READY=1` and `WATCHDOG=1` arrived, in arrival order.
fn until_ready_and_watchdog(rx: &UnixDatagram) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        if let Ok(n) = rx.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let ready = seen.iter().any(|m| m.lines().any(|l| l == "READY=1"));
        if ready && seen.iter().any(|m| m == "WATCHDOG=1") {
            return seen;
        }
    }
    panic!("no READY=1 and WATCHDOG=1 before the deadline; got {seen:?}");
}

#[test]
fn the_coordinator_and_the_agent_notify_systemd() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (rx, env) = socket(dir.path());
    let coord = Coordinator::start_env(&pki, &["tenant"], &[], "", &env);
    let seen = until_ready_and_watchdog(&rx);
    assert!(seen[0].starts_with("READY=1\nSTATUS=API on "), "{seen:?}");
    assert!(
        seen.iter()
            .position(|m| m.starts_with("READY=1"))
            .is_some_and(|r| seen
                .iter()
                .position(|m| m == "WATCHDOG=1")
                .is_some_and(|w| r < w)),
        "ready comes first: {seen:?}"
    );

    let agent_dir = tempfile::tempdir().unwrap();
    let (rx, env) = socket(agent_dir.path());
    let mut setup = AgentSetup::new(&pki, &coord, "host-n");
    setup.extra_env = env;
    let mut agent = setup.start(true, "1");
    let seen = until_ready_and_watchdog(&rx);
    assert!(
        seen[0].starts_with("READY=1\nSTATUS=host host-n"),
        "{seen:?}"
    );
    // A clean stop says so.
    agent.terminate();
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + DEADLINE;
    let mut stopping = false;
    while !stopping && Instant::now() < deadline {
        if let Ok(n) = rx.recv(&mut buf) {
            stopping = &buf[..n] == b"STOPPING=1";
        }
    }
    assert!(stopping, "the agent says STOPPING=1 as it stops");
}

#[test]
fn logs_can_be_json_for_shippers() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let tls = pki.issue(backfill_shared::pki::Role::Coordinator, "coordinator");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "api_addr = \"127.0.0.1:0\"\nlink_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\ndatabase = {:?}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            dir.path().join("db"),
            tls.ca,
            tls.cert,
            tls.key
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = std::process::Command::new(bin("backfill-coordinator"))
        .args([
            "--log-format",
            "json",
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until("a JSON log line saying the API listens", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["fields"]["message"] == "API listening (mutual TLS)" && v["level"] == "INFO"
                })
            })
    });
    let _ = child.kill();
    let _ = child.wait();
}
