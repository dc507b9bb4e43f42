//! The operator's and the drives' kinds of a [`WriteBatch`] (host records, deleted hosts,
//! launches, pool limits, settings, device profiles, drives, drive metering, audit entries),
//! on every backend this machine has: they round-trip through a group transaction, a failed
//! batch writes none of them (an audit entry never lands without its change), and on
//! PostgreSQL a deposed leader's batch is refused.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::domain::usage::UsageFilter;
use backfill_shared::IdleBehavior;
use backfill_shared::drive::{DriveId, DriveSource, Media};
use testing::sample_server as server;

fn host(id: &str) -> HostRecord {
    testing::sample_host(id, 1)
}

fn act(target_kind: &'static str, target: &str, action: &str) -> AuditEntry {
    AuditEntry {
        at: 7,
        actor: "admin".into(),
        target_kind,
        target: target.into(),
        action: action.into(),
        reason: Some("why".into()),
    }
}

fn drive(n: u128) -> DriveRecord {
    DriveRecord {
        uuid: DriveId::from_u128(n),
        owner: "tenant".into(),
        name: format!("d{n}"),
        size: 1 << 30,
        media: Media::Disk,
        host: "h1".parse().unwrap(),
        source: DriveSource::Blank,
        status: DriveStatus::Creating,
        error: None,
        meta: Default::default(),
        tags: Vec::new(),
        created_at: 10,
        metered_until: Some(10),
    }
}

fn profile(name: &str) -> DeviceProfile {
    DeviceProfile {
        uuid: format!("uuid-{name}"),
        name: name.into(),
        description: String::new(),
        groups: vec![[("resources:PGPU".to_string(), "1".to_string())].into()],
        created_at: 1,
        updated_at: None,
    }
}

/// Every kind a batch of this file's concern may write: makes h1 and h2, a launch, pool
/// limits, a setting, a profile and two drives, with an audit entry.
fn first() -> WriteBatch {
    WriteBatch {
        host_records: vec![host("h1"), host("h2")],
        launches_new: vec![LaunchRecord {
            host: "h9".into(),
            pool: "p".into(),
            launched_at: 5,
        }],
        pool_limits: vec![("p".into(), Some((1, 3)))],
        settings: vec![("auto_mode".into(), "on".into())],
        profiles_new: vec![profile("gpu")],
        drives: vec![drive(1), drive(2)],
        audit: vec![act("pool", "p", "launch 1")],
        ..Default::default()
    }
}

#[test]
fn each_kind_makes_a_batch_non_empty_and_more_than_inserts() {
    let kinds: Vec<WriteBatch> = vec![
        WriteBatch {
            host_records: vec![host("h1")],
            ..Default::default()
        },
        WriteBatch {
            hosts_deleted: vec!["h1".into()],
            ..Default::default()
        },
        WriteBatch {
            launches_deleted: vec!["h9".into()],
            ..Default::default()
        },
        WriteBatch {
            pool_limits: vec![("p".into(), None)],
            ..Default::default()
        },
        WriteBatch {
            settings: vec![("k".into(), "v".into())],
            ..Default::default()
        },
        WriteBatch {
            profiles_deleted: vec!["u".into()],
            ..Default::default()
        },
        WriteBatch {
            drives_deleted: vec![DriveId::from_u128(1)],
            ..Default::default()
        },
        WriteBatch {
            audit: vec![act("host", "h1", "hold")],
            ..Default::default()
        },
    ];
    for b in &kinds {
        assert!(!b.is_empty() && !b.only_inserts(), "{b:?}");
    }
    assert!(WriteBatch::default().is_empty());
    let create = WriteBatch {
        inserts: vec![server("t")],
        ..Default::default()
    };
    assert!(create.only_inserts() && !create.is_empty());
}

#[tokio::test]
async fn operator_and_drive_kinds_round_trip_in_one_group() {
    for db in testing::backends().await {
        let store = db.open().await;
        store
            .seed_accounts(&["tenant".into()], &[], 0)
            .await
            .unwrap();
        store.write_batches(&[&first()]).await.unwrap();
        assert_eq!(store.hosts().await.unwrap(), vec![host("h1"), host("h2")]);
        assert_eq!(store.launches().await.unwrap().len(), 1);
        assert_eq!(
            store.pool_limits().await.unwrap(),
            [("p".into(), (1, 3))].into()
        );
        assert_eq!(
            store.settings().await.unwrap(),
            [("auto_mode".into(), "on".into())].into()
        );
        assert_eq!(store.profiles().await.unwrap(), vec![profile("gpu")]);
        assert_eq!(store.drives().await.unwrap(), vec![drive(1), drive(2)]);

        // The next group undoes most of it, in two batches whose order matters: a server on
        // h2 is moved off before h2 is forgotten (deleted hosts come after servers).
        let mut s = server("tenant");
        s.host = Some("h2".parse().unwrap());
        let place = WriteBatch {
            inserts: vec![s.clone()],
            ..Default::default()
        };
        let mut held = host("h1");
        held.idle_behavior = IdleBehavior::Hold;
        let mut ready = drive(1);
        ready.status = DriveStatus::Ready;
        ready.metered_until = Some(10);
        let mut off = s.clone();
        off.host = None;
        let undo = WriteBatch {
            host_records: vec![held.clone()],
            servers: vec![off],
            launches_deleted: vec!["h9".into()],
            pool_limits: vec![("p".into(), None)],
            settings: vec![("auto_mode".into(), "off".into())],
            profiles_deleted: vec![profile("gpu").uuid],
            drives: vec![ready.clone()],
            drives_deleted: vec![DriveId::from_u128(2)],
            drive_usage: vec![DriveUsage {
                drive: DriveId::from_u128(1),
                account: "tenant".into(),
                name: "d1".into(),
                start: 10,
                end: 70,
                size: 1 << 30,
                price: 0,
            }],
            hosts_deleted: vec!["h2".into()],
            audit: vec![act("host", "h1", "hold"), act("host", "h2", "delete")],
            ..Default::default()
        };
        store.write_batches(&[&place, &undo]).await.unwrap();
        assert_eq!(store.hosts().await.unwrap(), vec![held]);
        assert!(store.launches().await.unwrap().is_empty());
        assert!(store.pool_limits().await.unwrap().is_empty());
        assert_eq!(
            store.settings().await.unwrap(),
            [("auto_mode".into(), "off".into())].into()
        );
        assert!(store.profiles().await.unwrap().is_empty());
        ready.metered_until = Some(70);
        assert_eq!(store.drives().await.unwrap(), vec![ready]);
        let usage = store
            .usage(&UsageFilter {
                account: Some("tenant".into()),
                start: 0,
                end: 100,
            })
            .await
            .unwrap();
        let metered: Vec<(&str, u64)> = usage
            .iter()
            .filter(|u| u.class == "drive")
            .map(|u| (u.server.as_str(), u.seconds))
            .collect();
        assert_eq!(metered, [(DriveId::from_u128(1).to_string().as_str(), 60)]);
        assert_eq!(
            store.actions("host", "h1", 5).await.unwrap(),
            vec![act("host", "h1", "hold")]
        );
        assert_eq!(store.actions("host", "h2", 5).await.unwrap().len(), 1);
        assert_eq!(store.actions("pool", "p", 5).await.unwrap().len(), 1);
    }
}

/// A batch that fails writes none of its kinds, its audit entry included, nor anything else
/// of its group.
#[tokio::test]
async fn a_failed_batch_writes_no_audit_entry_without_its_change() {
    for db in testing::backends().await {
        let store = db.open().await;
        store
            .seed_accounts(&["tenant".into()], &[], 0)
            .await
            .unwrap();
        // The second batch names a server owner no account has: the schema refuses it.
        let refused = WriteBatch {
            inserts: vec![server("nobody")],
            servers: Vec::new(),
            audit: vec![act("host", "h1", "hold")],
            ..Default::default()
        };
        assert!(store.write_batches(&[&first(), &refused]).await.is_err());
        assert!(store.hosts().await.unwrap().is_empty());
        assert!(store.launches().await.unwrap().is_empty());
        assert!(store.settings().await.unwrap().is_empty());
        assert!(store.profiles().await.unwrap().is_empty());
        assert!(store.drives().await.unwrap().is_empty());
        assert!(store.actions("pool", "p", 5).await.unwrap().is_empty());
        assert!(store.actions("host", "h1", 5).await.unwrap().is_empty());
    }
}

/// On PostgreSQL a batch of these kinds is fenced like a server's: under a stale epoch (a
/// deposed leader) it fails at COMMIT and changes nothing; under the new epoch it lands.
#[tokio::test]
async fn a_deposed_leader_cannot_write_operator_or_drive_kinds() {
    let claim = |name: &str| testing::claim(name, std::time::Duration::from_secs(60));
    let Some(db) = testing::postgres().await else {
        return;
    };
    let store = db.open().await;
    store
        .seed_accounts(&["tenant".into()], &[], 0)
        .await
        .unwrap();
    let pg = store.shared().unwrap().clone();
    let mut sa = pg.lease_session().await.unwrap();
    assert_eq!(sa.try_take(&claim("a")).await.unwrap(), Some(1));
    pg.set_epoch(1);
    store.write_batches(&[&first()]).await.unwrap();
    // a's session ends; b takes over (epoch 2) while this store still writes under 1.
    sa.close().await;
    let mut sb = pg.lease_session().await.unwrap();
    testing::take_soon(&mut sb, &claim("b")).await;
    let mut held = host("h1");
    held.idle_behavior = IdleBehavior::Hold;
    let stale = WriteBatch {
        host_records: vec![held.clone()],
        hosts_deleted: vec!["h2".into()],
        launches_deleted: vec!["h9".into()],
        pool_limits: vec![("p".into(), None)],
        settings: vec![("auto_mode".into(), "off".into())],
        profiles_deleted: vec![profile("gpu").uuid],
        drives_deleted: vec![DriveId::from_u128(2)],
        audit: vec![act("host", "h1", "hold")],
        ..Default::default()
    };
    let err = store.write_batches(&[&stale]).await.unwrap_err();
    assert!(err.is_fenced(), "a batch under epoch 1: {err}");
    assert_eq!(store.hosts().await.unwrap(), vec![host("h1"), host("h2")]);
    assert_eq!(store.launches().await.unwrap().len(), 1);
    assert_eq!(
        store.settings().await.unwrap(),
        [("auto_mode".into(), "on".into())].into()
    );
    assert_eq!(store.profiles().await.unwrap().len(), 1);
    assert_eq!(store.drives().await.unwrap().len(), 2);
    assert!(store.actions("host", "h1", 5).await.unwrap().is_empty());
    // Under the new epoch it writes again.
    pg.set_epoch(2);
    store.write_batches(&[&stale]).await.unwrap();
    assert_eq!(store.hosts().await.unwrap(), vec![held]);
    assert_eq!(store.actions("host", "h1", 5).await.unwrap().len(), 1);
}
