//! Group commit: batches share transactions in order; a failed one fails its group, refuses
//! what was queued on top of it, and the model goes back to what the store holds.

use crate::state::coordinator::Coordinator;
use crate::store::testing::sample_server;
use crate::store::{StoreError, WriteBatch};
use backfill_shared::clock::ManualClock;
use std::sync::Arc;

async fn coordinator(dir: &std::path::Path) -> Coordinator {
    let store = crate::store::testing::open_in(dir).await;
    Coordinator::load(
        store,
        Arc::new(ManualClock::new(1_000)),
        &["t".into()],
        Default::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn many_writes_queued_together_all_land_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path()).await;
    let mut model = c.lock_model().await;
    let mut writes = Vec::new();
    let mut ids = Vec::new();
    for i in 0..50 {
        let s = sample_server("t");
        ids.push(s.uuid);
        let batch = WriteBatch {
            inserts: vec![s.clone()],
            ..Default::default()
        };
        writes.push(c.commit_batch(&mut model, batch, &[]).await.unwrap());
        // A later write of the same server in another batch wins.
        let mut renamed = s;
        renamed.name = format!("n{i}");
        writes.push(c.commit(&mut model, vec![renamed], &[]).await.unwrap());
    }
    drop(model);
    for w in writes {
        w.wait().await.unwrap();
    }
    let stored = c.store.servers().await.unwrap();
    assert_eq!(stored.len(), 50);
    for (i, id) in ids.iter().enumerate() {
        let s = stored.iter().find(|s| s.uuid == *id).unwrap();
        assert_eq!(s.name, format!("n{i}"));
    }
}

#[tokio::test]
async fn a_failed_write_fails_what_follows_and_the_model_returns_to_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path()).await;
    // One server the model and the store agree on.
    let kept = sample_server("t");
    {
        let mut model = c.lock_model().await;
        let batch = WriteBatch {
            inserts: vec![kept.clone()],
            ..Default::default()
        };
        let w = c.commit_batch(&mut model, batch, &[]).await.unwrap();
        drop(model);
        w.wait().await.unwrap();
    }
    // A row the model does not know (as if written by someone else): inserting it again
    // fails inside the transaction.
    let clash = sample_server("t");
    c.store
        .insert_servers(std::slice::from_ref(&clash))
        .await
        .unwrap();
    let mut model = c.lock_model().await;
    let failing = WriteBatch {
        inserts: vec![clash.clone()],
        ..Default::default()
    };
    let first = c.commit_batch(&mut model, failing, &[]).await.unwrap();
    let mut renamed = kept.clone();
    renamed.name = "renamed".into();
    let second = c.commit(&mut model, vec![renamed], &[]).await.unwrap();
    assert_eq!(
        model.servers[&kept.uuid].name, "renamed",
        "applied in memory at once"
    );
    drop(model);
    assert!(matches!(first.wait().await, Err(StoreError::Group(_))));
    assert!(matches!(
        second.wait().await,
        Err(StoreError::Group(_) | StoreError::Stale)
    ));
    // Neither landed, and the model is the store's again.
    let model = c.lock_model().await;
    assert_eq!(model.servers[&kept.uuid].name, kept.name);
    assert_eq!(model.servers[&clash.uuid].name, clash.name);
    assert_eq!(model.servers.len(), 2);
    let stored = c.store.servers().await.unwrap();
    assert!(stored.iter().all(|s| s.name == kept.name));
    // Writes work again.
    let mut model = model;
    let mut renamed = kept.clone();
    renamed.name = "after".into();
    let w = c.commit(&mut model, vec![renamed], &[]).await.unwrap();
    drop(model);
    w.wait().await.unwrap();
    let stored = c.store.servers().await.unwrap();
    assert!(stored.iter().any(|s| s.name == "after"));
}

/// What the model now keeps besides servers (host records, launches, pool limits, auto mode,
/// drives, device profiles, ARQs) goes back to the store after a failed group commit too: a
/// registration that failed is forgotten, a deletion that failed comes back, settings and
/// records return to their stored values.
#[tokio::test]
async fn a_failed_write_returns_hosts_settings_drives_and_profiles_to_the_store() {
    use crate::store::{DriveRecord, DriveStatus, LaunchRecord};
    use backfill_shared::drive::{DriveId, DriveSource, Media};
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path()).await;
    let (_conn, _rx) = c
        .register_agent(&crate::link::session_tests::hello("h1"))
        .await
        .unwrap();
    let stored_h1 = c.store.hosts().await.unwrap().remove(0);
    // A row the model does not know, so that inserting it again fails the transaction.
    let clash = sample_server("t");
    c.store
        .insert_servers(std::slice::from_ref(&clash))
        .await
        .unwrap();
    let mut model = c.lock_model().await;
    // Changes of every kind, in the model first, as the operations make them.
    let mut h2 = stored_h1.clone();
    h2.id = "h2".parse().unwrap();
    model.hosts.insert(
        h2.id.clone(),
        crate::state::model::HostEntry::new(h2.clone(), backfill_shared::WorkerState::Idle, 1),
    );
    let mut held = stored_h1.clone();
    held.idle_behavior = backfill_shared::IdleBehavior::Hold;
    model.hosts.get_mut(&held.id).unwrap().record = held.clone();
    model.auto_mode = true;
    model.pool_limits.insert("p".into(), (0, 0));
    let launch = LaunchRecord {
        host: "h9".into(),
        pool: "p".into(),
        launched_at: 1,
    };
    model.launches.insert("h9".into(), launch.clone());
    let d = DriveRecord {
        uuid: DriveId::from_u128(1),
        owner: "t".into(),
        name: "d".into(),
        size: 1 << 30,
        media: Media::Disk,
        host: "h1".parse().unwrap(),
        source: DriveSource::Blank,
        status: DriveStatus::Creating,
        error: None,
        meta: Default::default(),
        tags: Vec::new(),
        created_at: 1,
        metered_until: Some(1),
    };
    model.drives.insert(d.uuid, d.clone());
    let profile = crate::domain::accel::DeviceProfile {
        uuid: "u".into(),
        name: "gpu".into(),
        description: String::new(),
        groups: vec![[("resources:PGPU".to_string(), "1".to_string())].into()],
        created_at: 1,
        updated_at: None,
    };
    let failing = WriteBatch {
        inserts: vec![clash],
        host_records: vec![h2, held],
        settings: vec![("auto_mode".into(), "on".into())],
        pool_limits: vec![("p".into(), Some((0, 0)))],
        launches_new: vec![launch],
        drives: vec![d],
        profiles_new: vec![profile],
        ..Default::default()
    };
    let w = c.commit_batch(&mut model, failing, &[]).await.unwrap();
    assert_eq!(model.accel.profiles.len(), 1, "applied in memory at once");
    drop(model);
    assert!(matches!(w.wait().await, Err(StoreError::Group(_))));
    let model = c.lock_model().await;
    assert_eq!(
        model.hosts.keys().map(|h| h.as_str()).collect::<Vec<_>>(),
        ["h1"]
    );
    assert_eq!(model.hosts[&stored_h1.id].record, stored_h1);
    assert!(
        model.hosts[&stored_h1.id].session.is_some(),
        "sessions stay"
    );
    assert!(!model.auto_mode);
    assert!(model.pool_limits.is_empty());
    assert!(model.launches.is_empty());
    assert!(model.drives.is_empty());
    assert!(model.accel.profiles.is_empty());
    drop(model);
    // And a host whose deletion failed comes back, down until its agent returns.
    let mut model = c.lock_model().await;
    model.hosts.remove(&stored_h1.id);
    let again = sample_server("t");
    c.store
        .insert_servers(std::slice::from_ref(&again))
        .await
        .unwrap();
    let failing = WriteBatch {
        inserts: vec![again],
        hosts_deleted: vec!["h1".into()],
        ..Default::default()
    };
    let w = c.commit_batch(&mut model, failing, &[]).await.unwrap();
    drop(model);
    assert!(w.wait().await.is_err());
    let model = c.lock_model().await;
    assert_eq!(model.hosts[&stored_h1.id].record, stored_h1);
    assert_eq!(
        model.hosts[&stored_h1.id].worker_state,
        backfill_shared::WorkerState::Down
    );
}
