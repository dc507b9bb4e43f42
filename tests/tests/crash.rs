//! The crash test: seeded clients create, start, stop, edit and delete servers while the
//! coordinator is SIGKILLed at seeded moments and restarted on the same database. Afterwards
//! every acknowledged write is there (created servers exist, deleted ones are gone, the last
//! acknowledged status and edit show) and nothing is duplicated; a write whose answer was lost
//! in the crash may have happened or not, but only wholly and only once.
//!
//! The seed is printed; `BACKFILL_CRASH_SEED=<seed>` replays the same client choices and kill
//! schedule (the interleaving with the coordinator's own timing can still differ).
//! `BACKFILL_CRASH_SECS` sets how long the clients run (default 20 s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WORKERS: u64 = 3;

/// splitmix64: small, seedable, good enough to choose operations and kill times.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a server may look like once everything settles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    /// `stopped`, or `stopping` while its agent has not confirmed yet.
    Stopped,
    /// `starting` or `running`.
    Started,
    Gone,
}

impl Status {
    fn admits(self, shown: &str) -> bool {
        match self {
            Status::Stopped => shown == "stopped" || shown == "stopping",
            Status::Started => shown == "starting" || shown == "running",
            Status::Gone => false,
        }
    }
}

/// One server a worker created: every (status, edit revision) it may be in now. One
/// possibility while every answer arrived; more after a write whose answer was lost, after
/// which the worker leaves it alone.
#[derive(Debug)]
struct Tracked {
    uuid: String,
    name: String,
    possible: BTreeSet<(Status, u32)>,
}

/// A create whose answer was lost: its servers (by name) exist all or none, once each.
#[derive(Debug)]
struct LostCreate {
    names: Vec<String>,
}

#[derive(Default, Debug)]
struct Tally {
    acknowledged: u64,
    /// Acknowledged writes by kind (create, start, stop, edit, delete).
    by_kind: BTreeMap<&'static str, u64>,
    lost: u64,
    refused: u64,
    server_errors: Vec<String>,
}

#[derive(Default, Debug)]
struct Worker {
    servers: Vec<Tracked>,
    lost_creates: Vec<LostCreate>,
    tally: Tally,
}

enum Answer {
    /// A 2xx with its body.
    Ok(Value),
    /// A 4xx: refused, nothing changed.
    Refused,
    /// No answer (the coordinator died or was not up): it may or may not have happened.
    Lost,
}

async fn call(
    c: &reqwest::Client,
    kind: &'static str,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    tally: &mut Tally,
) -> Answer {
    let mut req = c.request(method.clone(), url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let Ok(resp) = req.send().await else {
        tally.lost += 1;
        // Pace the retries while the coordinator is down instead of spinning.
        tokio::time::sleep(Duration::from_millis(10)).await;
        return Answer::Lost;
    };
    let status = resp.status().as_u16();
    let Ok(text) = resp.text().await else {
        tally.lost += 1;
        return Answer::Lost;
    };
    match status {
        200..=299 => {
            tally.acknowledged += 1;
            *tally.by_kind.entry(kind).or_default() += 1;
            Answer::Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
        }
        400..=499 => {
            tally.refused += 1;
            Answer::Refused
        }
        _ => {
            tally
                .server_errors
                .push(format!("{method} {url}: {status} {text}"));
            Answer::Refused
        }
    }
}

async fn worker(
    base: String,
    c: reqwest::Client,
    mut rng: Rng,
    id: u64,
    stop: Arc<AtomicBool>,
) -> Worker {
    use reqwest::Method as M;
    let mut w = Worker::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let certain: Vec<usize> = (0..w.servers.len())
            .filter(|&i| {
                w.servers[i].possible.len() == 1
                    && w.servers[i].possible.first().unwrap().0 != Status::Gone
            })
            .collect();
        let choice = rng.below(10);
        if certain.is_empty() || choice < 3 {
            // Create one to three servers at once.
            let k = 1 + rng.below(3);
            let names: Vec<String> = (0..k).map(|j| format!("crash-w{id}-{n}-{j}")).collect();
            let objects: Vec<Value> = names
                .iter()
                .map(|name| {
                    json!({"name": name, "cpu": 100, "mem": 64u64 << 20,
                           "meta": {"rev": "0"},
                           "workload": {"command": ["sleep", "600"]}})
                })
                .collect();
            let url = format!("{base}bservers/");
            match call(
                &c,
                "create",
                M::POST,
                &url,
                Some(json!({ "objects": objects })),
                &mut w.tally,
            )
            .await
            {
                Answer::Ok(v) => {
                    let created = v["objects"].as_array().cloned().unwrap_or_default();
                    assert_eq!(created.len(), names.len(), "a create answered {v}");
                    for (o, name) in created.iter().zip(&names) {
                        assert_eq!(o["name"].as_str(), Some(name.as_str()), "{v}");
                        w.servers.push(Tracked {
                            uuid: o["uuid"].as_str().unwrap().to_owned(),
                            name: name.clone(),
                            possible: [(Status::Stopped, 0)].into(),
                        });
                    }
                }
                Answer::Refused => {}
                Answer::Lost => w.lost_creates.push(LostCreate { names }),
            }
        } else {
            let i = certain[usize::try_from(rng.below(certain.len() as u64)).unwrap()];
            let s = &mut w.servers[i];
            let (status, rev) = *s.possible.first().unwrap();
            let url = format!("{base}bservers/{}/", s.uuid);
            let (kind, method, url, body, next) = match (status, choice) {
                (Status::Stopped, 3..=5) => (
                    "start",
                    M::POST,
                    format!("{url}action/?do=start"),
                    None,
                    (Status::Started, rev),
                ),
                (Status::Started, 3..=6) => (
                    "stop",
                    M::POST,
                    format!("{url}action/?do=stop"),
                    None,
                    (Status::Stopped, rev),
                ),
                (Status::Stopped, 6) => ("delete", M::DELETE, url, None, (Status::Gone, rev)),
                _ => (
                    "edit",
                    M::PUT,
                    url,
                    Some(json!({"meta": {"rev": (rev + 1).to_string()}})),
                    (status, rev + 1),
                ),
            };
            match call(&c, kind, method, &url, body, &mut w.tally).await {
                Answer::Ok(_) => s.possible = [next].into(),
                Answer::Refused => {}
                Answer::Lost => {
                    s.possible.insert(next);
                }
            }
        }
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkills_of_the_coordinator() {
    let seed = std::env::var("BACKFILL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let secs: u64 = std::env::var("BACKFILL_CRASH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    eprintln!("crash test seed: {seed} (replay with BACKFILL_CRASH_SEED={seed})");

    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let setup = AgentSetup::new(&pki, &coord, "crash-host");
    let _agent = setup.start(true, "1");
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let base = coord.url("");

    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let mut rng = Rng(seed);
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| {
            let rng = Rng(rng.next());
            tokio::spawn(worker(base.clone(), tenant.clone(), rng, id, stop.clone()))
        })
        .collect();
    // The killer: up, then SIGKILL after a seeded 0.2 to 1.5 s, restart, again, until the
    // time is up; the coordinator is left running.
    let mut kill_rng = Rng(rng.next());
    let killer = {
        let (stop, kills) = (stop.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut coord = coord;
            let until = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(200 + kill_rng.below(1300)));
                coord.kill();
                kills.fetch_add(1, Ordering::Relaxed);
                coord.restart();
            }
            stop.store(true, Ordering::Relaxed);
            coord
        })
    };
    let mut results = Vec::new();
    for w in workers {
        results.push(w.await.unwrap());
    }
    let coord = tokio::task::spawn_blocking(move || killer.join().unwrap())
        .await
        .unwrap();

    // Everything as the restarted coordinator has it, from a fresh client.
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let (status, list) = get(&tenant, &coord.url("bservers/detail/?limit=0")).await;
    assert_eq!(status, 200, "{list}");
    let objects = list["objects"].as_array().unwrap().clone();
    assert_eq!(
        list["meta"]["total_count"].as_u64(),
        Some(objects.len() as u64),
        "the whole list in one page"
    );

    let mut problems = Vec::new();
    let mut by_name: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut uuids = BTreeSet::new();
    for o in &objects {
        by_name
            .entry(o["name"].as_str().unwrap_or("").to_owned())
            .or_default()
            .push(o);
        if !uuids.insert(o["uuid"].as_str().unwrap_or("").to_owned()) {
            problems.push(format!("uuid listed twice: {o}"));
        }
    }
    let mut tally = Tally::default();
    let mut tracked_names = BTreeSet::new();
    let (mut checked_present, mut checked_gone) = (0, 0);
    for w in &results {
        tally.acknowledged += w.tally.acknowledged;
        for (k, n) in &w.tally.by_kind {
            *tally.by_kind.entry(k).or_default() += n;
        }
        tally.lost += w.tally.lost;
        tally.refused += w.tally.refused;
        tally
            .server_errors
            .extend(w.tally.server_errors.iter().cloned());
        for s in &w.servers {
            tracked_names.insert(s.name.clone());
            let shown = by_name.get(&s.name).map(Vec::as_slice).unwrap_or_default();
            if shown.len() > 1 {
                problems.push(format!(
                    "{} ({}) listed {} times",
                    s.name,
                    s.uuid,
                    shown.len()
                ));
                continue;
            }
            let gone_ok = s.possible.iter().any(|p| p.0 == Status::Gone);
            match shown.first() {
                None if gone_ok => checked_gone += 1,
                None => problems.push(format!(
                    "{} ({}) acknowledged but missing; expected one of {:?}",
                    s.name, s.uuid, s.possible
                )),
                Some(o) => {
                    checked_present += 1;
                    let status = o["status"].as_str().unwrap_or("");
                    let rev: u32 = o["meta"]["rev"]
                        .as_str()
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(u32::MAX);
                    if o["uuid"].as_str() != Some(s.uuid.as_str()) {
                        problems.push(format!("{} has uuid {} not {}", s.name, o["uuid"], s.uuid));
                    }
                    if !s
                        .possible
                        .iter()
                        .any(|&(st, r)| st.admits(status) && r == rev)
                    {
                        problems.push(format!(
                            "{} ({}) shows {status} with rev {rev}; expected one of {:?}",
                            s.name, s.uuid, s.possible
                        ));
                    }
                }
            }
            if gone_ok && s.possible.len() == 1 {
                let (code, _) = get(&tenant, &coord.url(&format!("bservers/{}/", s.uuid))).await;
                if code != 404 {
                    problems.push(format!("deleted {} ({}) answers {code}", s.name, s.uuid));
                }
            }
        }
        for lost in &w.lost_creates {
            let counts: Vec<usize> = lost
                .names
                .iter()
                .map(|n| by_name.get(n).map_or(0, Vec::len))
                .collect();
            let all = counts.iter().all(|&c| c == 1);
            let none = counts.iter().all(|&c| c == 0);
            if !all && !none {
                problems.push(format!(
                    "a create whose answer was lost left {counts:?} of {:?}",
                    lost.names
                ));
            }
            for n in &lost.names {
                tracked_names.insert(n.clone());
                if let Some(o) = by_name.get(n).and_then(|v| v.first())
                    && o["status"] != "stopped"
                {
                    problems.push(format!("{n} was never started, yet shows {o}"));
                }
            }
        }
    }
    for name in by_name.keys() {
        if !tracked_names.contains(name) {
            problems.push(format!("a server nobody created: {name}"));
        }
    }
    problems.extend(tally.server_errors.iter().map(|e| format!("a 5xx: {e}")));
    let kills = kills.load(Ordering::Relaxed);
    eprintln!(
        "crash test seed {seed}: {kills} SIGKILLs; {} writes acknowledged {:?}, {} answers lost, {} refused; {checked_present} servers checked present, {checked_gone} checked gone; {} listed",
        tally.acknowledged,
        tally.by_kind,
        tally.lost,
        tally.refused,
        objects.len()
    );
    assert!(kills >= 3, "too few kills for a crash test: {kills}");
    assert!(
        tally.acknowledged >= 20,
        "too few acknowledged writes to mean anything: {tally:?}"
    );
    assert!(
        problems.is_empty(),
        "seed {seed} (replay with BACKFILL_CRASH_SEED={seed}): {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
