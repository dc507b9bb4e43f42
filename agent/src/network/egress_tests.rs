//! The egress policy on the real kernel, as root: what a guest reaches and what it does not,
//! and that each agent removes only its own rules.

use super::*;
use crate::network::{Cidr, EgressPolicy};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;

fn usable() -> bool {
    let root = crate::driver::running_as_root();
    let has = |p: &str, a: &str| Command::new(p).arg(a).output().is_ok();
    let ok = root && has("ip", "-V") && has("iptables", "-V") && has("iptables-restore", "-V");
    if !ok {
        eprintln!(
            "SKIP: the egress policy tests need root, iproute2 and iptables (root={root}, ip={}, iptables={})",
            has("ip", "-V"),
            has("iptables", "-V")
        );
    }
    ok
}

/// Runs `f` on a thread of its own inside the network namespace at `path`.
fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns(2) on an open namespace file; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Whether a TCP connection from inside `netns` to `to` is accepted (within a second).
fn connects(netns: &Path, to: SocketAddr) -> bool {
    in_netns(netns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok()
    })
}

/// Whether a TCP connection from `from` inside `netns` to `to` is accepted within a second.
fn connects_from(netns: &Path, from: SocketAddr, to: SocketAddr) -> bool {
    in_netns(netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(from).unwrap();
            tokio::time::timeout(Duration::from_secs(1), s.connect(to))
                .await
                .is_ok_and(|c| c.is_ok())
        })
    })
}

/// A guest network, destroyed when dropped (a failed test leaves nothing behind).
struct Made<'a> {
    nets: &'a IpNetworks,
    net: GuestNet,
}

impl Made<'_> {
    fn new(nets: &IpNetworks, slot: u32) -> Made<'_> {
        let link = nets.pool.link(slot).unwrap();
        let net = nets.create(&ServerId::new_random(), link).unwrap();
        Made { nets, net }
    }
}

impl std::ops::Deref for Made<'_> {
    type Target = GuestNet;
    fn deref(&self) -> &GuestNet {
        &self.net
    }
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        self.nets.destroy(&self.net);
    }
}

/// A listener that answers each connection with the peer's address, and records it.
struct Echo {
    addr: SocketAddr,
    peers: mpsc::Receiver<SocketAddr>,
}

impl Echo {
    fn serve(listener: TcpListener) -> Echo {
        let addr = listener.local_addr().unwrap();
        let (tx, peers) = mpsc::channel();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let peer = s.peer_addr().unwrap();
                let _ = write!(s, "HTTP/1.0 200 OK\r\n\r\n{peer}");
                if tx.send(peer).is_err() {
                    return;
                }
            }
        });
        Echo { addr, peers }
    }

    fn at(addr: &str) -> Echo {
        Echo::serve(TcpListener::bind(addr).unwrap())
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A listener on 169.254.169.254 (an address no interface has), as the agent binds it.
fn metadata_listener() -> Echo {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let l = rt
        .block_on(async { crate::metadata::bind("169.254.169.254:0".parse().unwrap()) })
        .unwrap();
    let l = rt.block_on(async { l.into_std() }).unwrap();
    l.set_nonblocking(false).unwrap();
    Echo::serve(l)
}

/// A namespace standing in for the uplink: a veth from the host (`host`/30) to it, and more
/// addresses inside it that the host routes there.
struct Outside {
    netns: String,
    host_if: String,
}

impl Outside {
    fn new(name: &str, host: Ipv4Addr, far: Ipv4Addr, extra: &[Ipv4Addr]) -> Outside {
        let o = Outside {
            netns: format!("{name}-{}", std::process::id()),
            host_if: format!("{name}{}", std::process::id() % 100_000),
        };
        ip(&["netns", "add", &o.netns]).unwrap();
        ip(&[
            "link", "add", &o.host_if, "type", "veth", "peer", "name", "eth0", "netns", &o.netns,
        ])
        .unwrap();
        ip(&["addr", "add", &format!("{host}/30"), "dev", &o.host_if]).unwrap();
        ip(&["link", "set", &o.host_if, "up"]).unwrap();
        ip(&[
            "-n",
            &o.netns,
            "addr",
            "add",
            &format!("{far}/30"),
            "dev",
            "eth0",
        ])
        .unwrap();
        ip(&["-n", &o.netns, "link", "set", "eth0", "up"]).unwrap();
        ip(&["-n", &o.netns, "link", "set", "lo", "up"]).unwrap();
        for a in extra {
            ip(&[
                "-n",
                &o.netns,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "lo",
            ])
            .unwrap();
            ip(&["route", "add", &format!("{a}/32"), "via", &far.to_string()]).unwrap();
        }
        o
    }

    fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// A listener on all its addresses.
    fn listen(&self) -> Echo {
        let l = in_netns(&self.path(), || TcpListener::bind("0.0.0.0:0").unwrap());
        Echo::serve(l)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// An interface holding `addr` on the host, removed when dropped.
struct Dummy(String);

impl Dummy {
    fn new(name: &str, addr: &str) -> Dummy {
        let d = Dummy(format!("{name}{}", std::process::id() % 100_000));
        // A veth pair (dummy interfaces may not be built into the kernel).
        let peer = format!("{}p", d.0);
        ip(&["link", "add", &d.0, "type", "veth", "peer", "name", &peer]).unwrap();
        ip(&["addr", "add", addr, "dev", &d.0]).unwrap();
        ip(&["link", "set", &d.0, "up"]).unwrap();
        d
    }
}

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.0]);
    }
}

fn tag(name: &str) -> NetTag {
    NetTag::for_host(&format!("{name}-{}", std::process::id()))
}

fn save() -> String {
    let out = Command::new("iptables-save").output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn addr(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn sock(a: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((a, port))
}

#[test]
fn a_guest_reaches_metadata_and_the_outside_but_never_the_host_link_local_or_other_guests() {
    if !usable() {
        return;
    }
    let md = addr("169.254.169.254");
    let metadata = metadata_listener();
    let wildcard = Echo::at("0.0.0.0:0"); // e.g. an admin or link port bound to every address
    let loopback = Echo::at("127.0.0.1:0");
    let _lla = Dummy::new("bfdl", "169.254.77.2/32");
    let outside = Outside::new(
        "bfout",
        addr("198.51.100.1"),
        addr("198.51.100.2"),
        &[
            addr("10.251.0.2"),
            addr("192.168.251.2"),
            addr("169.254.77.3"),
        ],
    );
    let far = outside.listen();
    let policy = EgressPolicy {
        allow: vec!["192.168.251.0/24".parse::<Cidr>().unwrap()],
        deny: ["10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect(),
        packets_per_second: 10_000,
        kib_per_second: 3 * 1024,
    };
    let pool: AddressPool = "10.250.84.0/29".parse().unwrap();
    let nets = IpNetworks::new(pool, Some(md), 25_084, tag("egress"))
        .unwrap()
        .with_egress(policy, Some(metadata.port()))
        .unwrap();
    let started = Instant::now();
    let a = Made::new(&nets, 0);
    let first = started.elapsed();
    let started = Instant::now();
    let b = Made::new(&nets, 1);
    eprintln!(
        "a guest network with its egress rules: first {first:?}, second {:?}",
        started.elapsed()
    );
    // What is installed is exactly what the agent would install: a second look changes nothing.
    let fw = nets.firewall.as_ref().unwrap();
    fn link_of(n: &GuestNet) -> GuestLink<'_> {
        GuestLink {
            host_if: &n.host_if,
            address: n.address,
        }
    }
    let started = Instant::now();
    assert!(!fw.add_guest(link_of(&a)).unwrap(), "{}", save());
    eprintln!(
        "checking a guest's egress rules (nothing to change): {:?}",
        started.elapsed()
    );
    let pa = a.netns_path();

    // The metadata listener answers, and is the only host port the guest reaches.
    assert!(connects(&pa, sock(md, metadata.port())));
    let peer = metadata.peers.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        peer.ip(),
        a.address,
        "the metadata service sees the guest's own address"
    );
    for (what, to) in [
        (
            "a wildcard host port through the metadata address",
            sock(md, wildcard.port()),
        ),
        (
            "a wildcard host port on the gateway",
            sock(a.host_address, wildcard.port()),
        ),
        (
            "a wildcard host port on another host address",
            sock(addr("198.51.100.1"), wildcard.port()),
        ),
        (
            "a loopback host port on the gateway",
            sock(a.host_address, loopback.port()),
        ),
        (
            "a loopback host port by its address",
            sock(addr("127.0.0.1"), loopback.port()),
        ),
        (
            "a link-local address on the host",
            sock(addr("169.254.77.2"), wildcard.port()),
        ),
        (
            "a link-local address beyond the host",
            sock(addr("169.254.77.3"), far.port()),
        ),
        ("a denied range", sock(addr("10.251.0.2"), far.port())),
    ] {
        assert!(!connects(&pa, to), "{what} ({to}) is reachable");
    }
    // Another guest, in either direction.
    let on_b = in_netns(&b.netns_path(), || TcpListener::bind("0.0.0.0:0").unwrap());
    let b_port = on_b.local_addr().unwrap().port();
    let _on_b = Echo::serve(on_b);
    assert!(!connects(&pa, sock(b.address, b_port)), "another guest");
    let on_a = in_netns(&pa, || TcpListener::bind("0.0.0.0:0").unwrap());
    let a_port = on_a.local_addr().unwrap().port();
    let _on_a = Echo::serve(on_a);
    assert!(!connects(&b.netns_path(), sock(a.address, a_port)));
    // The outside, through NAT on the host's uplink; an allowed exception to a denied range.
    assert!(connects(&pa, sock(addr("198.51.100.2"), far.port())));
    let seen = far.peers.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        seen.ip(),
        addr("198.51.100.1"),
        "masqueraded to the uplink's address"
    );
    assert!(connects(&pa, sock(addr("192.168.251.2"), far.port())));
    // No IPv6 on the host end of the link.
    let v6 = Command::new("ip")
        .args(["-6", "addr", "show", "dev", &a.host_if])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v6.stdout).trim().is_empty(),
        "{v6:?}"
    );
    // The guest may ping its gateway.
    if Command::new("ping").arg("-V").output().is_ok() {
        let ping = Command::new("ip")
            .args(["netns", "exec", &a.netns, "ping", "-c1", "-W2"])
            .arg(a.host_address.to_string())
            .output()
            .unwrap();
        assert!(ping.status.success(), "{ping:?}");
    }
    // A spoofed source address (another guest's, say) goes nowhere.
    ip(&[
        "-n",
        &a.netns,
        "addr",
        "add",
        "10.250.84.9/32",
        "dev",
        "eth0",
    ])
    .unwrap();
    while far.peers.try_recv().is_ok() {}
    let spoofed = sock(addr("10.250.84.9"), 0);
    assert!(!connects_from(
        &pa,
        spoofed,
        sock(addr("198.51.100.2"), far.port())
    ));
    assert!(
        far.peers.try_recv().is_err(),
        "a spoofed connection reached the outside"
    );

    // Without its own rules a guest is cut off, not let loose: the outside and the metadata
    // service are out of reach until the rules are back.
    let t = nets.tag().as_str().to_owned();
    for (chain, target) in [("FWD-G", "EGRESS"), ("IN-G", "HOST")] {
        let del = Command::new("iptables")
            .args(["-D", &format!("BF-{t}-{chain}"), "-s"])
            .arg(format!("{}/32", a.address))
            .args(["-i", &a.host_if, "-j", &format!("BF-{t}-{target}")])
            .output()
            .unwrap();
        assert!(del.status.success(), "{del:?}");
    }
    assert!(!connects(&pa, sock(addr("198.51.100.2"), far.port())));
    assert!(!connects(&pa, sock(md, metadata.port())));
    assert!(!connects(&pa, sock(a.host_address, wildcard.port())));
    assert!(
        fw.add_guest(link_of(&a)).unwrap(),
        "the rules were put back"
    );
    assert!(connects(&pa, sock(addr("198.51.100.2"), far.port())));

    // Control: a guest of an agent without the policy reaches the host's wildcard port, so the
    // refusals above are the policy's.
    let open_pool: AddressPool = "10.250.85.0/30".parse().unwrap();
    let open = IpNetworks::new(open_pool, None, 25_085, tag("open")).unwrap();
    let started = Instant::now();
    let c = Made::new(&open, 0);
    eprintln!(
        "a guest network without egress rules: {:?}",
        started.elapsed()
    );
    assert!(connects(
        &c.netns_path(),
        sock(c.host_address, wildcard.port())
    ));
    open.destroy(&c);

    // Guests go: first A (B keeps its rules and its reach), then B, and nothing of this agent's
    // is left.
    nets.destroy(&a);
    let rules = save();
    assert!(!rules.contains(&format!("-i {} ", a.host_if)), "{rules}");
    assert!(rules.contains(&format!("-i {} ", b.host_if)), "{rules}");
    assert!(!fw.add_guest(link_of(&b)).unwrap());
    assert!(connects(
        &b.netns_path(),
        sock(addr("198.51.100.2"), far.port())
    ));
    assert!(!connects(
        &b.netns_path(),
        sock(b.host_address, wildcard.port())
    ));
    nets.destroy(&b);
    let rules = save();
    assert!(!rules.contains(&t), "{rules}");
    let _ = ip(&[
        "route",
        "del",
        "local",
        "169.254.169.254/32",
        "table",
        "25084",
    ]);
}

#[test]
fn two_agents_each_remove_only_their_own_rules() {
    if !usable() {
        return;
    }
    let pool_a: AddressPool = "10.250.86.0/30".parse().unwrap();
    let pool_b: AddressPool = "10.250.87.0/30".parse().unwrap();
    let policy = EgressPolicy {
        allow: Vec::new(),
        deny: vec!["10.0.0.0/8".parse().unwrap()],
        packets_per_second: 0,
        kib_per_second: 0,
    };
    let a = IpNetworks::new(pool_a, None, 25_086, tag("two-a"))
        .unwrap()
        .with_egress(policy.clone(), None)
        .unwrap();
    let b = IpNetworks::new(pool_b, None, 25_087, tag("two-b"))
        .unwrap()
        .with_egress(policy, None)
        .unwrap();
    let ga = Made::new(&a, 0);
    let gb = Made::new(&b, 0);
    let (ta, tb) = (a.tag().as_str().to_owned(), b.tag().as_str().to_owned());
    let wildcard = Echo::at("0.0.0.0:0");
    // Each guest is held off the host by its own agent's rules, and off the other's guest.
    for g in [&*ga, &*gb] {
        assert!(!connects(
            &g.netns_path(),
            sock(g.host_address, wildcard.port())
        ));
    }
    let on_b = in_netns(&gb.netns_path(), || TcpListener::bind("0.0.0.0:0").unwrap());
    let port = on_b.local_addr().unwrap().port();
    let _on_b = Echo::serve(on_b);
    assert!(!connects(&ga.netns_path(), sock(gb.address, port)));
    // A sweeps keeping nothing of its own: none of B's rules go.
    a.sweep(&[]);
    let rules = save();
    assert!(!rules.contains(&ta), "{rules}");
    assert!(rules.contains(&format!("-i {} ", gb.host_if)), "{rules}");
    assert!(!connects(
        &gb.netns_path(),
        sock(gb.host_address, wildcard.port())
    ));
    a.destroy(&ga);
    // B's guest goes: B's rules with it.
    b.destroy(&gb);
    let rules = save();
    assert!(!rules.contains(&tb), "{rules}");
    // Sweeping with nothing installed is harmless.
    a.sweep(&[]);
    b.sweep(&[]);
}

#[test]
fn rules_removed_by_something_else_are_put_back() {
    if !usable() {
        return;
    }
    let pool: AddressPool = "10.250.88.0/30".parse().unwrap();
    let nets = IpNetworks::new(pool, None, 25_088, tag("enforce"))
        .unwrap()
        .with_egress(EgressPolicy::default(), None)
        .unwrap();
    let g = Made::new(&nets, 0);
    let wildcard = Echo::at("0.0.0.0:0");
    let to_host = sock(g.host_address, wildcard.port());
    assert!(!connects(&g.netns_path(), to_host));
    // An operator's `iptables -D`: the guest would reach the host.
    let t = nets.tag().as_str().to_owned();
    let jump = format!("-i bf{t}-+ -j BF-{t}-IN");
    let del = Command::new("sh")
        .arg("-c")
        .arg(format!("iptables -D INPUT {jump}"))
        .output()
        .unwrap();
    assert!(del.status.success(), "{del:?}");
    assert!(connects(&g.netns_path(), to_host), "the control");
    nets.enforce(&[&g]);
    assert!(!connects(&g.netns_path(), to_host));
    assert!(save().contains(&jump));
    // Looked at again only after a while.
    let del = Command::new("sh")
        .arg("-c")
        .arg(format!("iptables -D INPUT {jump}"))
        .output()
        .unwrap();
    assert!(del.status.success(), "{del:?}");
    nets.enforce(&[&g]);
    assert!(!save().contains(&jump));
    *nets.enforced.lock().unwrap() = None;
    nets.enforce(&[&g]);
    assert!(save().contains(&jump));
}

#[test]
fn a_guest_sending_faster_than_its_packet_rate_is_held_to_it() {
    if !usable() {
        return;
    }
    let outside = Outside::new("bfrl", addr("198.51.100.9"), addr("198.51.100.10"), &[]);
    let sink = in_netns(&outside.path(), || {
        std::net::UdpSocket::bind("0.0.0.0:0").unwrap()
    });
    sink.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let to = sock(addr("198.51.100.10"), sink.local_addr().unwrap().port());
    let pool: AddressPool = "10.250.89.0/30".parse().unwrap();
    let policy = EgressPolicy {
        packets_per_second: 20,
        ..EgressPolicy::default()
    };
    let nets = IpNetworks::new(pool, None, 25_089, tag("rate"))
        .unwrap()
        .with_egress(policy, None)
        .unwrap();
    let g = Made::new(&nets, 0);
    const SENT: usize = 300;
    in_netns(&g.netns_path(), move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..SENT {
            s.send_to(b"x", to).unwrap();
        }
    });
    let mut got = 0;
    let mut buf = [0u8; 16];
    while sink.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    eprintln!("{got} of {SENT} datagrams got through at 20 packets/s");
    // A burst of 20, and 20 a second while the guest sends (well under a second).
    assert!(
        (10..=80).contains(&got),
        "{got} of {SENT} datagrams got through"
    );
}

#[test]
fn an_agent_started_without_the_policy_removes_its_own_rules_only() {
    if !usable() {
        return;
    }
    let pool: AddressPool = "10.250.90.0/30".parse().unwrap();
    let other_pool: AddressPool = "10.250.91.0/30".parse().unwrap();
    let t = tag("off");
    let before = IpNetworks::new(pool, None, 25_090, t.clone())
        .unwrap()
        .with_egress(EgressPolicy::default(), None)
        .unwrap();
    let other = IpNetworks::new(other_pool, None, 25_091, tag("off-other"))
        .unwrap()
        .with_egress(EgressPolicy::default(), None)
        .unwrap();
    let g = Made::new(&before, 0);
    let kept = Made::new(&other, 0);
    assert!(save().contains(&format!("BF-{}-", t.as_str())));
    // The same agent, restarted with egress_policy = false.
    let after = IpNetworks::new(pool, None, 25_090, t.clone()).unwrap();
    after.remove_egress_rules(EgressPolicy::default());
    let rules = save();
    assert!(!rules.contains(&format!("BF-{}-", t.as_str())), "{rules}");
    assert!(rules.contains(&format!("-i {} ", kept.host_if)), "{rules}");
    drop(g);
    drop(kept);
}
