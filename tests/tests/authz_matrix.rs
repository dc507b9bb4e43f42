//! The authorization matrix as one table: who (which certificate, token or guest), what (a
//! listener and a request), and what must happen. Every row is tried; the test fails once,
//! listing every escape, so a regression shows its whole extent.
//!
//! Listeners: the public API (client certificate required), the agent link (agent
//! certificates only, each for its own host), the management listener (management token, or
//! an admin certificate) and, as root with iproute2 and curl, guests' metadata (each guest is
//! told only about itself). Positive rows (the rightful caller gets in) keep the table honest:
//! a coordinator that refused everyone would fail them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::HostInventory;
use backfill_shared::pki::{Ca, IssueRequest, Role};
use backfill_shared::protocol::{self, AgentMessage, CoordinatorMessage, Hello, PROTOCOL_VERSION};
use backfill_shared::tls::TlsFiles;
use backfill_tests::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method as M;
use serde_json::{Value, json};
use std::fmt;
use std::process::Command;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const TOKEN: &str = "authz-management-token-0123456789";

/// What a row's caller got.
#[derive(Debug, Clone)]
enum Got {
    /// No TLS session, or it ended before an answer (a refused certificate), or no TCP
    /// connection at all (a guest spoofing an address).
    NoSession(String),
    Http(u16, String),
    /// The link answered `Hello` with `Welcome`.
    Welcome,
    LinkRefused(String),
    LinkClosed,
}

/// What a row's caller must get.
#[derive(Debug, Clone)]
enum Want {
    /// No session: the handshake (or the first read after it) fails.
    NoSession,
    Code(&'static [u16]),
    /// This status, and the body does not mention this (another tenant's object).
    CodeWithout(u16, String),
    /// This status, and the body mentions this (a positive row: the caller sees its own).
    CodeWith(u16, String),
    /// No session, or 401/403.
    Denied,
    /// No session, or an answer that does not mention this.
    NotTold(String),
    /// Anything but `Welcome` on the agent link.
    NotWelcome,
    Welcome,
}

impl Want {
    fn admits(&self, got: &Got) -> bool {
        match (self, got) {
            (Want::NoSession, Got::NoSession(_)) => true,
            (Want::Code(codes), Got::Http(c, _)) => codes.contains(c),
            (Want::CodeWithout(code, s), Got::Http(c, body)) => c == code && !body.contains(s),
            (Want::CodeWith(code, s), Got::Http(c, body)) => c == code && body.contains(s),
            (Want::Denied, Got::NoSession(_)) => true,
            (Want::Denied, Got::Http(c, _)) => *c == 401 || *c == 403,
            (Want::NotTold(_), Got::NoSession(_)) => true,
            (Want::NotTold(s), Got::Http(_, body)) => !body.contains(s),
            (Want::NotWelcome, g) => !matches!(g, Got::Welcome),
            (Want::Welcome, Got::Welcome) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Got {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Got::NoSession(e) => write!(f, "no session ({e})"),
            Got::Http(c, body) => {
                let short: String = body.chars().take(160).collect();
                write!(f, "{c} {short}")
            }
            Got::Welcome => write!(f, "Welcome"),
            Got::LinkRefused(r) => write!(f, "Refused: {r}"),
            Got::LinkClosed => write!(f, "link closed"),
        }
    }
}

struct Row {
    who: String,
    what: String,
    want: Want,
    got: Got,
}

#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn add(&mut self, who: &str, what: impl Into<String>, want: Want, got: Got) {
        self.0.push(Row {
            who: who.into(),
            what: what.into(),
            want,
            got,
        });
    }
}

/// One HTTP request; any transport error is "no session".
async fn http(
    c: &reqwest::Client,
    method: M,
    url: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Got {
    let mut req = c.request(method, url);
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            match r.text().await {
                Ok(t) => Got::Http(code, t),
                Err(e) => Got::NoSession(format!("body: {e}")),
            }
        }
        Err(e) => Got::NoSession(format!("{e:?}").chars().take(120).collect()),
    }
}

/// A TLS client config for the agent link: `files`' certificate, or none.
fn link_config(
    ca: &std::path::Path,
    files: Option<&TlsFiles>,
) -> std::sync::Arc<rustls::ClientConfig> {
    match files {
        Some(f) => backfill_shared::tls::client_config(&TlsFiles {
            ca: ca.to_path_buf(),
            cert: f.cert.clone(),
            key: f.key.clone(),
        })
        .unwrap(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in backfill_shared::tls::load_certs(ca).unwrap() {
                roots.add(c).unwrap();
            }
            std::sync::Arc::new(
                rustls::ClientConfig::builder_with_provider(backfill_shared::tls::provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }
    }
}

/// Dials the agent link, says Hello as `host`, and reports the first answer.
async fn link_hello(link: &str, ca: &std::path::Path, files: Option<&TlsFiles>, host: &str) -> Got {
    let cfg = link_config(ca, files);
    let tcp = match TcpStream::connect(link).await {
        Ok(t) => t,
        Err(e) => return Got::NoSession(e.to_string()),
    };
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = match tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
    {
        Ok(t) => t,
        Err(e) => return Got::NoSession(e.to_string()),
    };
    let mut framed = Framed::new(tls, protocol::codec());
    let hello = AgentMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        host_id: host.parse().unwrap(),
        agent_version: "authz-matrix".into(),
        inventory: HostInventory {
            hostname: host.into(),
            cpus: 1,
            cpu_mhz_per_cpu: 1000,
            mem_bytes: 1 << 30,
            gpus: vec![],
            drivers: backfill_shared::Drivers::exec_only(),
            mechanisms: Vec::new(),
        },
        enforcing: false,
    });
    if let Err(e) = framed.send(protocol::encode(&hello).unwrap()).await {
        return Got::NoSession(e.to_string());
    }
    match tokio::time::timeout(DEADLINE, framed.next()).await {
        Ok(Some(Ok(frame))) => match protocol::decode::<CoordinatorMessage>(&frame) {
            Ok(CoordinatorMessage::Welcome { .. }) => Got::Welcome,
            Ok(CoordinatorMessage::Refused { reason }) => Got::LinkRefused(reason),
            Ok(other) => Got::Http(0, format!("unexpected first message {other:?}")),
            Err(e) => Got::Http(0, e.to_string()),
        },
        Ok(Some(Err(e))) => Got::NoSession(e.to_string()),
        Ok(None) => Got::LinkClosed,
        Err(_) => Got::Http(0, "no answer to Hello within the deadline".into()),
    }
}

/// Root, iproute2 and curl: the guests' rows can run.
fn guests_usable() -> bool {
    let has = |p: &str| {
        Command::new(p)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    is_root() && has("ip") && has("curl")
}

/// `curl` from inside a guest's network namespace; code 0 when no answer came.
fn guest_curl(netns: &str, args: &[&str]) -> Got {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    match code.trim().parse().unwrap_or(0) {
        0 => Got::NoSession(format!("curl exit {:?}", out.status.code())),
        c => Got::Http(c, body.to_owned()),
    }
}

fn in_ns(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An identity for the matrix: a label and its certificate files (or none).
struct Identity {
    who: &'static str,
    files: Option<TlsFiles>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_has_no_escapes() {
    let pki = Pki::new();
    let guests = guests_usable();
    if !guests {
        eprintln!(
            "SKIP (guest metadata rows only): they need root, iproute2 and curl (root={})",
            is_root()
        );
    }
    let extra = format!(
        "\n[operator]\nmanagement_token = \"{TOKEN}\"\nmanagement_addr = \"127.0.0.1:0\"\n[webhooks]\nallow_http = true\nallow_private = true\n"
    );
    let mut coord = Coordinator::start_accounts(&pki, &["alice", "bob"], &["carol"], &extra);
    let mgmt = coord
        .daemon
        .wait_log_value("management listening", "management_addr");
    let mut setup = AgentSetup::new(&pki, &coord, "authz-host");
    let md_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    if guests {
        setup.extra_toml = format!(
            "[metadata]\nbind = \"169.254.169.254:{md_port}\"\n[network]\npool = \"10.213.247.0/24\"\nroute_table = 25247\n"
        );
    }
    let _agent = setup.start(true, "1");

    let ca = pki.ca();
    let alice_files = pki.issue(Role::Account, "alice");
    let alice = client(&ca, Some(&alice_files));
    let bob = client(&ca, Some(&pki.issue(Role::Account, "bob")));
    let carol = client(&ca, Some(&pki.issue(Role::Account, "carol")));
    let stranger = client(&ca, Some(&pki.issue(Role::Account, "stranger")));
    let admin_files = pki.issue(Role::Admin, "ops");
    let admin = client(&ca, Some(&admin_files));
    let anonymous = client(&ca, None);
    let api = |p: &str| format!("https://{}{p}", coord.api);
    let mg = |p: &str| format!("https://{mgmt}{p}");

    // Bad certificates: another CA's, expired, not yet valid, and certificates of roles that
    // have no business on a listener.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = Ca::init(foreign_dir.path()).unwrap();
    let foreign_issue = |role: Role, name: &str| {
        let (cert, key) = foreign
            .issue_to_dir(
                foreign_dir.path(),
                &format!("{}-{name}", role.as_str()),
                &IssueRequest::new(role, name, &["localhost".into()], 1),
            )
            .unwrap();
        TlsFiles {
            ca: ca.clone(),
            cert,
            key,
        }
    };
    // Valid certificates of this CA, in files of their own (the running daemons' stay as
    // they are).
    let sans = vec!["localhost".to_string(), "127.0.0.1".into()];
    let probe = |role: Role, name: &str| {
        pki.issue_with(
            &format!("probe-{}-{name}", role.as_str()),
            &IssueRequest::new(role, name, &sans, 1),
        )
    };
    let now = std::time::SystemTime::now();
    let dated = |role: Role, name: &str, from: i64, to: i64| {
        let mut req = IssueRequest::new(role, name, &[], 1);
        let at = |s: i64| {
            if s < 0 {
                now - Duration::from_secs(s.unsigned_abs())
            } else {
                now + Duration::from_secs(s.unsigned_abs())
            }
        };
        req.not_before = at(from).into();
        req.not_after = at(to).into();
        pki.issue_with(&format!("{}-{name}-{from}", role.as_str()), &req)
    };
    let api_outsiders = [
        Identity {
            who: "no certificate",
            files: None,
        },
        Identity {
            who: "foreign CA (account alice)",
            files: Some(foreign_issue(Role::Account, "alice")),
        },
        Identity {
            who: "foreign CA (admin)",
            files: Some(foreign_issue(Role::Admin, "ops")),
        },
        Identity {
            who: "expired (account alice)",
            files: Some(dated(Role::Account, "alice", -7200, -3600)),
        },
        Identity {
            who: "not yet valid (admin)",
            files: Some(dated(Role::Admin, "ops", 3600, 7200)),
        },
        Identity {
            who: "agent certificate",
            files: Some(probe(Role::Agent, "authz-host")),
        },
        Identity {
            who: "coordinator certificate",
            files: Some(probe(Role::Coordinator, "coordinator")),
        },
    ];

    // Bob's objects: a stopped server, a running one, a webhook with a subscription.
    let bob_idle = create(
        &bob,
        &coord.url("bservers/"),
        json!({"name": "bob-idle", "cpu": 100, "mem": 64u64 << 20}),
    )
    .await;
    let workload = if guests {
        json!({"command": ["sleep", "600"], "network": "isolated"})
    } else {
        json!({"command": ["sleep", "600"]})
    };
    let bob_run = create(
        &bob,
        &coord.url("bservers/"),
        json!({"name": "bob-run", "cpu": 100, "mem": 64u64 << 20, "workload": workload}),
    )
    .await;
    let alice_run = create(
        &alice,
        &coord.url("bservers/"),
        json!({"name": "alice-run", "cpu": 100, "mem": 64u64 << 20, "workload": workload}),
    )
    .await;
    for (c, id) in [(&bob, &bob_run), (&alice, &alice_run)] {
        let (code, v) = post(
            c,
            &coord.url(&format!("bservers/{id}/action/?do=start")),
            json!({}),
        )
        .await;
        assert_eq!(code, 202, "{v}");
    }
    let mut runtimes = Vec::new();
    for (c, id) in [(&alice, &alice_run), (&bob, &bob_run)] {
        let rt = eventually("the guests running", || async {
            let (_, b) = get(c, &coord.url(&format!("bservers/{id}/"))).await;
            (b["status"] == "running" && (!guests || b["runtime"]["netns"].is_string()))
                .then(|| b["runtime"].clone())
        })
        .await;
        runtimes.push(rt);
    }
    let (code, v) = post(
        &bob,
        &coord.url("webhooks/"),
        json!({"objects": [{"url": "http://127.0.0.1:9/bob"}]}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let bob_hook = v["objects"][0]["uuid"].as_str().unwrap().to_owned();
    let (code, v) = post(
        &bob,
        &coord.url(&format!("webhooks/{bob_hook}/subscriptions/")),
        json!({"objects": [{"events": ["server_state_changed"]}]}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let bob_sub = v["objects"][0]["uuid"].as_str().unwrap().to_owned();

    // The tenant API, aimed at bob's objects.
    let s = |id: &str, rest: &str| format!("/api/2.0/bservers/{id}/{rest}");
    let hook = |rest: &str| format!("/api/2.0/webhooks/{bob_hook}/{rest}");
    let edit = json!({"name": "taken-over"});
    let new_server = json!({"objects": [{"name": "x", "cpu": 100, "mem": 64u64 << 20}]});
    let new_sub = json!({"objects": [{"events": ["cloud_termination"]}]});
    let tenant_paths: Vec<(M, String, Option<Value>)> = vec![
        (M::GET, s(&bob_idle, ""), None),
        (M::PUT, s(&bob_idle, ""), Some(edit.clone())),
        (M::DELETE, s(&bob_idle, ""), None),
        (M::POST, s(&bob_idle, "action/?do=start"), None),
        (M::GET, s(&bob_run, "runtime/"), None),
        (M::POST, s(&bob_run, "action/?do=stop"), None),
        (M::POST, s(&bob_run, "action/?do=shutdown"), None),
        (M::POST, s(&bob_run, "action/?do=restart"), None),
        (M::GET, format!("/api/2.0/servers/{bob_idle}/"), None),
        (M::GET, hook(""), None),
        (M::DELETE, hook(""), None),
        (M::GET, hook("subscriptions/"), None),
        (M::POST, hook("subscriptions/"), Some(new_sub.clone())),
        (M::DELETE, hook(&format!("subscriptions/{bob_sub}/")), None),
        (M::GET, hook("deliveries/"), None),
        (M::POST, hook("deliveries/1/action/?do=redeliver"), None),
    ];
    let operator_paths: Vec<(M, String, Option<Value>)> = vec![
        (M::GET, "/arvados/v1/dispatch/instances".into(), None),
        (M::GET, "/arvados/v1/dispatch/containers".into(), None),
        (
            M::POST,
            "/arvados/v1/dispatch/instances/hold?instance_id=authz-host".into(),
            None,
        ),
        (
            M::POST,
            "/arvados/v1/dispatch/instances/drain?instance_id=authz-host".into(),
            None,
        ),
        (
            M::POST,
            "/arvados/v1/dispatch/instances/kill?instance_id=authz-host".into(),
            None,
        ),
        (
            M::POST,
            format!("/arvados/v1/dispatch/containers/kill?container_uuid={bob_run}"),
            None,
        ),
        (M::GET, "/dynamiccluster/workernode".into(), None),
        (
            M::PUT,
            "/dynamiccluster/workernode/authz-host/hold".into(),
            None,
        ),
        (M::GET, "/dynamiccluster/job".into(), None),
        (M::GET, "/dynamiccluster/resource".into(), None),
        (M::GET, "/dynamiccluster/server/config".into(), None),
        (M::PUT, "/dynamiccluster/server/auto".into(), None),
        (M::GET, "/dashboard".into(), None),
        (M::GET, "/dashboard/data.json".into(), None),
    ];
    let admin_paths: Vec<(M, String, Option<Value>)> = vec![
        (M::GET, "/api/2.0/accounts/".into(), None),
        (
            M::POST,
            "/api/2.0/accounts/".into(),
            Some(json!({"objects": [{"name": "mallory", "backfill": true}]})),
        ),
        (
            M::PUT,
            "/api/2.0/accounts/bob/".into(),
            Some(json!({"backfill": false})),
        ),
        (M::DELETE, "/api/2.0/accounts/bob/".into(), None),
        (
            M::POST,
            "/accelerator/v2/device_profiles".into(),
            Some(json!([{"name": "p", "groups": [{"resources:PGPU": "1"}]}])),
        ),
        (M::DELETE, "/accelerator/v2/device_profiles/p".into(), None),
    ];
    let mut t = Table::default();

    // 1. Outsiders on the API: no session at all, whatever they ask.
    let lists: Vec<(M, String, Option<Value>)> = vec![
        (M::GET, "/api/2.0/bservers/".into(), None),
        (
            M::POST,
            "/api/2.0/bservers/".into(),
            Some(new_server.clone()),
        ),
        (M::GET, "/api/2.0/capabilities/".into(), None),
    ];
    for id in &api_outsiders {
        let c = client(&ca, id.files.as_ref());
        let everything = tenant_paths
            .iter()
            .chain(&operator_paths)
            .chain(&admin_paths)
            .chain(&lists);
        for (m, p, b) in everything {
            let got = http(&c, m.clone(), &api(p), b.as_ref(), None).await;
            t.add(id.who, format!("API {m} {p}"), Want::NoSession, got);
        }
    }

    // 2. Tenant to tenant: bob's objects do not exist for alice (404, revealing nothing),
    // and her lists do not show them.
    for (m, p, b) in &tenant_paths {
        let got = http(&alice, m.clone(), &api(p), b.as_ref(), None).await;
        t.add(
            "tenant alice",
            format!("API {m} {p} (bob's)"),
            Want::Code(&[404]),
            got,
        );
    }
    for (p, bobs) in [
        ("/api/2.0/bservers/", &bob_idle),
        ("/api/2.0/bservers/detail/?limit=0", &bob_run),
        ("/api/2.0/servers/detail/?limit=0", &bob_idle),
        ("/api/2.0/webhooks/", &bob_hook),
    ] {
        let got = http(&alice, M::GET, &api(p), None, None).await;
        t.add(
            "tenant alice",
            format!("API GET {p}"),
            Want::CodeWithout(200, bobs.clone()),
            got,
        );
    }
    for p in [
        "/api/2.0/usage/?account=bob",
        "/api/2.0/ledger/?account=bob",
    ] {
        let got = http(&alice, M::GET, &api(p), None, None).await;
        t.add(
            "tenant alice",
            format!("API GET {p}"),
            Want::Code(&[403]),
            got,
        );
    }
    let got = http(&alice, M::GET, &api("/api/2.0/usage/"), None, None).await;
    t.add(
        "tenant alice",
        "API GET /api/2.0/usage/",
        Want::CodeWithout(200, bob_run.clone()),
        got,
    );

    // 3. Tenant to the operator's and the admin's endpoints: 403, with or without a wrong
    // token; an account without the backfill permission and an unknown account too.
    for (m, p, b) in operator_paths.iter().chain(&admin_paths) {
        for (who, c, token) in [
            ("tenant alice", &alice, None),
            (
                "tenant alice + wrong token",
                &alice,
                Some("nope-nope-nope-nope-nope"),
            ),
            ("account carol (no backfill)", &carol, None),
            ("unknown account stranger", &stranger, None),
        ] {
            let got = http(c, m.clone(), &api(p), b.as_ref(), token).await;
            t.add(who, format!("API {m} {p}"), Want::Code(&[403]), got);
        }
    }
    for (who, c) in [
        ("account carol (no backfill)", &carol),
        ("unknown account stranger", &stranger),
    ] {
        for (m, p, b) in [
            (M::GET, "/api/2.0/bservers/".to_string(), None),
            (
                M::POST,
                "/api/2.0/bservers/".to_string(),
                Some(new_server.clone()),
            ),
            (M::GET, s(&bob_idle, ""), None),
            (M::POST, s(&bob_run, "action/?do=stop"), None),
        ] {
            let got = http(c, m.clone(), &api(&p), b.as_ref(), None).await;
            t.add(who, format!("API {m} {p}"), Want::Code(&[403, 404]), got);
        }
    }

    // 4. The management listener: the token (or an admin certificate) and nothing else; and
    // only the operator APIs there.
    let mg_outsiders = [
        ("no certificate, no token", None, None),
        (
            "no certificate, wrong token",
            None,
            Some("nope-nope-nope-nope-nope"),
        ),
        ("tenant alice, no token", Some(alice_files.clone()), None),
        (
            "agent certificate, no token",
            Some(probe(Role::Agent, "authz-host")),
            None,
        ),
        (
            "foreign CA admin, no token",
            Some(foreign_issue(Role::Admin, "ops")),
            None,
        ),
        (
            "expired admin, no token",
            Some(dated(Role::Admin, "ops", -7200, -3600)),
            None,
        ),
    ];
    for (who, files, token) in &mg_outsiders {
        let c = client(&ca, files.as_ref());
        for (m, p, b) in &operator_paths {
            let got = http(&c, m.clone(), &mg(p), b.as_ref(), *token).await;
            t.add(who, format!("management {m} {p}"), Want::Denied, got);
        }
    }
    for (m, p, b) in tenant_paths.iter().chain(&admin_paths).chain(&lists) {
        let got = http(&anonymous, m.clone(), &mg(p), b.as_ref(), Some(TOKEN)).await;
        t.add(
            "management token",
            format!("management {m} {p}"),
            Want::Code(&[404]),
            got,
        );
    }

    // 5. The agent link: agent certificates of this CA only, each for its own host.
    let link_outsiders = [
        ("no certificate", None, "authz-host"),
        (
            "foreign CA agent",
            Some(foreign_issue(Role::Agent, "authz-host")),
            "authz-host",
        ),
        (
            "expired agent",
            Some(dated(Role::Agent, "authz-host", -7200, -3600)),
            "authz-host",
        ),
        (
            "not yet valid agent",
            Some(dated(Role::Agent, "authz-host", 3600, 7200)),
            "authz-host",
        ),
        (
            "account certificate (alice)",
            Some(alice_files.clone()),
            "alice",
        ),
        ("admin certificate", Some(admin_files.clone()), "ops"),
        (
            "coordinator certificate",
            Some(probe(Role::Coordinator, "coordinator")),
            "coordinator",
        ),
        (
            "agent of another host",
            Some(pki.issue(Role::Agent, "probe-b")),
            "authz-host",
        ),
    ];
    for (who, files, host) in &link_outsiders {
        let got = link_hello(&coord.link, &ca, files.as_ref(), host).await;
        t.add(who, format!("link Hello as {host}"), Want::NotWelcome, got);
    }

    // 6. Guests' metadata: each guest is told about itself only.
    if guests {
        let ns: Vec<String> = runtimes
            .iter()
            .map(|r| r["netns"].as_str().unwrap().to_owned())
            .collect();
        let ips: Vec<String> = runtimes
            .iter()
            .map(|r| r["nics"][0]["ip_v4"]["uuid"].as_str().unwrap().to_owned())
            .collect();
        let md = |p: &str| format!("http://169.254.169.254:{md_port}{p}");
        let doc = md("/openstack/latest/meta_data.json");
        let (a_ns, b_ip) = (&ns[0], &ips[1]);
        // Bob's guest gets itself an IMDSv2 token.
        let b_token = match guest_curl(
            &ns[1],
            &[
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 300",
                &md("/latest/api/token"),
            ],
        ) {
            Got::Http(200, tok) => tok,
            other => panic!("bob's guest could not get a token: {other}"),
        };
        let rows: Vec<(&str, Want, Vec<String>)> = vec![
            (
                "its own document",
                Want::CodeWith(200, alice_run.clone()),
                vec![doc.clone()],
            ),
            (
                "bob's id in X-Instance-ID (no signing proxy)",
                Want::NotTold(bob_run.clone()),
                vec![
                    "-H".into(),
                    format!("X-Instance-ID: {bob_run}"),
                    "-H".into(),
                    "X-Instance-ID-Signature: 00".into(),
                    doc.clone(),
                ],
            ),
            (
                "bob's address in X-Forwarded-For",
                Want::NotTold(bob_run.clone()),
                vec!["-H".into(), format!("X-Forwarded-For: {b_ip}"), doc.clone()],
            ),
            (
                "bob's guest's IMDSv2 token",
                Want::Code(&[401]),
                vec![
                    "-H".into(),
                    format!("X-aws-ec2-metadata-token: {b_token}"),
                    md("/latest/meta-data/instance-id"),
                ],
            ),
            (
                "bob's EC2 instance-id",
                Want::NotTold(bob_run.clone()),
                vec![md("/latest/meta-data/instance-id")],
            ),
        ];
        for (what, want, args) in rows {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let got = guest_curl(a_ns, &args);
            t.add("alice's guest", format!("metadata: {what}"), want, got);
        }
        // Bob's address on alice's guest's own interface: the answer goes to bob's link,
        // so no connection forms, and nothing is told.
        let dev = in_ns(a_ns, &["ip", "-o", "-4", "addr", "show"])
            .lines()
            .find(|l| l.contains(&ips[0]))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .unwrap();
        let spoof = format!("{b_ip}/32");
        in_ns(a_ns, &["ip", "addr", "add", &spoof, "dev", &dev]);
        let got = guest_curl(a_ns, &["--interface", b_ip, &doc]);
        in_ns(a_ns, &["ip", "addr", "del", &spoof, "dev", &dev]);
        t.add(
            "alice's guest",
            "metadata: from bob's address (spoofed source)",
            Want::NotTold(bob_run.clone()),
            got,
        );
    }

    // 7. After all that, bob's objects and the host are as they were.
    let (_, b) = get(&bob, &coord.url(&format!("bservers/{bob_idle}/"))).await;
    t.add(
        "bob (after the others' attempts)",
        "his stopped server unchanged",
        Want::Code(&[200]),
        if b["name"] == "bob-idle" && b["status"] == "stopped" {
            Got::Http(200, String::new())
        } else {
            Got::Http(0, b.to_string())
        },
    );
    let (_, b) = get(&bob, &coord.url(&format!("bservers/{bob_run}/"))).await;
    t.add(
        "bob (after the others' attempts)",
        "his running server still running",
        Want::Code(&[200]),
        if b["status"] == "running" {
            Got::Http(200, String::new())
        } else {
            Got::Http(0, b.to_string())
        },
    );
    let (_, hooks) = get(&bob, &coord.url("webhooks/")).await;
    t.add(
        "bob (after the others' attempts)",
        "his webhook still there",
        Want::CodeWith(200, bob_hook.clone()),
        Got::Http(200, hooks.to_string()),
    );
    let (_, inst) = get(&admin, &api("/arvados/v1/dispatch/instances")).await;
    let host = inst["items"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["instance"] == "authz-host"))
        .cloned()
        .unwrap_or(Value::Null);
    t.add(
        "operator (after the others' attempts)",
        "authz-host not held, drained or killed",
        Want::Code(&[200]),
        if host["idle_behavior"] == "run" {
            Got::Http(200, String::new())
        } else {
            Got::Http(0, host.to_string())
        },
    );
    let (code, accounts) = get(&admin, &api("/api/2.0/accounts/?limit=0")).await;
    t.add(
        "operator (after the others' attempts)",
        "account bob still there",
        Want::CodeWith(200, "\"bob\"".into()),
        Got::Http(code, accounts.to_string()),
    );
    t.add(
        "operator (after the others' attempts)",
        "no account mallory",
        Want::CodeWithout(200, "mallory".into()),
        Got::Http(code, accounts.to_string()),
    );

    // 8. Positive rows: the rightful callers get in.
    for (m, p, _) in operator_paths.iter().filter(|(m, _, _)| *m == M::GET) {
        let got = http(&admin, m.clone(), &api(p), None, None).await;
        t.add(
            "admin certificate",
            format!("API {m} {p}"),
            Want::Code(&[200]),
            got,
        );
        let got = http(&anonymous, m.clone(), &mg(p), None, Some(TOKEN)).await;
        t.add(
            "management token",
            format!("management {m} {p}"),
            Want::Code(&[200]),
            got,
        );
    }
    let got = http(&alice, M::GET, &api(&s(&alice_run, "")), None, None).await;
    t.add(
        "tenant alice",
        "API GET her own server",
        Want::CodeWith(200, alice_run.clone()),
        got,
    );
    let got = http(&bob, M::GET, &api(&s(&bob_idle, "")), None, None).await;
    t.add(
        "tenant bob",
        "API GET his own server",
        Want::CodeWith(200, bob_idle.clone()),
        got,
    );
    let got = link_hello(
        &coord.link,
        &ca,
        Some(&pki.issue(Role::Agent, "probe-a")),
        "probe-a",
    )
    .await;
    t.add("agent probe-a", "link Hello as probe-a", Want::Welcome, got);

    let escapes: Vec<String> =
        t.0.iter()
            .filter(|r| !r.want.admits(&r.got))
            .map(|r| {
                format!(
                    "  {} | {} | want {:?} | got {}",
                    r.who, r.what, r.want, r.got
                )
            })
            .collect();
    eprintln!(
        "authorization matrix: {} rows, {} escapes{}",
        t.0.len(),
        escapes.len(),
        if guests {
            ""
        } else {
            " (guest metadata rows skipped: not root)"
        }
    );
    assert!(
        escapes.is_empty(),
        "{} of {} rows of the authorization matrix escaped (who | what | want | got):\n{}",
        escapes.len(),
        t.0.len(),
        escapes.join("\n")
    );
    coord.daemon.terminate();
}
