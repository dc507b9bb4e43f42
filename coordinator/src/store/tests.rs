//! The store's test suite, run against every backend this machine has: SQLite always,
//! PostgreSQL when its binaries (or `BACKFILL_TEST_POSTGRES`) are there.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::domain::account::QuotaChange;
use crate::domain::event::Event;
use crate::domain::server::GpuRequest;
use crate::domain::usage::Prices;
use backfill_shared::Termination;
use backfill_shared::{PerfFactor, ServerClass, ServerStatus};
use testing::sample_server as server;

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
        idle_behavior: backfill_shared::IdleBehavior::Hold,
        ..testing::sample_host("h1", 3)
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
    testing::commit(&store, &[s.clone()], &[(host.id.clone(), 4)], &[], &[])
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
                quota: QuotaChange {
                    cpu: Some(Some(4_000)),
                    servers: Some(Some(2)),
                    storage: Some(Some(10 << 30)),
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
    // The storage quota (migration 0011) is stored and read back.
    let read = store.account("plain").await.unwrap().unwrap();
    assert_eq!(read.quota.storage, Some(10 << 30));
    assert_eq!(read.quota, changed.quota);
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
    testing::commit(&store, &[], &[], &[seg(0, 100, 1.0)], &[])
        .await
        .unwrap();
    testing::commit(
        &store,
        &[],
        &[],
        &[seg(100, 200, 1.0), seg(200, 300, 0.5)],
        &[],
    )
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
    testing::commit(
        &store,
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

fn arq(uuid: &str, profile: &str, server: Option<&str>) -> crate::domain::accel::Arq {
    crate::domain::accel::Arq {
        uuid: uuid.into(),
        owner: "tenant".into(),
        state: crate::domain::accel::ArqState::Initial,
        device_profile_name: profile.into(),
        device_profile_group_id: 0,
        hostname: None,
        device_rp_uuid: None,
        instance_uuid: None,
        project_id: None,
        attach_handle_type: String::new(),
        attach_handle_uuid: None,
        attach_handle_info: Default::default(),
        server: server.map(Into::into),
        created_at: 1,
        updated_at: None,
    }
}

fn profile(name: &str) -> crate::domain::accel::DeviceProfile {
    crate::domain::accel::DeviceProfile {
        uuid: format!("uuid-{name}"),
        name: name.into(),
        description: String::new(),
        groups: vec![[("resources:GPU".to_string(), "1".to_string())].into()],
        created_at: 1,
        updated_at: None,
    }
}

#[tokio::test]
async fn profiles_and_arqs_round_trip_and_refuse_deleting_what_is_used() {
    for db in testing::backends().await {
        let store = db.open().await;
        store
            .seed_accounts(&["tenant".into()], &[], 0)
            .await
            .unwrap();
        assert!(store.insert_profile(&profile("a_b")).await.unwrap());
        assert!(
            !store.insert_profile(&profile("a_b")).await.unwrap(),
            "name taken"
        );
        assert!(store.insert_profile(&profile("free")).await.unwrap());
        assert!(store.insert_profile(&profile("held")).await.unwrap());
        // A server that asks for "held" keeps it; "a_b" must not match "a%b"-like names.
        let mut s = server("tenant");
        s.gpu_request = Some(GpuRequest {
            device_profile: "held".into(),
            count: 1,
            matcher: Default::default(),
        });
        store.insert_servers(&[s.clone()]).await.unwrap();
        let mut a = arq("q1", "a_b", Some(&s.uuid.to_string()));
        store.put_arqs(&[a.clone()], &[]).await.unwrap();
        a.state = crate::domain::accel::ArqState::Bound;
        a.hostname = Some("h1".into());
        a.attach_handle_info = [("bus".to_string(), "0000:01:00.0".to_string())].into();
        a.updated_at = Some(2);
        store.put_arqs(&[], &[a.clone()]).await.unwrap();
        assert_eq!(store.arqs().await.unwrap(), vec![a.clone()]);
        assert_eq!(
            store.arqs_of_server(&s.uuid.to_string()).await.unwrap(),
            vec![a.clone()]
        );
        let used = store
            .delete_profiles(&[profile("free"), profile("a_b")])
            .await
            .unwrap();
        assert_eq!(used.as_deref(), Some("a_b"));
        assert_eq!(store.profiles().await.unwrap().len(), 3, "all or nothing");
        let held = store.delete_profiles(&[profile("held")]).await.unwrap();
        assert_eq!(held.as_deref(), Some("held"));
        store.delete_arqs(&["q1".into()]).await.unwrap();
        assert!(store.arqs().await.unwrap().is_empty());
        let none = store
            .delete_profiles(&[profile("free"), profile("a_b")])
            .await
            .unwrap();
        assert_eq!(none, None);
        let left: Vec<String> = store
            .profiles()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(left, vec!["held".to_string()]);
    }
}

#[tokio::test]
async fn admin_changes_are_written_with_their_audit_entry() {
    for db in testing::backends().await {
        let store = db.open().await;
        let act = |action: &str| AuditEntry {
            at: 7,
            actor: "admin".into(),
            target_kind: "pool",
            target: "p".into(),
            action: action.into(),
            reason: Some("why".into()),
        };
        store
            .set_pool_limits("p", Some((1, 3)), &act("freeze"))
            .await
            .unwrap();
        assert_eq!(
            store.pool_limits().await.unwrap(),
            [("p".into(), (1, 3))].into()
        );
        store
            .set_pool_limits("p", None, &act("thaw"))
            .await
            .unwrap();
        assert!(store.pool_limits().await.unwrap().is_empty());
        store
            .set_setting("auto_mode", "on", &act("auto"))
            .await
            .unwrap();
        store
            .set_setting("auto_mode", "off", &act("auto"))
            .await
            .unwrap();
        assert_eq!(
            store.settings().await.unwrap(),
            [("auto_mode".into(), "off".into())].into()
        );
        let launch = LaunchRecord {
            host: "h9".into(),
            pool: "p".into(),
            launched_at: 5,
        };
        store
            .insert_launches(std::slice::from_ref(&launch), &act("launch"))
            .await
            .unwrap();
        assert_eq!(store.launches().await.unwrap(), vec![launch]);
        store.delete_launch("h9").await.unwrap();
        assert!(store.launches().await.unwrap().is_empty());
        let actions = store.actions("pool", "p", 2).await.unwrap();
        let names: Vec<&str> = actions.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(names, ["launch", "auto"], "newest first, limited");
        assert_eq!(actions[0], act("launch"));
    }
}

#[tokio::test]
async fn a_commit_that_fails_writes_nothing() {
    for db in testing::backends().await {
        let store = db.open().await;
        store
            .seed_accounts(&["tenant".into()], &[], 0)
            .await
            .unwrap();
        let mut s = server("tenant");
        store.insert_servers(&[s.clone()]).await.unwrap();
        let seg = UsageSegment {
            server: s.uuid,
            account: "tenant".into(),
            name: "s".into(),
            class: ServerClass::Backfill,
            start: 0,
            end: 10,
            cpu: 1_000,
            mem: 1 << 30,
            perf: PerfFactor::FULL,
            prices: Prices { cpu: 1, mem: 1 },
        };
        // The server names a host that does not exist: the foreign key fails the commit, and
        // the usage and the event before it in the same transaction must not be written.
        s.status = ServerStatus::Running;
        s.host = Some("nowhere".parse().unwrap());
        let e = event("e1", 1);
        assert!(
            testing::commit(&store, &[s.clone()], &[], &[seg], &[e])
                .await
                .is_err()
        );
        let all = UsageFilter {
            account: None,
            start: 0,
            end: 100,
        };
        assert!(store.usage(&all).await.unwrap().is_empty());
        assert!(store.unfanned_events(10).await.unwrap().is_empty());
        assert_eq!(
            store.servers().await.unwrap()[0].status,
            ServerStatus::Stopped
        );
    }
}

#[test]
fn placeholders_are_numbered_outside_quotes() {
    assert_eq!(
        numbered("UPDATE t SET \"end\" = ? WHERE a = '?' AND b LIKE ? ESCAPE '\\'"),
        "UPDATE t SET \"end\" = $1 WHERE a = '?' AND b LIKE $2 ESCAPE '\\'"
    );
    assert_eq!(numbered("(? IS NULL OR x = ?)"), "($1 IS NULL OR x = $2)");
}

#[test]
fn database_is_a_path_or_a_postgres_url() {
    let d: Database = "/var/lib/backfill/c.sqlite".parse().unwrap();
    assert_eq!(d, Database::Sqlite("/var/lib/backfill/c.sqlite".into()));
    let d: Database = "postgres://backfill:pw@db.example:5432/backfill"
        .parse()
        .unwrap();
    assert_eq!(
        d.to_string(),
        "postgres://backfill:<redacted>@db.example:5432/backfill"
    );
    assert!("mysql://x/y".parse::<Database>().is_err());
    assert!("".parse::<Database>().is_err());
    assert!("postgres://h:notaport/db".parse::<Database>().is_err());
}

#[tokio::test]
async fn an_unreachable_postgres_fails_clearly() {
    // Nothing listens on a socket directory that does not exist.
    let db: Database = "postgres://u:secret@localhost/x?host=/nonexistent-backfill-test"
        .parse()
        .unwrap();
    let e = Store::open(&db, std::time::Duration::from_millis(500))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("PostgreSQL at postgres://u:<redacted>@localhost"),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
}

#[tokio::test]
async fn a_group_of_batches_lands_in_order_with_multi_row_inserts() {
    for db in testing::backends().await {
        let store = db.open().await;
        store
            .seed_accounts(&["tenant".into()], &[], 0)
            .await
            .unwrap();
        // 85 creates (64 + 16 + 4 + 1 rows), then a batch that changes one of them and
        // deletes another, then 3 more creates, one of them deleted by the last batch.
        let creates: Vec<WriteBatch> = (0..85)
            .map(|i| {
                let mut s = server("tenant");
                s.name = format!("s{i}");
                s.created_at = i;
                WriteBatch {
                    inserts: vec![s],
                    ..Default::default()
                }
            })
            .collect();
        let mut renamed = creates[3].inserts[0].clone();
        renamed.name = "renamed".into();
        let change = WriteBatch {
            servers: vec![renamed.clone()],
            deletes: vec![creates[7].inserts[0].uuid],
            ..Default::default()
        };
        let late = WriteBatch {
            inserts: (85..88)
                .map(|i| {
                    let mut s = server("tenant");
                    s.created_at = i;
                    s
                })
                .collect(),
            ..Default::default()
        };
        let last = WriteBatch {
            deletes: vec![late.inserts[1].uuid],
            ..Default::default()
        };
        let mut group: Vec<&WriteBatch> = creates.iter().collect();
        group.extend([&change, &late, &last]);
        store.write_batches(&group).await.unwrap();
        let back = store.servers().await.unwrap();
        assert_eq!(back.len(), 86);
        let mut want: Vec<ServerRecord> = creates.iter().map(|b| b.inserts[0].clone()).collect();
        want[3] = renamed;
        want.remove(7);
        want.extend([late.inserts[0].clone(), late.inserts[2].clone()]);
        assert_eq!(back, want);
        // A group that fails in its multi-row INSERT (a duplicate key) writes nothing.
        let dup = WriteBatch {
            inserts: vec![server("tenant"), want[0].clone()],
            ..Default::default()
        };
        assert!(store.write_batches(&[&dup]).await.is_err());
        assert_eq!(store.servers().await.unwrap().len(), 86);
    }
}

#[test]
fn inserts_go_in_chunks_of_a_few_fixed_sizes() {
    let chunks = |mut n: usize| {
        let mut out = Vec::new();
        while n > 0 {
            let c = insert_chunk(n);
            out.push(c);
            n -= c;
        }
        out
    };
    assert_eq!(chunks(1), [1]);
    assert_eq!(chunks(100), [64, 16, 16, 4]);
    assert_eq!(chunks(131), [64, 64, 1, 1, 1]);
    let sql = insert_servers_sql(2);
    assert_eq!(sql.matches('?').count(), 56);
    assert!(sql.ends_with(
        "?), (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ));
}
