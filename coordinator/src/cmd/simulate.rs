//! `backfill-coordinator simulate`: replays a synthetic workload through the real scheduler
//! with a simulated clock. Deterministic for a seed (the generator is a seeded SplitMix64 and
//! every scheduler tie is broken by id).

use crate::domain::gpu::GpuSlot;
use crate::policy::scheduler::{
    self, Cluster, GrowPolicy, HostSpec, Plan, Policy, ServerSpec, plan_grow,
};
use backfill_shared::{HostId, Resources, ServerClass, ServerId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// What to replay.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    #[arg(long, default_value_t = 1_000)]
    pub hosts: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated seconds.
    #[arg(long, default_value_t = 86_400)]
    pub duration_s: i64,
    /// Arrivals per simulated hour, per class (default: 1 normal, 3 backfill and 0.5 spot
    /// per host and hour; servers of 1 to 16 cores live 4 h on average).
    #[arg(long)]
    pub normal_per_hour: Option<f64>,
    #[arg(long)]
    pub backfill_per_hour: Option<f64>,
    #[arg(long)]
    pub spot_per_hour: Option<f64>,
    /// Simulated seconds between scheduler ticks (terminations, queue, grow-back).
    #[arg(long, default_value_t = 10)]
    pub tick_s: i64,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Replay this JSON trace instead of generating arrivals.
    #[arg(long)]
    pub trace: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// SplitMix64: small, seeded, good enough for workload generation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Exponentially distributed with the given mean.
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        let n = u64::try_from(v.len()).ok().filter(|n| *n > 0)?;
        v.get(usize::try_from(self.next() % n).ok()?).copied()
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub hosts: usize,
    pub seed: u64,
    pub simulated_s: i64,
    pub arrivals: u64,
    pub placements: u64,
    pub placements_per_sec: f64,
    pub downsized: u64,
    pub terminated_with_notice: u64,
    pub stopped: u64,
    pub still_queued: u64,
    pub utilisation_without_backfill: f64,
    pub utilisation_with_backfill: f64,
    pub normal_wait_p99_s: i64,
    pub violations: Violations,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Violations {
    pub min_uptime: u64,
    pub notice: u64,
    pub capacity: u64,
    pub gpu_uniqueness: u64,
}

const GIB: u64 = 1 << 30;

/// One server arriving: what a JSON trace holds, one object per server.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrival {
    /// Simulated second of arrival.
    pub at: i64,
    pub class: ServerClass,
    /// MHz, bytes, vCPUs, whole GPUs.
    pub cpu: u64,
    pub mem: u64,
    #[serde(default = "one")]
    pub smp: u32,
    #[serde(default)]
    pub gpus: u32,
    /// How long it runs once placed.
    pub lifetime_s: i64,
}

fn one() -> u32 {
    1
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: not a trace ({reason}); expected {{\"servers\": [{{\"at\", \"class\", \"cpu\", \"mem\", \"smp\", \"gpus\", \"lifetime_s\"}}, ...]}}"
    )]
    Parse {
        path: std::path::PathBuf,
        reason: String,
    },
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Trace {
    servers: Vec<Arrival>,
}

/// Reads a JSON trace, sorted by arrival time (ties keep file order).
pub fn load_trace(path: &std::path::Path) -> Result<Vec<Arrival>, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut t: Trace = serde_json::from_str(&text).map_err(|e| SimError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    t.servers.sort_by_key(|a| a.at);
    Ok(t.servers)
}

/// Seeded Poisson arrivals per class, merged in time order.
fn synthetic(args: &SimArgs, rng: &mut Rng) -> Vec<Arrival> {
    let per_host = |given: Option<f64>, default: f64| given.unwrap_or(default * args.hosts as f64);
    let rates = [
        (ServerClass::Normal, per_host(args.normal_per_hour, 1.0)),
        (ServerClass::Backfill, per_host(args.backfill_per_hour, 3.0)),
        (ServerClass::Spot, per_host(args.spot_per_hour, 0.5)),
    ];
    let mut out = Vec::new();
    for (class, rate) in rates {
        if rate <= 0.0 {
            continue;
        }
        let mut t = rng.exp(3_600.0 / rate);
        while t < args.duration_s as f64 {
            let cores = rng.pick(&[1u64, 2, 4, 8, 16]).unwrap_or(1);
            let gpus = u32::from(class != ServerClass::Normal && rng.unit() < 0.05);
            out.push(Arrival {
                at: t as i64,
                class,
                cpu: cores * 2_500,
                mem: cores * 4 * GIB,
                smp: u32::try_from(cores).unwrap_or(1),
                gpus,
                lifetime_s: rng.exp(4.0 * 3_600.0) as i64 + 60,
            });
            t += rng.exp(3_600.0 / rate);
        }
    }
    out.sort_by_key(|a| a.at);
    out
}

pub fn run(args: &SimArgs, trace: Option<Vec<Arrival>>) -> Report {
    let mut rng = Rng(args.seed);
    let mut cluster = Cluster::new();
    let policy = Policy::default();
    let grow = GrowPolicy::default();
    let classes = *cluster.classes();
    let mut capacity_cpu: u64 = 0;
    for i in 0..args.hosts {
        let cores = [16u64, 32, 64, 96][i % 4];
        let gpus = if i % 10 == 0 { 4 } else { 0 };
        capacity_cpu += cores * 2_500;
        if let Ok(id) = format!("sim-{i:06}").parse::<HostId>() {
            cluster.upsert_host(HostSpec {
                id,
                capacity: Resources {
                    cpu_mhz: cores * 2_500,
                    vcpus: u32::try_from(cores).unwrap_or(u32::MAX),
                    mem_bytes: cores * 4 * GIB,
                },
                gpus: (0..gpus)
                    .map(|g| GpuSlot::new(&format!("GPU-{i}-{g}"), "Sim GPU", 80 << 30, None))
                    .collect(),
                schedulable: true,
                reserved: None,
                drivers: backfill_shared::Drivers::exec_only(),
            });
        }
    }
    let mut report = Report {
        hosts: args.hosts,
        seed: args.seed,
        simulated_s: args.duration_s,
        ..Report::default()
    };
    let arrivals = match trace {
        Some(t) => t,
        None => synthetic(args, &mut rng),
    };
    let mut arrivals = arrivals.into_iter().peekable();
    let mut queued: BTreeMap<ServerId, i64> = BTreeMap::new();
    let mut lifetime: BTreeMap<ServerId, i64> = BTreeMap::new();
    let mut ends: BTreeSet<(i64, ServerId)> = BTreeSet::new();
    let mut terminations: BTreeSet<(i64, ServerId)> = BTreeSet::new();
    let mut fresh: Vec<ServerId> = Vec::new();
    // Normal servers waiting for their victims: not re-planned before the room is real.
    let mut ready: BTreeMap<ServerId, i64> = BTreeMap::new();
    let mut waits: Vec<i64> = Vec::new();
    let mut n: u128 = 0;
    let mut planning = std::time::Duration::ZERO;
    let (mut util_g, mut util_all, mut samples) = (0.0, 0.0, 0u64);
    let mut now = 0i64;
    while now < args.duration_s {
        let until = now + args.tick_s;
        // Arrivals in this tick, in time order.
        while let Some(a) = arrivals.next_if(|a| a.at < until) {
            n += 1;
            report.arrivals += 1;
            let id = ServerId::from_u128(n);
            cluster.add_server(ServerSpec {
                id,
                class: a.class,
                need: Resources {
                    cpu_mhz: a.cpu,
                    vcpus: a.smp,
                    mem_bytes: a.mem,
                },
                gpus: a.gpus,
                gpu_match: Default::default(),
                priority: 0,
                created_at: a.at,
                owner: String::new(),
                needs: Default::default(),
                prefer: None,
            });
            queued.insert(id, a.at);
            fresh.push(id);
            lifetime.insert(id, a.lifetime_s.max(1));
        }
        // Departures and due terminations free capacity.
        let mut freed = false;
        for set in [&mut ends, &mut terminations] {
            while let Some(&(t, id)) = set.first() {
                if t > now {
                    break;
                }
                set.remove(&(t, id));
                freed |= cluster.placed(id).is_some();
                let _ = cluster.remove_server(id);
            }
        }
        // Queue, oldest first: everything when capacity was freed, else the new arrivals. A
        // server that needs at least what another of its kind failed to get this tick is
        // skipped: it cannot fit either.
        let mut order: Vec<(i64, ServerId)> = if freed {
            queued.iter().map(|(id, t)| (*t, *id)).collect()
        } else {
            fresh
                .iter()
                .filter_map(|id| queued.get(id).map(|t| (*t, *id)))
                .collect()
        };
        fresh.clear();
        order.sort();
        let mut failed: Vec<(bool, Resources, u32)> = Vec::new();
        for (arrived, id) in order {
            let Some(spec) = cluster.server(id).cloned() else {
                continue;
            };
            let normal = spec.class == ServerClass::Normal;
            if ready.get(&id).is_some_and(|t| *t > now) {
                continue;
            }
            if failed
                .iter()
                .any(|(n, need, g)| *n == normal && spec.need.fits(need) && spec.gpus >= *g)
            {
                continue;
            }
            let started = Instant::now();
            let plan = scheduler::plan(&cluster, id, &policy, now);
            planning += started.elapsed();
            match &plan {
                Plan::Place { downsize, .. } => {
                    report.placements += 1;
                    report.downsized += downsize.len() as u64;
                    queued.remove(&id);
                    if cluster
                        .server(id)
                        .is_some_and(|s| s.class == ServerClass::Normal)
                    {
                        waits.push(now - arrived);
                    }
                    let life = lifetime.get(&id).copied().unwrap_or(3_600);
                    ends.insert((now + life, id));
                }
                Plan::Preempt {
                    downsize,
                    terminate,
                    ready_at,
                    ..
                } => {
                    ready.insert(id, *ready_at);
                    report.downsized += downsize.len() as u64;
                    for (victim, t) in terminate {
                        terminations.insert((t.terminate_at, *victim));
                        if t.terminate_at > t.scheduled_at {
                            report.terminated_with_notice += 1;
                        } else {
                            report.stopped += 1;
                        }
                    }
                }
                Plan::Never { .. } => {
                    queued.remove(&id);
                    let _ = cluster.remove_server(id);
                    continue;
                }
                Plan::Queue { .. } => failed.push((normal, spec.need, spec.gpus)),
            }
            let _ = scheduler::apply(&mut cluster, id, &plan, now);
        }
        // Growing back.
        let hosts: Vec<HostId> = cluster.host_ids().cloned().collect();
        for h in &hosts {
            for (id, pf) in plan_grow(&cluster, h, &grow, now) {
                let _ = cluster.set_perf(id, pf, now);
            }
        }
        // Measure and check.
        let (g, all) = check(&cluster, &classes, &mut report.violations);
        util_g += g as f64 / capacity_cpu.max(1) as f64;
        util_all += all as f64 / capacity_cpu.max(1) as f64;
        samples += 1;
        now = until;
    }
    report.still_queued = queued.len() as u64;
    report.placements_per_sec = report.placements as f64 / planning.as_secs_f64().max(1e-9);
    report.utilisation_without_backfill = util_g / samples.max(1) as f64;
    report.utilisation_with_backfill = util_all / samples.max(1) as f64;
    waits.sort_unstable();
    report.normal_wait_p99_s = waits
        .get((waits.len() * 99 / 100).min(waits.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    report
}

/// Counts broken promises; returns (guaranteed CPU, all CPU in use) over the fleet.
fn check(cluster: &Cluster, classes: &scheduler::Classes, v: &mut Violations) -> (u64, u64) {
    let (mut guaranteed, mut used_all) = (0u64, 0u64);
    let mut gpus = BTreeSet::new();
    for host in cluster.host_ids() {
        let mut used = Resources::ZERO;
        let cap = cluster.capacity(host);
        for id in cluster.servers_on(host) {
            let (Some(spec), Some(p)) = (cluster.server(id), cluster.placed(id)) else {
                continue;
            };
            let held = cluster.held(id);
            used = used.saturating_add(held);
            if spec.class == ServerClass::Normal {
                guaranteed += held.cpu_mhz;
            }
            for g in &p.gpus {
                if !gpus.insert(g.clone()) {
                    v.gpu_uniqueness += 1;
                }
            }
            if let (Some(t), Some(pol)) = (p.termination, classes.of(spec.class)) {
                if t.terminate_at < p.started_at + pol.min_uptime_s {
                    v.min_uptime += 1;
                }
                if t.terminate_at < t.scheduled_at + pol.notice_s {
                    v.notice += 1;
                }
            }
        }
        if !cap.fits(&used) {
            v.capacity += 1;
        }
        used_all += used.cpu_mhz;
    }
    (guaranteed, used_all)
}

pub fn print(report: &Report, output: Output) {
    match output {
        Output::Json => match serde_json::to_string(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cannot encode the report: {e}"),
        },
        Output::Text => {
            println!("hosts                         {}", report.hosts);
            println!(
                "simulated                     {} s (seed {})",
                report.simulated_s, report.seed
            );
            println!(
                "arrivals / placements         {} / {}",
                report.arrivals, report.placements
            );
            println!(
                "placements per second         {:.0}",
                report.placements_per_sec
            );
            println!("downsized                     {}", report.downsized);
            println!(
                "terminated with notice        {}",
                report.terminated_with_notice
            );
            println!("stopped (no notice)           {}", report.stopped);
            println!("still queued at the end       {}", report.still_queued);
            println!(
                "utilisation without backfill  {:.3}",
                report.utilisation_without_backfill
            );
            println!(
                "utilisation with backfill     {:.3}",
                report.utilisation_with_backfill
            );
            println!(
                "normal wait p99               {} s",
                report.normal_wait_p99_s
            );
            let v = &report.violations;
            println!(
                "violations                    min_uptime {} notice {} capacity {} gpu {}",
                v.min_uptime, v.notice, v.capacity, v.gpu_uniqueness
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(seed: u64) -> SimArgs {
        SimArgs {
            hosts: 10,
            seed,
            duration_s: 3 * 3_600,
            normal_per_hour: Some(10.0),
            backfill_per_hour: Some(40.0),
            spot_per_hour: Some(5.0),
            tick_s: 30,
            output: Output::Json,
            trace: None,
        }
    }

    #[test]
    fn deterministic_for_a_seed_and_keeps_every_promise() {
        let a = run(&args(7), None);
        let b = run(&args(7), None);
        assert_eq!(
            (
                a.placements,
                a.downsized,
                a.terminated_with_notice,
                a.stopped,
                a.normal_wait_p99_s
            ),
            (
                b.placements,
                b.downsized,
                b.terminated_with_notice,
                b.stopped,
                b.normal_wait_p99_s
            )
        );
        assert!(a.placements > 100, "{a:?}");
        assert!(
            a.downsized + a.terminated_with_notice + a.stopped > 0,
            "no preemption: {a:?}"
        );
        let v = &a.violations;
        assert_eq!(
            (v.min_uptime, v.notice, v.capacity, v.gpu_uniqueness),
            (0, 0, 0, 0)
        );
        assert!(a.utilisation_with_backfill >= a.utilisation_without_backfill);
        let json = serde_json::to_value(&a).unwrap();
        for k in [
            "hosts",
            "placements",
            "placements_per_sec",
            "downsized",
            "terminated_with_notice",
            "stopped",
            "utilisation_without_backfill",
            "utilisation_with_backfill",
            "normal_wait_p99_s",
            "violations",
        ] {
            assert!(json.get(k).is_some(), "{k} missing");
        }
    }

    #[test]
    fn a_trace_is_replayed_and_a_bad_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.json");
        std::fs::write(
            &path,
            r#"{"servers": [
                {"at": 0, "class": "backfill", "cpu": 39000, "mem": 1073741824, "lifetime_s": 7200},
                {"at": 60, "class": "normal", "cpu": 30000, "mem": 1073741824, "lifetime_s": 600}
            ]}"#,
        )
        .unwrap();
        let mut a = args(1);
        a.hosts = 1;
        a.duration_s = 3_600;
        let trace = load_trace(&path).unwrap();
        let r = run(&a, Some(trace));
        assert_eq!((r.arrivals, r.placements), (2, 2));
        assert!(r.downsized >= 1, "{r:?}");
        std::fs::write(&path, r#"{"servers": [{"at": 0}]}"#).unwrap();
        let e = load_trace(&path).unwrap_err().to_string();
        assert!(e.contains("trace.json"), "{e}");
    }
}
