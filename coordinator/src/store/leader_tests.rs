//! The lease and the fence on a real PostgreSQL (skipped, and said so, without one).

#![allow(clippy::unwrap_used)]

use super::*;
use crate::domain::server::ServerRecord;
use crate::store::Store;
use crate::store::testing;

fn claim(name: &str, lease_ms: u64) -> Claim {
    testing::claim(name, Duration::from_millis(lease_ms))
}

fn server() -> ServerRecord {
    crate::store::testing::sample_server("t")
}

async fn open() -> Option<(Store, PgStore)> {
    let db = testing::postgres().await?;
    let store = db.open().await;
    let pg = store.shared().unwrap().clone();
    // The database lives as long as the server; the TestDb holds nothing else.
    Some((store, pg))
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_deposed_one_cannot_commit() {
    let Some((store, pg)) = open().await else {
        return;
    };
    store
        .create_account("t", true, Default::default(), 1)
        .await
        .unwrap();
    // Before anyone leads, nothing is fenced (the store used without leadership).
    store.insert_servers(&[server()]).await.unwrap();

    let (a, b) = (claim("a", 60_000), claim("b", 60_000));
    let mut sa = pg.lease_session().await.unwrap();
    let mut sb = pg.lease_session().await.unwrap();
    assert_eq!(sa.try_take(&a).await.unwrap(), Some(1));
    assert_eq!(sb.try_take(&b).await.unwrap(), None, "a holds it");
    assert!(sa.renew(1, &a).await.unwrap());
    let row = pg.leader().await.unwrap();
    assert_eq!((row.epoch, row.holder.as_str()), (1, "a"));
    assert_eq!(row.api_url, "https://a:8443");

    // Writes carry the epoch; without it, or with another, the commit is refused.
    let err = store.insert_servers(&[server()]).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    pg.set_epoch(1);
    store.insert_servers(&[server()]).await.unwrap();

    // a's session ends (a killed leader): b takes over at once, before the deadline.
    sa.close().await;
    let epoch = testing::take_soon(&mut sb, &b).await;
    assert_eq!(epoch, 2);
    let err = store.insert_servers(&[server()]).await.unwrap_err();
    assert!(err.is_fenced(), "epoch 1 after the takeover: {err}");
    let mut sa = pg.lease_session().await.unwrap();
    assert!(!sa.renew(1, &a).await.unwrap(), "a's lease is gone");
    pg.set_epoch(2);
    store.insert_servers(&[server()]).await.unwrap();
    let n = store.servers().await.unwrap().len();
    assert_eq!(n, 3, "the refused commits left nothing");

    // A clean handover: b lets go, a takes it without waiting for the deadline.
    sb.release(2).await.unwrap();
    assert_eq!(sa.try_take(&a).await.unwrap(), Some(3));
    // A lease past its deadline is taken even while its holder's session lives.
    let short = claim("a", 1);
    assert!(sa.renew(3, &short).await.unwrap());
    let epoch = testing::take_soon(&mut sb, &b).await;
    assert_eq!(epoch, 4);
    sb.heartbeat(&b).await.unwrap();
    let all = pg.coordinators(Duration::from_secs(10)).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name, "b");
}

#[tokio::test]
async fn events_from_concurrent_transactions_get_distinct_sequence_numbers() {
    let Some((store, _pg)) = open().await else {
        return;
    };
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let e = crate::domain::event::Event {
                id: format!("e{i}"),
                account: "t".into(),
                kind: "server_state_changed",
                server: "s".into(),
                payload: serde_json::json!({"i": i}),
                created_at: 1,
            };
            testing::commit(&store, &[], &[], &[], &[e]).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.unfanned_events(100).await.unwrap().len(), 16);
}
