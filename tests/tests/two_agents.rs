//! Two agents on one host, as root: each runs an isolated guest (its own pool, route table and
//! metadata listener); each agent is restarted in turn, and both guests keep their network —
//! an agent touches only the namespaces, interfaces and rules it made. A guest whose namespace
//! and veth disappear while its agent is away gets them back when the agent returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn usable() -> bool {
    let has = |p: &str| {
        Command::new(p)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = is_root() && has("ip") && has("curl");
    if !ok {
        eprintln!(
            "SKIP: the two-agent network test needs root, iproute2 and curl (root={})",
            is_root()
        );
    }
    ok
}

/// One agent of the pair, with what its guest needs.
struct Side {
    setup: AgentSetup,
    agent: Daemon,
    /// `169.254.169.254:<port>` of its metadata listener (a new port on each start).
    metadata: String,
    runs: u32,
}

impl Side {
    fn new(pki: &Pki, coord: &Coordinator, host: &str, pool: &str, table: u32) -> Side {
        let mut setup = AgentSetup::new(pki, coord, host);
        setup.extra_toml = format!(
            "[metadata]\nbind = \"169.254.169.254:0\"\n[network]\npool = {pool:?}\nroute_table = {table}\n"
        );
        let (agent, metadata) = Side::launch(&setup, "1");
        Side {
            setup,
            agent,
            metadata,
            runs: 1,
        }
    }

    /// Starts the agent; workloads outlive it (as with systemd), except at the end of the test.
    fn launch(setup: &AgentSetup, tag: &str) -> (Daemon, String) {
        let last = tag.starts_with("last");
        let mut agent = setup.start(last, tag);
        let metadata = agent.wait_log_value("metadata service listening", "addr");
        (agent, metadata)
    }

    fn restart(&mut self, tag: Option<&str>) {
        self.agent.terminate();
        self.runs += 1;
        let tag = tag.map_or_else(|| self.runs.to_string(), str::to_owned);
        let (agent, metadata) = Side::launch(&self.setup, &tag);
        self.agent = agent;
        self.metadata = metadata;
    }

    /// What the state file records of `server`'s network.
    fn recorded_network(&self, server: &str) -> Value {
        let text = std::fs::read_to_string(self.setup.state_dir().join("state.json")).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["server"] == server)
            .map(|s| s["network"].clone())
            .unwrap_or(Value::Null)
    }
}

/// A guest as the API shows it.
struct Guest {
    id: String,
    netns: String,
    address: String,
}

fn ip_ok(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether `guest` has its network: its interface and address inside its namespace, its
/// rule on the host, and its agent's metadata service answering it with its own identity.
fn has_network(guest: &Guest, host_if: &str, metadata: &str) -> Result<(), String> {
    let addr = Command::new("ip")
        .args([
            "-n",
            &guest.netns,
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&addr.stdout);
    if !text.contains(&format!("inet {}/30", guest.address)) {
        return Err(format!(
            "eth0 of {}: {text:?} {:?}",
            guest.netns,
            String::from_utf8_lossy(&addr.stderr)
        ));
    }
    let rules = Command::new("ip").args(["rule", "show"]).output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    let mine: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains(&format!("iif {host_if} ")))
        .collect();
    if mine.len() != 1 || mine[0].contains("detached") {
        return Err(format!("rules for {host_if}: {rules}"));
    }
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &guest.netns,
            "curl",
            "-s",
            "-m",
            "5",
            &format!("http://{metadata}/openstack/latest/meta_data.json"),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body:?}"))?;
    if doc["uuid"] != guest.id.as_str() {
        return Err(format!("metadata of {}: {doc}", guest.id));
    }
    Ok(())
}

/// A third agent configured with `side`'s cgroup parent (it would take `side`'s workloads for
/// its own leftovers) is refused before it touches anything.
fn refuses_a_shared_cgroup_parent(side: &Side) {
    let cfg = std::fs::read_to_string(side.setup.dir.path().join("agent-1.toml")).unwrap();
    let other = tempfile::tempdir().unwrap();
    let state = side.setup.state_dir().display().to_string();
    let cfg = cfg.replace(&state, &other.path().join("state").display().to_string());
    assert!(
        cfg.contains(&format!("{:?}", side.setup.cgroup_parent)),
        "{cfg}"
    );
    let path = other.path().join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new(bin("backfill-agent"))
        .args(["--config", path.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("is in use by another agent"), "{text}");
}

/// Polls [`has_network`] until it holds, or fails with what is missing.
fn assert_network(guest: &Guest, side: &Side) {
    let host_if = side.recorded_network(&guest.id)["host_if"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match has_network(guest, &host_if, &side.metadata) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{} has no network: {e}", guest.id),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Every log line of `side`'s agent runs that names `netns`.
fn log_lines_naming(side: &Side, netns: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for e in std::fs::read_dir(side.setup.dir.path()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("agent-") && name.ends_with(".log") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            lines.extend(
                text.lines()
                    .filter(|l| l.contains(netns))
                    .map(str::to_owned),
            );
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_on_one_host_keep_each_others_guests_networked_across_restarts() {
    if !usable() {
        return;
    }
    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let mut a = Side::new(&pki, &coord, "host-net-a", "10.213.241.0/28", 2241);
    let mut b = Side::new(&pki, &coord, "host-net-b", "10.213.242.0/28", 2242);

    // Both hosts registered: then a server taking 60% of a host lands on each of them.
    let host_cpu = eventually("both hosts in free_resources", || async {
        let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
        let f = &caps["free_resources"];
        let one = f["most_free_by_cpu"]["cpu"].as_u64()?;
        (one > 0 && f["total"]["cpu"].as_u64()? >= 2 * one).then_some(one)
    })
    .await;
    let mut guests = Vec::new();
    for name in ["guest-a", "guest-b"] {
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
        guests.push((
            rt["host"].as_str().unwrap().to_owned(),
            Guest {
                id,
                netns: rt["netns"].as_str().unwrap().to_owned(),
                address: rt["nics"][0]["ip_v4"]["uuid"].as_str().unwrap().to_owned(),
            },
        ));
    }
    guests.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        guests.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
        ["host-net-a", "host-net-b"],
        "one guest per agent"
    );
    let (ga, gb) = (&guests[0].1, &guests[1].1);
    assert!(ga.address.starts_with("10.213.241."), "{}", ga.address);
    assert!(gb.address.starts_with("10.213.242."), "{}", gb.address);
    // Each agent's names carry its own tag.
    let tag = |netns: &str| netns.split('-').nth(1).unwrap().to_owned();
    assert_ne!(tag(&ga.netns), tag(&gb.netns), "{} {}", ga.netns, gb.netns);
    assert_network(ga, &a);
    assert_network(gb, &b);
    refuses_a_shared_cgroup_parent(&a);
    assert_network(ga, &a);
    let pids = [
        a.setup.recorded_pid(&ga.id).unwrap(),
        b.setup.recorded_pid(&gb.id).unwrap(),
    ];

    // Each agent restarted in turn: the other's guest is untouched, its own re-adopted.
    a.restart(None);
    assert_network(ga, &a);
    assert_network(gb, &b);
    b.restart(None);
    assert_network(ga, &a);
    assert_network(gb, &b);
    // While agent A is away, its guest loses its namespace's name and its veth (what an
    // untagged agent used to do); the returning agent rebuilds both.
    a.agent.terminate();
    let host_if = a.recorded_network(&ga.id)["host_if"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ip_ok(&["netns", "del", &ga.netns]));
    assert!(ip_ok(&["link", "del", &host_if]));
    assert!(!Path::new("/run/netns").join(&ga.netns).exists());
    a.restart(Some("last"));
    assert_network(ga, &a);
    let rebuilt = log_lines_naming(&a, &ga.netns);
    assert!(
        rebuilt.iter().any(|l| l.contains("veth was gone; rebuilt")),
        "{rebuilt:#?}"
    );
    assert_network(gb, &b);
    b.restart(None);
    assert_network(ga, &a);
    assert_network(gb, &b);

    // The same workloads all along, running in the API's eyes.
    assert_eq!(a.setup.recorded_pid(&ga.id), Some(pids[0]));
    assert_eq!(b.setup.recorded_pid(&gb.id), Some(pids[1]));
    for (g, pid) in [ga, gb].into_iter().zip(pids) {
        let (_, s) = get(&tenant, &coord.url(&format!("bservers/{}/", g.id))).await;
        assert_eq!(s["status"], "running", "{s}");
        let out = Command::new("ip")
            .args(["netns", "identify", &pid.to_string()])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), g.netns);
    }
    // Neither agent ever acted on the other's guest.
    for (side, other) in [(&a, gb), (&b, ga)] {
        let lines = log_lines_naming(side, &other.netns);
        assert!(
            lines.is_empty(),
            "an agent touched the other's guest: {lines:#?}"
        );
    }

    // While agent B is away, its guest's veth goes and its address is taken by another
    // interface: the returning agent cannot rebuild it, stops the guest and reports it failed,
    // and the API stops showing it running. A's guest is untouched.
    b.agent.terminate();
    let host_if = b.recorded_network(&gb.id)["host_if"]
        .as_str()
        .unwrap()
        .to_owned();
    let gateway: std::net::Ipv4Addr = b.recorded_network(&gb.id)["host_address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ip_ok(&["link", "del", &host_if]));
    let squatter = Squatter::new(&format!("{gateway}/30"));
    b.restart(Some("last-2"));
    let (_, s) = eventually("the unrebuildable guest stopped", || async {
        let (_, s) = get(&tenant, &coord.url(&format!("bservers/{}/", gb.id))).await;
        (s["status"] == "stopped").then_some(((), s))
    })
    .await;
    assert!(s["runtime"].is_null(), "{s}");
    wait_until("its workload ended", || {
        !Path::new(&format!("/proc/{}", pids[1])).exists()
    });
    wait_until("its namespace removed", || {
        !Path::new("/run/netns").join(&gb.netns).exists()
    });
    let reason = b
        .agent
        .log_text()
        .lines()
        .find(|l| l.contains("network cannot be rebuilt"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(reason.contains(&squatter.name), "{reason}");
    drop(squatter);
    assert_network(ga, &a);

    // Stopping the guest removes its network, and nothing of either agent is left.
    let (status, _) = post(
        &tenant,
        &coord.url(&format!("bservers/{}/action/?do=stop", ga.id)),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    wait_until("the guest's namespace removed", || {
        !Path::new("/run/netns").join(&ga.netns).exists()
    });
    let rules = Command::new("ip").args(["rule", "show"]).output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    for g in [ga, gb] {
        assert!(!rules.contains(&format!("bf{}-", tag(&g.netns))), "{rules}");
    }
}

/// An interface that is no agent's, holding an address (removed when dropped).
struct Squatter {
    name: String,
}

impl Squatter {
    fn new(cidr: &str) -> Squatter {
        let name = format!("sq{}", std::process::id());
        let peer = format!("{name}p");
        assert!(ip_ok(&[
            "link", "add", &name, "type", "veth", "peer", "name", &peer
        ]));
        let s = Squatter { name };
        assert!(ip_ok(&["addr", "add", cidr, "dev", &s.name]));
        s
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = ip_ok(&["link", "del", &self.name]);
    }
}
