//! Reads never wait on a write's IO (issue 16): with SQLite's write lock held by another
//! connection, a registration, an operator's action, auto mode, a drive create, a profile
//! create, ARQs and a host's deletion each stay pending, while reads (host lists and shows,
//! free resources, drives, profiles, ARQs) answer at once and already see the change; once
//! the lock is released each write answers, and what it wrote is in the store (opened again).

use crate::link::session_tests::hello;
use crate::ops::drives::NewDrive;
use crate::state::coordinator::Coordinator;
use crate::store::{SqliteStore, Store};
use backfill_shared::clock::ManualClock;
use backfill_shared::{HostId, IdleBehavior, Media};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long a read may take while a write waits on the disk: far below the store's busy
/// timeout (5 s), so a read that waited for the write would miss it.
const READ_DEADLINE: Duration = Duration::from_secs(2);

type Probe = Box<dyn Fn(Arc<Coordinator>) -> Pin<Box<dyn Future<Output = bool> + Send>>>;

fn db(dir: &Path) -> PathBuf {
    dir.join("backfill.db")
}

/// Takes SQLite's write lock from a connection of its own (`BEGIN IMMEDIATE`): readers go on
/// (WAL), every writer waits until it is rolled back.
async fn hold_write_lock(path: &Path) -> sqlx::SqliteConnection {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Starts `write` with the disk held; polls (with a deadline) until `applied` (a read) sees
/// its change, checks other reads answer too and that the write has not; then lets the disk
/// go and returns the write's answer.
async fn pending_while_reads_answer<T: Send + 'static>(
    path: &Path,
    c: &Arc<Coordinator>,
    write: impl Future<Output = T> + Send + 'static,
    applied: Probe,
) -> T {
    let mut lock = hold_write_lock(path).await;
    let task = tokio::spawn(write);
    let deadline = tokio::time::Instant::now() + READ_DEADLINE;
    loop {
        let seen = tokio::time::timeout_at(deadline, applied(c.clone()))
            .await
            .expect("a read waited for a write's IO");
        if seen {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write's change never showed"
        );
        tokio::task::yield_now().await;
    }
    let reads = async {
        c.free_resources().await;
        c.hosts().await;
        c.servers_page_len().await
    };
    tokio::time::timeout(READ_DEADLINE, reads)
        .await
        .expect("a read waited for a write's IO");
    assert!(
        !task.is_finished(),
        "the write answered before it was durable"
    );
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the write did not answer once the disk was free")
        .unwrap()
}

impl Coordinator {
    /// A read of the server list (any scope), for the probes above.
    async fn servers_page_len(&self) -> usize {
        self.lock_model().await.servers.len()
    }
}

fn probe<F, Fut>(f: F) -> Probe
where
    F: Fn(Arc<Coordinator>) -> Fut + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    Box::new(move |c| Box::pin(f(c)))
}

fn vm_hello(host: &str) -> backfill_shared::protocol::Hello {
    let mut h = hello(host);
    h.inventory.drivers.vm = Some(backfill_shared::VmDriver {
        accel: "tcg".into(),
        images: Vec::new(),
    });
    h
}

#[tokio::test]
async fn reads_answer_while_writes_wait_on_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let store: Store = SqliteStore::open(&path).await.unwrap().into();
    let c = Arc::new(
        Coordinator::load(
            store,
            Arc::new(ManualClock::new(1_000)),
            &["t".into()],
            Default::default(),
        )
        .await
        .unwrap()
        .with_driver_access(crate::state::access::DriverAccess::dev()),
    );
    let tenant = c.account("t").await.unwrap();
    let h1: HostId = "h1".parse().unwrap();
    let (_conn, _rx) = c.register_agent(&vm_hello("h1")).await.unwrap();

    // An agent registers.
    let w = c.clone();
    let (_conn2, _rx2) = pending_while_reads_answer(
        &path,
        &c,
        async move { w.register_agent(&hello("h2")).await },
        probe(|c| async move { c.host("h2").await.is_ok() }),
    )
    .await
    .unwrap();

    // An operator holds a host (with its audit entry).
    let w = c.clone();
    pending_while_reads_answer(
        &path,
        &c,
        async move {
            w.set_idle_behavior("op", "h1", IdleBehavior::Hold, Some("maintenance"))
                .await
        },
        probe(|c| async move {
            c.host("h1")
                .await
                .is_ok_and(|h| h.idle_behavior == IdleBehavior::Hold)
        }),
    )
    .await
    .unwrap();

    // Auto mode (a setting with its audit entry).
    let w = c.clone();
    pending_while_reads_answer(
        &path,
        &c,
        async move { w.set_auto_mode("op", true).await },
        probe(|c| async move { c.auto_mode().await }),
    )
    .await
    .unwrap();

    // A tenant's drive; the host is told only once it is durable.
    let w = c.clone();
    let owner = tenant.clone();
    let made = pending_while_reads_answer(
        &path,
        &c,
        async move {
            let n = NewDrive {
                name: "d".into(),
                size: 1 << 30,
                media: Media::Disk,
                meta: Default::default(),
                tags: Vec::new(),
            };
            w.create_drives(&owner, vec![n]).await
        },
        {
            let owner = tenant.clone();
            probe(move |c| {
                let owner = owner.clone();
                async move { !c.list_drives(&owner).await.is_empty() }
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(made[0].record.host, h1);

    // A device profile.
    let w = c.clone();
    let groups = vec![BTreeMap::from([("resources:PGPU".into(), "1".into())])];
    pending_while_reads_answer(
        &path,
        &c,
        async move { w.create_profile("gpu", "", groups).await },
        probe(|c| async move {
            c.device_profiles()
                .await
                .is_ok_and(|p| p.iter().any(|p| p.name == "gpu"))
        }),
    )
    .await
    .unwrap();

    // Accelerator requests of that profile.
    let w = c.clone();
    let owner = tenant.clone();
    let arqs = pending_while_reads_answer(
        &path,
        &c,
        async move { w.create_arqs(&owner, "gpu", None).await },
        probe(|c| async move {
            c.list_arqs(None, &Default::default())
                .await
                .is_ok_and(|a| !a.is_empty())
        }),
    )
    .await
    .unwrap();

    // An operator forgets a held host.
    c.set_idle_behavior("op", "h2", IdleBehavior::Hold, None)
        .await
        .unwrap();
    let w = c.clone();
    pending_while_reads_answer(
        &path,
        &c,
        async move { w.delete_host("op", "h2", Some("retired")).await },
        probe(|c| async move { c.host("h2").await.is_err() }),
    )
    .await
    .unwrap();

    // Everything above is durable: a fresh open of the file holds it.
    let again = SqliteStore::open(&path).await.unwrap();
    let hosts = again.hosts().await.unwrap();
    assert_eq!(
        hosts.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["h1"]
    );
    assert_eq!(again.actions("host", "h2", 10).await.unwrap().len(), 2);
    let stored: Vec<String> = again
        .arqs()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.uuid)
        .collect();
    assert_eq!(
        stored,
        arqs.iter().map(|a| a.uuid.clone()).collect::<Vec<_>>()
    );
    assert_eq!(hosts[0].idle_behavior, IdleBehavior::Hold);
    let audit = again.actions("host", "h1", 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "hold");
    assert_eq!(
        again
            .settings()
            .await
            .unwrap()
            .get("auto_mode")
            .map(String::as_str),
        Some("on")
    );
    assert_eq!(
        again
            .actions("coordinator", "auto_mode", 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let drives = again.drives().await.unwrap();
    assert_eq!(drives.len(), 1);
    assert_eq!(drives[0].uuid, made[0].record.uuid);
    let profiles = again.profiles().await.unwrap();
    assert_eq!(profiles.len(), 1);
    assert_eq!(profiles[0].name, "gpu");
}
