//! Stores for tests: a fresh SQLite file, and a fresh database on a throwaway PostgreSQL
//! server that the test binary starts once (shared by its tests, gone when it exits).
//!
//! `BACKFILL_TEST_POSTGRES=postgres://...` uses that server instead (it must allow `CREATE
//! DATABASE`). Otherwise PostgreSQL's binaries are looked for in `BACKFILL_PG_BIN` or
//! `/usr/lib/postgresql/*/bin`; without them the PostgreSQL half of a test is skipped, and
//! says so (`BACKFILL_TEST_REQUIRE_POSTGRES=1`, as CI sets it, makes that a failure).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{Database, Store};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A database to open (and reopen) in a test; what it needs lives as long as it does.
pub(crate) struct TestDb {
    pub database: Database,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn open(&self) -> Store {
        Store::open(&self.database, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.database))
    }
}

pub(crate) fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    TestDb {
        database: Database::Sqlite(dir.path().join("db.sqlite")),
        _dir: Some(dir),
    }
}

/// The store of a test fixture whose state lives in `dir`: SQLite in `dir/db`, or with
/// `BACKFILL_TEST_STORE=postgres` a database on the test PostgreSQL server named after `dir`
/// (so opening it again is a restart). CI runs the coordinator's tests both ways.
pub(crate) async fn open_in(dir: &Path) -> Store {
    if std::env::var("BACKFILL_TEST_STORE").as_deref() == Ok("postgres") {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut h);
        let db = postgres_named(&format!("d_{:016x}", h.finish()))
            .await
            .expect("BACKFILL_TEST_STORE=postgres, but no PostgreSQL to test on");
        return db.open().await;
    }
    super::SqliteStore::open(&dir.join("db"))
        .await
        .unwrap()
        .into()
}

/// A new, empty database on the test PostgreSQL server; `None` (said on stderr) without one.
pub(crate) async fn postgres() -> Option<TestDb> {
    postgres_named(&format!("t_{}", uuid::Uuid::new_v4().simple())).await
}

/// Database `name` on the test PostgreSQL server, created if it is not there.
async fn postgres_named(name: &str) -> Option<TestDb> {
    let base = server()?;
    let admin = url_for(base, "postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The server may still be starting: retry until the deadline.
        match sqlx::PgPool::connect(&admin).await {
            Ok(pool) => {
                let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
                    .bind(name)
                    .fetch_optional(&pool)
                    .await
                    .unwrap()
                    .is_some();
                if !exists {
                    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                pool.close().await;
                break;
            }
            Err(e) if Instant::now() > deadline => panic!("test PostgreSQL at {admin}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Some(TestDb {
        database: Database::Postgres(url_for(base, name)),
        _dir: None,
    })
}

/// Every backend this machine can run: SQLite always, PostgreSQL when available.
pub(crate) async fn backends() -> Vec<TestDb> {
    let mut all = vec![sqlite()];
    all.extend(postgres().await);
    all
}

/// `base` (a URL without a database) pointed at database `db`.
fn url_for(base: &str, db: &str) -> String {
    match base.split_once('?') {
        Some((server, query)) => format!("{}/{db}?{query}", server.trim_end_matches('/')),
        None => format!("{}/{db}", base.trim_end_matches('/')),
    }
}

/// The server's URL without a database, started on first use.
fn server() -> Option<&'static str> {
    static SERVER: OnceLock<Option<String>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("BACKFILL_TEST_POSTGRES") {
                // Drop any database from the URL: tests make their own.
                let (head, query) = match url.split_once('?') {
                    Some((h, q)) => (h.to_owned(), Some(q.to_owned())),
                    None => (url.clone(), None),
                };
                let server = match head.split_once("://") {
                    Some((scheme, rest)) => match rest.split_once('/') {
                        Some((authority, _)) => format!("{scheme}://{authority}"),
                        None => head.clone(),
                    },
                    None => head.clone(),
                };
                return Some(match query {
                    Some(q) => format!("{server}?{q}"),
                    None => server,
                });
            }
            match start() {
                Ok(url) => Some(url),
                Err(why) if std::env::var_os("BACKFILL_TEST_REQUIRE_POSTGRES").is_some() => {
                    panic!("BACKFILL_TEST_REQUIRE_POSTGRES is set, but: {why}")
                }
                Err(why) => {
                    eprintln!("skipping the PostgreSQL backend: {why}");
                    None
                }
            }
        })
        .as_deref()
}

fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("BACKFILL_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("postgres").exists())
        .collect();
    found.sort();
    found.pop()
}

/// Runs `cmd` as `nobody` when root (PostgreSQL refuses to run as root).
fn unprivileged(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    cmd
}

fn start() -> Result<String, String> {
    let bin = bin_dir().ok_or("no PostgreSQL binaries (apt-get install postgresql)")?;
    let dir = tempfile::Builder::new()
        .prefix("backfill-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).map_err(|e| e.to_string())?;
    }
    let data = dir.join("data");
    let out = unprivileged(Command::new(bin.join("initdb")).arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
    ]))
    .output()
    .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // A watchdog shell runs the server and stops it (and removes its directory) once this
    // test process is gone.
    let script = r#"
"$1/postgres" -D "$2/data" -k "$2" -c listen_addresses= -c fsync=off \
    -c max_connections=200 >"$2/log" 2>&1 &
pg=$!
while [ -d "/proc/$3" ] && kill -0 "$pg" 2>/dev/null; do sleep 1; done
kill -INT "$pg" 2>/dev/null; wait "$pg"; rm -rf "$2"
"#;
    unprivileged(
        Command::new("sh")
            .args(["-c", script, "pg-watchdog"])
            .arg(&bin)
            .arg(&dir)
            .arg(std::process::id().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .spawn()
    .map_err(|e| format!("postgres: {e}"))?;
    wait_for_socket(&dir)?;
    Ok(format!(
        "postgres://postgres@localhost?host={}&port=5432",
        dir.display()
    ))
}

fn wait_for_socket(dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join(".s.PGSQL.5432").exists() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            return Err(format!("postgres did not start: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A stopped backfill server of `owner`, for tests.
pub(crate) fn sample_server(owner: &str) -> crate::domain::server::ServerRecord {
    crate::domain::server::ServerRecord {
        uuid: backfill_shared::ServerId::new_random(),
        owner: owner.into(),
        name: "s".into(),
        class: backfill_shared::ServerClass::Backfill,
        cpu: 1000,
        smp: 1,
        mem: 1 << 29,
        meta: [("k".to_string(), "v".to_string())].into(),
        tags: vec!["t".into()],
        vnc_password: None,
        workload: None,
        status: backfill_shared::ServerStatus::Stopped,
        host: None,
        perf_factor: backfill_shared::PerfFactor::FULL,
        active_since: None,
        incarnation: 0,
        termination: None,
        queued_reason: None,
        priority: 3,
        created_at: 5,
        network: None,
        limits: None,
        metered_until: None,
        metered_perf: backfill_shared::PerfFactor::FULL,
        shutdown_until: None,
        flavor: None,
        gpu_request: None,
        gpus: vec!["GPU-1".into()],
        instance_type: String::new(),
        last_host: None,
        stop_reason: None,
        drives: Vec::new(),
    }
}

/// Servers, host generations, usage and events written in one transaction, as the committer
/// writes a batch ([`Store::write_batches`]).
pub(crate) async fn commit(
    store: &Store,
    servers: &[super::ServerRecord],
    hosts: &[(backfill_shared::HostId, u64)],
    usage: &[super::UsageSegment],
    events: &[crate::domain::event::Event],
) -> Result<(), super::StoreError> {
    let batch = super::WriteBatch {
        servers: servers.to_vec(),
        hosts: hosts.to_vec(),
        usage: usage.to_vec(),
        events: events.to_vec(),
        ..Default::default()
    };
    store.write_batches(&[&batch]).await
}

/// A host record `id` (2 CPUs, 1 GiB, exec only) at `generation`, in pool `p`, for tests.
pub(crate) fn sample_host(id: &str, generation: u64) -> crate::domain::server::HostRecord {
    crate::domain::server::HostRecord {
        id: id.parse().unwrap(),
        inventory: backfill_shared::HostInventory {
            hostname: id.into(),
            cpus: 2,
            cpu_mhz_per_cpu: 2000,
            mem_bytes: 1 << 30,
            gpus: vec![],
            drivers: backfill_shared::Drivers::exec_only(),
            mechanisms: Vec::new(),
        },
        enforcing: true,
        generation,
        first_seen: 1,
        idle_behavior: backfill_shared::IdleBehavior::Run,
        pool: Some("p".into()),
        last_seen: 1,
    }
}

/// A coordinator's claim on the lease, as `name` (leases of `lease`).
pub(crate) fn claim(name: &str, lease: Duration) -> super::leader::Claim {
    super::leader::Claim {
        holder: name.into(),
        api_url: format!("https://{name}:8443"),
        link_addr: "127.0.0.1:8444".into(),
        lease,
    }
}

/// Takes the lease with `c` as soon as it is free (within 10 s); its epoch.
pub(crate) async fn take_soon(
    s: &mut super::leader::LeaseSession,
    c: &super::leader::Claim,
) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(epoch) = s.try_take(c).await.unwrap() {
            return epoch;
        }
        assert!(Instant::now() < deadline, "the lease stayed taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
