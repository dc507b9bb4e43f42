//! Table tests for each rule, and property tests over random clusters and request streams.

use super::gpu::{GpuMatch, GpuSlot};
use super::*;
use proptest::prelude::{
    Just, ProptestConfig, Strategy as Arb, TestCaseError, any, prop, prop_assert, prop_assert_eq,
    prop_oneof, proptest,
};

const GIB: u64 = 1 << 30;

fn host(id: &str, cpu: u64, mem_gib: u64, gpus: usize) -> HostSpec {
    HostSpec {
        id: id.parse().unwrap(),
        capacity: Resources {
            cpu_mhz: cpu,
            vcpus: 64,
            mem_bytes: mem_gib * GIB,
        },
        // Even devices are H100s (80 GiB), odd ones T4s (16 GiB).
        gpus: (0..gpus)
            .map(|g| {
                let (name, mem) = if g % 2 == 0 {
                    ("NVIDIA H100 80GB HBM3", 80u64 << 30)
                } else {
                    ("Tesla T4", 16 << 30)
                };
                GpuSlot::new(&format!("GPU-{id}-{g}"), name, mem, None)
            })
            .collect(),
        schedulable: true,
        reserved: None,
        drivers: backfill_shared::Drivers::exec_only(),
    }
}

fn server(n: u128, class: ServerClass, cpu: u64, mem_gib: u64, gpus: u32) -> ServerSpec {
    ServerSpec {
        id: ServerId::from_u128(n),
        class,
        need: Resources {
            cpu_mhz: cpu,
            vcpus: 1,
            mem_bytes: mem_gib * GIB,
        },
        gpus,
        gpu_match: GpuMatch::default(),
        priority: 0,
        created_at: 0,
        owner: String::new(),
        needs: Default::default(),
        prefer: None,
    }
}

/// Adds and plans a server; applies the plan; returns it.
fn run(c: &mut Cluster, s: ServerSpec, now: i64) -> Plan {
    let id = s.id;
    c.add_server(s);
    let p = plan(c, id, &Policy::default(), now);
    apply(c, id, &p, now).unwrap();
    p
}

fn host_of(p: &Plan) -> &str {
    match p {
        Plan::Place { host, .. } | Plan::Preempt { host, .. } => host.as_str(),
        _ => "",
    }
}

#[test]
fn backfill_goes_best_fit_or_spread() {
    let mut c = Cluster::new();
    c.upsert_host(host("a", 10_000, 64, 0));
    c.upsert_host(host("b", 4_000, 64, 0));
    let p = run(&mut c, server(1, ServerClass::Backfill, 3_000, 1, 0), 0);
    assert_eq!(host_of(&p), "b", "tightest CPU fit");
    let s = server(2, ServerClass::Backfill, 500, 1, 0);
    c.add_server(s.clone());
    let policy = Policy {
        strategy: Strategy::Spread,
    };
    assert_eq!(host_of(&plan(&c, s.id, &policy, 0)), "a", "most free CPU");
}

#[test]
fn free_resources_come_from_schedulable_hosts_only() {
    let mut c = Cluster::new();
    c.upsert_host(host("a", 10_000, 64, 0));
    c.upsert_host(host("b", 8_000, 128, 0));
    run(&mut c, server(1, ServerClass::Backfill, 1_000, 8, 0), 0);
    let f = c.free_resources();
    // Best fit put it on b, the tighter CPU fit.
    assert_eq!(
        f.total,
        CpuMem {
            cpu: 17_000,
            mem: 184 * GIB
        }
    );
    assert_eq!(
        f.most_free_by_cpu,
        CpuMem {
            cpu: 10_000,
            mem: 64 * GIB
        }
    );
    assert_eq!(
        f.most_free_by_memory,
        CpuMem {
            cpu: 7_000,
            mem: 120 * GIB
        }
    );
    c.set_schedulable(&"b".parse().unwrap(), false).unwrap();
    let f = c.free_resources();
    assert_eq!(f.total.cpu, 10_000);
    assert_eq!(f.most_free_by_memory.mem, 64 * GIB);
    // Nothing new lands on a held host; only it could hold this one, so it waits.
    let p = run(&mut c, server(2, ServerClass::Backfill, 1_000, 100, 0), 0);
    assert_eq!(
        p,
        Plan::Queue {
            reason: "waiting for free capacity".into()
        }
    );
}

#[test]
fn a_normal_server_downsizes_backfill_proportionally_first() {
    let mut c = Cluster::new();
    c.upsert_host(host("a", 10_000, 64, 0));
    run(&mut c, server(1, ServerClass::Backfill, 6_000, 32, 0), 0);
    run(&mut c, server(2, ServerClass::Backfill, 4_000, 32, 0), 0);
    let p = run(&mut c, server(3, ServerClass::Normal, 5_000, 16, 0), 10);
    let Plan::Place { host, downsize, .. } = &p else {
        panic!("{p:?}")
    };
    assert_eq!(host.as_str(), "a");
    assert_eq!(downsize.len(), 2);
    // Both by the same ratio: the CPU share lost is the same.
    let f1 = c.placed(ServerId::from_u128(1)).unwrap().perf_factor;
    let f2 = c.placed(ServerId::from_u128(2)).unwrap().perf_factor;
    assert!(
        (f1.cpu - f2.cpu).abs() < 1e-6 && f1.cpu <= 0.501 && f1.cpu > 0.49,
        "{f1:?}"
    );
    assert!((f1.mem - 0.75).abs() < 1e-3, "{f1:?}");
    assert!(c.free(&"a".parse().unwrap()).cpu_mhz < 100);
}

#[test]
fn when_downsizing_is_not_enough_the_youngest_backfill_goes() {
    let mut c = Cluster::new();
    c.upsert_host(host("a", 10_000, 64, 0));
    run(&mut c, server(1, ServerClass::Backfill, 5_000, 32, 0), 100);
    run(&mut c, server(2, ServerClass::Backfill, 5_000, 32, 0), 200);
    // 9,400 MHz: one victim frees 5,000, squeezing the other to its floor frees 4,500.
    let p = run(&mut c, server(3, ServerClass::Normal, 9_400, 8, 0), 300);
    let Plan::Preempt {
        terminate,
        ready_at,
        downsize,
        ..
    } = &p
    else {
        panic!("{p:?}")
    };
    assert_eq!(terminate.len(), 1, "no more victims than needed");
    assert_eq!(terminate[0].0, ServerId::from_u128(2), "youngest first");
    assert_eq!(*ready_at, 300, "backfill notice is 0 by default");
    assert_eq!(downsize.len(), 1, "the survivor is squeezed");
    assert!(c.placed(ServerId::from_u128(1)).unwrap().perf_factor.cpu >= 0.1);
    // The normal server waits until the room is real, then starts.
    c.unplace(ServerId::from_u128(2)).unwrap();
    assert!(matches!(
        plan(&c, ServerId::from_u128(3), &Policy::default(), 300),
        Plan::Place { .. }
    ));
}

#[test]
fn spot_servers_keep_their_minimum_uptime_and_get_notice() {
    let mut c = Cluster::new();
    c.upsert_host(host("a", 10_000, 64, 0));
    run(&mut c, server(1, ServerClass::Spot, 10_000, 8, 0), 1_000);
    let p = run(&mut c, server(2, ServerClass::Normal, 5_000, 8, 0), 1_100);
    let Plan::Preempt {
        terminate,
        ready_at,
        ..
    } = &p
    else {
        panic!("{p:?}")
    };
    // Started at 1000: min uptime to 2800 beats notice to 2000.
    assert_eq!(
        terminate[0].1,
        Termination {
            scheduled_at: 1_100,
            terminate_at: 2_800
        }
    );
    assert_eq!(*ready_at, 2_800);
    // Asked again, the already-leaving server is not terminated twice.
    let again = plan(&c, ServerId::from_u128(2), &Policy::default(), 1_200);
    assert!(
        matches!(&again, Plan::Preempt { terminate, ready_at: 2_800, .. } if terminate.is_empty()),
        "{again:?}"
    );
}

#[test]
fn normal_servers_are_never_victims() {
    let mut c = Cluster::new();
    c.upsert_host(host("a", 10_000, 64, 0));
    run(&mut c, server(1, ServerClass::Normal, 8_000, 8, 0), 0);
    let p = run(&mut c, server(2, ServerClass::Normal, 5_000, 8, 0), 0);
    assert!(matches!(p, Plan::Queue { .. }), "{p:?}");
    assert_eq!(
        c.placed(ServerId::from_u128(1)).unwrap().perf_factor,
        PerfFactor::FULL
    );
    let p = run(&mut c, server(3, ServerClass::Normal, 50_000, 8, 0), 0);
    assert!(matches!(p, Plan::Never { .. }), "{p:?}");
}

#[test]
fn a_gpu_held_by_backfill_is_taken_back_by_termination() {
    let mut c = Cluster::new();
    c.upsert_host(host("g", 10_000, 64, 1));
    let p = run(&mut c, server(1, ServerClass::Backfill, 1_000, 1, 1), 0);
    assert!(matches!(&p, Plan::Place { gpus, .. } if gpus == &["GPU-g-0".to_string()]));
    let p = run(&mut c, server(2, ServerClass::Normal, 1_000, 1, 1), 5);
    let Plan::Preempt { terminate, .. } = &p else {
        panic!("{p:?}")
    };
    assert_eq!(terminate[0].0, ServerId::from_u128(1));
    c.unplace(ServerId::from_u128(1)).unwrap();
    let p = plan(&c, ServerId::from_u128(2), &Policy::default(), 5);
    assert!(
        matches!(&p, Plan::Place { gpus, .. } if gpus == &["GPU-g-0".to_string()]),
        "{p:?}"
    );
}

#[test]
fn downsized_servers_grow_back_with_hysteresis() {
    let mut c = Cluster::new();
    c.upsert_host(host("a", 10_000, 64, 0));
    run(&mut c, server(1, ServerClass::Backfill, 10_000, 32, 0), 0);
    run(&mut c, server(2, ServerClass::Normal, 5_000, 8, 0), 100);
    let squeezed = c.placed(ServerId::from_u128(1)).unwrap().perf_factor;
    assert!(squeezed.cpu < 0.51);
    c.remove_server(ServerId::from_u128(2)).unwrap();
    let a: HostId = "a".parse().unwrap();
    let g = GrowPolicy::default();
    assert!(
        plan_grow(&c, &a, &g, 120).is_empty(),
        "too soon after the downsize"
    );
    let grown = plan_grow(&c, &a, &g, 200);
    assert_eq!(grown.len(), 1);
    assert!(grown[0].1.cpu > 0.9, "{grown:?}");
    c.set_perf(grown[0].0, grown[0].1, 200).unwrap();
    // Only up to the margin: 5% of the host stays free.
    assert!(c.free(&a).cpu_mhz >= 499, "{:?}", c.free(&a));
    assert!(plan_grow(&c, &a, &g, 400).is_empty(), "no tiny steps");
}

// ---------- properties ----------

#[derive(Debug, Clone)]
enum Op {
    Start(ServerClass, u64, u64, u32, u8),
    Stop(usize),
    Tick(i64),
}

fn arb_op() -> impl Arb<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![Just(ServerClass::Normal), Just(ServerClass::Backfill), Just(ServerClass::Spot)],
              1u64..12_000, 1u64..48, 0u32..3, 0u8..4)
            .prop_map(|(c, cpu, mem, g, m)| Op::Start(c, cpu, mem, g, m)),
        1 => (0usize..64).prop_map(Op::Stop),
        1 => (1i64..2_000).prop_map(Op::Tick),
    ]
}

fn check_invariants(c: &Cluster) -> Result<(), TestCaseError> {
    let classes = c.classes();
    let mut seen_gpus = std::collections::BTreeSet::new();
    for id in c.host_ids() {
        let h = &c.hosts[id];
        let mut used = Resources::ZERO;
        let mut squeezable = (0u64, 0u64);
        for sid in &h.servers {
            let s = &c.servers[sid];
            let p = s.placed.as_ref().unwrap();
            prop_assert!(
                h.spec.admits(&s.spec),
                "{sid} placed on {id} against its reservation"
            );
            used = used.saturating_add(s.held());
            let f = s.to_floor(classes);
            squeezable = (squeezable.0 + f.0, squeezable.1 + f.1);
            for g in &p.gpus {
                let slot = h.spec.gpus.iter().find(|s| s.uuid == *g);
                prop_assert!(slot.is_some(), "GPU {g} not on {id}");
                prop_assert!(
                    slot.is_some_and(|sl| s.spec.gpu_match.matches(sl)),
                    "GPU {g} does not match what {sid} asked for"
                );
                prop_assert!(seen_gpus.insert(g.clone()), "GPU {g} given twice");
            }
            match classes.of(s.spec.class) {
                None => {
                    prop_assert_eq!(p.perf_factor, PerfFactor::FULL);
                    prop_assert!(p.termination.is_none(), "a normal server is a victim");
                }
                Some(pol) => {
                    let floor = if pol.downsizable { pol.floor } else { 1.0 };
                    prop_assert!(p.perf_factor.cpu >= floor - 1e-9 && p.perf_factor.cpu <= 1.0);
                    prop_assert!(p.perf_factor.mem >= floor - 1e-9 && p.perf_factor.mem <= 1.0);
                    if let Some(t) = p.termination {
                        prop_assert!(
                            t.terminate_at >= p.started_at + pol.min_uptime_s,
                            "min uptime"
                        );
                        prop_assert!(t.terminate_at >= t.scheduled_at + pol.notice_s, "notice");
                    }
                }
            }
        }
        prop_assert!(h.spec.capacity.fits(&used), "{id} over capacity: {used:?}");
        prop_assert_eq!(h.squeezable, squeezable, "{} squeezable drifted", id);
    }
    // The index agrees with a scan.
    let (mut cpu, mut mem) = (0u64, 0u64);
    for id in c.host_ids() {
        if c.hosts[id].spec.schedulable {
            cpu += c.free(id).cpu_mhz;
            mem += c.free(id).mem_bytes;
        }
    }
    prop_assert_eq!(c.free_resources().total, CpuMem { cpu, mem });
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_streams_keep_every_promise(
        hosts in prop::collection::vec(
            (1_000u64..16_000, 1u64..64, 0usize..3, any::<bool>(), any::<bool>()),
            1..8,
        ),
        ops in prop::collection::vec(arb_op(), 1..80),
    ) {
        let policy = Policy::default();
        let mut c = Cluster::new();
        for (i, (cpu, mem, g, sched, reserved)) in hosts.iter().enumerate() {
            let mut h = host(&format!("h{i}"), *cpu, *mem, *g);
            h.schedulable = *sched || i == 0;
            // Some hosts are reserved for one account's servers.
            if *reserved && i > 0 {
                h.reserved = Some(Reservation { account: Some("acme".into()), class: None });
            }
            c.upsert_host(h);
        }
        let mut now = 0i64;
        let mut ids: Vec<ServerId> = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Start(class, cpu, mem, g, m) => {
                    let mut s = server(n as u128 + 1, class, cpu, mem, g);
                    // Any GPU, an H100, not an H100, or at least 32 GiB.
                    s.gpu_match = match m {
                        1 => GpuMatch { required: vec!["CUSTOM_GPU_H100".into()], ..GpuMatch::default() },
                        2 => GpuMatch { forbidden: vec!["CUSTOM_GPU_H100".into()], ..GpuMatch::default() },
                        3 => GpuMatch { min_memory_mb: 32 << 10, ..GpuMatch::default() },
                        _ => GpuMatch::default(),
                    };
                    s.created_at = now;
                    s.owner = if n % 2 == 0 { "acme".into() } else { "other".into() };
                    let id = s.id;
                    c.add_server(s);
                    let p = plan(&c, id, &policy, now);
                    // Same input, same plan.
                    prop_assert_eq!(&plan(&c, id, &policy, now), &p);
                    apply(&mut c, id, &p, now).unwrap();
                    if matches!(p, Plan::Place { .. }) {
                        // Re-planning a committed state plans nothing: the server is placed,
                        // and the same plan applied again is refused, never a second place.
                        let again = plan(&c, id, &policy, now);
                        prop_assert!(
                            matches!(&again, Plan::Never { reason } if reason.contains("already placed")),
                            "{:?}", again
                        );
                        let mut twice = c.clone();
                        prop_assert_eq!(
                            apply(&mut twice, id, &p, now),
                            Err(ClusterError::AlreadyPlaced(id))
                        );
                        ids.push(id);
                    }
                }
                Op::Stop(i) if !ids.is_empty() => {
                    let id = ids.remove(i % ids.len());
                    c.remove_server(id).unwrap();
                }
                Op::Stop(_) => {}
                Op::Tick(dt) => {
                    now += dt;
                    // Terminations that are due happen; then growth where it is allowed.
                    let due: Vec<ServerId> = ids.iter().copied().filter(|id| {
                        c.placed(*id).and_then(|p| p.termination).is_some_and(|t| t.terminate_at <= now)
                    }).collect();
                    for id in due {
                        c.unplace(id).unwrap();
                        ids.retain(|x| *x != id);
                    }
                    let hosts: Vec<HostId> = c.host_ids().cloned().collect();
                    for h in hosts {
                        for (id, pf) in plan_grow(&c, &h, &GrowPolicy::default(), now) {
                            c.set_perf(id, pf, now).unwrap();
                        }
                    }
                }
            }
            check_invariants(&c)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A server with drives lands on the host that holds them or nowhere, whatever the other
    /// hosts offer; the fleet's promises hold as before.
    #[test]
    fn servers_with_drives_land_only_where_their_drives_are(
        hosts in prop::collection::vec((1_000u64..16_000, 1u64..64, any::<bool>()), 1..6),
        servers in prop::collection::vec(
            (prop_oneof![Just(ServerClass::Normal), Just(ServerClass::Backfill)],
             1u64..12_000, 1u64..48, prop::option::of(0usize..8)),
            1..40,
        ),
    ) {
        let policy = Policy::default();
        let mut c = Cluster::new();
        for (i, (cpu, mem, sched)) in hosts.iter().enumerate() {
            let mut h = host(&format!("h{i}"), *cpu, *mem, 0);
            h.schedulable = *sched || i == 0;
            c.upsert_host(h);
        }
        for (n, (class, cpu, mem, pin)) in servers.into_iter().enumerate() {
            let mut s = server(n as u128 + 1, class, cpu, mem, 0);
            // Some pins name a host that is not there (gone with its drives).
            let pinned: Option<HostId> = pin.map(|i| format!("h{i}").parse().unwrap());
            s.needs.host = pinned.clone();
            let id = s.id;
            c.add_server(s);
            let p = plan(&c, id, &policy, 0);
            prop_assert_eq!(&plan(&c, id, &policy, 0), &p);
            apply(&mut c, id, &p, 0).unwrap();
            if let (Some(want), Some(placed)) = (&pinned, c.placed(id)) {
                prop_assert_eq!(&placed.host, want, "{} placed away from its drives", id);
            }
            check_invariants(&c)?;
        }
    }
}

#[test]
fn a_vm_with_drives_runs_only_on_their_host() {
    let mut c = Cluster::new();
    c.upsert_host(vm_host("roomy", &[]));
    let mut tight = vm_host("holder", &[]);
    tight.capacity.cpu_mhz = 2_000;
    c.upsert_host(tight);
    let mut s = server(1, ServerClass::Backfill, 1_000, 1, 0);
    s.needs.driver = backfill_shared::DriverKind::Vm;
    s.needs.host = Some("holder".parse().unwrap());
    assert_eq!(host_of(&run(&mut c, s.clone(), 0)), "holder");
    // No room there: it waits or is refused, never placed elsewhere.
    let mut big = s;
    big.id = ServerId::from_u128(2);
    big.need.cpu_mhz = 1_500;
    assert!(!matches!(run(&mut c, big, 0), Plan::Place { .. }));
}

#[test]
fn reserved_hosts_take_only_matching_servers() {
    let mut c = Cluster::new();
    let mut a = host("a", 8_000, 16, 0);
    a.reserved = Some(Reservation {
        account: Some("acme".into()),
        class: Some(ServerClass::Backfill),
    });
    c.upsert_host(a);
    let policy = Policy::default();
    let mut other = server(1, ServerClass::Backfill, 1_000, 1, 0);
    other.owner = "other".into();
    c.add_server(other);
    // Only a reserved host, and not for this account: it can never run here.
    assert!(matches!(
        plan(&c, ServerId::from_u128(1), &policy, 0),
        Plan::Never { .. }
    ));
    let mut acme_normal = server(2, ServerClass::Normal, 1_000, 1, 0);
    acme_normal.owner = "acme".into();
    c.add_server(acme_normal);
    assert!(matches!(
        plan(&c, ServerId::from_u128(2), &policy, 0),
        Plan::Never { .. }
    ));
    let mut acme = server(3, ServerClass::Backfill, 1_000, 1, 0);
    acme.owner = "acme".into();
    c.add_server(acme);
    match plan(&c, ServerId::from_u128(3), &policy, 0) {
        Plan::Place { host, .. } => assert_eq!(host.as_str(), "a"),
        p => panic!("{p:?}"),
    }
    c.upsert_host(host("b", 8_000, 16, 0));
    match plan(&c, ServerId::from_u128(1), &policy, 0) {
        Plan::Place { host, .. } => assert_eq!(host.as_str(), "b"),
        p => panic!("{p:?}"),
    }
}

fn vm_host(id: &str, images: &[&str]) -> HostSpec {
    let mut h = host(id, 8_000, 64, 0);
    h.drivers.vm = Some(backfill_shared::VmDriver {
        accel: "tcg".into(),
        images: images
            .iter()
            .map(|n| backfill_shared::VmImage {
                name: (*n).into(),
                format: "qcow2".into(),
                virtual_size: GIB,
            })
            .collect(),
    });
    h
}

fn vm_server(n: u128, image: &str) -> ServerSpec {
    let mut s = server(n, ServerClass::Backfill, 1_000, 1, 0);
    s.needs = backfill_shared::workload::Needs {
        driver: backfill_shared::DriverKind::Vm,
        files: vec![image.into()],
        host: None,
    };
    s
}

#[test]
fn servers_land_only_where_their_driver_and_image_are() {
    let mut c = Cluster::new();
    // The exec-only host has more room: it would win on fit alone.
    c.upsert_host(host("exec-only", 64_000, 64, 0));
    c.upsert_host(vm_host("vm-a", &["debian.qcow2"]));
    c.upsert_host(vm_host("vm-b", &["alpine.qcow2"]));
    let p = run(&mut c, vm_server(1, "debian.qcow2"), 0);
    assert_eq!(host_of(&p), "vm-a");
    let p = run(&mut c, vm_server(2, "alpine.qcow2"), 0);
    assert_eq!(host_of(&p), "vm-b");
    match run(&mut c, vm_server(3, "windows.qcow2"), 0) {
        Plan::Never { reason } => {
            assert!(reason.contains("vm with windows.qcow2"), "{reason}");
            assert!(reason.contains("this fleet runs: exec, vm"), "{reason}");
        }
        other => panic!("placed an image no host has: {other:?}"),
    }
    let mut container = server(4, ServerClass::Normal, 1_000, 1, 0);
    container.needs.driver = backfill_shared::DriverKind::Container;
    assert!(matches!(run(&mut c, container, 0), Plan::Never { .. }));
}

#[test]
fn a_vm_goes_back_to_the_host_that_keeps_its_disk() {
    let mut c = Cluster::new();
    c.upsert_host(vm_host("roomy", &["d.qcow2"]));
    let mut tight = vm_host("tight", &["d.qcow2"]);
    tight.capacity.cpu_mhz = 4_000;
    c.upsert_host(tight);
    let mut s = vm_server(1, "d.qcow2");
    s.prefer = Some("roomy".parse().unwrap());
    // Best fit alone would take the tight host; the preference decides.
    assert_eq!(host_of(&run(&mut c, s, 0)), "roomy");
    let mut s = vm_server(2, "d.qcow2");
    s.prefer = Some("tight".parse().unwrap());
    assert_eq!(host_of(&run(&mut c, s, 0)), "tight");
    // A preferred host without room is passed over.
    let mut big = vm_server(3, "d.qcow2");
    big.need.cpu_mhz = 3_500;
    big.prefer = Some("tight".parse().unwrap());
    assert_eq!(host_of(&run(&mut c, big, 0)), "roomy");
}
