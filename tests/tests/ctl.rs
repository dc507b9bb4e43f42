//! `backfillctl` end to end: the real binary, configured through its `BACKFILL_*` environment
//! variables, against a real coordinator and agent on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_shared::tls::TlsFiles;
use backfill_tests::*;
use serde_json::Value;
use std::process::{Command, Output, Stdio};

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
