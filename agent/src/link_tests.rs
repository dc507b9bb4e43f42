//! The link's liveness on paused time, over an in-memory pipe: only frames from the coordinator
//! keep the link up; the agent's own reports do not.
#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use crate::cgroups::RecordingCgroups;
use backfill_shared::clock::ManualClock;
use backfill_shared::protocol::DesiredState;

type Pipe = Framed<tokio::io::DuplexStream, LengthDelimitedCodec>;

fn pipe() -> (Pipe, Pipe) {
    let (a, b) = tokio::io::duplex(1 << 20);
    (
        Framed::new(a, protocol::codec()),
        Framed::new(b, protocol::codec()),
    )
}

fn supervisor(dir: &std::path::Path) -> Arc<Mutex<Supervisor>> {
    Arc::new(Mutex::new(Supervisor::new(
        Box::new(RecordingCgroups::new()),
        dir,
        None,
        vec!["sleep".into(), "30".into()],
        Arc::new(ManualClock::new(1_000)),
    )))
}

/// Reads (and counts) what the agent sends, so its reports never fill the pipe.
fn drain(mut coordinator: futures_util::stream::SplitStream<Pipe>) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut reports = 0;
        while let Some(Ok(frame)) = coordinator.next().await {
            if let Ok(AgentMessage::Report(_)) = protocol::decode::<AgentMessage>(&frame) {
                reports += 1;
            }
        }
        reports
    })
}

#[tokio::test(start_paused = true)]
async fn a_silent_coordinator_is_dropped_although_the_agent_keeps_reporting() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, coordinator) = pipe();
    let (_sink, stream) = coordinator.split::<Bytes>();
    let reports = drain(stream);
    let changed = Notify::new();
    let start = Instant::now();
    let silence = Duration::from_secs(30);
    let r = exchange(
        &mut agent,
        &supervisor(dir.path()),
        &changed,
        Duration::from_secs(1),
        silence,
    )
    .await;
    assert!(matches!(r, Err(LinkError::Silent(_))), "{r:?}");
    // Dropped at the deadline, not one report interval later, and not before.
    assert_eq!(start.elapsed().as_secs(), 30);
    drop(agent);
    assert!(
        reports.await.unwrap() >= 30,
        "the agent kept reporting meanwhile"
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_the_link_until_they_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, coordinator) = pipe();
    let (mut sink, stream) = coordinator.split::<Bytes>();
    let _reports = drain(stream);
    let beats = tokio::spawn(async move {
        // Ten heartbeats 10 s apart: 100 s of link, longer than the silence limit.
        for _ in 0..10 {
            let state = CoordinatorMessage::DesiredState(DesiredState {
                generation: 1,
                servers: Vec::new(),
                keep: Vec::new(),
            });
            sink.send(protocol::encode(&state).unwrap()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        sink // kept open: silence, not a closed link
    });
    let start = Instant::now();
    let r = exchange(
        &mut agent,
        &supervisor(dir.path()),
        &Notify::new(),
        Duration::from_secs(5),
        Duration::from_secs(30),
    )
    .await;
    assert!(matches!(r, Err(LinkError::Silent(_))), "{r:?}");
    // The last heartbeat was at 90 s.
    assert_eq!(start.elapsed().as_secs(), 120);
    let _sink = beats.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_closed_link_ends_the_exchange_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, coordinator) = pipe();
    drop(coordinator);
    let start = Instant::now();
    let r = exchange(
        &mut agent,
        &supervisor(dir.path()),
        &Notify::new(),
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .await;
    assert!(r.is_err());
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    let b0 = backoff(0);
    assert!(b0 >= BACKOFF_START / 2 && b0 <= BACKOFF_START, "{b0:?}");
    let b3 = backoff(3);
    assert!(b3 >= BACKOFF_START * 4 && b3 <= BACKOFF_START * 8, "{b3:?}");
    for a in [10, 20, u32::MAX] {
        let b = backoff(a);
        assert!(b >= BACKOFF_CAP / 2 && b <= BACKOFF_CAP, "{a}: {b:?}");
    }
}
