//! `backfillctl` end to end: the real binary, configured through its `BACKFILL_*` environment
//! variables, against a real coordinator and agent on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_shared::tls::TlsFiles;
use backfill_tests::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const WAIT_SECS: &str = "30";
const NO_SUCH_SERVER: &str = "00000000-0000-4000-8000-000000000000";

/// `backfillctl` with an API address and (optionally) a certificate, isolated from the
/// caller's environment and configuration file.
struct Ctl {
    api: String,
    files: Option<TlsFiles>,
    home: tempfile::TempDir,
}

impl Ctl {
    fn new(api: String, files: Option<TlsFiles>) -> Ctl {
        Ctl {
            api,
            files,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs `line`, split at whitespace.
    fn run(&self, line: &str) -> Output {
        let args: Vec<&str> = line.split_whitespace().collect();
        let mut cmd = Command::new(bin("backfillctl"));
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("BACKFILL_API", &self.api)
            .stdin(Stdio::null());
        for var in [
            "BACKFILL_CA",
            "BACKFILL_CERT",
            "BACKFILL_KEY",
            "BACKFILL_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        if let Some(f) = &self.files {
            cmd.env("BACKFILL_CA", &f.ca)
                .env("BACKFILL_CERT", &f.cert)
                .env("BACKFILL_KEY", &f.key);
        }
        cmd.output().unwrap()
    }

    /// Runs and requires exit code 0; stdout.
    fn ok(&self, line: &str) -> String {
        let out = self.run(line);
        assert!(
            out.status.success(),
            "backfillctl {line} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--output json` (first, so that it stays out of a workload's command) and
    /// parses stdout.
    fn json(&self, line: &str) -> Value {
        let text = self.ok(&format!("--output json {line}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{line}: {e}: {text:?}"))
    }

    /// Runs and requires exit code `code`; stderr.
    fn fails(&self, code: i32, line: &str) -> String {
        let out = self.run(line);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "backfillctl {line}: stdout {:?}, stderr {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.starts_with("backfillctl: ") || code == 64,
            "{stderr}"
        );
        stderr
    }
}

#[test]
fn a_tenant_runs_a_bserver_with_backfillctl() {
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let setup = AgentSetup::new(&pki, &coord, "host-a");
    let _agent = setup.start(true, "1");
    let tenant = Ctl::new(coord.url(""), Some(pki.issue(Role::Account, "tenant")));

    let caps = tenant.json("capabilities");
    assert_eq!(caps["backfilling"], true, "{caps}");
    for k in ["total", "most_free_by_cpu", "most_free_by_memory"] {
        let cpu = caps["free_resources"][k]["cpu"].as_u64().unwrap();
        assert!(cpu > 0, "{caps}");
    }
    let table = tenant.ok("capabilities");
    assert!(table.starts_with("backfilling: true\n"), "{table}");
    assert!(table.contains("most_free_by_memory"), "{table}");

    // A bad size is a usage error, before anything is sent.
    tenant.fails(64, "bserver create --name x --cpu 1 --mem 12Q");

    let created = tenant.json(&format!(
        "bserver create --name ctl-e2e --cpu 500 --mem 256M --meta purpose=test \
         --start --wait --timeout {WAIT_SECS} -- sleep 300"
    ));
    let server = &created["objects"][0];
    let uuid = server["uuid"].as_str().unwrap().to_string();
    assert_eq!(server["status"], "running", "{created}");
    assert_eq!(server["mem"], 256u64 << 20);
    assert_eq!(server["meta"]["purpose"], "test");
    assert_eq!(
        server["workload"]["command"],
        serde_json::json!(["sleep", "300"])
    );

    let list = tenant.json("bserver list");
    let listed = list["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["uuid"] == uuid.as_str())
        .unwrap_or_else(|| panic!("{uuid} not listed: {list}"));
    assert_eq!(listed["status"], "running");
    assert_eq!(listed["runtime"]["host"], "host-a");

    let table = tenant.ok("bserver list");
    let header = table.lines().next().unwrap();
    let columns = "UUID NAME STATUS CPU (MHz) MEM PERF HOST TERMINATES";
    for col in columns.split(' ') {
        assert!(header.contains(col), "{col} missing in {table}");
    }
    let row = table.lines().find(|l| l.contains(&uuid)).unwrap();
    for cell in [
        "ctl-e2e",
        "running",
        "500",
        "256 MiB",
        "1.00/1.00",
        "host-a",
    ] {
        assert!(row.contains(cell), "{cell:?} missing in {row:?}");
    }

    let shown = tenant.ok(&format!("bserver show {uuid}"));
    assert!(shown.starts_with("FIELD"), "{shown}");
    let uuid_line = shown.lines().find(|l| l.starts_with("uuid ")).unwrap();
    assert!(uuid_line.ends_with(&uuid), "{shown}");
    assert!(shown.contains("runtime.host"), "{shown}");
    assert!(shown.contains("256 MiB"), "{shown}");

    // A running server takes a new name, meta and tags.
    let edited = tenant.json(&format!("bserver edit {uuid} --name ctl-renamed --tag t1"));
    assert_eq!(edited["name"], "ctl-renamed", "{edited}");
    assert_eq!(edited["tags"], serde_json::json!(["t1"]));

    // Restart is a fresh run; shutdown asks the workload to exit (sleep does on SIGTERM).
    let restarted = tenant.ok(&format!("bserver restart {uuid}"));
    assert_eq!(restarted, format!("{uuid}: restart success\n"));
    wait_until("restarted server running", || {
        tenant.json(&format!("bserver show {uuid}"))["status"] == "running"
    });
    let down = tenant.ok(&format!(
        "bserver shutdown {uuid} --wait --timeout {WAIT_SECS}"
    ));
    assert_eq!(down, format!("{uuid}: stopped\n"));
    let up = tenant.json(&format!(
        "bserver start {uuid} --wait --timeout {WAIT_SECS}"
    ));
    assert_eq!(up["action"], "start", "{up}");
    assert_eq!(
        tenant.json(&format!("bserver show {uuid}"))["status"],
        "running"
    );

    let stopped = tenant.ok(&format!("bserver stop {uuid} --wait --timeout {WAIT_SECS}"));
    assert_eq!(stopped, format!("{uuid}: stopped\n"));
    let status = tenant.json(&format!("bserver show {uuid}"))["status"].clone();
    assert_eq!(status, "stopped");

    let deleted = tenant.ok(&format!("bserver delete {uuid}"));
    assert_eq!(deleted, format!("deleted {uuid}\n"));
    let gone = tenant.fails(66, &format!("bserver show {uuid}"));
    assert!(gone.starts_with("backfillctl: 404 Not Found: "), "{gone}");
    tenant.fails(66, &format!("bserver show {NO_SUCH_SERVER}"));
    tenant.fails(66, &format!("server delete {NO_SUCH_SERVER}"));

    let empty = tenant.json("server list");
    assert_eq!(empty["meta"]["total_count"], 0, "{empty}");
}

#[test]
fn backfillctl_exit_codes_name_the_problem() {
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let tenant = pki.issue(Role::Account, "tenant");

    // No certificate files at all: say which setting is missing.
    let err = Ctl::new(coord.url(""), None).fails(78, "capabilities");
    assert!(err.contains("BACKFILL_CA"), "{err}");

    // Certificate files that do not exist.
    let missing = TlsFiles {
        ca: tenant.ca.clone(),
        cert: pki.path().join("nobody.pem"),
        key: pki.path().join("nobody.key"),
    };
    let err = Ctl::new(coord.url(""), Some(missing)).fails(78, "bserver list");
    assert!(err.contains("--cert / BACKFILL_CERT"), "{err}");

    // Nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = format!("https://127.0.0.1:{port}/api/2.0/");
    let err = Ctl::new(api.clone(), Some(tenant.clone())).fails(69, "capabilities");
    let want = format!("is the coordinator running at {api}?");
    assert!(err.contains(&want), "{err}");

    // Not an https URL.
    Ctl::new("http://127.0.0.1:1/".into(), Some(tenant.clone())).fails(78, "capabilities");

    // Flags win over the environment: a good --api rescues a bad BACKFILL_API.
    let rescued = Ctl::new(api, Some(tenant.clone()));
    let caps = rescued.ok(&format!(
        "capabilities --api {} --output json",
        coord.url("")
    ));
    assert!(caps.contains("\"backfilling\": true"), "{caps}");

    // Clap's own errors are usage errors too.
    let ok = Ctl::new(coord.url(""), Some(tenant));
    ok.fails(64, "bserver frobnicate");
    ok.fails(64, "bserver create --name x");
    let help = ok.ok("--help");
    assert!(help.contains("78  configuration problem"), "{help}");

    // A default coordinator takes only https receivers, and says what would change that.
    let err = ok.fails(65, "webhook create http://example.com/hook");
    assert!(
        err.contains("(at url)") && err.contains("allow_http"),
        "{err}"
    );
}

/// Accounts and usage, as the contract of `/accounts/` and `/usage/` describes them.
#[test]
fn an_admin_manages_accounts_and_reads_usage_with_backfillctl() {
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let admin = Ctl::new(coord.url(""), Some(pki.issue(Role::Admin, "ops")));

    let created =
        admin.json("account create acme --backfill --cpu 100000 --mem 1T --gpus 4 --servers 50");
    let acme = &created["objects"][0];
    assert_eq!(acme["name"], "acme", "{created}");
    assert_eq!(acme["backfill"], true);
    assert_eq!(acme["quota"]["cpu"], 100_000);
    assert_eq!(acme["quota"]["mem"], 1u64 << 40);
    assert_eq!(acme["quota"]["gpus"], 4);
    assert_eq!(acme["quota"]["servers"], 50);
    assert_eq!(acme["resource_uri"], "/api/2.0/accounts/acme/");

    let list = admin.json("account list");
    let names: Vec<&Value> = list["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["name"])
        .collect();
    assert!(names.contains(&&Value::from("acme")), "{list}");
    let table = admin.ok("account list");
    assert!(table.starts_with("NAME"), "{table}");
    let row = table.lines().find(|l| l.starts_with("acme")).unwrap();
    assert!(row.contains("0 / 100000") && row.contains("1 TiB"), "{row}");

    let shown = admin.json("account show acme");
    assert_eq!(shown["in_use"]["servers"], 0, "{shown}");

    // The account's own certificate sees the permission change.
    let acme_tenant = Ctl::new(coord.url(""), Some(pki.issue(Role::Account, "acme")));
    acme_tenant.ok("bserver list");
    let updated = admin.json("account update acme --backfill false --cpu unlimited");
    assert_eq!(updated["backfill"], false, "{updated}");
    assert_eq!(updated["quota"]["cpu"], Value::Null);
    assert_eq!(updated["quota"]["gpus"], 4);
    let err = acme_tenant.fails(77, "bserver list");
    assert!(
        err.contains("backfillctl account update NAME --backfill true"),
        "{err}"
    );

    // Accounts are the admin's business.
    let err = acme_tenant.fails(77, "account list");
    assert!(
        err.contains("hint: accounts need an admin certificate"),
        "{err}"
    );
    // Usage: a tenant sees its own only.
    acme_tenant.ok("usage");
    let err = acme_tenant.fails(77, "usage --account tenant");
    assert!(err.contains("leave out --account"), "{err}");
    // The operator sees every account's servers, but creating and acting are the tenants'.
    admin.ok("bserver list");
    let err = admin.fails(77, "bserver create --name x --cpu 500 --mem 256M");
    assert!(
        err.contains("hint: servers and capabilities need an account"),
        "{err}"
    );
    admin.fails(64, "account update acme");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (start, end) = (rfc3339(now - 86_400), rfc3339(now + 86_400));
    let usage = admin.json(&format!("usage --start {start} --end {end}"));
    assert!(usage["objects"].is_array(), "{usage}");
    for k in ["seconds", "cpu_mhz_seconds", "mem_byte_seconds", "amount"] {
        assert!(!usage["totals"][k].is_null(), "{usage}");
    }
    let table = admin.ok("usage --account acme");
    assert!(table.lines().any(|l| l.starts_with("TOTAL")), "{table}");

    assert_eq!(admin.ok("account delete acme"), "deleted acme\n");
    admin.fails(66, "account show acme");
}

/// Receivers on loopback over plain http, retried within a second.
const WEBHOOKS: &str = "\n[webhooks]\nallow_http = true\nallow_private = true\nbackoff_base_s = 1\nbackoff_max_s = 1\ntimeout_s = 5\n";

/// A webhook receiver on loopback that acknowledges every request with 200; its URL and the
/// number of requests it got.
fn receiver() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(AtomicUsize::new(0));
    let count = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        }
    });
    (url, got)
}

/// Polls `f` every 200 ms (each poll runs backfillctl) until it holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of `field` in a `FIELD VALUE` table.
fn field<'a>(table: &'a str, field: &str) -> &'a str {
    table
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(' ').map(str::trim))
        .unwrap_or_else(|| panic!("no {field} in {table}"))
}

/// Webhooks, as the contract of `/webhooks/` describes them: the secret shown once, bad URLs
/// refused with the field named, subscriptions, deliveries and a redelivery to a receiver on
/// loopback.
#[test]
fn a_tenant_manages_webhooks_with_backfillctl() {
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], WEBHOOKS);
    let setup = AgentSetup::new(&pki, &coord, "wh-host");
    let _agent = setup.start(true, "1");
    let tenant = Ctl::new(coord.url(""), Some(pki.issue(Role::Account, "tenant")));
    let (url, got) = receiver();

    let empty = tenant.json("webhook list");
    assert_eq!(empty["meta"]["total_count"], 0, "{empty}");

    // Bad receivers are refused by the API, with the field named.
    for bad in ["ftp://example.com/hook", "not-a-url"] {
        let err = tenant.fails(65, &format!("webhook create {bad}"));
        assert!(err.starts_with("backfillctl: 400 Bad Request: "), "{err}");
        assert!(err.contains("(at url)"), "{err}");
    }

    // The secret: printed once, on its own line, with the warning.
    let created = tenant.ok(&format!("webhook create {url} --description ctl-e2e"));
    let secret = field(&created, "secret:");
    assert!(
        secret.len() >= 32 && !secret.contains(char::is_whitespace),
        "{created}"
    );
    assert_eq!(created.matches(secret).count(), 1, "{created}");
    assert!(created.contains("will not be shown again"), "{created}");
    let hook = field(&created, "uuid").to_owned();
    assert_eq!(field(&created, "url"), url);
    assert_eq!(field(&created, "description"), "ctl-e2e");
    assert!(
        created.contains(&format!(
            "backfillctl webhook subscribe {hook} --event TYPE"
        )),
        "{created}"
    );

    // With --output json the secret is in the JSON, and stderr says to keep it.
    let out = tenant.run(&format!("--output json webhook create {url}"));
    assert!(out.status.success(), "{out:?}");
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(second["objects"][0]["secret"].is_string(), "{second}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("never shown again"), "{stderr}");
    let second = second["objects"][0]["uuid"].as_str().unwrap();
    assert_eq!(
        tenant.ok(&format!("webhook rm {second}")),
        format!("deleted {second}\n")
    );

    // Never again: not in show, not in list.
    let shown = tenant.json(&format!("webhook show {hook}"));
    assert!(shown.get("secret").is_none(), "{shown}");
    assert_eq!(shown["url"], url.as_str());
    let table = tenant.ok(&format!("webhook show {hook}"));
    assert!(!table.contains(secret), "{table}");
    assert!(table.contains("no subscriptions: "), "{table}");

    // Subscriptions: event types are checked before anything is sent.
    tenant.fails(
        64,
        &format!("webhook subscribe {hook} --event server_exploded"),
    );
    tenant.fails(64, &format!("webhook subscribe {hook}"));
    let sub = tenant.json(&format!(
        "webhook subscribe {hook} --event server_state_changed,cloud_termination --class backfill"
    ));
    let sub = &sub["objects"][0];
    assert_eq!(
        sub["events"],
        serde_json::json!(["server_state_changed", "cloud_termination"]),
        "{sub}"
    );
    assert_eq!(sub["filters"]["classes"], serde_json::json!(["backfill"]));
    let sub = sub["uuid"].as_str().unwrap().to_owned();
    let other = tenant.ok(&format!(
        "webhook subscribe {hook} --event perf_factor_restored --tag nothing-has-it"
    ));
    let other = field(&other, "uuid").to_owned();
    let err = tenant.fails(
        65,
        &format!("webhook subscribe {hook} --event server_downsized --server nope"),
    );
    assert!(err.contains("(at filters)"), "{err}");

    let table = tenant.ok("webhook list");
    let header = table.lines().next().unwrap();
    for col in ["UUID", "URL", "DESCRIPTION", "SUBS", "EVENTS", "CREATED"] {
        assert!(header.contains(col), "{col} missing in {table}");
    }
    let row = table.lines().find(|l| l.starts_with(&hook)).unwrap();
    for cell in [
        url.as_str(),
        "ctl-e2e",
        "  2  ",
        "cloud_termination, server_state_changed, perf_factor_restored",
    ] {
        assert!(row.contains(cell), "{cell:?} missing in {row:?}");
    }
    let list = tenant.json("webhook ls");
    assert_eq!(list["meta"]["total_count"], 1, "{list}");
    assert!(list["objects"][0].get("secret").is_none(), "{list}");
    let subs = tenant.ok(&format!("webhook subscriptions {hook}"));
    let row = subs.lines().find(|l| l.starts_with(&other)).unwrap();
    assert!(
        row.contains("nothing-has-it") && row.contains("any"),
        "{subs}"
    );
    assert_eq!(
        tenant.ok(&format!("webhook unsubscribe {hook} {other}")),
        format!("unsubscribed {other}\n")
    );
    tenant.fails(66, &format!("webhook unsubscribe {hook} {other}"));
    let left = tenant.json(&format!("webhook subscriptions {hook}"));
    assert_eq!(left["objects"][0]["uuid"], sub.as_str(), "{left}");
    assert_eq!(left["meta"]["total_count"], 1, "{left}");

    // No events yet, so no deliveries.
    let none = tenant.json(&format!("webhook deliveries {hook}"));
    assert_eq!(none["meta"]["total_count"], 0, "{none}");
    assert!(
        tenant
            .ok(&format!("webhook deliveries {hook}"))
            .starts_with("DELIVERY")
    );

    // A backfill server that starts changes state: the receiver hears of it.
    tenant.ok(&format!(
        "bserver create --name wh --cpu 500 --mem 64M --start --wait --timeout {WAIT_SECS} -- sleep 300"
    ));
    let delivered = |v: &Value| {
        v["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["status"] == "delivered")
            .cloned()
    };
    let mut first = Value::Null;
    eventually("a delivery to the receiver", || {
        let v = tenant.json(&format!("webhook deliveries {hook}"));
        delivered(&v).map(|d| first = d).is_some()
    });
    assert_eq!(first["event_type"], "server_state_changed", "{first}");
    assert_eq!(first["last_status_code"], 200, "{first}");
    let d = first["uuid"].as_str().unwrap().to_owned();
    let table = tenant.ok(&format!("webhook deliveries {hook}"));
    let row = table.lines().find(|l| l.starts_with(&d)).unwrap();
    for cell in ["server_state_changed", "delivered", "200"] {
        assert!(row.contains(cell), "{cell:?} missing in {row:?}");
    }

    // Redelivery sends it once more.
    let before = got.load(Ordering::SeqCst);
    assert_eq!(
        tenant.ok(&format!("webhook redeliver {hook} {d}")),
        format!("{d}: redeliver success\n")
    );
    eventually("the redelivery", || {
        let v = tenant.json(&format!("webhook deliveries {hook}"));
        v["objects"].as_array().unwrap().iter().any(|x| {
            x["uuid"] == d.as_str()
                && x["status"] == "delivered"
                && x["attempts"].as_u64() >= Some(2)
        })
    });
    assert!(got.load(Ordering::SeqCst) > before);
    tenant.fails(66, &format!("webhook redeliver {hook} {NO_SUCH_SERVER}"));

    // Webhooks are the account's: an admin certificate is told so.
    let admin = Ctl::new(coord.url(""), Some(pki.issue(Role::Admin, "ops")));
    let err = admin.fails(77, "webhook list");
    assert!(err.contains("webhooks belong to an account"), "{err}");

    assert_eq!(
        tenant.ok(&format!("webhook delete {hook}")),
        format!("deleted {hook}\n")
    );
    let gone = tenant.fails(66, &format!("webhook show {hook}"));
    assert!(gone.starts_with("backfillctl: 404 Not Found: "), "{gone}");
    tenant.fails(66, &format!("webhook deliveries {hook}"));
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (days to civil date: H. Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[test]
fn rfc3339_helper_counts_days_right() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
}

/// `backfillctl webhook listen`: the tour's receiver verifies each delivery with the webhook's
/// secret and prints its event; a delivery signed with another secret is refused (401).
#[test]
fn webhook_listen_prints_verified_events_and_refuses_forged_ones() {
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], WEBHOOKS);
    let setup = AgentSetup::new(&pki, &coord, "listen-host");
    let _agent = setup.start(true, "1");
    let tenant = Ctl::new(coord.url(""), Some(pki.issue(Role::Account, "tenant")));

    // The webhook is created first (its secret is the receiver's), for a free port.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/");
    let created = tenant.ok(&format!("webhook create {url}"));
    let secret = field(&created, "secret:").to_owned();
    let hook = field(&created, "uuid").to_owned();
    tenant.ok(&format!(
        "webhook subscribe {hook} --event server_state_changed"
    ));
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut listener = Command::new(bin("backfillctl"))
        .args(["webhook", "listen", "--port", &port.to_string()])
        .env("BACKFILL_WEBHOOK_SECRET", &secret)
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(log.path()).unwrap_or_default();
    wait_until("the receiver listens", || {
        text().contains("listening on http://")
    });

    tenant.ok(&format!(
        "bserver create --name heard --cpu 500 --mem 64M --start --wait --timeout {WAIT_SECS} -- sleep 300"
    ));
    wait_until("a verified event is printed", || {
        text()
            .lines()
            .any(|l| l.starts_with("server_state_changed ") && l.contains(" verified {"))
    });

    // A forged delivery: the right headers, a signature that is not the secret's.
    let body = br#"{"forged":true}"#;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = format!("sha256={}", "0".repeat(64));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Backfill-Event: server_state_changed\r\nX-Backfill-Event-Id: forged\r\nX-Backfill-Timestamp: {ts}\r\nX-Backfill-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    wait_until("the forgery is printed as refused", || {
        text().contains("server_state_changed forged REFUSED")
    });
    let _ = listener.kill();
    let _ = listener.wait();
}

#[test]
fn a_tenant_manages_drives_with_backfillctl() {
    if !std::path::Path::new("/usr/bin/qemu-img").is_file() {
        eprintln!("SKIP: no /usr/bin/qemu-img (install qemu-utils)");
        return;
    }
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let mut setup = AgentSetup::new(&pki, &coord, "host-d");
    let images = setup.dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::File::create(images.join("lib.raw"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    setup
        .extra_toml
        .push_str(&format!("[vm]\nimages_dir = {images:?}\naccel = \"tcg\"\n"));
    let _agent = setup.start(true, "1");
    let tenant = Ctl::new(coord.url(""), Some(pki.issue(Role::Account, "tenant")));

    let libs = tenant.ok("libdrive list");
    assert!(libs.contains("lib.raw"), "{libs}");
    let lib = tenant.json("libdrive list")["objects"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let cloned = tenant.json(&format!("libdrive clone {lib} --name root"));
    let root = cloned["objects"][0]["uuid"].as_str().unwrap().to_owned();
    let made = tenant.json("drive create --name data --size 8M");
    let data = made["objects"][0]["uuid"].as_str().unwrap().to_owned();
    eventually("both drives made", || {
        let v = tenant.json("drive list");
        v["objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "unmounted")
    });
    let resized = tenant.json(&format!("drive resize {data} --size 16M"));
    assert_eq!(resized["objects"][0]["size"], 16u64 << 20);
    let copy = tenant.json(&format!("drive clone {data} --name copy"));
    let copy = copy["objects"][0]["uuid"].as_str().unwrap().to_owned();
    let server = tenant.json(&format!(
        "server create --name with-drives --cpu 500 --mem 256M --drive {root} --drive {data}"
    ));
    let drives = &server["objects"][0]["drives"];
    assert_eq!(drives[0]["drive"]["uuid"], root.as_str(), "{server}");
    assert_eq!(drives[1]["boot_order"], 2, "{server}");
    let shown = tenant.ok(&format!("drive show {root}"));
    assert!(shown.contains("mounted"), "{shown}");
    let table = tenant.ok("drive list");
    assert!(
        table.contains("MOUNTED ON") && table.contains("copy"),
        "{table}"
    );
    tenant.ok(&format!("drive delete {copy}"));
    tenant.fails(66, &format!("drive show {copy}"));
}
