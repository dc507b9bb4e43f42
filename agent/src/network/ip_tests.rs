//! `IpNetworks` on the real kernel, as root: guest namespaces made, swept, re-adopted and
//! given back, each agent touching only its own.

use super::*;

fn usable() -> bool {
    let root = crate::driver::running_as_root();
    let has_ip = Command::new("ip").arg("-V").output().is_ok();
    if !root || !has_ip {
        eprintln!("SKIP: isolated networks need root and iproute2 (root={root}, ip={has_ip})");
    }
    root && has_ip
}

/// A tag no other test process (nor a real agent) has.
fn tag(name: &str) -> NetTag {
    NetTag::for_host(&format!("{name}-{}", std::process::id()))
}

fn in_ns(netns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn rules_text() -> String {
    let rules = Command::new("ip").args(["rule", "show"]).output().unwrap();
    String::from_utf8_lossy(&rules.stdout).into_owned()
}

/// Whether `net` is whole: named namespace, both ends, addresses, rule.
fn whole(net: &GuestNet) -> bool {
    let addr = in_ns(&net.netns, &["ip", "-4", "addr", "show", "eth0"]);
    net.netns_path().exists()
        && interface_exists(&net.host_if)
        && String::from_utf8_lossy(&addr.stdout).contains(&format!("{}/30", net.address))
        && rules_text().contains(&format!("iif {} lookup", net.host_if))
}

#[test]
fn a_guest_namespace_is_made_reachable_and_removed_without_trace() {
    if !usable() {
        return;
    }
    let pool: AddressPool = "10.250.77.0/29".parse().unwrap();
    let md = "169.254.169.254".parse().unwrap();
    let nets = IpNetworks::new(pool, Some(md), 25_077, tag("reach")).unwrap();
    let id = ServerId::new_random();
    let net = nets.create(&id, pool.link(1).unwrap()).unwrap();
    assert_eq!(net.address, "10.250.77.6".parse::<Ipv4Addr>().unwrap());
    assert_eq!(nets.tag().own_netns(&net.netns), Some(id));
    assert_eq!(nets.tag().own_if(&net.host_if), Some(1));
    assert!(whole(&net));
    let route = in_ns(&net.netns, &["ip", "route", "get", "169.254.169.254"]);
    assert!(String::from_utf8_lossy(&route.stdout).contains("via 10.250.77.5"));
    let ping = in_ns(&net.netns, &["ping", "-c1", "-W2", "10.250.77.5"]);
    if Command::new("ping").arg("-V").output().is_ok() {
        assert!(ping.status.success(), "{ping:?}");
    }
    // Creating it again (a new run of the same server) replaces the old one.
    let again = nets.create(&id, pool.link(1).unwrap()).unwrap();
    assert_eq!(again, net);
    assert_eq!(
        rules::rules_of(&list_rules().unwrap(), &net.host_if).len(),
        1
    );
    nets.destroy(&net);
    assert!(!net.netns_path().exists());
    assert!(!interface_exists(&net.host_if));
    assert!(!rules_text().contains(&net.host_if));
    // Destroying twice is harmless.
    nets.destroy(&net);
    let _ = ip(&[
        "route",
        "del",
        "local",
        "169.254.169.254/32",
        "table",
        "25077",
    ]);
}

#[test]
fn an_agent_sweeps_its_own_leftovers_and_nothing_of_another_agent() {
    if !usable() {
        return;
    }
    let pool_a: AddressPool = "10.250.78.0/29".parse().unwrap();
    let pool_b: AddressPool = "10.250.79.0/29".parse().unwrap();
    let a = IpNetworks::new(pool_a, None, 25_078, tag("sweep-a")).unwrap();
    let b = IpNetworks::new(pool_b, None, 25_079, tag("sweep-b")).unwrap();
    let kept = a
        .create(&ServerId::new_random(), pool_a.link(0).unwrap())
        .unwrap();
    let left = a
        .create(&ServerId::new_random(), pool_a.link(1).unwrap())
        .unwrap();
    let theirs = b
        .create(&ServerId::new_random(), pool_b.link(0).unwrap())
        .unwrap();
    // A rule of `a`'s whose interface is already gone (as a crash leaves it).
    ip(&[
        "rule",
        "add",
        "iif",
        &a.tag().host_if(7),
        "lookup",
        "25078",
        "pref",
        "1000",
    ])
    .unwrap();
    a.sweep(&[&kept]);
    assert!(whole(&kept), "the kept guest lost its network");
    assert!(!left.netns_path().exists() && !interface_exists(&left.host_if));
    assert!(!rules_text().contains(&left.host_if));
    assert!(!rules_text().contains(&a.tag().host_if(7)));
    assert!(whole(&theirs), "another agent's guest was touched");
    b.sweep(&[]);
    assert!(!theirs.netns_path().exists());
    assert!(whole(&kept), "another agent's guest was touched");
    a.destroy(&kept);
    assert!(!rules_text().contains(&kept.host_if));
}

#[test]
fn a_slot_another_agent_holds_is_refused_and_skipped() {
    if !usable() {
        return;
    }
    // Two agents configured with the same pool.
    let pool: AddressPool = "10.250.80.0/29".parse().unwrap();
    let a = IpNetworks::new(pool, None, 25_080, tag("share-a")).unwrap();
    let b = IpNetworks::new(pool, None, 25_081, tag("share-b")).unwrap();
    let theirs = b
        .create(&ServerId::new_random(), pool.link(0).unwrap())
        .unwrap();
    assert_eq!(a.taken(), vec![0]);
    assert!(b.taken().is_empty(), "its own slot is not foreign to it");
    let err = a
        .create(&ServerId::new_random(), pool.link(0).unwrap())
        .unwrap_err();
    assert!(matches!(err, NetworkError::InUse { slot: 0, .. }), "{err}");
    assert!(err.to_string().contains(&theirs.host_if), "{err}");
    assert!(whole(&theirs));
    b.destroy(&theirs);
    assert!(a.taken().is_empty());
}

#[test]
fn a_readopted_guest_whose_namespace_and_veth_were_removed_gets_them_back() {
    if !usable() {
        return;
    }
    let pool: AddressPool = "10.250.81.0/29".parse().unwrap();
    let nets = IpNetworks::new(pool, None, 25_082, tag("restore")).unwrap();
    let net = nets
        .create(&ServerId::new_random(), pool.link(1).unwrap())
        .unwrap();
    let mut guest = Command::new("ip")
        .args(["netns", "exec", &net.netns, "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = guest.id();
    wait_for("the guest in its namespace", || {
        ns_identity(Path::new(&format!("/proc/{pid}/ns/net"))).unwrap()
            == ns_identity(&net.netns_path()).unwrap()
    });
    assert_eq!(nets.restore(&net, pid).unwrap(), Restored::Intact);
    // What the second agent of the issue did: namespace name, veth (and with it the
    // guest's eth0) gone; the rule left dangling.
    ip(&["netns", "del", &net.netns]).unwrap();
    ip(&["link", "del", &net.host_if]).unwrap();
    assert!(!net.netns_path().exists());
    assert_eq!(nets.restore(&net, pid).unwrap(), Restored::Rebuilt);
    assert!(whole(&net));
    assert_eq!(
        ns_identity(&net.netns_path()).unwrap(),
        ns_identity(Path::new(&format!("/proc/{pid}/ns/net"))).unwrap(),
        "the name is the workload's own namespace again"
    );
    let ping = in_ns(&net.netns, &["ping", "-c1", "-W2", "10.250.81.5"]);
    if Command::new("ping").arg("-V").output().is_ok() {
        assert!(ping.status.success(), "{ping:?}");
    }
    assert_eq!(nets.restore(&net, pid).unwrap(), Restored::Intact);
    // Only the rule gone.
    ip(&["rule", "del", "iif", &net.host_if]).unwrap();
    assert_eq!(nets.restore(&net, pid).unwrap(), Restored::Rebuilt);
    assert!(whole(&net));
    guest.kill().unwrap();
    guest.wait().unwrap();
    let err = nets.restore(&net, pid).unwrap_err();
    assert!(err.to_string().contains("is gone"), "{err}");
    nets.destroy(&net);
    assert!(!net.netns_path().exists() && !interface_exists(&net.host_if));
}

/// Drops `CAP_SYS_PTRACE` from the calling thread's effective capabilities, as the systemd
/// unit runs the agent (children exec'd as root get it back).
fn drop_ptrace_capability() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAP_SYS_PTRACE: u32 = 19;
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget(2) and capset(2) with a valid header and the two data words version 3
    // takes; pid 0 is the calling thread.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
        d[0].effective &= !(1 << CAP_SYS_PTRACE);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()), 0);
    }
}

#[test]
fn an_agent_without_cap_sys_ptrace_gives_another_users_guest_its_namespace_back() {
    if !usable() || Command::new("setpriv").arg("-V").output().is_err() {
        eprintln!("SKIP: needs root, iproute2 and setpriv");
        return;
    }
    // A thread of its own: the capability is dropped for this thread only.
    std::thread::spawn(|| {
        let pool: AddressPool = "10.250.82.0/29".parse().unwrap();
        let nets = IpNetworks::new(pool, None, 25_083, tag("noptrace")).unwrap();
        let net = nets
            .create(&ServerId::new_random(), pool.link(0).unwrap())
            .unwrap();
        let mut guest = Command::new("ip")
            .args(["netns", "exec", &net.netns, "setpriv", "--reuid=65534"])
            .args(["--regid=65534", "--clear-groups", "sleep", "60"])
            .spawn()
            .unwrap();
        let pid = guest.id();
        let ns_of = || {
            let out = Command::new("ip")
                .args(["netns", "identify", &pid.to_string()])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        wait_for("the guest in its namespace as nobody", || {
            ns_of() == net.netns && uid_of(pid) == Some(65534)
        });
        drop_ptrace_capability();
        let denied = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap_err();
        assert_eq!(denied.kind(), ErrorKind::PermissionDenied, "{denied}");
        assert_eq!(nets.restore(&net, pid).unwrap(), Restored::Intact);
        ip(&["netns", "del", &net.netns]).unwrap();
        ip(&["link", "del", &net.host_if]).unwrap();
        assert_eq!(nets.restore(&net, pid).unwrap(), Restored::Rebuilt);
        assert!(whole(&net));
        assert_eq!(ns_of(), net.netns);
        guest.kill().unwrap();
        guest.wait().unwrap();
        nets.destroy(&net);
        assert!(!net.netns_path().exists());
    })
    .join()
    .unwrap();
}

/// The real uid of process `pid`.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
