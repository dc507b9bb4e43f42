//! Liveness on paused time, over an in-memory pipe: only frames from the agent keep its host
//! up (the coordinator's own heartbeats do not); a silent host goes `down`, leaves
//! `free_resources`, and the servers it never confirmed go back to the queue.

use super::listener::{LinkConfig, LinkError, run};
use super::session_tests::{fixture, hello, report, server, start_one};
use backfill_shared::protocol::{self, AgentMessage, CoordinatorMessage};
use backfill_shared::{ServerStatus, WorkerState};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::codec::Framed;

type Pipe = Framed<tokio::io::DuplexStream, tokio_util::codec::LengthDelimitedCodec>;

fn pipe() -> (Pipe, Pipe) {
    let (a, b) = tokio::io::duplex(1 << 20);
    (
        Framed::new(a, protocol::codec()),
        Framed::new(b, protocol::codec()),
    )
}

/// Counts the desired states the coordinator sends (the heartbeats among them).
fn drain(mut agent: futures_util::stream::SplitStream<Pipe>) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut states = 0;
        while let Some(Ok(frame)) = agent.next().await {
            if let Ok(CoordinatorMessage::DesiredState(_)) = protocol::decode(&frame) {
                states += 1;
            }
        }
        states
    })
}

const TIMING: LinkConfig = LinkConfig {
    silence_s: 30,
    heartbeat_s: 10,
};

#[tokio::test]
async fn a_silent_agent_is_lost_its_capacity_leaves_and_unconfirmed_servers_requeue() {
    let f = fixture().await;
    let host: backfill_shared::HostId = "h1".parse().unwrap();
    let (conn, mut rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    let before = f.c.free_resources().await.total;
    let id = start_one(&f).await;
    assert_eq!(server(&f, id).await.host, Some(host.clone()));
    assert!(before.cpu > 0);

    // The store is not touched from here until the deadline, so paused time is safe.
    tokio::time::pause();
    let (mut coordinator, agent) = pipe();
    let (_sink, stream) = agent.split::<Bytes>();
    let states = drain(stream);
    let start = Instant::now();
    let r = run(&mut coordinator, &host, conn, &mut rx, &f.c, TIMING).await;
    assert!(matches!(r, Err(LinkError::Silent(_))), "{r:?}");
    assert_eq!(
        start.elapsed().as_secs(),
        30,
        "lost at the deadline, although heartbeats went out every 10 s"
    );
    tokio::time::resume();
    f.c.agent_gone(&host, conn).await;
    drop(coordinator);
    // Welcome, the first state, and heartbeats at 10 and 20 s (30 s is the deadline).
    assert!(states.await.unwrap() >= 3);

    assert!(!f.c.host_connected(&host).await);
    let h = f.c.host("h1").await.unwrap();
    assert_eq!(h.worker_state, WorkerState::Down);
    assert_eq!(f.c.free_resources().await.total.cpu, 0);
    let s = server(&f, id).await;
    assert_eq!((s.status, s.host), (ServerStatus::Starting, None));
    assert!(s.queued_reason.unwrap().contains("lost"));
}

#[tokio::test]
async fn reports_keep_the_agent_alive_until_they_stop() {
    let f = fixture().await;
    let host: backfill_shared::HostId = "h1".parse().unwrap();
    let (conn, mut rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    let generation = rx.borrow().generation;
    tokio::time::pause();
    let (mut coordinator, agent) = pipe();
    let (mut sink, stream) = agent.split::<Bytes>();
    let _states = drain(stream);
    let reports = tokio::spawn(async move {
        // A report every 5 s for 100 s: past three silence limits.
        for _ in 0..=20 {
            let r = AgentMessage::Report(report(generation, &[]));
            sink.send(protocol::encode(&r).unwrap()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        sink // kept open: silence, not a closed link
    });
    let start = Instant::now();
    let r = run(&mut coordinator, &host, conn, &mut rx, &f.c, TIMING).await;
    assert!(matches!(r, Err(LinkError::Silent(_))), "{r:?}");
    // The last report was at 100 s.
    assert_eq!(start.elapsed().as_secs(), 130);
    let _sink = reports.await.unwrap();
}

#[test]
fn link_settings_are_checked() {
    assert!(LinkConfig::default().validate().is_ok());
    for (silence_s, heartbeat_s) in [(4, 1), (601, 10), (30, 0), (30, 30), (30, 61)] {
        let c = LinkConfig {
            silence_s,
            heartbeat_s,
        };
        assert!(c.validate().is_err(), "{c:?}");
    }
}
