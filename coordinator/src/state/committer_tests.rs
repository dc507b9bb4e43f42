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
