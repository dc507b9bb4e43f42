//! A PostgreSQL server of a test's own (initdb and pg_ctl in a temp dir, as `nobody` when
//! root, a Unix socket only), for tests that restart it or need several coordinators on it.
//! `None` without PostgreSQL's binaries, unless `BACKFILL_TEST_REQUIRE_POSTGRES` is set (CI).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
}

fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("BACKFILL_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

fn as_postgres(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if crate::is_root() {
        cmd.uid(65534).gid(65534);
    }
    cmd
}

impl PgServer {
    /// Starts a fresh server, or says why it cannot (and panics if CI requires it).
    pub fn start() -> Option<PgServer> {
        let Some(bin) = bin_dir() else {
            let why = "no PostgreSQL binaries (apt-get install postgresql)";
            assert!(
                std::env::var_os("BACKFILL_TEST_REQUIRE_POSTGRES").is_none(),
                "BACKFILL_TEST_REQUIRE_POSTGRES is set, but: {why}"
            );
            eprintln!("SKIP: {why}");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("backfill-ha-pg-")
            .tempdir()
            .unwrap()
            .keep();
        if crate::is_root() {
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        }
        let out = as_postgres(
            Command::new(bin.join("initdb"))
                .arg("-D")
                .arg(dir.join("data")),
        )
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = PgServer { dir, bin };
        pg.ctl(&["start"]);
        Some(pg)
    }

    fn ctl(&self, what: &[&str]) {
        let opts = format!(
            "-k {} -c listen_addresses= -c fsync=off -c max_connections=200",
            self.dir.display()
        );
        let out = as_postgres(Command::new(self.bin.join("pg_ctl")).arg("-D"))
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-m", "fast", "-o", &opts])
            .args(what)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {what:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    /// `pg_ctl restart -m fast`: every session is cut.
    pub fn restart(&self) {
        self.ctl(&["restart"]);
    }

    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost/{db}?host={}&port=5432",
            self.dir.display()
        )
    }

    /// Creates database `db`; its URL.
    pub fn create_db(&self, db: &str) -> String {
        let out = self.psql("postgres", &format!("CREATE DATABASE {db}"));
        assert!(out.contains("CREATE DATABASE"), "{out}");
        self.url(db)
    }

    /// Runs `sql` in `db` with psql; its output (tuples only, unaligned).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(self.url(db))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if sql.starts_with("CREATE DATABASE") && out.status.success() {
            return "CREATE DATABASE".into();
        }
        assert!(out.status.success(), "psql {sql:?}: {text}");
        text
    }

    /// A psql session kept open: what the test writes to it runs as it is written.
    pub fn session(&self, db: &str) -> PgSession {
        let child = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg(self.url(db))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        PgSession { child }
    }

    /// Polls until `sql` prints something non-empty (or panics after `limit`).
    pub fn wait_for(&self, db: &str, sql: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.psql(db, sql);
            if !out.trim().is_empty() {
                return out;
            }
            if Instant::now() >= deadline {
                let activity = self.psql(
                    db,
                    "SELECT pid, state, wait_event_type, wait_event, left(query, 80) \
                     FROM pg_stat_activity",
                );
                panic!("nothing from {sql:?} in {limit:?}; sessions:\n{activity}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_postgres(Command::new(self.bin.join("pg_ctl")).arg("-D"))
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct PgSession {
    child: Child,
}

impl PgSession {
    pub fn run(&mut self, sql: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{sql}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for PgSession {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
