//! Auto mode's decisions: table tests of each rule and properties over random fleets.

use super::*;
use proptest::prelude::*;

const S: AutoSettings = AutoSettings {
    max_idle_time_s: 600,
    max_launch_time_s: 1200,
};

fn res(cpu: u64, gib: u64) -> Resources {
    Resources {
        cpu_mhz: cpu,
        vcpus: u32::try_from(cpu / 1000).unwrap_or(1).max(1),
        mem_bytes: gib << 30,
    }
}

fn pool(name: &str, min: u32, max: u32, priority: i32) -> PoolState {
    PoolState {
        name: name.into(),
        min,
        max,
        priority,
        reservation_account: None,
        reservation_queue: None,
        provisioner: true,
        host_capacity: Some(res(4000, 8)),
        hosts: Vec::new(),
        launches: Vec::new(),
    }
}

fn idle(id: &str, since: i64) -> HostState {
    HostState {
        id: id.into(),
        idle_since: Some(since),
        held: false,
        shutdown: false,
        has_work: false,
    }
}

fn busy(id: &str) -> HostState {
    HostState {
        idle_since: None,
        has_work: true,
        ..idle(id, 0)
    }
}

fn job(owner: &str, cpu: u64) -> Pending {
    Pending {
        owner: owner.into(),
        class: ServerClass::Backfill,
        need: res(cpu, 1),
    }
}

fn launch(pool: &str, n: u32) -> Decision {
    Decision::Launch {
        pool: pool.into(),
        n,
    }
}

#[test]
fn queued_servers_grow_the_preferred_pool_packing_hosts() {
    let pools = [pool("b", 0, 5, 2), pool("a", 0, 5, 1)];
    // Three 1.5 GHz servers: two fit a 4 GHz host, the third needs another.
    let jobs = [job("t", 1500), job("t", 1500), job("t", 1500)];
    assert_eq!(decide(&pools, &jobs, 0, &S), vec![launch("a", 2)]);
    // Too big for any host: nothing.
    assert!(decide(&pools, &[job("t", 9000)], 0, &S).is_empty());
}

#[test]
fn reservations_come_first_and_exclude_others() {
    let mut r = pool("reserved", 0, 5, 9);
    r.reservation_account = Some("acme".into());
    let pools = [pool("open", 0, 5, 1), r];
    assert_eq!(
        decide(&pools, &[job("acme", 1000)], 0, &S),
        vec![launch("reserved", 1)]
    );
    assert_eq!(
        decide(&pools, &[job("other", 1000)], 0, &S),
        vec![launch("open", 1)]
    );
    let mut q = pool("spot-only", 0, 5, 0);
    q.reservation_queue = Some(ServerClass::Spot);
    assert_eq!(decide(&[q], &[job("t", 1000)], 0, &S), vec![]);
}

#[test]
fn max_frozen_and_booting_pools_do_not_grow() {
    let mut full = pool("a", 0, 1, 1);
    full.hosts.push(busy("a-1"));
    assert!(decide(std::slice::from_ref(&full), &[job("t", 1000)], 0, &S).is_empty());
    // A launch still booting: the queue waits for it.
    let mut booting = pool("a", 0, 5, 1);
    booting.launches.push(LaunchState {
        id: "a-2".into(),
        launched_at: 0,
    });
    assert!(decide(&[booting], &[job("t", 1000)], 100, &S).is_empty());
    // No provisioner: never.
    let mut manual = pool("m", 0, 5, 1);
    manual.provisioner = false;
    assert!(decide(&[manual], &[job("t", 1000)], 0, &S).is_empty());
}

#[test]
fn min_is_kept_and_launches_time_out() {
    let p = pool("a", 2, 5, 1);
    assert_eq!(
        decide(std::slice::from_ref(&p), &[], 0, &S),
        vec![launch("a", 2)]
    );
    let mut late = p;
    late.launches = vec![
        LaunchState {
            id: "a-1".into(),
            launched_at: 0,
        },
        LaunchState {
            id: "a-2".into(),
            launched_at: 1000,
        },
    ];
    let d = decide(&[late], &[], 1200, &S);
    assert_eq!(d, vec![Decision::GiveUp { host: "a-1".into() }]);
}

#[test]
fn idle_hosts_go_but_not_below_min_and_never_held_or_busy() {
    let mut p = pool("a", 1, 5, 1);
    p.hosts = vec![
        idle("a-1", 0),
        idle("a-2", 100),
        busy("a-3"),
        HostState {
            held: true,
            ..idle("a-4", 0)
        },
    ];
    let d = decide(std::slice::from_ref(&p), &[], 700, &S);
    assert_eq!(
        d,
        vec![
            Decision::Remove {
                host: "a-1".into(),
                reason: "idle for at least 600 s".into()
            },
            Decision::Remove {
                host: "a-2".into(),
                reason: "idle for at least 600 s".into()
            },
        ]
    );
    // Not yet idle long enough.
    assert!(decide(std::slice::from_ref(&p), &[], 500, &S).is_empty());
    // min 4 of 4 hosts: nothing goes.
    p.min = 4;
    assert!(decide(&[p], &[], 10_000, &S).is_empty());
}

#[test]
fn shut_down_hosts_are_removed() {
    let mut p = pool("a", 0, 0, 1);
    p.hosts = vec![HostState {
        shutdown: true,
        ..idle("a-1", 0)
    }];
    assert_eq!(
        decide(&[p], &[], 1, &S),
        vec![Decision::Remove {
            host: "a-1".into(),
            reason: "shut down".into()
        }]
    );
}

fn arb_host() -> impl Strategy<Value = HostState> {
    (
        0u32..1000,
        proptest::option::of(0i64..5000),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(n, idle_since, held, shutdown, has_work)| HostState {
            id: format!("h{n}"),
            idle_since: if has_work { None } else { idle_since },
            held,
            shutdown,
            has_work,
        })
}

fn arb_pool() -> impl Strategy<Value = PoolState> {
    (
        "[a-d]",
        0u32..4,
        0u32..6,
        -2i32..3,
        proptest::collection::vec(arb_host(), 0..6),
        proptest::collection::vec(0i64..5000, 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(name, min, extra, priority, hosts, launches, provisioner)| {
                let mut p = pool(&name, min, min + extra, priority);
                p.provisioner = provisioner;
                p.hosts = hosts;
                p.launches = launches
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| LaunchState {
                        id: format!("{name}-l{i}"),
                        launched_at: t,
                    })
                    .collect();
                p
            },
        )
}

proptest! {
    #[test]
    fn decisions_respect_the_rules(
        pools in proptest::collection::vec(arb_pool(), 0..4),
        jobs in proptest::collection::vec((0u64..6000, "[xy]"), 0..8),
        now in 0i64..10_000,
    ) {
        // Unique names for pools, hosts and launches.
        let pools: Vec<PoolState> = pools
            .into_iter()
            .enumerate()
            .map(|(i, mut p)| {
                p.name = format!("p{i}");
                for (j, h) in p.hosts.iter_mut().enumerate() {
                    h.id = format!("p{i}-h{j}");
                }
                for (j, l) in p.launches.iter_mut().enumerate() {
                    l.id = format!("p{i}-l{j}");
                }
                p
            })
            .collect();
        let pending: Vec<Pending> = jobs.iter().map(|(c, o)| job(o, c + 1)).collect();
        let d = decide(&pools, &pending, now, &S);
        // Deterministic.
        prop_assert_eq!(&d, &decide(&pools, &pending, now, &S));
        for x in &d {
            match x {
                Decision::Remove { host, .. } => {
                    let (p, h) = pools.iter()
                        .find_map(|p| p.hosts.iter().find(|h| &h.id == host).map(|h| (p, h)))
                        .unwrap();
                    prop_assert!(p.provisioner);
                    prop_assert!(!h.has_work, "a host with work removed");
                    prop_assert!(h.shutdown || !h.held, "a held host removed");
                }
                Decision::GiveUp { host } => {
                    let l = pools.iter().flat_map(|p| &p.launches).find(|l| &l.id == host).unwrap();
                    prop_assert!(now - l.launched_at >= S.max_launch_time_s);
                }
                Decision::Launch { pool, n } => {
                    prop_assert!(*n > 0);
                    let p = pools.iter().find(|p| &p.name == pool).unwrap();
                    prop_assert!(p.provisioner);
                    let removed = d.iter().filter(|x| match x {
                        Decision::GiveUp { host } => p.launches.iter().any(|l| &l.id == host),
                        _ => false,
                    }).count() as u32;
                    prop_assert!(p.current() - removed + n <= p.max.max(p.min), "beyond max");
                }
            }
        }
    }
}
