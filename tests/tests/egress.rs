//! The guests' egress policy end to end, as root: two agents on one host, each with an isolated
//! guest. From inside a guest the metadata service answers; the host's ports (its agent's admin
//! listener, the other agent's metadata listener, the coordinator's API, link and admin ports,
//! all bound to every address here), another guest, link-local addresses other than
//! 169.254.169.254 and denied ranges are refused; the outside (a namespace standing in for the
//! uplink) is reached through NAT, and so is an allowed exception to a denied range. When a
//! guest goes, its agent's rules go with it, and the other agent's stay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn usable() -> bool {
    let has = |p: &str| Command::new(p).arg("-V").output().is_ok();
    let ok = is_root() && has("ip") && has("iptables") && has("curl");
    if !ok {
        eprintln!(
            "SKIP: the egress end-to-end test needs root, iproute2, iptables and curl (root={}, iptables={})",
            is_root(),
            has("iptables")
        );
    }
    ok
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
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

/// Whether a TCP connection from inside `netns` to `to` is accepted within a second.
fn connects(netns: &str, to: SocketAddr) -> bool {
    in_netns(&Path::new("/run/netns").join(netns), move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok()
    })
}

/// A listener that accepts and drops connections, on a thread.
fn serve(l: TcpListener) -> u16 {
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in l.incoming() {});
    port
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The uplink's stand-in: a namespace behind a veth, with more addresses the host routes to it.
struct Outside {
    netns: String,
    host_if: String,
}

impl Outside {
    fn new(host: &str, far: &str, extra: &[&str]) -> Outside {
        let o = Outside {
            netns: format!("bfe2e-out-{}", std::process::id()),
            host_if: format!("bfe2eo{}", std::process::id() % 100_000),
        };
        ip(&["netns", "add", &o.netns]);
        ip(&[
            "link", "add", &o.host_if, "type", "veth", "peer", "name", "eth0", "netns", &o.netns,
        ]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &o.host_if]);
        ip(&["link", "set", &o.host_if, "up"]);
        ip(&[
            "-n",
            &o.netns,
            "addr",
            "add",
            &format!("{far}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &o.netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &o.netns, "link", "set", "lo", "up"]);
        for a in extra {
            ip(&[
                "-n",
                &o.netns,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "lo",
            ]);
            ip(&["route", "add", &format!("{a}/32"), "via", far]);
        }
        o
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// An interface holding a link-local address on the host.
struct Dummy(String);

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn iptables_save() -> String {
    let out = Command::new("iptables-save").output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Guest {
    id: String,
    netns: String,
    address: Ipv4Addr,
    /// The host end of its link: its gateway.
    gateway: Ipv4Addr,
    host_if: String,
    /// The agent's tag (`bf-<tag>-<uuid>`).
    tag: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_reach_metadata_and_the_outside_and_nothing_of_the_host() {
    if !usable() {
        return;
    }
    let pki = Pki::new();
    // Every coordinator port on every address, as a colocated coordinator might bind them.
    let any = |k: &str| (k.to_owned(), "0.0.0.0:0".to_owned());
    let mut coord = Coordinator::start_env(
        &pki,
        &["tenant"],
        &[],
        "",
        &[
            any("BACKFILL_API_ADDR"),
            any("BACKFILL_LINK_ADDR"),
            any("BACKFILL_ADMIN_ADDR"),
        ],
    );
    let coord_ports = [
        port_of(&coord.api),
        port_of(&coord.link),
        port_of(&coord.admin),
    ];
    coord.api = format!("127.0.0.1:{}", coord_ports[0]);
    coord.link = format!("127.0.0.1:{}", coord_ports[1]);
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));

    let outside = Outside::new(
        "198.51.100.5",
        "198.51.100.6",
        &["10.252.0.2", "192.168.252.2", "169.254.78.3"],
    );
    let far = in_netns(&outside.path(), || TcpListener::bind("0.0.0.0:0").unwrap());
    let far = serve(far);
    let dummy = Dummy(format!("bfe2el{}", std::process::id() % 100_000));
    // A veth pair (dummy interfaces may not be built into the kernel).
    ip(&[
        "link",
        "add",
        &dummy.0,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{}p", dummy.0),
    ]);
    ip(&["addr", "add", "169.254.78.2/32", "dev", &dummy.0]);
    ip(&["link", "set", &dummy.0, "up"]);

    let mut agents = Vec::new();
    for (host, pool, table) in [
        ("host-egress-a", "10.213.245.0/28", 2245),
        ("host-egress-b", "10.213.246.0/28", 2246),
    ] {
        let mut setup = AgentSetup::new(&pki, &coord, host);
        setup.extra_toml = format!(
            "[metadata]\nbind = \"169.254.169.254:0\"\n[network]\npool = {pool:?}\nroute_table = {table}\negress_allow = [\"192.168.252.0/24\"]\n"
        );
        setup
            .extra_env
            .push(("BACKFILL_ADMIN_BIND".into(), "0.0.0.0:0".into()));
        let mut agent = setup.start(true, "1");
        let metadata = agent.wait_log_value("metadata service listening", "addr");
        let admin = agent.wait_log_value("admin listening", "admin_addr");
        agents.push((setup, agent, port_of(&metadata), port_of(&admin)));
    }

    // One guest on each agent.
    let host_cpu = eventually("both hosts in free_resources", || async {
        let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
        let f = &caps["free_resources"];
        let one = f["most_free_by_cpu"]["cpu"].as_u64()?;
        (one > 0 && f["total"]["cpu"].as_u64()? >= 2 * one).then_some(one)
    })
    .await;
    let mut guests = Vec::new();
    for name in ["egress-a", "egress-b"] {
        let id = create(
            &tenant,
            &coord.url("bservers/"),
            json!({"name": name, "cpu": host_cpu * 6 / 10, "mem": 64u64 << 20,
                   "workload": {"command": ["sleep", "600"], "network": "isolated"}}),
        )
        .await;
        let (status, _) = post(
            &tenant,
            &coord.url(&format!("bservers/{id}/action/?do=start")),
            json!({}),
        )
        .await;
        assert_eq!(status, 202);
        let rt = eventually("the guest running with its network", || async {
            let (_, s) = get(&tenant, &coord.url(&format!("bservers/{id}/"))).await;
            (s["status"] == "running" && s["runtime"]["netns"].is_string())
                .then(|| s["runtime"].clone())
        })
        .await;
        let host = rt["host"].as_str().unwrap().to_owned();
        let netns = rt["netns"].as_str().unwrap().to_owned();
        let address: Ipv4Addr = rt["nics"][0]["ip_v4"]["uuid"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let setup = &agents[usize::from(host.ends_with("-b"))].0;
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(setup.state_dir().join("state.json")).unwrap(),
        )
        .unwrap();
        let net = state["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["server"] == id.as_str())
            .map(|s| s["network"].clone())
            .unwrap();
        guests.push((
            host,
            Guest {
                tag: netns.split('-').nth(1).unwrap().to_owned(),
                id,
                netns,
                address,
                gateway: Ipv4Addr::from(u32::from(address) - 1),
                host_if: net["host_if"].as_str().unwrap().to_owned(),
            },
        ));
    }
    guests.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(guests[0].0, "host-egress-a", "one guest per agent");
    assert_eq!(guests[1].0, "host-egress-b", "one guest per agent");
    let (ga, gb) = (&guests[0].1, &guests[1].1);
    let md = Ipv4Addr::new(169, 254, 169, 254);

    for (i, (g, other)) in [(ga, gb), (gb, ga)].into_iter().enumerate() {
        let (_, _, md_port, admin_port) = agents[i];
        let (_, _, other_md_port, other_admin) = agents[1 - i];
        // The metadata service answers, with this guest's own identity.
        let url = format!("http://{md}:{md_port}/openstack/latest/meta_data.json");
        let doc = eventually("metadata from the guest", || async {
            let out = Command::new("ip")
                .args(["netns", "exec", &g.netns, "curl", "-s", "-m", "5", &url])
                .output()
                .unwrap();
            serde_json::from_slice::<Value>(&out.stdout).ok()
        })
        .await;
        assert_eq!(doc["uuid"], g.id.as_str());
        // Nothing of the host: its agent's and the other agent's ports, the coordinator's,
        // on the gateway, the metadata address and another host address.
        let mut ports = vec![admin_port, other_admin, other_md_port];
        ports.extend(coord_ports);
        for host_addr in [g.gateway, md, Ipv4Addr::new(198, 51, 100, 5)] {
            for &p in &ports {
                let to = SocketAddr::from((host_addr, p));
                assert!(!connects(&g.netns, to), "the host's {to} from {}", g.netns);
            }
        }
        // Not the other guest (listening), not link-local beyond our metadata service (on the
        // host or past it), not a denied range.
        let on_other = in_netns(&Path::new("/run/netns").join(&other.netns), || {
            TcpListener::bind("0.0.0.0:0").unwrap()
        });
        let other_port = serve(on_other);
        for to in [
            SocketAddr::from((other.address, other_port)),
            SocketAddr::from(([169, 254, 78, 2], admin_port)),
            SocketAddr::from(([169, 254, 78, 3], far)),
            SocketAddr::from(([10, 252, 0, 2], far)),
        ] {
            assert!(!connects(&g.netns, to), "{to} from {}", g.netns);
        }
        // The outside, and the allowed exception to a denied range.
        for to in [
            SocketAddr::from(([198, 51, 100, 6], far)),
            SocketAddr::from(([192, 168, 252, 2], far)),
        ] {
            assert!(connects(&g.netns, to), "{to} from {}", g.netns);
        }
    }

    // Guest A goes: agent A's rules go with it; agent B's stay and still hold.
    let (status, _) = post(
        &tenant,
        &coord.url(&format!("bservers/{}/action/?do=stop", ga.id)),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    wait_until("guest A's namespace removed", || {
        !Path::new("/run/netns").join(&ga.netns).exists()
    });
    wait_until("agent A's rules removed", || {
        !iptables_save().contains(&format!("BF-{}-", ga.tag))
    });
    let rules = iptables_save();
    assert!(rules.contains(&format!("-i {} ", gb.host_if)), "{rules}");
    assert!(connects(
        &gb.netns,
        SocketAddr::from(([198, 51, 100, 6], far))
    ));
    assert!(!connects(
        &gb.netns,
        SocketAddr::from((gb.gateway, agents[1].3))
    ));
    let (status, _) = post(
        &tenant,
        &coord.url(&format!("bservers/{}/action/?do=stop", gb.id)),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    wait_until("agent B's rules removed", || {
        !iptables_save().contains(&format!("BF-{}-", gb.tag))
    });
    drop(outside);
}
