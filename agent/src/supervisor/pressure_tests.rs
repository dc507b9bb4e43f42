//! The agent's own squeeze under pressure, on the recording cgroups: backfill beside normal
//! servers goes to the floor at once, spot and normal servers are left alone, the coordinator
//! hears the perf_factor in force, and quiet gives the limits back.

use super::Supervisor;
use super::tests::desired;
use crate::cgroups::{Call, RecordingCgroups};
use crate::pressure::Resource;
use backfill_shared::clock::ManualClock;
use backfill_shared::protocol::DesiredState;
use backfill_shared::{ServerClass, ServerId};
use std::sync::Arc;

fn host(classes: &[(ServerId, ServerClass)]) -> DesiredState {
    let ids: Vec<(ServerId, f64)> = classes.iter().map(|(id, _)| (*id, 1.0)).collect();
    let mut d = desired(1, &ids);
    for (s, (_, class)) in d.servers.iter_mut().zip(classes) {
        s.guest.class = *class;
    }
    d
}

fn quota_of(cg: &RecordingCgroups, id: ServerId) -> Option<u64> {
    cg.calls().iter().rev().find_map(|c| match c {
        Call::SetLimits(i, l) | Call::Create(i, l) if *i == id => Some(l.cpu_quota_us),
        _ => None,
    })?
}

#[test]
fn pressure_beside_normal_servers_squeezes_backfill_at_once_and_quiet_lifts_it() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let clock = Arc::new(ManualClock::new(1_000));
    let mut s = Supervisor::new(
        Box::new(cg.clone()),
        dir.path(),
        None,
        vec!["sleep".into(), "30".into()],
        clock.clone(),
    )
    .with_pressure_policy(0.1, 30);
    let (normal, backfill, spot) = (
        ServerId::from_u128(1),
        ServerId::from_u128(2),
        ServerId::from_u128(3),
    );
    let d = host(&[
        (normal, ServerClass::Normal),
        (backfill, ServerClass::Backfill),
        (spot, ServerClass::Spot),
    ]);
    s.apply(&d);
    let full = quota_of(&cg, backfill).unwrap();
    let normal_quota = quota_of(&cg, normal);
    let spot_quota = quota_of(&cg, spot);

    assert!(s.on_pressure(Resource::Cpu), "squeezed");
    assert_eq!(quota_of(&cg, backfill), Some(full / 10));
    assert_eq!(
        quota_of(&cg, normal),
        normal_quota,
        "normal servers untouched"
    );
    assert_eq!(quota_of(&cg, spot), spot_quota, "spot is not downsizable");
    let r = s.report();
    let seen = |id| r.servers.iter().find(|o| o.server == id).unwrap();
    assert_eq!(
        seen(backfill).perf_factor.cpu,
        0.1,
        "the coordinator hears it"
    );
    assert_eq!(
        seen(backfill).perf_factor.mem,
        1.0,
        "only the resource under pressure"
    );
    assert!(r.usage.squeezing);
    assert!(!s.on_pressure(Resource::Cpu), "already at the floor");

    // The coordinator downsizes it meanwhile: the lower of the two holds.
    let mut half = d.clone();
    half.generation = 2;
    half.servers[1].perf_factor.cpu = 0.5;
    s.apply(&half);
    assert_eq!(quota_of(&cg, backfill), Some(full / 10));

    // Quiet for less than release_secs: still squeezed; then lifted to what was asked.
    clock.advance(29);
    s.poll_exits();
    assert!(s.squeezing());
    clock.advance(1);
    assert!(s.poll_exits(), "the change is reported at once");
    assert!(!s.squeezing());
    assert_eq!(quota_of(&cg, backfill), Some(full / 2));
    assert_eq!(s.squeezes(), (1, 0));
    s.stop_all();
}

#[test]
fn pressure_without_normal_servers_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let mut s = super::tests::supervisor(dir.path(), cg.clone());
    let b = ServerId::from_u128(9);
    s.apply(&host(&[(b, ServerClass::Backfill)]));
    let before = cg.calls().len();
    assert!(!s.on_pressure(Resource::Cpu));
    assert!(!s.on_pressure(Resource::Memory));
    assert_eq!(cg.calls().len(), before, "backfill alone may use the host");
    s.stop_all();
}

#[test]
fn the_squeeze_lifts_when_the_normal_servers_leave_and_idle_backfill_is_not_blamed() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let mut s = super::tests::supervisor(dir.path(), cg.clone()).with_pressure_policy(0.1, 3600);
    let (normal, backfill) = (ServerId::from_u128(1), ServerId::from_u128(2));
    let d = host(&[
        (normal, ServerClass::Normal),
        (backfill, ServerClass::Backfill),
    ]);
    s.apply(&d);
    let full = quota_of(&cg, backfill).unwrap();
    if !s.on_pressure(Resource::Memory) {
        // This host has memory to spare: memory stalls are not backfill's doing.
        assert!(!s.squeezing());
    }
    assert!(s.on_pressure(Resource::Cpu));
    assert_eq!(quota_of(&cg, backfill), Some(full / 10));

    // The normal server leaves: nothing to protect, the squeeze lifts at the next round.
    let mut only_backfill = host(&[(backfill, ServerClass::Backfill)]);
    only_backfill.generation = 2;
    s.apply(&only_backfill);
    s.poll_exits();
    assert!(!s.squeezing());
    assert_eq!(quota_of(&cg, backfill), Some(full));

    // With a normal server again: a backfill server that did not touch the CPU since the last
    // round is not squeezed for CPU stalls (someone else caused them).
    let mut again = d.clone();
    again.generation = 3;
    s.apply(&again);
    s.poll_exits();
    assert!(!s.on_pressure(Resource::Cpu), "idle backfill is not blamed");
    let busy = backfill_shared::protocol::ServerUsage {
        cpu_usage_usec: 1_000_000,
        ..Default::default()
    };
    cg.set_usage(&backfill, busy);
    assert!(s.on_pressure(Resource::Cpu), "busy backfill is");
    s.stop_all();
}

const POLICY: super::StallPolicy = super::StallPolicy {
    stall_us: 10_000,
    window_ms: 100,
};

/// The poller: a normal server's own stall (its cgroup's PSI, or its threads' wait) squeezes
/// backfill at the poll that sees it pass the threshold within the window; stall spread
/// thinner than that does not; and once every normal server's stall is known, the host's
/// trigger (which counts backfill's own waiting) leaves the decision to the poller.
#[test]
fn a_normal_servers_own_stall_squeezes_backfill_at_the_next_poll() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let mut s = super::tests::supervisor(dir.path(), cg.clone()).with_pressure_policy(0.1, 3600);
    let (normal, backfill) = (ServerId::from_u128(1), ServerId::from_u128(2));
    s.apply(&host(&[
        (normal, ServerClass::Normal),
        (backfill, ServerClass::Backfill),
    ]));
    let full = quota_of(&cg, backfill).unwrap();

    // Unknown stall (v1 memory, a kernel without PSI): nothing fires, and the host's trigger
    // still decides (the tests above).
    assert_eq!(s.poll_stall(0, POLICY), (vec![], false));

    // Known stall: 1 ms per 10 ms poll is 10% over 100 ms... just under the threshold.
    let mut t = 1_000;
    let mut stall = 0;
    for _ in 0..20 {
        cg.set_stall(&normal, Resource::Cpu, Some(stall));
        cg.set_stall(&normal, Resource::Memory, Some(0));
        assert_eq!(s.poll_stall(t, POLICY), (vec![], false), "at {t} ms");
        t += 10;
        stall += 900;
    }
    assert!(!s.squeezing());
    // The host's trigger no longer squeezes: the normal server's own figures say no.
    assert!(!s.on_pressure(Resource::Cpu));
    assert!(!s.squeezing());
    assert_eq!(
        s.stalls(),
        vec![
            (normal, Resource::Cpu, stall - 900),
            (normal, Resource::Memory, 0)
        ]
    );

    // 12 ms of stall between two polls: squeezed at that poll.
    stall += 12_000;
    cg.set_stall(&normal, Resource::Cpu, Some(stall));
    assert_eq!(s.poll_stall(t, POLICY), (vec![Resource::Cpu], true));
    assert_eq!(quota_of(&cg, backfill), Some(full / 10));
    assert_eq!(s.squeezes(), (1, 0));
    // The next poll starts over: no event without new stall.
    t += 10;
    assert_eq!(s.poll_stall(t, POLICY), (vec![], false));

    // Held back by its own quota (throttled within the window): its own doing, not backfill's.
    let throttled = |usec| backfill_shared::protocol::ServerUsage {
        cpu_throttled_usec: usec,
        ..Default::default()
    };
    cg.set_usage(&normal, throttled(5_000));
    stall += 50_000;
    cg.set_stall(&normal, Resource::Cpu, Some(stall));
    t += 10;
    assert_eq!(s.poll_stall(t, POLICY), (vec![], false), "throttled");

    // Threads that ended take their wait with them: a lower total is no stall.
    cg.set_stall(&normal, Resource::Cpu, Some(0));
    t += 10;
    assert_eq!(s.poll_stall(t, POLICY), (vec![], false));

    // Backfill's own stall is not looked at: only normal servers are polled.
    cg.set_stall(&backfill, Resource::Cpu, Some(u64::MAX / 2));
    t += 10;
    assert_eq!(s.poll_stall(t, POLICY), (vec![], false));
    assert!(s.stalls().iter().all(|(id, _, _)| *id == normal));
    s.stop_all();
}

/// cgroup v1 keeps no memory stall time per cgroup: a normal server's major faults stand in
/// (1 ms each), on a fake v1 tree. Faults in a window where it reached its own memory limit
/// (`memory.failcnt` grew) are its own doing. (The squeeze itself waits, as for every memory
/// event, for the host to be short of memory.)
#[test]
fn v1_a_normal_servers_major_faults_squeeze_backfill() {
    use std::fs;
    let t = tempfile::tempdir().unwrap();
    for (name, files) in [
        (
            "cpu",
            &[
                ("cpu.cfs_quota_us", "-1\n"),
                ("cpu.cfs_period_us", "100000\n"),
                ("cpu.shares", "1024\n"),
            ][..],
        ),
        ("cpuacct", &[("cpuacct.usage", "0\n")][..]),
        (
            "memory",
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "0\n"),
            ][..],
        ),
    ] {
        let d = t.path().join(name);
        fs::create_dir(&d).unwrap();
        fs::write(d.join("cgroup.procs"), "1\n").unwrap();
        for (f, c) in files {
            fs::write(d.join(f), c).unwrap();
        }
    }
    let cg = crate::cgroups::FsCgroups::v1_at(t.path(), "agent").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = Supervisor::new(
        Box::new(cg),
        dir.path(),
        None,
        vec!["sleep".into(), "30".into()],
        Arc::new(ManualClock::new(1_000)),
    )
    .with_pressure_policy(0.1, 3600);
    let (normal, backfill) = (ServerId::from_u128(1), ServerId::from_u128(2));
    s.apply(&host(&[
        (normal, ServerClass::Normal),
        (backfill, ServerClass::Backfill),
    ]));
    let mem = t
        .path()
        .join("memory/agent/normal")
        .join(normal.to_string());
    let stat = |faults: u64| {
        fs::write(
            mem.join("memory.stat"),
            format!("cache 0\npgmajfault {faults}\ntotal_pgmajfault {faults}\n"),
        )
        .unwrap();
    };
    stat(0);
    let mut now = 1_000;
    assert_eq!(s.poll_stall(now, POLICY), (vec![], false));
    // Five major faults in a poll: 5 ms, under the 10 ms threshold.
    stat(5);
    now += 10;
    assert_eq!(s.poll_stall(now, POLICY), (vec![], false));
    // Twelve more: squeezed at that poll.
    stat(17);
    now += 10;
    // Fired; squeezed where the host is short of memory (as for every memory event).
    let low = super::pressure::host_low_on_memory();
    assert_eq!(s.poll_stall(now, POLICY), (vec![Resource::Memory], low));
    assert_eq!(s.squeezes(), (0, u64::from(low)));
    // At its own limit (failcnt grew): its own doing, however many faults.
    fs::write(mem.join("memory.failcnt"), "3\n").unwrap();
    stat(100);
    now += 10;
    assert_eq!(s.poll_stall(now, POLICY), (vec![], false), "own limit");
    s.stop_all();
}

/// A memory event that squeezes nothing (the host has memory to spare: a normal server at its
/// own limit, say) is not backfill's doing and must not hold an earlier CPU squeeze: that
/// lifts `release_secs` after the last CPU event, not after the memory event.
#[test]
fn a_memory_event_without_a_memory_shortage_does_not_hold_the_cpu_squeeze() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let clock = Arc::new(ManualClock::new(1_000));
    let release: i64 = 30;
    let mut s = Supervisor::new(
        Box::new(cg.clone()),
        dir.path(),
        None,
        vec!["sleep".into(), "30".into()],
        clock.clone(),
    )
    .with_pressure_policy(0.1, release as u64);
    let (normal, backfill) = (ServerId::from_u128(1), ServerId::from_u128(2));
    s.apply(&host(&[
        (normal, ServerClass::Normal),
        (backfill, ServerClass::Backfill),
    ]));
    let full = quota_of(&cg, backfill).unwrap();

    // t0: CPU squeeze.
    assert!(s.on_pressure(Resource::Cpu));
    assert_eq!(quota_of(&cg, backfill), Some(full / 10));

    // t0 + release/2: a memory event. Where the host has memory to spare (the usual case
    // here) it squeezes nothing; where it is short, it squeezes memory only. Either way it
    // says nothing about CPU.
    clock.advance(release / 2);
    let mem_squeezed = s.on_pressure(Resource::Memory);
    assert_eq!(mem_squeezed, super::pressure::host_low_on_memory());
    s.poll_exits();
    assert_eq!(quota_of(&cg, backfill), Some(full / 10), "still squeezed");

    // t0 + release: the CPU squeeze is lifted, not at t0 + release + release/2.
    clock.advance(release - release / 2 - 1);
    s.poll_exits();
    assert_eq!(
        quota_of(&cg, backfill),
        Some(full / 10),
        "held until release"
    );
    clock.advance(1);
    assert!(s.poll_exits(), "the CPU squeeze is lifted at t0 + release");
    assert_eq!(quota_of(&cg, backfill), Some(full), "CPU back");
    assert_eq!(
        s.squeezing(),
        mem_squeezed,
        "a memory squeeze keeps its own time"
    );
    if mem_squeezed {
        clock.advance(release / 2);
        assert!(s.poll_exits());
        assert!(!s.squeezing());
    }
    s.stop_all();
}
