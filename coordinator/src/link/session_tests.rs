//! The coordinator's side of the link without sockets: registration, reports, generations.

use crate::domain::account::Account;
use crate::policy::scheduler::Plan;
use crate::state::coordinator::{Coordinator, NewServer, OpError, Scope};
use backfill_shared::Clock;
use backfill_shared::clock::ManualClock;
use backfill_shared::protocol::{
    AppliedLimits, Hello, HostUsage, ObservedServer, Report, ServerUsage, WorkloadState,
};
use backfill_shared::{HostId, HostInventory, PerfFactor, ServerClass, ServerId, ServerStatus};
use std::sync::Arc;

pub(crate) struct Fixture {
    pub(crate) c: Coordinator,
    pub(crate) tenant: Account,
    _dir: tempfile::TempDir,
}

pub(crate) async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::testing::open_in(dir.path()).await;
    let c = Coordinator::load(
        store,
        Arc::new(ManualClock::new(1_000)),
        &["t".into()],
        Default::default(),
    )
    .await
    .unwrap()
    .with_driver_access(crate::state::access::DriverAccess::dev());
    let tenant = c.account("t").await.unwrap();
    Fixture {
        c,
        tenant,
        _dir: dir,
    }
}

pub(crate) fn hello(host: &str) -> Hello {
    Hello {
        protocol_version: 1,
        host_id: host.parse().unwrap(),
        agent_version: "t".into(),
        inventory: HostInventory {
            hostname: host.into(),
            cpus: 4,
            cpu_mhz_per_cpu: 1000,
            mem_bytes: 8 << 30,
            gpus: vec![],
            drivers: backfill_shared::Drivers::exec_only(),
            mechanisms: Vec::new(),
        },
        enforcing: true,
    }
}

pub(crate) fn new_server() -> NewServer {
    NewServer {
        drives: Vec::new(),
        name: "s".into(),
        cpu: 1000,
        smp: 1,
        mem: 1 << 30,
        meta: Default::default(),
        tags: vec![],
        vnc_password: None,
        workload: None,
        priority: 0,
        flavor: None,
        preemptible: false,
        device_profile: None,
        gpu_request: None,
    }
}

pub(crate) fn report(generation: u64, servers: &[(ServerId, u64, WorkloadState)]) -> Report {
    Report {
        gpus: Vec::new(),
        gpu_usage: Vec::new(),
        applied_generation: generation,
        servers: servers
            .iter()
            .map(|(id, incarnation, state)| ObservedServer {
                server: *id,
                incarnation: *incarnation,
                state: state.clone(),
                pid: Some(42),
                started_at: Some(990),
                perf_factor: PerfFactor::FULL,
                limits: AppliedLimits::default(),
                usage: ServerUsage::default(),
                network: None,
                acknowledged: false,
            })
            .collect(),
        usage: HostUsage::default(),
    }
}

pub(crate) async fn server(f: &Fixture, id: ServerId) -> crate::domain::server::ServerRecord {
    f.c.get_server(&f.tenant, Scope::BServers, id)
        .await
        .unwrap()
}

async fn status(f: &Fixture, id: ServerId) -> ServerStatus {
    server(f, id).await.status
}

#[tokio::test]
async fn a_server_runs_when_its_agent_says_so_and_stops_when_it_is_gone() {
    let f = fixture().await;
    let (conn, mut rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    let id = start_one(&f).await;
    assert!(rx.has_changed().unwrap());
    let desired = rx.borrow_and_update().clone();
    assert_eq!(desired.servers.len(), 1);
    assert_eq!(status(&f, id).await, ServerStatus::Starting);

    // A report from before the agent saw the server says nothing about it.
    let host = "h1".parse().unwrap();
    f.c.apply_report(&host, conn, report(desired.generation - 1, &[]))
        .await
        .unwrap();
    assert_eq!(status(&f, id).await, ServerStatus::Starting);

    let run = incarnation(&f, id).await;
    assert_eq!(run, desired.generation);
    f.c.apply_report(
        &host,
        conn,
        report(desired.generation, &[(id, run, WorkloadState::Running)]),
    )
    .await
    .unwrap();
    let s =
        f.c.get_server(&f.tenant, Scope::BServers, id)
            .await
            .unwrap();
    assert_eq!(
        (s.status, s.active_since),
        (ServerStatus::Running, Some(990))
    );

    f.c.stop(&f.tenant, Scope::BServers, id).await.unwrap();
    assert_eq!(status(&f, id).await, ServerStatus::Stopping);
    let after_stop = rx.borrow_and_update().clone();
    assert!(after_stop.servers.is_empty() && after_stop.generation > desired.generation);
    // Still reported by an agent that has not caught up: still stopping.
    f.c.apply_report(
        &host,
        conn,
        report(desired.generation, &[(id, run, WorkloadState::Running)]),
    )
    .await
    .unwrap();
    assert_eq!(status(&f, id).await, ServerStatus::Stopping);
    f.c.apply_report(&host, conn, report(after_stop.generation, &[]))
        .await
        .unwrap();
    let s =
        f.c.get_server(&f.tenant, Scope::BServers, id)
            .await
            .unwrap();
    assert_eq!((s.status, s.host), (ServerStatus::Stopped, None));
}

#[tokio::test]
async fn an_exited_workload_stops_its_server_and_leaves_the_desired_state() {
    let f = fixture().await;
    let (conn, mut rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    let id = start_one(&f).await;
    let generation = rx.borrow_and_update().generation;
    let host = "h1".parse().unwrap();
    let first_run = incarnation(&f, id).await;
    let exited = WorkloadState::Exited { code: Some(0) };
    let stale = report(generation, &[(id, first_run, exited.clone())]);
    f.c.apply_report(&host, conn, stale.clone()).await.unwrap();
    assert_eq!(status(&f, id).await, ServerStatus::Stopped);
    let desired = rx.borrow_and_update().clone();
    assert!(desired.servers.is_empty() && desired.generation > generation);

    // Started again at once: a late copy of that report cannot stop the new run.
    f.c.start(&f.tenant, Scope::BServers, id).await.unwrap();
    let second_run = incarnation(&f, id).await;
    assert!(second_run > first_run);
    f.c.apply_report(&host, conn, stale).await.unwrap();
    assert_eq!(
        status(&f, id).await,
        ServerStatus::Starting,
        "a stale exit undid a start"
    );
    let now = rx.borrow_and_update().generation;
    let running = report(now, &[(id, second_run, WorkloadState::Running)]);
    f.c.apply_report(&host, conn, running).await.unwrap();
    assert_eq!(status(&f, id).await, ServerStatus::Running);
}

#[tokio::test]
async fn a_run_that_ends_says_why_on_the_server_until_it_starts_again() {
    let f = fixture().await;
    let (conn, mut rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    let host = "h1".parse().unwrap();
    let id = start_one(&f).await;
    let reason = "killed by the kernel's OOM killer (1 process(es)): it needed more";
    let g = rx.borrow_and_update().generation;
    let run = incarnation(&f, id).await;
    let failed = WorkloadState::Failed {
        reason: reason.into(),
    };
    f.c.apply_report(&host, conn, report(g, &[(id, run, failed)]))
        .await
        .unwrap();
    let s = server(&f, id).await;
    assert_eq!(s.status, ServerStatus::Stopped);
    assert_eq!(
        s.stop_reason,
        Some(format!("its last start on h1 failed: {reason}"))
    );

    f.c.start(&f.tenant, Scope::BServers, id).await.unwrap();
    assert_eq!(
        server(&f, id).await.stop_reason,
        None,
        "a new run has no reason yet"
    );
    let g = rx.borrow_and_update().generation;
    let run = incarnation(&f, id).await;
    let exited = WorkloadState::Exited { code: Some(3) };
    f.c.apply_report(&host, conn, report(g, &[(id, run, exited)]))
        .await
        .unwrap();
    assert_eq!(
        server(&f, id).await.stop_reason.as_deref(),
        Some("the workload exited with code 3")
    );
}

#[tokio::test]
async fn a_superseded_session_cannot_change_anything() {
    let f = fixture().await;
    let (old, _old_rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    let (new, mut rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    assert_ne!(old, new);
    let id = start_one(&f).await;
    let generation = rx.borrow_and_update().generation;
    let host = "h1".parse().unwrap();
    f.c.apply_report(&host, old, report(generation, &[]))
        .await
        .unwrap();
    assert_eq!(status(&f, id).await, ServerStatus::Starting);
    f.c.agent_gone(&host, old).await;
    assert!(f.c.host_connected(&host).await);
    f.c.agent_gone(&host, new).await;
    assert!(!f.c.host_connected(&host).await);
}

#[tokio::test]
async fn generations_survive_a_coordinator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let first = {
        let c = Coordinator::load(
            crate::store::testing::open_in(dir.path()).await,
            clock.clone(),
            &[],
            Default::default(),
        )
        .await
        .unwrap();
        let (_, rx) = c.register_agent(&hello("h1")).await.unwrap();
        let g = rx.borrow().generation;
        c.store.close().await;
        g
    };
    let c = Coordinator::load(
        crate::store::testing::open_in(dir.path()).await,
        clock,
        &[],
        Default::default(),
    )
    .await
    .unwrap();
    assert!(
        !c.host_connected(&"h1".parse().unwrap()).await,
        "down until its agent returns"
    );
    let (_, rx) = c.register_agent(&hello("h1")).await.unwrap();
    assert!(rx.borrow().generation > first);
}

/// Creates one default backfill server and starts it.
pub(crate) async fn start_one(f: &Fixture) -> ServerId {
    let id =
        f.c.create_servers(&f.tenant, ServerClass::Backfill, vec![new_server()])
            .await
            .unwrap()[0]
            .uuid;
    f.c.start(&f.tenant, Scope::BServers, id).await.unwrap();
    id
}

async fn incarnation(f: &Fixture, id: ServerId) -> u64 {
    server(f, id).await.incarnation
}

#[tokio::test]
async fn the_api_shows_the_perf_factor_the_agent_has_in_force() {
    let f = fixture().await;
    let (conn, mut rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    let id = start_one(&f).await;
    let generation = rx.borrow_and_update().generation;
    let run = incarnation(&f, id).await;
    let mut r = report(generation, &[(id, run, WorkloadState::Running)]);
    r.servers[0].perf_factor = PerfFactor { cpu: 0.5, mem: 0.8 };
    f.c.apply_report(&"h1".parse().unwrap(), conn, r)
        .await
        .unwrap();
    let seen =
        f.c.get_server(&f.tenant, Scope::BServers, id)
            .await
            .unwrap();
    assert_eq!(seen.perf_factor, PerfFactor { cpu: 0.5, mem: 0.8 });
    // An observation of another run (in a report from before this run) says nothing of it.
    let mut stale = report(generation - 1, &[(id, run + 7, WorkloadState::Running)]);
    stale.servers[0].perf_factor = PerfFactor { cpu: 0.2, mem: 0.2 };
    f.c.apply_report(&"h1".parse().unwrap(), conn, stale)
        .await
        .unwrap();
    let seen =
        f.c.get_server(&f.tenant, Scope::BServers, id)
            .await
            .unwrap();
    assert_eq!(seen.perf_factor.cpu, 0.5);
}

#[tokio::test]
async fn the_queue_starts_higher_priority_first_then_older() {
    let f = fixture().await;
    let (conn, mut rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    let host = "h1".parse().unwrap();
    let make = |cpu: u64, priority: i32| NewServer {
        cpu,
        priority,
        ..new_server()
    };
    let ids: Vec<ServerId> =
        f.c.create_servers(
            &f.tenant,
            ServerClass::Backfill,
            vec![make(3_000, 0), make(3_000, 0), make(3_000, 5)],
        )
        .await
        .unwrap()
        .iter()
        .map(|s| s.uuid)
        .collect();
    let (a, old, urgent) = (ids[0], ids[1], ids[2]);
    for id in [a, old, urgent] {
        f.c.start(&f.tenant, Scope::BServers, id).await.unwrap();
    }
    // Only the first fits on the 4,000 MHz host; the others wait, saying why.
    let waiting =
        f.c.get_server(&f.tenant, Scope::BServers, old)
            .await
            .unwrap();
    assert_eq!(waiting.status, ServerStatus::Starting);
    assert!(waiting.host.is_none() && waiting.queued_reason.is_some());
    // The first one ends; the next tick starts the higher-priority one, not the older one.
    let generation = rx.borrow_and_update().generation;
    let run = incarnation(&f, a).await;
    let exited = WorkloadState::Exited { code: Some(0) };
    f.c.apply_report(&host, conn, report(generation, &[(a, run, exited)]))
        .await
        .unwrap();
    f.c.tick(1_000).await.unwrap();
    let urgent =
        f.c.get_server(&f.tenant, Scope::BServers, urgent)
            .await
            .unwrap();
    assert_eq!(urgent.host, Some(host.clone()), "{urgent:?}");
    let old =
        f.c.get_server(&f.tenant, Scope::BServers, old)
            .await
            .unwrap();
    assert!(old.host.is_none() && old.queued_reason.is_some());
}

/// What production does to the model's cluster when it starts a server is exactly what the
/// scheduler's own `apply` (the one the property tests and `simulate` check) does to a copy of
/// it, here for a normal server that needs backfill downsized to fit; and the records it
/// commits say the same.
#[tokio::test]
async fn starting_applies_the_schedulers_own_plan_and_records_what_it_did() {
    let f = fixture().await;
    f.c.register_agent(&hello("h1")).await.unwrap();
    let backfill: Vec<ServerId> =
        f.c.create_servers(&f.tenant, ServerClass::Backfill, vec![new_server(); 4])
            .await
            .unwrap()
            .iter()
            .map(|s| s.uuid)
            .collect();
    for id in &backfill {
        f.c.start(&f.tenant, Scope::BServers, *id).await.unwrap();
    }
    let normal = NewServer {
        cpu: 2_000,
        ..new_server()
    };
    let id =
        f.c.create_servers(&f.tenant, ServerClass::Normal, vec![normal])
            .await
            .unwrap()[0]
            .uuid;
    let now = f.c.clock.now();
    let (expected, plan) = {
        let model = f.c.model.read().await;
        let mut cluster = model.cluster.clone();
        let policy = crate::policy::scheduler::Policy {
            strategy: f.c.settings.strategy,
        };
        let plan = crate::policy::scheduler::plan(&cluster, id, &policy, now);
        crate::policy::scheduler::apply(&mut cluster, id, &plan, now).unwrap();
        (cluster, plan)
    };
    let touched = match &plan {
        Plan::Place { downsize, .. } => downsize.len(),
        Plan::Preempt {
            downsize,
            terminate,
            ..
        } => downsize.len() + terminate.len(),
        other => panic!("a normal server on a full host must make room: {other:?}"),
    };
    assert!(touched > 0, "the plan must change backfill: {plan:?}");
    f.c.start(&f.tenant, Scope::Servers, id).await.unwrap();
    let model = f.c.model.read().await;
    for sid in backfill.iter().chain(std::iter::once(&id)) {
        assert_eq!(
            model.cluster.placed(*sid),
            expected.placed(*sid),
            "server {sid}"
        );
        let record = &model.servers[sid];
        if let Some(p) = expected.placed(*sid) {
            assert_eq!(record.perf_factor, p.perf_factor, "server {sid}");
            assert_eq!(record.termination, p.termination, "server {sid}");
            assert_eq!(record.host.as_ref(), Some(&p.host), "server {sid}");
        }
    }
}

#[tokio::test]
async fn an_acknowledged_termination_ends_the_server_early_and_durably() {
    let f = fixture().await;
    let h1: HostId = "h1".parse().unwrap();
    let (conn, mut rx) = f.c.register_agent(&hello("h1")).await.unwrap();
    let id = start_one(&f).await;
    let run = incarnation(&f, id).await;
    let generation = rx.borrow_and_update().generation;
    let mut r = report(generation, &[(id, run, WorkloadState::Running)]);
    r.servers[0].network = Some(backfill_shared::GuestNetwork {
        address: "10.213.0.2".parse().unwrap(),
        netns: format!("bf-{id}"),
    });
    f.c.apply_report(&h1, conn, r.clone()).await.unwrap();
    let seen = server(&f, id).await;
    assert_eq!(seen.status, ServerStatus::Running);
    assert_eq!(seen.network.as_ref().unwrap().netns, format!("bf-{id}"));
    let d = rx.borrow_and_update().clone();
    assert_eq!(d.servers[0].guest.account, "t");
    assert_eq!(d.servers[0].guest.instance_type, "backfill-c1m1");

    // An acknowledgement without a scheduled termination is not a reason to stop anything.
    r.servers[0].acknowledged = true;
    f.c.apply_report(&h1, conn, r.clone()).await.unwrap();
    assert_eq!(status(&f, id).await, ServerStatus::Running);

    {
        let mut model = f.c.model.write().await;
        let mut s = model.servers[&id].clone();
        s.termination = Some(backfill_shared::Termination {
            scheduled_at: 1_000,
            terminate_at: 1_600,
        });
        f.c.commit(&mut model, vec![s], std::slice::from_ref(&h1))
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
    }
    f.c.apply_report(&h1, conn, r.clone()).await.unwrap();
    let ended = server(&f, id).await;
    assert_eq!(ended.status, ServerStatus::Stopped);
    assert_eq!((ended.termination, ended.host), (None, None));
    assert!(
        rx.borrow_and_update().servers.is_empty(),
        "it leaves the desired state"
    );
    // Repeated (the agent repeats it until the server leaves its desired state): no change.
    f.c.apply_report(&h1, conn, r).await.unwrap();
    assert_eq!(status(&f, id).await, ServerStatus::Stopped);
    // Durable: a coordinator loaded from the same store agrees.
    let again = f.c.store.servers().await.unwrap();
    assert_eq!(
        again.iter().find(|s| s.uuid == id).unwrap().status,
        ServerStatus::Stopped
    );
}

#[test]
fn hostnames_are_dns_labels() {
    let id = ServerId::from_u128(0xabcdef);
    assert_eq!(
        crate::state::model::hostname_of("My Server #1", id),
        "my-server-1"
    );
    assert_eq!(
        crate::state::model::hostname_of("---", id),
        "server-00000000"
    );
    assert_eq!(
        crate::state::model::hostname_of(&"x".repeat(100), id).len(),
        63
    );
}

async fn usage_of(c: &Coordinator) -> Vec<crate::domain::usage::UsageRow> {
    let f = crate::domain::usage::UsageFilter {
        account: Some("t".into()),
        start: 0,
        end: 10_000,
    };
    c.usage(&f).await.unwrap()
}

/// A coordinator over an existing database directory (a restart).
async fn reopen(dir: &std::path::Path, clock: Arc<ManualClock>) -> Coordinator {
    let store = crate::store::testing::open_in(dir).await;
    Coordinator::load(store, clock, &["t".into()], Default::default())
        .await
        .unwrap()
        .with_driver_access(crate::state::access::DriverAccess::dev())
}

#[tokio::test]
async fn usage_follows_the_perf_factor_in_force_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let h1: HostId = "h1".parse().unwrap();
    let c = reopen(dir.path(), clock.clone()).await;
    let tenant = c.account("t").await.unwrap();
    let (conn, mut rx) = c.register_agent(&hello("h1")).await.unwrap();
    let id = c
        .create_servers(&tenant, ServerClass::Backfill, vec![new_server()])
        .await
        .unwrap()[0]
        .uuid;
    c.start(&tenant, Scope::BServers, id).await.unwrap();
    let generation = rx.borrow_and_update().generation;
    let run = c
        .get_server(&tenant, Scope::BServers, id)
        .await
        .unwrap()
        .incarnation;
    // Running from t=1000 (the agent's started_at is 990, but it was placed at 1000... the
    // agent says when it really started, and that is when metering starts).
    let mut r = report(generation, &[(id, run, WorkloadState::Running)]);
    r.servers[0].started_at = Some(1_000);
    c.apply_report(&h1, conn, r.clone()).await.unwrap();
    // 100 s at full size, then the agent has 0.5 in force for 100 s.
    clock.advance(100);
    r.servers[0].perf_factor = PerfFactor { cpu: 0.5, mem: 0.5 };
    c.apply_report(&h1, conn, r.clone()).await.unwrap();
    clock.advance(50);
    c.tick(clock.now()).await.unwrap(); // not due yet (interval 60 s): nothing written
    let stored = c
        .store
        .usage(&crate::domain::usage::UsageFilter {
            account: None,
            start: 0,
            end: 10_000,
        })
        .await
        .unwrap();
    assert_eq!(stored[0].seconds, 100);
    // What the API shows includes the open stretch since the last flush.
    assert_eq!(usage_of(&c).await[0].seconds, 150);
    // The coordinator restarts in the middle; the agent reports the same state again.
    drop(c);
    let c = reopen(dir.path(), clock.clone()).await;
    let (conn, _rx) = c.register_agent(&hello("h1")).await.unwrap();
    c.apply_report(&h1, conn, r.clone()).await.unwrap();
    clock.advance(50);
    c.tick(clock.now()).await.unwrap(); // 100 s since the last flush: written
    let u = usage_of(&c).await;
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].seconds, 200, "no second lost or counted twice");
    let cpu = new_server().cpu;
    assert_eq!(
        u[0].cpu_mhz_seconds,
        cpu * 100 + cpu / 2 * 100,
        "half price while at half size"
    );
    let mem = new_server().mem;
    assert_eq!(u[0].mem_byte_seconds, mem * 100 + mem / 2 * 100);
    // Stopping ends metering; later time is free.
    r.servers.clear();
    let stop_at = clock.now();
    let tenant = c.account("t").await.unwrap();
    c.stop(&tenant, Scope::BServers, id).await.unwrap();
    c.apply_report(
        &h1,
        conn,
        Report {
            applied_generation: u64::MAX,
            ..r.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        c.get_server(&tenant, Scope::BServers, id)
            .await
            .unwrap()
            .status,
        ServerStatus::Stopped
    );
    clock.advance(500);
    c.tick(clock.now()).await.unwrap();
    let u = usage_of(&c).await;
    assert_eq!(u[0].seconds, u64::try_from(stop_at - 1_000).unwrap());
    // Burst price: 0.0070 per GHz-hour, 0.0035 per GiB-hour by default.
    assert!(u[0].amount_micro > 0);
}

#[tokio::test]
async fn quotas_refuse_creates_and_starts_beyond_them() {
    let f = fixture().await;
    f.c.update_account(
        "t",
        crate::domain::account::AccountChange {
            backfill: None,
            quota: crate::domain::account::QuotaChange {
                servers: Some(Some(2)),
                cpu: Some(Some(new_server().cpu)),
                ..Default::default()
            },
        },
    )
    .await
    .unwrap();
    let tenant = f.c.account("t").await.unwrap();
    let make = |n| {
        let c = &f.c;
        let tenant = tenant.clone();
        async move {
            c.create_servers(&tenant, ServerClass::Backfill, vec![new_server(); n])
                .await
        }
    };
    assert!(
        matches!(make(3).await, Err(OpError::Quota(_))),
        "three servers do not fit a quota of two"
    );
    let two = make(2).await.unwrap();
    assert!(matches!(make(1).await, Err(OpError::Quota(_))));
    let _ = f.c.register_agent(&hello("h1")).await.unwrap();
    f.c.start(&tenant, Scope::BServers, two[0].uuid)
        .await
        .unwrap();
    let second = f.c.start(&tenant, Scope::BServers, two[1].uuid).await;
    match second {
        Err(OpError::Quota(m)) => assert!(m.contains("CPU"), "{m}"),
        other => panic!("{other:?}"),
    }
    // An unknown account is not created on sight.
    assert!(matches!(
        f.c.account("stranger").await,
        Err(OpError::NoAccount(_))
    ));
}
