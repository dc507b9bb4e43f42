//! The API load client of `tests/bench/api-load.sh`: concurrent tenants over mutual TLS against
//! a running coordinator, one JSON line per phase on stdout.
//!
//! ```text
//! bf-apiload --api https://127.0.0.1:PORT --ca ca.pem --cert tenant.pem --key tenant.key PHASE [OPTIONS]
//!
//!   create  --clients N --seconds S   N clients, each POSTs one server per request in a loop:
//!                                     durable creates/s (each 201), errors, p50/p99 latency
//!   prefill --total T [--clients C] [--max-seconds M]
//!                                     brings the account to T bservers in batches of 100
//!                                     (C requests in flight, 4 by default); stops after M s
//!                                     (default: no limit) and reports how far it got
//!   list    --clients N --seconds S [--limit L] [--read list|show] [--read-rate Q]
//!                                     N clients GET /api/2.0/bservers/?limit=L (20): reads/s;
//!                                     with `--read show`, each GETs one server of the first
//!                                     page of 100 in turn (/api/2.0/bservers/UUID/)
//!   mixed   --clients N --seconds S [--limit L] [--read list|show]
//!           [--readers R --writers W] [--write-rate C] [--read-rate Q]
//!                                     R readers (N/2) and W creators (N - R) at once: reads/s
//!                                     and read p99 under write load, creates/s; with
//!                                     --write-rate the creators together start at most C
//!                                     creates/s (each on its own schedule, missed starts
//!                                     skipped), a write load that waits on IO rather than
//!                                     saturating the CPU; likewise --read-rate paces the
//!                                     readers to Q reads/s together (in `list` too), a read
//!                                     load below what the CPU can serve, so that its p99 shows
//!                                     waits rather than a saturated CPU
//! ```
//!
//! A fair "reads under writes" comparison keeps the readers the same: `list --clients R`, then
//! `mixed --readers R --writers W` (see `tests/bench/api-load.sh`, segment `reads`).
//!
//! Each client is its own HTTP/1.1 connection (its own reqwest client), opened before the clock
//! starts. A create is the smallest valid bserver: a name, `cpu` 100 MHz and the minimum `mem`
//! (64 MiB); nothing is placed (no agent), so a create is the API's and the store's work only.

use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The smallest `mem` the API accepts (64 MiB).
const MIN_MEM: u64 = 64 << 20;
/// Most servers one create request may hold.
const BATCH: u64 = 100;
/// A request that takes longer is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Errors printed to stderr in full, per phase (the rest are only counted).
const SHOWN_ERRORS: u64 = 5;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Options {
    api: String,
    tls: backfill_shared::tls::TlsFiles,
    phase: String,
    clients: usize,
    seconds: f64,
    total: u64,
    limit: u32,
    max_seconds: Option<f64>,
    read: Read,
    readers: Option<usize>,
    writers: Option<usize>,
    /// Creates/s all creators together start at most (mixed); `None`: back to back.
    write_rate: Option<f64>,
    /// Reads/s asked of all readers together (`--read-rate`), if paced.
    read_rate: Option<f64>,
}

/// What a reader GETs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// A page of the account's bservers (`?limit=L`).
    List,
    /// One bserver (`/bservers/UUID/`), one of the first 100 in turn.
    Show,
}

const USAGE: &str = "usage: bf-apiload --api URL --ca PEM --cert PEM --key PEM \
     create|list|mixed --clients N --seconds S [--limit L] [--read list|show] \
     [--readers R --writers W] [--write-rate C] [--read-rate Q] | prefill --total T [--clients C] [--max-seconds M]";

fn parse_args(args: &[String]) -> Result<Options, Error> {
    let mut api = None;
    let (mut ca, mut cert, mut key) = (None, None, None);
    let mut phase = None;
    let mut clients = None;
    let mut seconds = 10.0;
    let mut total = None;
    let mut limit = 20;
    let mut max_seconds = None;
    let mut read = Read::List;
    let (mut readers, mut writers, mut write_rate, mut read_rate) = (None, None, None, None);
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if !a.starts_with("--") {
            if phase.replace(a.clone()).is_some() {
                return Err(format!("one phase at a time\n{USAGE}").into());
            }
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))?;
        let num = |what: &str| -> Result<f64, Error> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{what} must be a number, not {value:?}").into())
        };
        match a.as_str() {
            "--api" => api = Some(value.trim_end_matches('/').to_owned()),
            "--ca" => ca = Some(PathBuf::from(value)),
            "--cert" => cert = Some(PathBuf::from(value)),
            "--key" => key = Some(PathBuf::from(value)),
            "--clients" => clients = Some(num("--clients")? as usize),
            "--seconds" => seconds = num("--seconds")?,
            "--total" => total = Some(num("--total")? as u64),
            "--limit" => limit = num("--limit")? as u32,
            "--max-seconds" => max_seconds = Some(num("--max-seconds")?),
            "--readers" => readers = Some(num("--readers")? as usize),
            "--writers" => writers = Some(num("--writers")? as usize),
            "--write-rate" => write_rate = Some(num("--write-rate")?).filter(|r| *r > 0.0),
            "--read-rate" => read_rate = Some(num("--read-rate")?).filter(|r| *r > 0.0),
            "--read" => {
                read = match value.as_str() {
                    "list" => Read::List,
                    "show" => Read::Show,
                    _ => return Err(format!("--read is list or show, not {value:?}").into()),
                }
            }
            _ => return Err(format!("unknown option {a}\n{USAGE}").into()),
        }
    }
    let need = |v: Option<PathBuf>, what: &str| v.ok_or_else(|| format!("{what} is required"));
    let phase = phase.ok_or_else(|| format!("which phase?\n{USAGE}"))?;
    if !["create", "prefill", "list", "mixed"].contains(&phase.as_str()) {
        return Err(format!("unknown phase {phase:?}\n{USAGE}").into());
    }
    if phase == "mixed" {
        // Readers and writers given: the clients are their sum; else half and half.
        let n = clients.unwrap_or(readers.unwrap_or(0) + writers.unwrap_or(0));
        let r = readers.unwrap_or(n / 2);
        let w = writers.unwrap_or(n.saturating_sub(r));
        if r == 0 || w == 0 {
            return Err(
                "mixed needs at least one reader and one writer (--clients 2 or more, or \
                 --readers R --writers W)"
                    .into(),
            );
        }
        if clients.is_some_and(|n| n != r + w) {
            return Err(format!("--clients {n} is not --readers {r} + --writers {w}").into());
        }
        (readers, writers) = (Some(r), Some(w));
    } else if phase == "prefill" && read_rate.is_some() {
        return Err("--read-rate is for list and mixed".into());
    } else if readers.is_some() || writers.is_some() || write_rate.is_some() {
        return Err("--readers, --writers and --write-rate are for mixed".into());
    }
    let clients = match (phase.as_str(), clients) {
        (_, Some(0)) => return Err("--clients must be at least 1".into()),
        (_, Some(n)) => n,
        ("prefill", None) => 4,
        ("mixed", None) => readers.unwrap_or(0) + writers.unwrap_or(0),
        (_, None) => return Err(format!("{phase} needs --clients").into()),
    };
    if phase == "prefill" && total.is_none() {
        return Err("prefill needs --total".into());
    }
    Ok(Options {
        api: api.ok_or("--api is required")?,
        tls: backfill_shared::tls::TlsFiles {
            ca: need(ca, "--ca")?,
            cert: need(cert, "--cert")?,
            key: need(key, "--key")?,
        },
        phase,
        clients,
        seconds,
        total: total.unwrap_or(0),
        limit,
        max_seconds,
        read,
        readers,
        writers,
        write_rate,
        read_rate,
    })
}

/// A client of its own (its own connection), presenting the tenant's certificate.
fn client(tls: &backfill_shared::tls::TlsFiles) -> Result<reqwest::Client, Error> {
    let cfg = backfill_shared::tls::client_config(tls)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls((*cfg).clone())
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(1)
        .build()?)
}

/// Latencies in microseconds; percentiles in milliseconds.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn add(&mut self, d: Duration) {
        self.0
            .push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
    fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }
    fn ms(&mut self, q: f64) -> f64 {
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        let us = self.0.get(i).copied().unwrap_or(0);
        (us as f64 / 10.0).round() / 100.0
    }
}

/// What one client of one kind did.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    latency: Samples,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latency.merge(other.latency);
    }
}

/// Errors shown so far in this process (the first few are printed whole).
static SHOWN: AtomicU64 = AtomicU64::new(0);

fn show_error(what: &str, e: &str) {
    if SHOWN.fetch_add(1, Ordering::Relaxed) < SHOWN_ERRORS {
        eprintln!("bf-apiload: {what}: {e}");
    }
}

/// One request: Ok(true) when the status is `want`, the whole body read.
async fn request(rb: reqwest::RequestBuilder, want: u16, what: &str) -> bool {
    match rb.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes().await {
                Ok(_) if status == want => true,
                Ok(body) => {
                    show_error(
                        what,
                        &format!(
                            "status {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(300)])
                        ),
                    );
                    false
                }
                Err(e) => {
                    show_error(what, &e.to_string());
                    false
                }
            }
        }
        Err(e) => {
            show_error(what, &e.to_string());
            false
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    List,
}

struct Target {
    api: String,
    limit: u32,
    read: Read,
    /// Servers `--read show` GETs in turn.
    shown: Vec<String>,
    /// Seconds between one creator's starts (`--write-rate`), if paced.
    write_every: Option<f64>,
    /// Seconds between one reader's starts (`--read-rate`), if paced.
    read_every: Option<f64>,
}

impl Target {
    fn read_url(&self, n: u64) -> String {
        match self.read {
            Read::List => self.list_url(),
            Read::Show => {
                let i = usize::try_from(n).unwrap_or(0) % self.shown.len().max(1);
                let id = self.shown.get(i).map_or("", String::as_str);
                format!("{}/api/2.0/bservers/{id}/", self.api)
            }
        }
    }
    fn collection(&self) -> String {
        format!("{}/api/2.0/bservers/", self.api)
    }
    fn list_url(&self) -> String {
        format!("{}/api/2.0/bservers/?limit={}", self.api, self.limit)
    }
}

/// Opens a client's connection before the clock starts (a cheap, static page).
async fn warm_up(c: &reqwest::Client, t: &Target) -> Result<(), Error> {
    let r = c
        .get(format!("{}/api/2.0/bservers/schema/", t.api))
        .send()
        .await?;
    let status = r.status();
    r.bytes().await?;
    if !status.is_success() {
        return Err(format!("warm-up GET of the bservers schema answered {status}").into());
    }
    Ok(())
}

/// One client: requests of `kind` back to back until `stop`.
async fn run_client(
    c: reqwest::Client,
    t: Arc<Target>,
    kind: Kind,
    id: usize,
    start: Arc<tokio::sync::Barrier>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let collection = t.collection();
    start.wait().await;
    // A paced client (creator or reader) starts on its own schedule, the schedules of its kind
    // spread over one period, and skips the starts it missed (the rate is what was done, not
    // what was asked).
    let every = match kind {
        Kind::Create => t.write_every,
        Kind::List => t.read_every,
    };
    let mut pace = every.map(|every| {
        let every = Duration::from_secs_f64(every.max(1e-6));
        let offset = every.mul_f64((id % 1000) as f64 / 1000.0);
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        i
    });
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let began = Instant::now();
        seq += 1;
        let ok = match kind {
            Kind::Create => {
                let body = json!({"objects": [{
                    "name": format!("load-{id}-{seq}"),
                    "cpu": 100,
                    "mem": MIN_MEM,
                }]});
                request(c.post(&collection).json(&body), 201, "create").await
            }
            Kind::List => {
                let url = t.read_url(seq.wrapping_add(id as u64));
                request(c.get(&url), 200, "read").await
            }
        };
        if ok {
            tally.ok += 1;
            tally.latency.add(began.elapsed());
        } else {
            tally.errors += 1;
        }
    }
    tally
}

/// Runs `kinds` (one client each) for `seconds`: the tallies per kind and the wall time from
/// the start until the last request in flight at the end finished.
async fn timed(o: &Options, t: &Arc<Target>, kinds: &[Kind]) -> Result<(Tally, Tally, f64), Error> {
    let mut clients = Vec::with_capacity(kinds.len());
    for _ in kinds {
        let c = client(&o.tls)?;
        warm_up(&c, t).await?;
        clients.push(c);
    }
    let start = Arc::new(tokio::sync::Barrier::new(kinds.len() + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(kinds.len());
    for (id, (c, kind)) in clients.into_iter().zip(kinds).enumerate() {
        tasks.push((
            *kind,
            tokio::spawn(run_client(
                c,
                t.clone(),
                *kind,
                id,
                start.clone(),
                stop.clone(),
            )),
        ));
    }
    start.wait().await;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(o.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut creates, mut lists) = (Tally::default(), Tally::default());
    for (kind, task) in tasks {
        let tally = task.await?;
        match kind {
            Kind::Create => creates.merge(tally),
            Kind::List => lists.merge(tally),
        }
    }
    Ok((creates, lists, began.elapsed().as_secs_f64()))
}

fn rate(n: u64, seconds: f64) -> f64 {
    (n as f64 / seconds.max(1e-9) * 10.0).round() / 10.0
}

/// The account's bservers now (a list's `total_count`).
async fn count(c: &reqwest::Client, t: &Target) -> Result<u64, Error> {
    let r = c
        .get(format!("{}/api/2.0/bservers/?limit=1", t.api))
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        return Err(format!("counting bservers: {status}: {v}").into());
    }
    v["meta"]["total_count"]
        .as_u64()
        .ok_or_else(|| format!("no meta.total_count in {v}").into())
}

/// The ids of the account's first (up to) 100 bservers, for `--read show`.
async fn first_ids(c: &reqwest::Client, t: &Target) -> Result<Vec<String>, Error> {
    let r = c
        .get(format!("{}/api/2.0/bservers/?limit=100", t.api))
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        return Err(format!("listing bservers: {status}: {v}").into());
    }
    let ids: Vec<String> = v["objects"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["uuid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        return Err("--read show needs bservers to show: prefill first".into());
    }
    Ok(ids)
}

/// Batch creates until the account holds `o.total` bservers (or `o.max_seconds` pass).
async fn prefill(o: &Options, t: &Arc<Target>) -> Result<Value, Error> {
    let c = client(&o.tls)?;
    let before = count(&c, t).await?;
    let remaining = Arc::new(AtomicU64::new(o.total.saturating_sub(before)));
    let created = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let deadline = o.max_seconds.map(|s| began + Duration::from_secs_f64(s));
    let mut tasks = Vec::new();
    for id in 0..o.clients {
        let c = client(&o.tls)?;
        let (t, remaining, created, errors) = (
            t.clone(),
            remaining.clone(),
            created.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let collection = t.collection();
            let mut seq: u64 = 0;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || errors.load(Ordering::Relaxed) > 100
                {
                    return;
                }
                let Ok(n) = remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                    (r > 0).then(|| r - r.min(BATCH))
                }) else {
                    return;
                };
                let n = n.min(BATCH);
                let objects: Vec<Value> = (0..n)
                    .map(|_| {
                        seq += 1;
                        json!({"name": format!("fill-{id}-{seq}"), "cpu": 100, "mem": MIN_MEM})
                    })
                    .collect();
                let body = json!({ "objects": objects });
                if request(c.post(&collection).json(&body), 201, "prefill").await {
                    let done = created.fetch_add(n, Ordering::Relaxed) + n;
                    if done / 10_000 != (done - n) / 10_000 {
                        eprintln!(
                            "bf-apiload: prefill: {} servers, {:.0} s",
                            before + done,
                            began.elapsed().as_secs_f64()
                        );
                    }
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    remaining.fetch_add(n, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let seconds = began.elapsed().as_secs_f64();
    let created = created.load(Ordering::Relaxed);
    let after = count(&c, t).await?;
    Ok(json!({
        "phase": "prefill",
        "clients": o.clients,
        "batch": BATCH,
        "target": o.total,
        "before": before,
        "after": after,
        "created": created,
        "reached": after >= o.total,
        "errors": errors.load(Ordering::Relaxed),
        "seconds": (seconds * 10.0).round() / 10.0,
        "creates_per_s": rate(created, seconds),
    }))
}

async fn run(o: Options) -> Result<Value, Error> {
    let t = Arc::new(Target {
        api: o.api.clone(),
        limit: o.limit,
        read: Read::List,
        shown: Vec::new(),
        write_every: None,
        read_every: None,
    });
    if o.phase == "prefill" {
        return prefill(&o, &t).await;
    }
    let c = client(&o.tls)?;
    let at_start = count(&c, &t).await?;
    let mut target = Target {
        api: o.api.clone(),
        limit: o.limit,
        read: o.read,
        shown: Vec::new(),
        write_every: o
            .write_rate
            .map(|r| o.writers.unwrap_or(1) as f64 / r.max(1e-9)),
        read_every: o
            .read_rate
            .map(|r| o.readers.unwrap_or(o.clients) as f64 / r.max(1e-9)),
    };
    if o.read == Read::Show {
        target.shown = first_ids(&c, &t).await?;
    }
    let t = Arc::new(target);
    let read = match o.read {
        Read::List => "list",
        Read::Show => "show",
    };
    let out = match o.phase.as_str() {
        "create" => {
            let (mut w, _, s) = timed(&o, &t, &vec![Kind::Create; o.clients]).await?;
            json!({
                "phase": "create", "clients": o.clients, "servers_at_start": at_start,
                "seconds": (s * 10.0).round() / 10.0,
                "creates": w.ok, "creates_per_s": rate(w.ok, s), "errors": w.errors,
                "p50_ms": w.latency.ms(0.5), "p99_ms": w.latency.ms(0.99),
            })
        }
        "list" => {
            let (_, mut r, s) = timed(&o, &t, &vec![Kind::List; o.clients]).await?;
            json!({
                "phase": "list", "clients": o.clients, "limit": o.limit, "read": read,
                "read_rate": o.read_rate,
                "servers_at_start": at_start, "seconds": (s * 10.0).round() / 10.0,
                "reads": r.ok, "reads_per_s": rate(r.ok, s), "errors": r.errors,
                "p50_ms": r.latency.ms(0.5), "p99_ms": r.latency.ms(0.99),
            })
        }
        "mixed" => {
            let readers = o.readers.unwrap_or(o.clients / 2);
            let writers = o.writers.unwrap_or(o.clients - readers);
            let mut kinds = vec![Kind::List; readers];
            kinds.extend(vec![Kind::Create; writers]);
            let (mut w, mut r, s) = timed(&o, &t, &kinds).await?;
            json!({
                "phase": "mixed", "clients": readers + writers, "readers": readers,
                "writers": writers, "write_rate": o.write_rate, "read_rate": o.read_rate,
                "limit": o.limit, "read": read,
                "servers_at_start": at_start, "seconds": (s * 10.0).round() / 10.0,
                "reads": r.ok, "reads_per_s": rate(r.ok, s),
                "read_p50_ms": r.latency.ms(0.5), "read_p99_ms": r.latency.ms(0.99),
                "creates": w.ok, "creates_per_s": rate(w.ok, s),
                "create_p50_ms": w.latency.ms(0.5), "create_p99_ms": w.latency.ms(0.99),
                "errors": r.errors + w.errors,
            })
        }
        other => return Err(format!("unknown phase {other:?}\n{USAGE}").into()),
    };
    Ok(out)
}

fn main() -> std::process::ExitCode {
    backfill_shared::tls::install_default_provider();
    let args: Vec<String> = std::env::args().collect();
    let result = parse_args(&args).and_then(|o| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(o))
    });
    match result {
        Ok(line) => {
            println!("{line}");
            // Every request refused (a wrong certificate, configuration or body): no figure.
            let some = |k: &str| line[k].as_u64().is_some_and(|n| n > 0);
            if some("errors") && !["creates", "reads", "created"].iter().any(|k| some(k)) {
                eprintln!("bf-apiload: every request of the phase failed");
                return std::process::ExitCode::from(2);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bf-apiload: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
