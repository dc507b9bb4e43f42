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
    // SIGTERM drains the coordinator's API before it stops.
    let mut coord = coord;
    coord.daemon.terminate();
    let log = coord.daemon.log_text();
    let line = |what: &str, pred: &dyn Fn(&str) -> bool| {
        log.lines()
            .position(pred)
            .unwrap_or_else(|| panic!("no {what} in\n{log}"))
    };
    let drained = line("drain of the API", &|l| {
        l.contains("drained") && l.contains("listener=") && l.contains("api")
    });
    let stopped = line("stop", &|l| l.contains("coordinator stopped"));
    assert!(drained < stopped, "{log}");
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

/// The certificate a TLS server at `addr` presents, as DER.
async fn presented_certificate(addr: &str, files: &backfill_shared::tls::TlsFiles) -> Vec<u8> {
    let cfg = backfill_shared::tls::client_config(files).unwrap();
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

fn der_of(pem: &std::path::Path) -> Vec<u8> {
    backfill_shared::tls::load_certs(pem).unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_coordinators_certificate() {
    use backfill_shared::pki::Role;
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let tenant = pki.issue(Role::Account, "tenant");
    let served = pki.path().join("coordinator-coordinator.pem");
    let before = presented_certificate(&coord.api, &tenant).await;
    assert_eq!(before, der_of(&served));

    // Rotate: a new certificate and key in the same files, then SIGHUP.
    let fresh = pki.issue(Role::Coordinator, "rotated");
    std::fs::copy(&fresh.cert, &served).unwrap();
    std::fs::copy(&fresh.key, pki.path().join("coordinator-coordinator.key")).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(coord.daemon.child.id() as i32, libc::SIGHUP);
    }
    wait_until("the reload logged", || {
        coord.daemon.log_text().contains("certificates reloaded")
    });
    let after = presented_certificate(&coord.api, &tenant).await;
    assert_eq!(after, der_of(&fresh.cert));
    assert_ne!(after, before);

    // A broken set is refused and the working one kept.
    std::fs::write(&served, "not a certificate").unwrap();
    unsafe {
        libc::kill(coord.daemon.child.id() as i32, libc::SIGHUP);
    }
    wait_until("the failed reload logged", || {
        coord
            .daemon
            .log_text()
            .contains("certificate reload failed")
    });
    assert_eq!(presented_certificate(&coord.api, &tenant).await, after);
}

#[test]
fn sighup_reloads_the_agents_certificate() {
    use backfill_shared::pki::Role;
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let setup = AgentSetup::new(&pki, &coord, "host-h");
    let agent = setup.start(true, "1");
    // Rotate the agent's certificate in place (same host id), then SIGHUP.
    let fresh = pki.issue(Role::Agent, "host-h");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(agent.child.id() as i32, libc::SIGHUP);
    }
    wait_until("the agent's reload logged", || {
        agent.log_text().contains("certificates reloaded")
    });
    assert!(fresh.cert.exists());
    // Still running, still connected.
    assert!(!agent.log_text().contains("shutting down"));
}
