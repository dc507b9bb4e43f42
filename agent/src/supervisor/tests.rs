//! The supervisor against recorded cgroups and real processes.
#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use crate::cgroups::{Call, RecordingCgroups};
use backfill_shared::Workload;
use backfill_shared::clock::ManualClock;
use std::time::{Duration, Instant};

pub(super) fn desired(generation: u64, servers: &[(ServerId, f64)]) -> DesiredState {
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
                    ..Default::default()
                }),
                incarnation: 1,
                termination: None,
                guest: profile(*id),
                shutdown: None,
                gpus: Vec::new(),
            })
            .collect(),
        keep: Vec::new(),
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

pub(super) fn supervisor(dir: &std::path::Path, cg: RecordingCgroups) -> Supervisor {
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
        backfill_shared::ServerClass::Backfill,
        &crate::cgroups::CpuPolicy::default(),
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
fn a_memory_squeeze_holds_the_hard_limit_above_usage_until_it_comes_down() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let mut s = supervisor(dir.path(), cg.clone());
    let id = ServerId::from_u128(11);
    s.apply(&desired(1, &[(id, 1.0)]));
    let using = |bytes: u64| backfill_shared::protocol::ServerUsage {
        mem_usage_bytes: bytes,
        ..Default::default()
    };
    cg.set_usage(&id, using(200 << 20));
    // Squeezed to a quarter (64 MiB) while it uses 200 MiB: it keeps running, reclaim starts
    // at 64 MiB, and the hard limit stays just above its usage.
    s.apply(&desired(2, &[(id, 0.25)]));
    let limits = cg.limits(&id).unwrap();
    assert_eq!(limits.mem_high_bytes, Some(64 << 20));
    assert_eq!(limits.mem_limit_bytes, Some(201 << 20));
    assert_eq!(s.report().servers[0].state, WorkloadState::Running);
    // Each round tries again while it still uses more.
    cg.take_calls();
    s.poll_exits();
    assert!(
        cg.take_calls()
            .iter()
            .any(|c| matches!(c, Call::SetLimits(i, _) if *i == id))
    );
    // It gave memory back: the hard limit reaches its target, and the rounds stop.
    cg.set_usage(&id, using(10 << 20));
    s.poll_exits();
    assert_eq!(cg.limits(&id).unwrap().mem_limit_bytes, Some(64 << 20));
    cg.take_calls();
    s.poll_exits();
    assert!(
        !cg.take_calls()
            .iter()
            .any(|c| matches!(c, Call::SetLimits(..)))
    );
    s.apply(&desired(3, &[]));
}

#[test]
fn a_workload_the_oom_killer_ended_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let mut s = supervisor(dir.path(), cg.clone());
    let id = ServerId::from_u128(12);
    let mut d = desired(1, &[(id, 0.5)]);
    // Killed with SIGKILL, as the OOM killer does.
    d.servers[0].workload = Some(Workload {
        command: vec!["sh".into(), "-c".into(), "sleep 0.2; kill -9 $$".into()],
        env: Default::default(),
        network: Default::default(),
        ..Default::default()
    });
    s.apply(&d);
    cg.set_oom_kills(&id, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.poll_exits() {
        assert!(Instant::now() < deadline, "exit not noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    match &s.report().servers[0].state {
        WorkloadState::Failed { reason } => {
            assert!(
                reason.contains("OOM killer") && reason.contains("134217728"),
                "{reason}"
            );
        }
        other => panic!("expected a failure naming the OOM killer, got {other:?}"),
    }
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
        ..Default::default()
    });
    d.servers[1].workload = Some(Workload {
        command: vec!["/no/such/program".into()],
        env: Default::default(),
        network: Default::default(),
        ..Default::default()
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
        w.network = Some(backfill_shared::NetworkMode::Isolated);
    }
    s.apply(&d);
    match &s.report().servers[0].state {
        WorkloadState::Failed { reason } => {
            assert!(reason.contains("isolated network"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

fn isolated(generation: u64, id: ServerId) -> DesiredState {
    let mut d = desired(generation, &[(id, 1.0)]);
    if let Some(w) = d.servers[0].workload.as_mut() {
        w.network = Some(backfill_shared::NetworkMode::Isolated);
    }
    d
}

fn wait_dead(process: &ProcessIdentity) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while driver::alive(process) {
        assert!(Instant::now() < deadline, "the workload survived");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_readopted_isolated_server_whose_network_cannot_be_rebuilt_fails_and_stops() {
    // The state file says the workload has a network; this agent process cannot make one
    // (here: no isolated networking at all). It must not be reported running without it.
    let dir = tempfile::tempdir().unwrap();
    let id = ServerId::from_u128(7);
    let mut first = supervisor(dir.path(), RecordingCgroups::default());
    first.apply(&desired(1, &[(id, 1.0)]));
    let pid = first.report().servers[0].pid.unwrap();
    let process = ProcessIdentity::of(pid).unwrap();
    drop(first);
    let mut recorded = StateFile::new(dir.path()).load().unwrap();
    recorded[0].network = Some(GuestNet {
        slot: 0,
        address: "10.250.90.2".parse().unwrap(),
        host_address: "10.250.90.1".parse().unwrap(),
        netns: "bf-000000-gone".into(),
        host_if: "bf000000-0".into(),
    });
    StateFile::new(dir.path()).save(&recorded).unwrap();

    let mut second = supervisor(dir.path(), RecordingCgroups::default());
    second.adopt().unwrap();
    match &second.report().servers[0].state {
        WorkloadState::Failed { reason } => {
            assert!(reason.contains("network was lost"), "{reason}");
            assert!(reason.contains("isolated network mode"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(second.report().servers[0].network.is_none());
    wait_dead(&process);
    assert!(StateFile::new(dir.path()).load().unwrap().is_empty());
}

fn networks_usable() -> bool {
    let root = crate::driver::running_as_root();
    let has_ip = std::process::Command::new("ip").arg("-V").output().is_ok();
    if !root || !has_ip {
        eprintln!("SKIP: isolated networks need root and iproute2 (root={root}, ip={has_ip})");
    }
    root && has_ip
}

/// Real isolated networking on `pool` for the agent called `host`.
fn ip_networks(pool: &str, table: u32, host: &str) -> Box<crate::network::IpNetworks> {
    let tag = crate::network::NetTag::for_host(&format!("{host}-{}", std::process::id()));
    Box::new(crate::network::IpNetworks::new(pool.parse().unwrap(), None, table, tag).unwrap())
}

#[test]
fn agents_sharing_a_pool_give_their_guests_different_slots() {
    if !networks_usable() {
        return;
    }
    // Dev mode's local agents all use the default pool.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = supervisor(da.path(), RecordingCgroups::default()).with_networks(ip_networks(
        "10.250.92.0/29",
        25_092,
        "share-a",
    ));
    let mut b = supervisor(db.path(), RecordingCgroups::default()).with_networks(ip_networks(
        "10.250.92.0/29",
        25_093,
        "share-b",
    ));
    a.apply(&isolated(1, ServerId::from_u128(9)));
    b.apply(&isolated(1, ServerId::from_u128(10)));
    let address = |s: &Supervisor| {
        let r = s.report();
        assert_eq!(r.servers[0].state, WorkloadState::Running, "{r:?}");
        r.servers[0].network.as_ref().unwrap().address
    };
    assert_eq!(address(&a).to_string(), "10.250.92.2");
    assert_eq!(address(&b).to_string(), "10.250.92.6");
    // A restarted agent sharing the pool keeps the other's guest, and its own.
    drop(a);
    let mut a = supervisor(da.path(), RecordingCgroups::default()).with_networks(ip_networks(
        "10.250.92.0/29",
        25_092,
        "share-a",
    ));
    a.adopt().unwrap();
    assert_eq!(address(&a).to_string(), "10.250.92.2");
    assert_eq!(address(&b).to_string(), "10.250.92.6");
    let netns = |s: &Supervisor| s.report().servers[0].network.clone().unwrap().netns;
    let (na, nb) = (netns(&a), netns(&b));
    for n in [&na, &nb] {
        assert!(std::path::Path::new("/run/netns").join(n).exists(), "{n}");
    }
    a.stop_all();
    b.stop_all();
    for n in [&na, &nb] {
        assert!(!std::path::Path::new("/run/netns").join(n).exists(), "{n}");
    }
}

#[test]
fn a_running_guest_whose_network_is_removed_gets_it_back_or_fails_saying_why() {
    if !networks_usable() {
        return;
    }
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut s = supervisor(dir.path(), RecordingCgroups::default()).with_networks(ip_networks(
        "10.250.93.0/29",
        25_094,
        "heal",
    ));
    s.apply(&isolated(1, ServerId::from_u128(11)));
    let r = s.report();
    assert_eq!(r.servers[0].state, WorkloadState::Running, "{r:?}");
    let netns = r.servers[0].network.as_ref().unwrap().netns.clone();
    let pid = r.servers[0].pid.unwrap();
    let process = ProcessIdentity::of(pid).unwrap();
    let host_if = StateFile::new(dir.path()).load().unwrap()[0]
        .network
        .clone()
        .unwrap()
        .host_if;
    // Someone removes the namespace's name while the agent runs: it is given back.
    assert!(ip(&["netns", "del", &netns]).success());
    assert!(!s.poll_exits(), "nothing failed");
    let identify = std::process::Command::new("ip")
        .args(["netns", "identify", &pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&identify.stdout).trim(), netns);
    // Then its veth, and its address is taken by another interface meanwhile: the guest
    // cannot have its network back, so it is stopped and reported failed.
    let squatter = format!("bfh{}", std::process::id());
    assert!(ip(&["link", "del", &host_if]).success());
    let peer = format!("{squatter}p");
    assert!(
        ip(&[
            "link", "add", &squatter, "type", "veth", "peer", "name", &peer
        ])
        .success()
    );
    assert!(ip(&["addr", "add", "10.250.93.1/30", "dev", &squatter]).success());
    let changed = s.poll_exits();
    let state = s.report().servers[0].state.clone();
    ip(&["link", "del", &squatter]);
    assert!(changed);
    match state {
        WorkloadState::Failed { reason } => {
            assert!(reason.contains("network was removed"), "{reason}");
            assert!(reason.contains(&squatter), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    wait_dead(&process);
    assert!(!std::path::Path::new("/run/netns").join(&netns).exists());
    assert!(StateFile::new(dir.path()).load().unwrap().is_empty());
}

#[test]
fn a_readopted_isolated_server_gets_its_removed_network_back() {
    if !networks_usable() {
        return;
    }
    let nets = || ip_networks("10.250.91.0/29", 25_091, "sup");
    let dir = tempfile::tempdir().unwrap();
    let id = ServerId::from_u128(8);
    let mut first = supervisor(dir.path(), RecordingCgroups::default()).with_networks(nets());
    first.apply(&isolated(1, id));
    let r = first.report();
    assert_eq!(r.servers[0].state, WorkloadState::Running, "{r:?}");
    let netns = r.servers[0].network.as_ref().unwrap().netns.clone();
    let process = ProcessIdentity::of(r.servers[0].pid.unwrap()).unwrap();
    drop(first);
    // What another agent used to do to it while this one was away.
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap()
    };
    assert!(ip(&["netns", "del", &netns]).success());
    let host_if = StateFile::new(dir.path()).load().unwrap()[0]
        .network
        .clone()
        .unwrap()
        .host_if;
    assert!(ip(&["link", "del", &host_if]).success());

    let mut second = supervisor(dir.path(), RecordingCgroups::default()).with_networks(nets());
    second.adopt().unwrap();
    second.apply(&isolated(2, id));
    let r = second.report();
    assert_eq!(r.servers[0].state, WorkloadState::Running, "{r:?}");
    assert_eq!(r.servers[0].pid, Some(process.pid));
    let addr = std::process::Command::new("ip")
        .args(["-n", &netns, "-4", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains("10.250.91.2/30"),
        "{addr:?}"
    );
    let identify = std::process::Command::new("ip")
        .args(["netns", "identify", &process.pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&identify.stdout).trim(), netns);
    second.stop_all();
    wait_dead(&process);
    assert!(!std::path::Path::new("/run/netns").join(&netns).exists());
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&host_if)
            .exists()
    );
}

// ---- GPUs ----

use crate::discovery::{FakeGpus, GpuMonitor, GpuScan};
use backfill_shared::{GpuDevice, GpuUsage};

fn gpu_monitor(scan: GpuScan) -> Arc<GpuMonitor> {
    Arc::new(GpuMonitor::start(Box::new(FakeGpus::from_scan(scan))).unwrap())
}

fn three_gpus() -> GpuScan {
    GpuScan {
        devices: ["GPU-a", "GPU-b", "GPU-c"]
            .iter()
            .zip(0..)
            .map(|(u, i)| GpuDevice::whole(i, u, "NVIDIA T4", 16 << 30, ""))
            .collect(),
        usage: vec![GpuUsage {
            uuid: "GPU-a".into(),
            utilization_percent: 12,
            memory_used_bytes: 34,
        }],
        ..GpuScan::default()
    }
}

/// A workload that prints what it was told to see, then waits.
fn show_gpus() -> Workload {
    Workload {
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo \"cuda=[$CUDA_VISIBLE_DEVICES] nvidia=[$NVIDIA_VISIBLE_DEVICES]\"; exec sleep 30"
                .into(),
        ],
        // What the workload asks for is overridden.
        env: [
            ("CUDA_VISIBLE_DEVICES".to_string(), "0,1,2".to_string()),
            ("NVIDIA_VISIBLE_DEVICES".to_string(), "all".to_string()),
        ]
        .into(),
        network: Default::default(),
        ..Default::default()
    }
}

/// The first line the workload of `id` logged, waiting for it with a deadline.
fn first_line(dir: &std::path::Path, id: ServerId) -> String {
    let log = dir.join("logs").join(format!("{id}.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some((line, _)) = text.split_once('\n') {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "{} stays empty", log.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_workload_sees_exactly_its_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let mut s = supervisor(dir.path(), cg.clone()).with_gpus(gpu_monitor(three_gpus()));
    s.proc_devices = dir.path().join("proc-devices");
    std::fs::write(
        &s.proc_devices,
        "Character devices:\n195 nvidia\n236 nvidia-uvm\n\nBlock devices:\n",
    )
    .unwrap();
    let (two, none, gone) = (
        ServerId::from_u128(21),
        ServerId::from_u128(22),
        ServerId::from_u128(23),
    );
    let mut d = desired(1, &[(two, 1.0), (none, 1.0), (gone, 1.0)]);
    for server in &mut d.servers {
        server.workload = Some(show_gpus());
    }
    d.servers[0].gpus = vec!["GPU-c".into(), "GPU-a".into()];
    d.servers[2].gpus = vec!["GPU-z".into()];
    s.apply(&d);

    assert_eq!(
        first_line(dir.path(), two),
        "cuda=[GPU-c,GPU-a] nvidia=[GPU-c,GPU-a]"
    );
    assert_eq!(first_line(dir.path(), none), "cuda=[] nvidia=[void]");
    let r = s.report();
    match &r.servers[2].state {
        WorkloadState::Failed { reason } => assert!(
            reason.contains("GPU \"GPU-z\" is not on this host (it has GPU-a, GPU-b, GPU-c)"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }

    // Device files: the two GPUs (minors 0 and 2) and the control devices allowed, GPU-b's
    // and every other minor denied.
    let rules = cg.device_rules(&two).unwrap();
    let allowed: Vec<String> = rules
        .iter()
        .filter(|r| r.allow)
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        allowed,
        [
            "c 195:0 rwm",
            "c 195:2 rwm",
            "c 195:254 rwm",
            "c 195:255 rwm",
            "c 236:* rwm"
        ]
    );
    let denied: Vec<String> = rules
        .iter()
        .filter(|r| !r.allow)
        .map(ToString::to_string)
        .collect();
    assert_eq!(denied.len(), 252);
    assert!(denied.contains(&"c 195:1 rwm".to_string()));
    assert!(!denied.contains(&"c 195:0 rwm".to_string()));
    let rules = cg.device_rules(&none).unwrap();
    assert_eq!(rules.len(), 254);
    assert!(rules.iter().all(|r| !r.allow), "{rules:?}");

    // Every report carries the GPUs as last read.
    assert_eq!(r.gpus, three_gpus().devices);
    assert_eq!(r.gpu_usage, three_gpus().usage);
    s.stop_all();
}

#[test]
fn a_host_without_gpus_writes_no_device_rules() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let mut s = supervisor(dir.path(), cg.clone()).with_gpus(gpu_monitor(GpuScan::default()));
    let id = ServerId::from_u128(24);
    let mut d = desired(1, &[(id, 1.0)]);
    d.servers[0].workload = Some(show_gpus());
    s.apply(&d);
    assert_eq!(first_line(dir.path(), id), "cuda=[] nvidia=[void]");
    assert_eq!(cg.device_rules(&id), Some(vec![]));
    let r = s.report();
    assert!(r.gpus.is_empty() && r.gpu_usage.is_empty());
    s.stop_all();
}

#[test]
fn a_refused_device_rule_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let mut s = supervisor(dir.path(), cg.clone()).with_gpus(gpu_monitor(three_gpus()));
    let id = ServerId::from_u128(25);
    let mut d = desired(1, &[(id, 1.0)]);
    d.servers[0].gpus = vec!["GPU-b".into()];
    cg.fail_next("restrict_devices");
    s.apply(&d);
    match &s.report().servers[0].state {
        WorkloadState::Failed { reason } => {
            assert!(reason.contains("restricting GPU device files"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(cg.list().unwrap().is_empty(), "its cgroup is removed");
}

#[test]
fn a_class_change_relimits_the_running_workload_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let cg = RecordingCgroups::default();
    let mut s = supervisor(dir.path(), cg.clone());
    let id = ServerId::from_u128(21);
    s.apply(&desired(1, &[(id, 1.0)]));
    assert_eq!(
        cg.limits(&id).unwrap().cpu_weight,
        crate::cgroups::CpuWeight::Idle
    );
    cg.take_calls();
    let mut d = desired(2, &[(id, 1.0)]);
    d.servers[0].guest.class = backfill_shared::ServerClass::Normal;
    // A failed move is tried again at the next apply.
    cg.fail_next("set_limits");
    s.apply(&d);
    assert_eq!(
        cg.limits(&id).unwrap().cpu_weight,
        crate::cgroups::CpuWeight::Idle
    );
    cg.take_calls();
    d.generation = 3;
    s.apply(&d);
    let calls = cg.take_calls();
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, Call::SetLimits(i, l) if *i == id
            && matches!(l.cpu_weight, crate::cgroups::CpuWeight::Weight(_)))),
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Create(..) | Call::Remove(..) | Call::KillAll(..))),
        "no restart: {calls:?}"
    );
    assert_eq!(s.report().servers[0].state, WorkloadState::Running);
    s.apply(&desired(4, &[]));
}
