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
