//! Scheduler benchmarks at 1,000 and 10,000 hosts: placements of backfill and normal servers,
//! preemption plans, and the free_resources query.
//!
//! `cargo bench -p backfill-coordinator --bench scheduler`
#![allow(clippy::expect_used, clippy::panic)]

use backfill_coordinator::policy::scheduler::{self, Cluster, HostSpec, Plan, Policy, ServerSpec};
use backfill_shared::{Resources, ServerClass, ServerId};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;

const GIB: u64 = 1 << 30;

/// A deterministic fleet: hosts of a few shapes, a third of their CPU taken by normal servers
/// and most of the rest by backfill servers.
fn fleet(hosts: usize) -> (Cluster, u128) {
    let mut c = Cluster::new();
    for i in 0..hosts {
        let cores = [16u64, 32, 64, 96][i % 4];
        c.upsert_host(HostSpec {
            id: format!("host-{i:05}").parse().expect("valid host id"),
            capacity: Resources {
                cpu_mhz: cores * 2_500,
                vcpus: u32::try_from(cores).unwrap_or(u32::MAX),
                mem_bytes: cores * 4 * GIB,
            },
            gpus: Vec::new(),
            schedulable: true,
            reserved: None,
            drivers: backfill_shared::Drivers::exec_only(),
        });
    }
    let mut n: u128 = 1;
    let policy = Policy::default();
    for i in 0..hosts * 4 {
        let class = if i % 3 == 0 {
            ServerClass::Normal
        } else {
            ServerClass::Backfill
        };
        let spec = server(
            n,
            class,
            2_500 * (1 + (i as u64 % 8)),
            GIB * (2 + (i as u64 % 16)),
        );
        n += 1;
        add_and_apply(&mut c, spec, &policy);
    }
    (c, n)
}

fn server(n: u128, class: ServerClass, cpu: u64, mem: u64) -> ServerSpec {
    ServerSpec {
        id: ServerId::from_u128(n),
        class,
        need: Resources {
            cpu_mhz: cpu,
            vcpus: 1,
            mem_bytes: mem,
        },
        gpus: 0,
        gpu_match: Default::default(),
        priority: 0,
        created_at: 0,
        owner: String::new(),
        needs: Default::default(),
        prefer: None,
    }
}

fn add_and_apply(c: &mut Cluster, spec: ServerSpec, policy: &Policy) -> Plan {
    let id = spec.id;
    c.add_server(spec);
    let plan = scheduler::plan(c, id, policy, 0);
    let _ = scheduler::apply(c, id, &plan, 0);
    plan
}

fn benches(cr: &mut Criterion) {
    let policy = Policy::default();
    for hosts in [1_000usize, 10_000] {
        let (cluster, next) = fleet(hosts);
        let mut g = cr.benchmark_group(format!("scheduler/{hosts}_hosts"));
        g.bench_function(BenchmarkId::new("free_resources", hosts), |b| {
            b.iter(|| black_box(cluster.free_resources()))
        });
        // Plan and apply one placement, then take it back, so the fleet stays the same.
        for (name, class, cpu, mem) in [
            ("place_backfill", ServerClass::Backfill, 2_500, 2 * GIB),
            ("place_normal", ServerClass::Normal, 2_500, 2 * GIB),
        ] {
            let mut c = cluster.clone();
            let mut n = next;
            g.bench_function(BenchmarkId::new(name, hosts), |b| {
                b.iter(|| {
                    n += 1;
                    let spec = server(n, class, cpu, mem);
                    let id = spec.id;
                    let plan = add_and_apply(&mut c, spec, &policy);
                    let _ = c.remove_server(id);
                    black_box(plan)
                })
            });
        }
        // A full fleet (backfill in every hole) and a normal server that fits in no free hole:
        // the planner weighs downsizing and terminations across the fleet.
        let mut c = cluster.clone();
        let mut n = next;
        loop {
            n += 1;
            let spec = server(n, ServerClass::Backfill, 2_500, GIB);
            if !matches!(add_and_apply(&mut c, spec, &policy), Plan::Place { .. }) {
                break;
            }
        }
        let big = server(n + 1, ServerClass::Normal, 20_000, 16 * GIB);
        c.add_server(big.clone());
        let planned = scheduler::plan(&c, big.id, &policy, 0);
        assert!(
            matches!(&planned, Plan::Place { downsize, .. } if !downsize.is_empty())
                || matches!(planned, Plan::Preempt { .. }),
            "the benchmark must exercise preemption: {planned:?}"
        );
        g.bench_function(BenchmarkId::new("plan_preemption", hosts), |b| {
            b.iter_batched(
                || (),
                |()| black_box(scheduler::plan(&c, big.id, &policy, 0)),
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

criterion_group!(name = scheduler_benches; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(scheduler_benches);
