//! The supervisor against recorded cgroups and real processes.
#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use crate::cgroups::{Call, RecordingCgroups};
use backfill_shared::Workload;
use backfill_shared::clock::ManualClock;

fn desired(generation: u64, servers: &[(ServerId, f64)]) -> DesiredState {
    DesiredState {
        generation,
        servers: servers
            .iter()
            .map(|(id, pf)| DesiredServer {
                server: *id,
                resources: Resources {
                    cpu_mhz: 2000,
                    vcpus: 2,
                    mem_bytes: 256 << 20,
                },
                perf_factor: PerfFactor { cpu: *pf, mem: *pf },
                workload: Some(Workload {
                    command: vec!["sleep".into(), "30".into()],
                    env: Default::default(),
                    network: Default::default(),
                }),
                incarnation: 1,
                termination: None,
                guest: profile(*id),
                shutdown: None,
                gpus: Vec::new(),
            })
            .collect(),
    }
}

fn profile(id: ServerId) -> backfill_shared::GuestProfile {
    backfill_shared::GuestProfile {
        name: format!("server {id}"),
        hostname: "guest".into(),
        account: "tenant".into(),
        class: backfill_shared::ServerClass::Spot,
        instance_type: "spot-c2m1".into(),
        meta: Default::default(),
        user_data: None,
    }
}

fn supervisor(dir: &std::path::Path, cg: RecordingCgroups) -> Supervisor {
    Supervisor::new(
        Box::new(cg),
        dir,
        None,
        vec!["sleep".into(), "30".into()],
        Arc::new(ManualClock::new(1_000)),
    )
}

#[test]
fn applies_limits_once_and_relimits_on_perf_change() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let mut s = supervisor(dir.path(), cg.clone());
    let id = ServerId::from_u128(1);
    s.apply(&desired(1, &[(id, 1.0)]));
    s.apply(&desired(1, &[(id, 1.0)])); // repeated: nothing new
    s.apply(&desired(2, &[(id, 0.5)]));
    let calls = cg.calls();
    let creates: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, Call::Create(..)))
        .collect();
    assert_eq!(creates.len(), 1, "{calls:?}");
    let full = limits_for(
        &desired(1, &[(id, 1.0)]).servers[0].resources,
        PerfFactor::FULL,
        DEFAULT_CPU_PERIOD_US,
    );
    assert_eq!(full.cpu_quota_us, Some(200_000));
    assert!(calls.iter().any(|c| matches!(c, Call::SetLimits(i, l) if *i == id && l.cpu_quota_us == Some(100_000) && l.mem_limit_bytes == Some(128 << 20))));
    let r = s.report();
    assert_eq!(r.applied_generation, 2);
    assert_eq!(r.servers[0].state, WorkloadState::Running);
    assert_eq!(r.servers[0].limits.cpu_quota_us, Some(100_000));
    s.apply(&desired(3, &[]));
    assert!(
        cg.calls()
            .iter()
            .any(|c| matches!(c, Call::Remove(i) if *i == id))
    );
    assert!(s.report().servers.is_empty());
}

#[test]
fn a_new_supervisor_adopts_instead_of_restarting() {
    let dir = tempfile::tempdir().unwrap();
    let id = ServerId::from_u128(2);
    let cg = RecordingCgroups::default();
    let mut first = supervisor(dir.path(), cg.clone());
    first.apply(&desired(1, &[(id, 1.0)]));
    let pid = first.report().servers[0].pid.unwrap();
    drop(first); // the agent goes away; the workload does not

    let cg2 = RecordingCgroups::default();
    let mut second = supervisor(dir.path(), cg2.clone());
    second.adopt().unwrap();
    second.apply(&desired(2, &[(id, 1.0)]));
    assert_eq!(second.report().servers[0].pid, Some(pid));
    assert!(!cg2.calls().iter().any(|c| matches!(c, Call::Create(..))));
    let process = ProcessIdentity::of(pid).unwrap();
    second.stop_all();
    let deadline = Instant::now() + Duration::from_secs(10);
    while driver::alive(&process) {
        assert!(Instant::now() < deadline, "workload survived stop_all");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn exits_and_failures_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = supervisor(dir.path(), RecordingCgroups::default());
    let ok = ServerId::from_u128(3);
    let bad = ServerId::from_u128(4);
    let mut d = desired(1, &[(ok, 1.0), (bad, 1.0)]);
    d.servers[0].workload = Some(Workload {
        command: vec!["sh".into(), "-c".into(), "sleep 0.2; exit 3".into()],
        env: Default::default(),
        network: Default::default(),
    });
    d.servers[1].workload = Some(Workload {
        command: vec!["/no/such/program".into()],
        env: Default::default(),
        network: Default::default(),
    });
    s.apply(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.poll_exits() {
        assert!(Instant::now() < deadline, "exit not noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = s.report();
    assert_eq!(r.servers[0].state, WorkloadState::Exited { code: Some(3) });
    assert!(matches!(r.servers[1].state, WorkloadState::Failed { .. }));

    // The same desired state again: nothing restarts.
    s.apply(&d);
    assert_eq!(
        s.report().servers[0].state,
        WorkloadState::Exited { code: Some(3) }
    );
    // A new run of the server (new incarnation) starts afresh.
    let mut again = desired(2, &[(ok, 1.0)]);
    again.servers[0].incarnation = 2;
    s.apply(&again);
    let r = s.report();
    assert_eq!(r.servers.len(), 1);
    assert_eq!(
        (r.servers[0].state.clone(), r.servers[0].incarnation),
        (WorkloadState::Running, 2)
    );
    s.stop_all();
}

#[test]
fn a_scheduled_termination_is_enforced_without_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut s = Supervisor::new(
        Box::new(RecordingCgroups::default()),
        dir.path(),
        None,
        vec!["sleep".into(), "30".into()],
        Arc::new(clock.clone()),
    );
    let id = ServerId::from_u128(9);
    let mut d = desired(1, &[(id, 1.0)]);
    d.servers[0].termination = Some(Termination {
        scheduled_at: 1_000,
        terminate_at: 1_060,
    });
    s.apply(&d);
    let pid = s.report().servers[0].pid.unwrap();
    let process = ProcessIdentity::of(pid).unwrap();
    assert!(!s.poll_exits(), "not due yet");
    clock.advance(60);
    assert!(s.poll_exits());
    assert_eq!(
        s.report().servers[0].state,
        WorkloadState::Exited { code: None }
    );
    assert!(!driver::alive(&process));
}

#[test]
fn guests_are_published_and_acknowledgements_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::metadata::MetadataStore::default());
    let mut s = supervisor(dir.path(), RecordingCgroups::default())
        .with_metadata(store.clone(), "zone-9".into());
    let id = ServerId::from_u128(5);
    let mut d = desired(1, &[(id, 1.0)]);
    s.apply(&d);
    let (g, v1) = store.by_id(&id).unwrap();
    assert_eq!(g.availability_zone, "zone-9");
    assert_eq!(g.local_ipv4, None, "host network: not reachable by address");
    assert_eq!(g.cpu_quota_us, Some(200_000));
    assert!(s.acknowledge(&id).is_err(), "nothing scheduled yet");
    d.generation = 2;
    d.servers[0].termination = Some(Termination {
        scheduled_at: 1_000,
        terminate_at: 1_600,
    });
    s.apply(&d);
    let (g, v2) = store.by_id(&id).unwrap();
    assert!(v2 > v1 && g.termination.is_some());
    s.acknowledge(&id).unwrap();
    s.acknowledge(&id).unwrap(); // idempotent
    assert!(store.by_id(&id).unwrap().0.acknowledged);
    let r = s.report();
    assert!(r.servers[0].acknowledged);
    // The acknowledgement survives an agent restart.
    let saved = StateFile::new(dir.path()).load().unwrap();
    assert!(saved[0].acknowledged);
    s.stop_all();
    assert!(
        store.by_id(&id).is_none(),
        "a stopped server has no document"
    );
}

#[test]
fn an_isolated_server_without_networking_fails_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = supervisor(dir.path(), RecordingCgroups::default());
    let id = ServerId::from_u128(6);
    let mut d = desired(1, &[(id, 1.0)]);
    if let Some(w) = d.servers[0].workload.as_mut() {
        w.network = backfill_shared::NetworkMode::Isolated;
    }
    s.apply(&d);
    match &s.report().servers[0].state {
        WorkloadState::Failed { reason } => {
            assert!(reason.contains("isolated network"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}
