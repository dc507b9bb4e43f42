//! The store's test suite, run against every backend this machine has: SQLite always,
//! PostgreSQL when its binaries (or `BACKFILL_TEST_POSTGRES`) are there.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::events::Event;
use crate::scheduler::Termination;
use backfill_shared::HostInventory;

fn server(owner: &str) -> ServerRecord {
    ServerRecord {
        uuid: ServerId::new_random(),
        owner: owner.into(),
        name: "s".into(),
        class: ServerClass::Backfill,
        cpu: 1000,
        smp: 1,
        mem: 1 << 29,
        meta: [("k".to_string(), "v".to_string())].into(),
        tags: vec!["t".into()],
        vnc_password: None,
        workload: None,
        status: ServerStatus::Stopped,
        host: None,
        perf_factor: PerfFactor::FULL,
        active_since: None,
        incarnation: 0,
        termination: None,
        queued_reason: None,
        priority: 3,
        created_at: 5,
        network: None,
        limits: None,
        metered_until: None,
        metered_perf: PerfFactor::FULL,
        shutdown_until: None,
        flavor: None,
        gpu_request: None,
        gpus: vec!["GPU-1".into()],
        instance_type: String::new(),
        last_host: None,
        stop_reason: None,
    }
}

#[tokio::test]
async fn survives_reopen() {
    for db in testing::backends().await {
        survives_reopen_on(db).await;
    }
}

async fn survives_reopen_on(db: testing::TestDb) {
    let store = db.open().await;
    let acc = store
        .create_account("tenant", true, Default::default(), 1)
        .await
        .unwrap()
        .unwrap();
    assert!(acc.backfill);
    // A second create is refused and changes nothing.
    let again = store
        .create_account("tenant", false, Default::default(), 2)
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(store.account("tenant").await.unwrap(), Some(acc.clone()));
    let host = HostRecord {
        id: "h1".parse().unwrap(),
        inventory: HostInventory {
            hostname: "h1".into(),
            cpus: 2,
            cpu_mhz_per_cpu: 2000,
            mem_bytes: 1 << 30,
            gpus: vec![],
            drivers: backfill_shared::Drivers::exec_only(),
            mechanisms: Vec::new(),
        },
        enforcing: true,
        generation: 3,
        first_seen: 1,
        idle_behavior: backfill_shared::IdleBehavior::Hold,
        pool: Some("p".into()),
        last_seen: 1,
    };
    store.upsert_host(&host).await.unwrap();
    let mut s = server("tenant");
    store.insert_servers(&[s.clone()]).await.unwrap();
    s.status = ServerStatus::Running;
    s.host = Some(host.id.clone());
    s.perf_factor = PerfFactor { cpu: 0.5, mem: 1.0 };
    s.incarnation = 4;
    s.termination = Some(Termination {
        scheduled_at: 10,
        terminate_at: 20,
    });
    s.queued_reason = Some("why".into());
    s.metered_until = Some(15);
    s.metered_perf = PerfFactor {
        cpu: 0.25,
        mem: 0.5,
    };
    s.shutdown_until = Some(77);
    s.cpu = 1500;
    s.workload = Some(backfill_shared::Workload {
        command: vec!["true".into()],
        ..Default::default()
    });
    store
        .commit(&[s.clone()], &[(host.id.clone(), 4)], &[], &[])
        .await
        .unwrap();
    store.close().await;

    let store = db.open().await;
    assert_eq!(store.servers().await.unwrap(), vec![s.clone()]);
    let mut host = host;
    host.generation = 4;
    assert_eq!(store.hosts().await.unwrap(), vec![host]);
    store.delete_server(&s.uuid).await.unwrap();
    assert!(store.servers().await.unwrap().is_empty());

    // Seeding creates what is missing and grants backfill; it revokes nothing.
    store
        .seed_accounts(&["new".into()], &["plain".into(), "tenant".into()], 3)
        .await
        .unwrap();
    assert!(store.account("tenant").await.unwrap().unwrap().backfill);
    assert!(store.account("new").await.unwrap().unwrap().backfill);
    assert!(!store.account("plain").await.unwrap().unwrap().backfill);
    // Quotas and the permission change through the API's path.
    let changed = store
        .update_account(
            "plain",
            super::AccountChange {
                backfill: Some(true),
                quota: super::QuotaChange {
                    cpu: Some(Some(4_000)),
                    servers: Some(Some(2)),
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(changed.backfill);
    assert_eq!(
        (changed.quota.cpu, changed.quota.servers, changed.quota.mem),
        (Some(4_000), Some(2), None)
    );
    assert!(store.delete_account("plain").await.unwrap());
    assert!(!store.delete_account("plain").await.unwrap());
}

#[tokio::test]
async fn usage_segments_extend_and_prorate() {
    for db in testing::backends().await {
        usage_segments_extend_and_prorate_on(db.open().await).await;
    }
}

async fn usage_segments_extend_and_prorate_on(store: Store) {
    let id = ServerId::from_u128(1);
    let seg = |start, end, cpu_pf| UsageSegment {
        server: id,
        account: "a".into(),
        name: "s".into(),
        class: ServerClass::Backfill,
        start,
        end,
        cpu: 1_000,
        mem: 1 << 30,
        perf: PerfFactor {
            cpu: cpu_pf,
            mem: 1.0,
        },
        prices: Prices {
            cpu: 1_000_000,
            mem: 0,
        },
    };
    // Two continuing stretches at full size become one row; the half-size one is another.
    store
        .commit(&[], &[], &[seg(0, 100, 1.0)], &[])
        .await
        .unwrap();
    store
        .commit(&[], &[], &[seg(100, 200, 1.0), seg(200, 300, 0.5)], &[])
        .await
        .unwrap();
    let count = "SELECT COUNT(*) FROM usage";
    let rows: i64 = match &store {
        Store::Sqlite(s) => sqlx::query_scalar(count).fetch_one(&s.pool).await,
        Store::Postgres(s) => sqlx::query_scalar(count).fetch_one(&s.pool).await,
    }
    .unwrap();
    assert_eq!(rows, 2);
    let all = |start, end| UsageFilter {
        account: None,
        start,
        end,
    };
    let u = store.usage(&all(0, 300)).await.unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].seconds, 300);
    assert_eq!(u[0].cpu_mhz_seconds, 1_000 * 200 + 500 * 100);
    // 250 GHz-seconds at 1 per GHz-hour.
    assert_eq!(u[0].amount_micro, 69_444); // 250 / 3600, rounded once at the end
    // A range that cuts segments counts the parts inside.
    let u = store.usage(&all(150, 250)).await.unwrap();
    assert_eq!(u[0].cpu_mhz_seconds, 1_000 * 50 + 500 * 50);
    let other = UsageFilter {
        account: Some("b".into()),
        start: 0,
        end: 300,
    };
    assert!(store.usage(&other).await.unwrap().is_empty());
}

#[tokio::test]
async fn unknown_owner_is_refused_by_the_schema() {
    for db in testing::backends().await {
        let store = db.open().await;
        assert!(store.insert_servers(&[server("nobody")]).await.is_err());
    }
}

fn event(id: &str, at: i64) -> Event {
    Event {
        id: id.into(),
        account: "t".into(),
        kind: "server_state_changed",
        server: "s".into(),
        payload: serde_json::json!({"id": id}),
        created_at: at,
    }
}

#[tokio::test]
async fn the_outbox_keeps_what_is_pending_and_prunes_the_rest() {
    for db in testing::backends().await {
        the_outbox_on(db.open().await).await;
    }
}

async fn the_outbox_on(store: Store) {
    store.seed_accounts(&["t".into()], &[], 0).await.unwrap();
    let w = Webhook {
        uuid: "w".into(),
        owner: "t".into(),
        url: "https://example.com/".into(),
        description: String::new(),
        secret: "s".into(),
        created_at: 0,
    };
    store.insert_webhook(&w).await.unwrap();
    store
        .commit(
            &[],
            &[],
            &[],
            &[event("old", 10), event("open", 11), event("nobody", 12)],
        )
        .await
        .unwrap();
    let fresh = store.unfanned_events(10).await.unwrap();
    assert_eq!(fresh.len(), 3);
    store.fan_out("old", &["w".into()], 10).await.unwrap();
    store.fan_out("old", &["w".into()], 10).await.unwrap(); // twice: one delivery
    store.fan_out("open", &["w".into()], 11).await.unwrap();
    store.fan_out("nobody", &[], 12).await.unwrap();
    assert!(store.unfanned_events(10).await.unwrap().is_empty());
    let due = store.due_deliveries(100, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    let old = due.iter().find(|o| o.delivery.event_id == "old").unwrap();
    let done = Attempt {
        at: 20,
        status: Some(200),
        error: None,
        delivered: true,
        next_at: None,
    };
    store
        .record_attempt(&old.delivery.uuid, &done)
        .await
        .unwrap();
    // Delivered "old" and unneeded "nobody" go; "open" is still pending and stays.
    assert_eq!(store.prune_outbox(1_000).await.unwrap(), 3);
    let left = store.deliveries_of("w", 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].event_id.as_str(), left[0].status.as_str()),
        ("open", "pending")
    );
    assert_eq!(store.due_deliveries(100, 10).await.unwrap().len(), 1);
}
