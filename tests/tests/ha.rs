//! Several coordinators on one PostgreSQL (docs/ha.md), end to end: the real binaries, a
//! PostgreSQL of the test's own (initdb, pg_ctl), agents with a list of coordinators.
//!
//! - the leader is SIGKILLed while a client creates, starts and stops servers through every
//!   coordinator and a normal server preempts backfill ones: another leads, every acknowledged
//!   write is there, no server runs twice, the preemption's terminations happen, agents
//!   converge;
//! - the leader is SIGSTOPped with a commit pending, past its lease: another takes over, and
//!   when the old one resumes its commit fails (the epoch check) and it steps down;
//! - PostgreSQL restarts under load: the coordinators reconnect, nothing acknowledged is lost, a
//!   leader leads again.
//!
//! `measure_failover_and_throughput` (ignored; run by hand) prints the figures of docs/ha.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::pg::PgServer;
use backfill_tests::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Backfill servers are not downsized, so a normal server terminates them, with notice: the
/// terminations the old leader schedules fall due under the new one.
const CLASSES: &str =
    "\n[classes.backfill]\ndownsizable = false\nfloor = 0.1\nmin_uptime_s = 0\nnotice_s = 3\n";

struct Cluster {
    coords: Vec<Coordinator>,
    alive: Vec<bool>,
    pki: Pki,
    pg: PgServer,
}

impl Cluster {
    fn start(n: usize, lease_ms: u64) -> Option<Cluster> {
        let pg = PgServer::start()?;
        let db = pg.create_db("backfill");
        let pki = Pki::new();
        let coords: Vec<Coordinator> = (1..=n)
            .map(|i| {
                let extra = format!("{CLASSES}\n[ha]\nname = \"c{i}\"\nlease_ms = {lease_ms}\n");
                Coordinator::start_db(&pki, &["tenant"], &db, &extra)
            })
            .collect();
        Some(Cluster {
            alive: vec![true; n],
            coords,
            pki,
            pg,
        })
    }

    /// `/ready`'s body, or `None` when the coordinator does not answer.
    fn ready(&self, i: usize) -> Option<String> {
        if !self.alive[i] {
            return None;
        }
        admin_get(&self.coords[i].admin, "/ready")
    }

    /// The one coordinator that leads with its model loaded, and its epoch.
    async fn leader(&self) -> (usize, i64) {
        eventually("one leader", || async {
            let leaders: Vec<(usize, i64)> = (0..self.coords.len())
                .filter_map(|i| Some((i, leader_epoch(&self.ready(i)?)?)))
                .collect();
            (leaders.len() == 1).then(|| leaders[0])
        })
        .await
    }

    /// An agent that knows every coordinator's link.
    fn agent(&self, host: &str) -> (AgentSetup, Daemon) {
        let mut setup = AgentSetup::new(&self.pki, &self.coords[0], host);
        let list: Vec<String> = self
            .coords
            .iter()
            .map(|c| format!("{:?}", c.link))
            .collect();
        setup.top_toml = format!("coordinators = [{}]\n", list.join(", "));
        let agent = setup.start(true, "1");
        (setup, agent)
    }

    fn kill(&mut self, i: usize) {
        self.coords[i].kill();
        self.alive[i] = false;
    }

    fn tenant(&self) -> reqwest::Client {
        client(
            &self.pki.ca(),
            Some(&self.pki.issue(Role::Account, "tenant")),
        )
    }
}

/// `ready: leader epoch=N name=..` (model loaded) -> N.
fn leader_epoch(ready: &str) -> Option<i64> {
    let rest = ready.strip_prefix("ready: leader epoch=")?;
    if ready.contains("loading") {
        return None;
    }
    rest.split_whitespace().next()?.parse().ok()
}

/// A plain-HTTP GET that answers `None` when nobody listens (a killed coordinator).
fn admin_get(addr: &str, path: &str) -> Option<String> {
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// What a tenant's client saw: one line per request.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    coordinator: usize,
    op: &'static str,
    /// The status, or the error.
    outcome: Result<u16, String>,
    took: Duration,
}

#[derive(Default)]
struct Load {
    seen: Vec<Seen>,
    /// Creates answered 201, by uuid.
    created: BTreeSet<String>,
    /// The last start or stop each server had acknowledged.
    last_action: BTreeMap<String, &'static str>,
}

/// Creates, starts and stops small backfill servers through every coordinator in turn until
/// `stop`; records what it was answered.
async fn load(
    tenant: reqwest::Client,
    apis: Vec<String>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Load>>,
) {
    let mut started: Vec<String> = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let k = i % apis.len();
        let url = |p: &str| format!("https://{}/api/2.0/{p}", apis[k]);
        let send = |op: &'static str, rb: reqwest::RequestBuilder| {
            let out = out.clone();
            async move {
                let t = Instant::now();
                let r = rb.send().await;
                let (outcome, body) = match r {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        (Ok(s), r.json::<Value>().await.unwrap_or(Value::Null))
                    }
                    Err(e) => (Err(e.to_string()), Value::Null),
                };
                out.lock().unwrap().seen.push(Seen {
                    at: t,
                    coordinator: k,
                    op,
                    outcome: outcome.clone(),
                    took: t.elapsed(),
                });
                (outcome.ok(), body)
            }
        };
        let body = json!({"objects": [{"name": format!("load-{i}"), "cpu": 100,
            "mem": 64u64 << 20, "workload": {"command": ["sleep", "300"]}}]});
        let (s, b) = send("create", tenant.post(url("bservers/")).json(&body)).await;
        if s == Some(201)
            && let Some(uuid) = b["objects"][0]["uuid"].as_str()
        {
            out.lock().unwrap().created.insert(uuid.to_owned());
            let start = tenant.post(url(&format!("bservers/{uuid}/action/?do=start")));
            if send("start", start.json(&json!({}))).await.0 == Some(202) {
                out.lock()
                    .unwrap()
                    .last_action
                    .insert(uuid.to_owned(), "start");
                started.push(uuid.to_owned());
            }
        }
        if i % 3 == 2
            && let Some(uuid) = started.first().cloned()
        {
            let stop_it = tenant.post(url(&format!("bservers/{uuid}/action/?do=stop")));
            if send("stop", stop_it.json(&json!({}))).await.0 == Some(202) {
                out.lock().unwrap().last_action.insert(uuid.clone(), "stop");
                started.remove(0);
            }
        }
        i += 1;
        // The load's shape (a few servers a second), not synchronisation.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Servers the agent at `setup` runs now (its state file), by uuid.
fn agent_runs(setup: &AgentSetup) -> BTreeSet<String> {
    let text = std::fs::read_to_string(setup.state_dir().join("state.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["process"]["pid"].as_u64().is_some())
        .filter_map(|s| s["server"].as_str().map(str::to_owned))
        .collect()
}

/// Every server as the leader sees it, by uuid.
async fn all_servers(tenant: &reqwest::Client, api: &str) -> BTreeMap<String, Value> {
    let (status, list) = get(
        tenant,
        &format!("https://{api}/api/2.0/servers/detail/?limit=0"),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    list["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["uuid"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

/// A one-line summary of what the client saw between `from` and `to`.
fn summary(seen: &[Seen], from: Instant, to: Instant) -> String {
    let window: Vec<&Seen> = seen.iter().filter(|s| s.at >= from && s.at <= to).collect();
    let errors: Vec<String> = window
        .iter()
        .filter(|s| !matches!(s.outcome, Ok(c) if c < 300))
        .map(|s| format!("{}@c{}:{:?}", s.op, s.coordinator + 1, s.outcome))
        .collect();
    let slowest = window.iter().map(|s| s.took).max().unwrap_or_default();
    format!(
        "{} requests, {} not 2xx {errors:?}, slowest {slowest:?}",
        window.len(),
        errors.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_killed_under_load_and_another_takes_over() {
    let Some(mut cl) = Cluster::start(3, 2000) else {
        return;
    };
    let (old, old_epoch) = cl.leader().await;
    let (h1, _a1) = cl.agent("ha-h1");
    let (h2, _a2) = cl.agent("ha-h2");
    let tenant = cl.tenant();
    let apis: Vec<String> = cl.coords.iter().map(|c| c.api.clone()).collect();
    let api = |i: usize| apis[i].clone();
    let (_, caps) = get(
        &tenant,
        &format!("https://{}/api/2.0/capabilities/", api(old)),
    )
    .await;
    eventually("both hosts registered", || async {
        let (_, c) = get(
            &tenant,
            &format!("https://{}/api/2.0/capabilities/", api(old)),
        )
        .await;
        let one = caps["free_resources"]["most_free_by_cpu"]["cpu"].as_u64()?;
        (c["free_resources"]["total"]["cpu"].as_u64()? >= 2 * one && one > 0).then_some(())
    })
    .await;
    let (_, caps) = get(
        &tenant,
        &format!("https://{}/api/2.0/capabilities/", api(old)),
    )
    .await;
    let host_cpu = caps["free_resources"]["most_free_by_cpu"]["cpu"]
        .as_u64()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Load::default()));
    let loader = tokio::spawn(load(
        tenant.clone(),
        apis.clone(),
        stop.clone(),
        seen.clone(),
    ));
    eventually("some servers running", || async {
        let n = agent_runs(&h1).len() + agent_runs(&h2).len();
        (n >= 6).then_some(())
    })
    .await;

    // A normal server that needs most of a host: backfill servers there get terminations.
    let normal = create(
        &tenant,
        &format!("https://{}/api/2.0/servers/", api(old)),
        json!({"name": "paying", "cpu": host_cpu * 7 / 10, "mem": 256u64 << 20,
               "workload": {"command": ["sleep", "300"]}}),
    )
    .await;
    let (status, _) = post(
        &tenant,
        &format!(
            "https://{}/api/2.0/servers/{normal}/action/?do=start",
            api(old)
        ),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);

    let killed_at = Instant::now();
    cl.kill(old);
    let (new, new_epoch) = cl.leader().await;
    let failover = killed_at.elapsed();
    assert_ne!(new, old);
    assert!(new_epoch > old_epoch, "{new_epoch} after {old_epoch}");
    eprintln!(
        "failover: c{} took over from c{} in {failover:?}",
        new + 1,
        old + 1
    );
    // More load under the new leader, then quiet.
    let more = Instant::now();
    eventually("writes through the new leader", || async {
        let l = seen.lock().unwrap();
        let ok = l
            .seen
            .iter()
            .filter(|s| s.at > more && s.op == "create" && s.outcome == Ok(201))
            .count();
        (ok >= 5).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    loader.await.unwrap();
    let load = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "the client during failover (kill to kill + 5 s): {}",
        summary(&load.seen, killed_at, killed_at + Duration::from_secs(5))
    );

    // Every acknowledged create is there, and every acknowledged stop holds.
    let servers = all_servers(&tenant, &api(new)).await;
    for uuid in &load.created {
        assert!(
            servers.contains_key(uuid),
            "acknowledged create {uuid} lost"
        );
    }
    let stopped: Vec<&String> = load
        .last_action
        .iter()
        .filter(|(_, a)| **a == "stop")
        .map(|(u, _)| u)
        .collect();
    eventually("acknowledged stops stopped", || async {
        let now = all_servers(&tenant, &api(new)).await;
        stopped
            .iter()
            .all(|u| now[*u]["status"] == "stopped")
            .then_some(())
    })
    .await;
    // The preemption completes under the new leader: its terminations were carried out.
    eventually("the normal server runs", || async {
        let now = all_servers(&tenant, &api(new)).await;
        (now[&normal]["status"] == "running").then_some(())
    })
    .await;
    // Agents converge on what the leader says; no server runs on both hosts.
    let hosts = [("ha-h1", &h1), ("ha-h2", &h2)];
    eventually("agents converged", || async {
        let now = all_servers(&tenant, &api(new)).await;
        let mut ok = true;
        for (host, setup) in hosts {
            let want: BTreeSet<String> = now
                .iter()
                .filter(|(_, s)| s["status"] == "running" && s["runtime"]["host"] == host)
                .map(|(u, _)| u.clone())
                .collect();
            ok &= agent_runs(setup) == want;
        }
        ok.then_some(())
    })
    .await;
    let (r1, r2) = (agent_runs(&h1), agent_runs(&h2));
    assert!(
        r1.is_disjoint(&r2),
        "placed twice: {:?}",
        r1.intersection(&r2)
    );
    assert!(r1.len() + r2.len() > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_cannot_commit_after_another_took_over() {
    let Some(mut cl) = Cluster::start(2, 2000) else {
        return;
    };
    let (old, old_epoch) = cl.leader().await;
    let tenant = cl.tenant();
    let url = format!("https://{}/api/2.0/bservers/", cl.coords[old].api);
    // Hold the old leader's next write inside its transaction: the test locks the servers
    // table, so the create's INSERT waits.
    let mut lock = cl.pg.session("backfill");
    lock.run("BEGIN; LOCK TABLE servers IN EXCLUSIVE MODE;");
    let held = "SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                WHERE c.relname = 'servers' AND l.mode = 'ExclusiveLock' AND l.granted";
    cl.pg.wait_for("backfill", held, DEADLINE);
    let body = json!({"objects": [{"name": "fenced-write", "cpu": 100, "mem": 64u64 << 20}]});
    let pending = tokio::spawn({
        let tenant = tenant.clone();
        async move {
            // Longer than the client's default: it waits out the pause and the takeover.
            let r = tenant
                .post(&url)
                .timeout(Duration::from_secs(120))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    });
    let blocked = "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                   AND query LIKE 'INSERT INTO servers%'";
    let deadline = Instant::now() + DEADLINE;
    let pid = loop {
        if pending.is_finished() {
            panic!("the create did not wait: {:?}", pending.await);
        }
        let out = cl.pg.psql("backfill", blocked);
        if !out.trim().is_empty() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the create's INSERT never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Paused past its lease: the other coordinator takes over.
    let paused = Instant::now();
    let os_pid = cl.coords[old].daemon.child.id() as i32;
    // SAFETY: signals to our own child.
    unsafe { libc::kill(os_pid, libc::SIGSTOP) };
    // A stopped process's listeners still accept: do not ask it while it is stopped.
    cl.alive[old] = false;
    let (new, new_epoch) = cl.leader().await;
    assert_ne!(new, old);
    assert!(new_epoch > old_epoch);
    eprintln!("took over from a paused leader in {:?}", paused.elapsed());
    // The INSERT goes through; the old leader's transaction waits for its COMMIT.
    lock.run("ROLLBACK;");
    let idle = format!(
        "SELECT pid FROM pg_stat_activity WHERE pid = {} AND state = 'idle in transaction'",
        pid.trim()
    );
    cl.pg.wait_for("backfill", &idle, DEADLINE);
    unsafe { libc::kill(os_pid, libc::SIGCONT) };
    cl.alive[old] = true;
    let (status, text) = pending.await.unwrap();
    assert_eq!(status, 503, "a deposed leader's commit landed: {text}");
    assert!(text.contains("no longer leads"), "{text}");
    // It steps down and says so; the write is nowhere.
    eventually("the old leader steps down", || async {
        let r = cl.ready(old)?;
        (r.starts_with("ready: follower") && r.contains("stepped down")).then_some(())
    })
    .await;
    let log = cl.coords[old].daemon.log_text();
    assert!(log.contains("commit fenced"), "{log}");
    let servers = all_servers(&tenant, &cl.coords[new].api).await;
    assert!(
        servers.values().all(|s| s["name"] != "fenced-write"),
        "{servers:?}"
    );
    // Through the old leader (now a follower) writes reach the new leader.
    let made = create(
        &tenant,
        &format!("https://{}/api/2.0/bservers/", cl.coords[old].api),
        json!({"name": "after", "cpu": 100, "mem": 64u64 << 20}),
    )
    .await;
    assert!(
        all_servers(&tenant, &cl.coords[new].api)
            .await
            .contains_key(&made)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_knows_only_a_follower_is_redirected_and_clients_may_use_any() {
    let Some(cl) = Cluster::start(2, 2000) else {
        return;
    };
    let (leader, epoch) = cl.leader().await;
    let follower = 1 - leader;
    // The follower says who leads.
    let ready = eventually("the follower knows the leader", || async {
        cl.ready(follower)
            .filter(|r| r.contains(&format!("leader=c{} epoch={epoch}", leader + 1)))
    })
    .await;
    assert!(ready.starts_with("ready: follower"), "{ready}");
    let (_, metrics) = http_get(&cl.coords[follower].admin, "/metrics");
    assert!(metrics.contains("backfill_ha_leader 0"), "{metrics}");
    assert!(
        metrics.contains(&format!("backfill_ha_epoch {epoch}")),
        "{metrics}"
    );
    // An agent configured with the follower's link alone ends up with the leader.
    let setup = AgentSetup::new(&cl.pki, &cl.coords[follower], "ha-r-h1");
    let agent = setup.start(true, "1");
    assert!(
        agent
            .log_text()
            .contains("redirected to the leading coordinator"),
        "{}",
        agent.log_text()
    );
    // A tenant using the follower: writes are forwarded (with the tenant's identity), reads
    // are answered by the follower and say so.
    let tenant = cl.tenant();
    let via = |p: &str| format!("https://{}/api/2.0/{p}", cl.coords[follower].api);
    let uuid = create(
        &tenant,
        &via("bservers/"),
        json!({"name": "via-follower", "cpu": 100, "mem": 64u64 << 20,
               "workload": {"command": ["sleep", "300"]}}),
    )
    .await;
    let (status, _) = post(
        &tenant,
        &via(&format!("bservers/{uuid}/action/?do=start")),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    let leader_view = all_servers(&tenant, &cl.coords[leader].api).await;
    assert_eq!(leader_view[&uuid]["name"], "via-follower");
    eventually("the follower reads it, running", || async {
        let r = tenant
            .get(via(&format!("bservers/{uuid}/")))
            .send()
            .await
            .ok()?;
        let served = r.headers().get("x-backfill-served-by")?.to_str().ok()? == "follower";
        let age = r.headers().get("x-backfill-data-age-ms").is_some();
        let body: Value = r.json().await.ok()?;
        (served && age && body["status"] == "running").then_some(())
    })
    .await;
    // Only operators see the coordinators.
    let (status, _) = get(&tenant, &via("coordinators/")).await;
    assert_eq!(status, 403);
    let admin = client(&cl.pki.ca(), Some(&cl.pki.issue(Role::Admin, "ops")));
    let (status, st) = get(&admin, &via("coordinators/")).await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["leader"]["holder"], format!("c{}", leader + 1));
    assert_eq!(st["coordinators"].as_array().unwrap().len(), 2, "{st}");
    // A tenant cannot pose as another through the forwarding header.
    let r = tenant
        .post(format!(
            "https://{}/api/2.0/bservers/",
            cl.coords[leader].api
        ))
        .header("x-backfill-forwarded-identity", "admin/root")
        .json(&json!({"objects": [{"name": "x", "cpu": 100, "mem": 64u64 << 20}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "still the tenant, who may create");
    let r = tenant
        .post(format!(
            "https://{}/api/2.0/accounts/",
            cl.coords[leader].api
        ))
        .header("x-backfill-forwarded-identity", "admin/root")
        .json(&json!({"name": "intruder"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "the header made nobody an admin");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_under_load_and_nothing_is_lost() {
    let Some(cl) = Cluster::start(3, 2000) else {
        return;
    };
    let (first, first_epoch) = cl.leader().await;
    let (_h1, _a1) = cl.agent("ha-pg-h1");
    let tenant = cl.tenant();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Load::default()));
    let apis: Vec<String> = cl.coords.iter().map(|c| c.api.clone()).collect();
    let loader = tokio::spawn(load(tenant.clone(), apis, stop.clone(), seen.clone()));
    eventually("some creates", || async {
        (seen.lock().unwrap().created.len() >= 5).then_some(())
    })
    .await;
    let restarted = Instant::now();
    let pg = &cl.pg;
    tokio::task::block_in_place(|| pg.restart());
    eprintln!("pg_ctl restart took {:?}", restarted.elapsed());
    eventually("creates after the restart", || async {
        let l = seen.lock().unwrap();
        let ok = l
            .seen
            .iter()
            .filter(|s| s.at > restarted && s.op == "create" && s.outcome == Ok(201))
            .count();
        (ok >= 5).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    loader.await.unwrap();
    let load = std::mem::take(&mut *seen.lock().unwrap());
    // Whoever leads now (the same coordinator renewing its lease, or another that saw its
    // database session gone): read from it, not from a follower's half-second-old model.
    let (leader, epoch) = cl.leader().await;
    eprintln!(
        "leader c{} (epoch {first_epoch}) before, c{} (epoch {epoch}) after; the client around \
         the restart: {}",
        first + 1,
        leader + 1,
        summary(&load.seen, restarted, restarted + Duration::from_secs(5))
    );
    let servers = all_servers(&tenant, &cl.coords[leader].api).await;
    for uuid in &load.created {
        assert!(
            servers.contains_key(uuid),
            "acknowledged create {uuid} lost"
        );
    }
    // The agent is back with the leader.
    eventually("the agent is back", || async {
        let (_, c) = get(
            &tenant,
            &format!("https://{}/api/2.0/capabilities/", cl.coords[leader].api),
        )
        .await;
        (c["free_resources"]["total"]["cpu"].as_u64()? > 0).then_some(())
    })
    .await;
}

/// The figures in docs/ha.md: failover time over ten kills (median, max) and sequential
/// creates per second through the leader on PostgreSQL and through one coordinator on SQLite.
/// `cargo test -p backfill-tests --test ha -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_failover_and_throughput() {
    // One coordinator on PostgreSQL first: what leadership itself costs (no followers).
    {
        let Some(one) = Cluster::start(1, 3000) else {
            return;
        };
        one.leader().await;
        let tenant = one.tenant();
        let t = Instant::now();
        for i in 0..200 {
            create(
                &tenant,
                &format!("https://{}/api/2.0/bservers/", one.coords[0].api),
                json!({"name": format!("o-{i}"), "cpu": 100, "mem": 64u64 << 20}),
            )
            .await;
        }
        eprintln!(
            "sequential creates/s, PostgreSQL, one coordinator (no followers): {:.0}",
            200.0 / t.elapsed().as_secs_f64()
        );
    }
    let Some(mut cl) = Cluster::start(3, 3000) else {
        return;
    };
    let (_h, _a) = cl.agent("ha-m-h1");
    let tenant = cl.tenant();
    let creates_per_s = |api: String| {
        let tenant = tenant.clone();
        async move {
            let t = Instant::now();
            for i in 0..200 {
                create(
                    &tenant,
                    &format!("https://{api}/api/2.0/bservers/"),
                    json!({"name": format!("m-{i}"), "cpu": 100, "mem": 64u64 << 20}),
                )
                .await;
            }
            200.0 / t.elapsed().as_secs_f64()
        }
    };
    let (leader, _) = cl.leader().await;
    let pg_rate = creates_per_s(cl.coords[leader].api.clone()).await;
    let follower = (leader + 1) % 3;
    let pg_forwarded = creates_per_s(cl.coords[follower].api.clone()).await;
    let mut times = Vec::new();
    for _ in 0..10 {
        let (old, _) = cl.leader().await;
        let t = Instant::now();
        cl.kill(old);
        let (_new, _) = cl.leader().await;
        times.push(t.elapsed());
        cl.coords[old].restart();
        cl.alive[old] = true;
        eventually("the restarted one follows", || async {
            cl.ready(old)?.starts_with("ready: follower").then_some(())
        })
        .await;
    }
    times.sort();
    let pki = Pki::new();
    let single = Coordinator::start(&pki, &["tenant"]);
    let tenant_single = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let t = Instant::now();
    for i in 0..200 {
        create(
            &tenant_single,
            &single.url("bservers/"),
            json!({"name": format!("s-{i}"), "cpu": 100, "mem": 64u64 << 20}),
        )
        .await;
    }
    let sqlite_rate = 200.0 / t.elapsed().as_secs_f64();
    eprintln!(
        "failover over 10 kills: median {:?}, max {:?} (all: {times:?})",
        times[4], times[9]
    );
    eprintln!(
        "sequential creates/s: PostgreSQL via the leader {pg_rate:.0}, via a follower \
         (forwarded) {pg_forwarded:.0}; SQLite, one coordinator {sqlite_rate:.0}"
    );
}
