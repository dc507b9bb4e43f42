//! End-to-end harness: a CA per test, the real `backfill-coordinator` and `backfill-agent`
//! binaries on 127.0.0.1:0, an HTTPS client with client certificates, and polling with a
//! deadline instead of sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod guest;
pub mod registry;
pub mod tour;

use backfill_shared::pki::{Ca, IssueRequest, Role};
use backfill_shared::tls::TlsFiles;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod pg;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// The tests run `exec` workloads as any tenant (as `dev` allows); a test whose configuration
/// has its own `[drivers]` table (a packaged-style one) gets that instead.
const DEFAULT_DRIVERS: Option<&str> =
    Some("[drivers]\nexec = \"everyone\"\nhost_network = \"everyone\"\n");

/// A compiled binary of the workspace, next to the test executable's `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    let var = format!("BACKFILL_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, DEADLINE, f).await
}

/// [`eventually`] with a deadline of `limit` (slow guests: a VM booting on TCG).
pub async fn within<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocking variant of [`eventually`] for plain conditions.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh directory with a CA and the certificates a test needs.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path()).unwrap();
        Pki { dir, ca }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> PathBuf {
        self.path().join("ca.pem")
    }

    pub fn issue(&self, role: Role, name: &str) -> TlsFiles {
        let sans = vec!["localhost".to_string(), "127.0.0.1".into()];
        self.issue_with(
            &format!("{}-{name}", role.as_str()),
            &IssueRequest::new(role, name, &sans, 1),
        )
    }

    pub fn issue_with(&self, stem: &str, req: &IssueRequest<'_>) -> TlsFiles {
        let (cert, key) = self.ca.issue_to_dir(self.path(), stem, req).unwrap();
        TlsFiles {
            ca: self.ca(),
            cert,
            key,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A daemon child process whose stderr goes to a file we can search.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn_env(exe: &Path, args: &[&str], log: PathBuf, env: &[(String, String)]) -> Daemon {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing `needle`, returning the text after `key=` on it.
    pub fn wait_log_value(&mut self, needle: &str, key: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = self.log_text();
            let marker = format!("{key}=");
            let found = text
                .lines()
                .filter(|l| l.contains(needle))
                .find_map(|l| l.split(&marker).nth(1));
            if let Some(rest) = found {
                return rest.split_whitespace().next().unwrap_or("").to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before logging {needle:?}:\n{text}",
                    self.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {}:\n{text}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + DEADLINE;
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A running coordinator.
pub struct Coordinator {
    pub daemon: Daemon,
    pub api: String,
    pub link: String,
    /// The admin listener (/metrics, /healthz, /ready), plain HTTP.
    pub admin: String,
    pub dir: tempfile::TempDir,
}

impl Coordinator {
    pub fn start(pki: &Pki, backfill_accounts: &[&str]) -> Coordinator {
        Coordinator::start_with(pki, backfill_accounts, "")
    }

    /// Starts a coordinator with `extra` appended to its configuration file.
    pub fn start_with(pki: &Pki, backfill_accounts: &[&str], extra: &str) -> Coordinator {
        Coordinator::start_accounts(pki, backfill_accounts, &[], extra)
    }

    /// Starts a coordinator that creates `backfill_accounts` (with the backfill permission)
    /// and `plain_accounts` (without), with `extra` appended to its configuration file.
    pub fn start_accounts(
        pki: &Pki,
        backfill_accounts: &[&str],
        plain_accounts: &[&str],
        extra: &str,
    ) -> Coordinator {
        Coordinator::start_env(pki, backfill_accounts, plain_accounts, extra, &[])
    }

    /// As [`Coordinator::start_accounts`], with extra environment variables.
    pub fn start_env(
        pki: &Pki,
        backfill_accounts: &[&str],
        plain_accounts: &[&str],
        extra: &str,
        env: &[(String, String)],
    ) -> Coordinator {
        Coordinator::start_full(pki, backfill_accounts, plain_accounts, extra, env, None)
    }

    /// A coordinator on `database` (several may share a PostgreSQL one: `ha.rs`).
    pub fn start_db(
        pki: &Pki,
        backfill_accounts: &[&str],
        database: &str,
        extra: &str,
    ) -> Coordinator {
        Coordinator::start_full(pki, backfill_accounts, &[], extra, &[], Some(database))
    }

    fn start_full(
        pki: &Pki,
        backfill_accounts: &[&str],
        plain_accounts: &[&str],
        extra: &str,
        env: &[(String, String)],
        database: Option<&str>,
    ) -> Coordinator {
        let dir = tempfile::tempdir().unwrap();
        let tls = pki.issue(Role::Coordinator, "coordinator");
        let list = |names: &[&str]| {
            names
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cfg = format!(
            "api_addr = \"127.0.0.1:0\"\nlink_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\ndatabase = {:?}\nbackfill_accounts = [{}]\naccounts = [{}]\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            database.map_or_else(|| test_database(dir.path()), str::to_owned),
            list(backfill_accounts),
            list(plain_accounts),
            tls.ca,
            tls.cert,
            tls.key
        ) + extra
            + DEFAULT_DRIVERS
                .filter(|_| !extra.contains("[drivers]"))
                .unwrap_or_default();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, cfg).unwrap();
        let mut daemon = Daemon::spawn_env(
            &bin("backfill-coordinator"),
            &["run", "--config", path.to_str().unwrap()],
            dir.path().join("coordinator.log"),
            env,
        );
        let api = daemon.wait_log_value("API listening", "api_addr");
        let link = daemon.wait_log_value("agent link listening", "link_addr");
        let admin = daemon.wait_log_value("admin listening", "admin_addr");
        Coordinator {
            daemon,
            api,
            link,
            admin,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}/api/2.0/{path}", self.api)
    }

    /// SIGKILL: no drain, no goodbye (what a crash looks like).
    pub fn kill(&mut self) {
        let _ = self.daemon.child.kill();
        let _ = self.daemon.child.wait();
    }

    /// Starts the coordinator again on the same database, configuration and ports.
    pub fn restart(&mut self) {
        let path = self.dir.path().join("coordinator.toml");
        let cfg = std::fs::read_to_string(&path).unwrap();
        let cfg = cfg
            .replacen(
                "api_addr = \"127.0.0.1:0\"",
                &format!("api_addr = \"{}\"", self.api),
                1,
            )
            .replacen(
                "link_addr = \"127.0.0.1:0\"",
                &format!("link_addr = \"{}\"", self.link),
                1,
            )
            .replacen(
                "admin_addr = \"127.0.0.1:0\"",
                &format!("admin_addr = \"{}\"", self.admin),
                1,
            );
        std::fs::write(&path, cfg).unwrap();
        let n = RESTARTS.fetch_add(1, Ordering::Relaxed);
        let mut daemon = Daemon::spawn_env(
            &bin("backfill-coordinator"),
            &["run", "--config", path.to_str().unwrap()],
            self.dir.path().join(format!("coordinator-{n}.log")),
            &[],
        );
        daemon.wait_log_value("API listening", "api_addr");
        self.daemon = daemon;
    }
}

static CGROUP_SEQ: AtomicU32 = AtomicU32::new(0);
static RESTARTS: AtomicU32 = AtomicU32::new(1);

/// An agent's configuration and state directory; start it (again) with [`AgentSetup::start`].
pub struct AgentSetup {
    pub host: String,
    pub dir: tempfile::TempDir,
    pub cgroup_parent: String,
    pub enforcing: bool,
    /// Appended to the generated configuration. By default the metadata listener binds an
    /// ephemeral loopback port, so that agents of parallel tests do not collide.
    pub extra_toml: String,
    /// Extra environment variables for the agent process.
    pub extra_env: Vec<(String, String)>,
    /// Top-level keys, put before the generated tables (`inventory_file = ...`).
    pub top_toml: String,
    tls: TlsFiles,
    link: String,
}

impl AgentSetup {
    pub fn new(pki: &Pki, coordinator: &Coordinator, host: &str) -> AgentSetup {
        let seq = CGROUP_SEQ.fetch_add(1, Ordering::Relaxed);
        AgentSetup {
            host: host.into(),
            dir: tempfile::tempdir().unwrap(),
            cgroup_parent: format!("backfill-test-{}-{seq}", std::process::id()),
            enforcing: is_root(),
            extra_toml: "[metadata]\nbind = \"127.0.0.1:0\"\n".into(),
            extra_env: Vec::new(),
            top_toml: String::new(),
            tls: pki.issue(Role::Agent, host),
            link: coordinator.link.clone(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts the agent; with `stop_on_exit` it stops its workloads when it exits.
    pub fn start(&self, stop_on_exit: bool, tag: &str) -> Daemon {
        let root = is_root();
        let cfg = self.top_toml.clone()
            + &format!(
                "coordinator = {:?}\ncoordinator_name = \"localhost\"\nstate_dir = {:?}\ncgroup_parent = {:?}\ncgroups = {:?}\nrun_as = {:?}\ndefault_command = [\"sleep\", \"120\"]\nexec_driver = true\nstop_workloads_on_exit = {stop_on_exit}\nreport_interval_secs = 1\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                self.link,
                self.state_dir(),
                self.cgroup_parent,
                if root { "auto" } else { "none" },
                if root { "nobody" } else { "" },
                self.tls.ca,
                self.tls.cert,
                self.tls.key
            )
            + &self.extra_toml
            + "[admin]\nbind = \"127.0.0.1:0\"\n";
        let path = self.dir.path().join(format!("agent-{tag}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let mut d = Daemon::spawn_env(
            &bin("backfill-agent"),
            &["--config", path.to_str().unwrap()],
            self.dir.path().join(format!("agent-{tag}.log")),
            &self.extra_env,
        );
        d.wait_log_value("connected to the coordinator", "protocol_version");
        d
    }

    /// The pids the agent's state file records, by server uuid.
    pub fn recorded_pid(&self, server: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.state_dir().join("state.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["servers"]
            .as_array()?
            .iter()
            .find(|s| s["server"] == server)
            .and_then(|s| s["process"]["pid"].as_u64())
            .map(|p| p as u32)
    }

    /// `<v1 controller root>/<parent>/<class>/<server>` for a v1 controller (this machine's
    /// layout): the server's cgroup in its class parent (`normal` or `idle`), or the normal
    /// one's place while it does not exist.
    pub fn v1_cgroup(&self, controller: &str, server: &str) -> PathBuf {
        let parent = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.cgroup_parent);
        ["idle", "normal"]
            .iter()
            .map(|class| parent.join(class).join(server))
            .find(|d| d.is_dir())
            .unwrap_or_else(|| parent.join("normal").join(server))
    }
}

impl Drop for AgentSetup {
    fn drop(&mut self) {
        // Remove the (empty) per-test parent cgroups the agent made, class parents first.
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let parent = e.path().join(&self.cgroup_parent);
                for class in ["idle", "normal"] {
                    let _ = std::fs::remove_dir(parent.join(class));
                }
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// An HTTPS client presenting `files`' certificate (or none).
pub fn client(ca: &Path, identity: Option<&TlsFiles>) -> reqwest::Client {
    let provider = backfill_shared::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in backfill_shared::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let builder = builder.with_root_certificates(roots);
    let cfg = match identity {
        Some(f) => builder
            .with_client_auth_cert(
                backfill_shared::tls::load_certs(&f.cert).unwrap(),
                backfill_shared::tls::load_key(&f.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET returning (status, JSON body or Null).
pub async fn get(c: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

pub async fn post(
    c: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

pub async fn put(
    c: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = c.put(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Creates one server (`{"objects": [body]}`, which must answer 201); its uuid.
pub async fn create(c: &reqwest::Client, url: &str, body: serde_json::Value) -> String {
    let (status, created) = post(c, url, serde_json::json!({ "objects": [body] })).await;
    assert_eq!(status, 201, "{created}");
    created["objects"][0]["uuid"].as_str().unwrap().to_string()
}

/// DELETE returning (status, body text).
pub async fn delete(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.delete(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// A plain-HTTP GET (the admin listeners): (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The coordinator's `database` for a test whose files live in `dir`: a SQLite file there, or
/// with `BACKFILL_E2E_POSTGRES=postgres://...` (a server URL without a database, whose user may
/// create databases) a new database on that server, so the end-to-end tests run on PostgreSQL.
pub fn test_database(dir: &Path) -> String {
    let Ok(server) = std::env::var("BACKFILL_E2E_POSTGRES") else {
        return dir.join("db.sqlite").display().to_string();
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "e2e_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let with_db = |db: &str| match server.split_once('?') {
        Some((s, q)) => format!("{}/{db}?{q}", s.trim_end_matches('/')),
        None => format!("{}/{db}", server.trim_end_matches('/')),
    };
    let createdb = postgres_bin("createdb");
    let out = std::process::Command::new(&createdb)
        .arg(format!("--maintenance-db={}", with_db("postgres")))
        .arg(&name)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", createdb.display()));
    assert!(
        out.status.success(),
        "createdb {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    with_db(&name)
}

/// A PostgreSQL client program: from `BACKFILL_PG_BIN`, Debian's versioned directory, or PATH.
fn postgres_bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("BACKFILL_PG_BIN") {
        return Path::new(&dir).join(name);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from(name))
}
