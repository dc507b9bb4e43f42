//! The metadata service end to end, as root: two servers in isolated network mode ask
//! 169.254.169.254 from inside their own network namespaces; each sees only itself; a scheduled
//! termination shows in all four formats; the guest's acknowledgement ends its server early and
//! gives the capacity to the normal server that was waiting for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::{Value, json};
use std::process::Command;

/// Backfill servers here are stopped (after a notice), never downsized.
const NOTICE: &str =
    "\n[classes.backfill]\ndownsizable = false\nfloor = 1.0\nmin_uptime_s = 0\nnotice_s = 600\n";
const MD: &str = "http://169.254.169.254";

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
            "SKIP: the metadata end-to-end test needs root, iproute2 and curl (root={})",
            is_root()
        );
    }
    ok
}

/// `curl` from inside a guest's network namespace: (status, body).
fn guest_curl(netns: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "-m",
            "10",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn guest_json(netns: &str, args: &[&str]) -> Value {
    let (status, body) = guest_curl(netns, args);
    assert_eq!(status, 200, "{args:?}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{args:?}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_learn_who_they_are_and_when_they_end_and_can_give_capacity_back() {
    if !usable() {
        return;
    }
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], NOTICE);
    let mut setup = AgentSetup::new(&pki, &coord, "host-md");
    setup.extra_toml = "[metadata]\nbind = \"169.254.169.254:80\"\navailability_zone = \"zone-e2e\"\n[network]\npool = \"10.213.240.0/24\"\n".into();
    let mut agent = setup.start(true, "1");
    let agent_admin = agent.wait_log_value("admin listening", "admin_addr");
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));

    // Two backfill servers that together take the host's CPU.
    let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
    let host_cpu = caps["free_resources"]["total"]["cpu"].as_u64().unwrap();
    let half = host_cpu / 2;
    let mut guests = Vec::new();
    for name in ["guest-a", "guest-b"] {
        let id = create(
            &tenant,
            &coord.url("bservers/"),
            json!({"name": name, "cpu": half, "mem": 128u64 << 20,
                   "meta": {"role": "batch"},
                   "workload": {"command": ["sleep", "300"], "network": "isolated"}}),
        )
        .await;
        let (status, _) = post(
            &tenant,
            &coord.url(&format!("bservers/{id}/action/?do=start")),
            json!({}),
        )
        .await;
        assert_eq!(status, 202);
        guests.push(id);
    }
    // Each runtime shows the guest's address and namespace.
    let mut netns = Vec::new();
    for id in &guests {
        let rt = eventually("guest network in the runtime", || async {
            let (_, b) = get(&tenant, &coord.url(&format!("bservers/{id}/"))).await;
            (b["status"] == "running" && b["runtime"]["netns"].is_string())
                .then(|| b["runtime"].clone())
        })
        .await;
        let ip = rt["nics"][0]["ip_v4"]["uuid"].as_str().unwrap().to_owned();
        assert!(ip.starts_with("10.213.240."), "{rt}");
        netns.push(rt["netns"].as_str().unwrap().to_owned());
    }
    // Each guest sees itself, and only itself.
    for (id, ns) in guests.iter().zip(&netns) {
        let m = eventually("metadata reachable from the guest", || async {
            let (status, body) =
                guest_curl(ns, &[&format!("{MD}/openstack/latest/meta_data.json")]);
            (status == 200).then(|| serde_json::from_str::<Value>(&body).unwrap())
        })
        .await;
        assert_eq!(m["uuid"], id.as_str());
        assert_eq!(m["availability_zone"], "zone-e2e");
        assert_eq!(m["project_id"], "tenant");
        assert_eq!(m["meta"]["role"], "batch");
        assert!(m["meta"].get("cloud_termination_time").is_none());
        let (_, iid) = guest_curl(ns, &[&format!("{MD}/latest/meta-data/instance-id")]);
        assert_eq!(&iid, id);
        let (status, _) = guest_curl(
            ns,
            &[&format!("{MD}/latest/meta-data/spot/instance-action")],
        );
        assert_eq!(status, 404);
    }
    // The workload itself runs inside its namespace.
    for (id, ns) in guests.iter().zip(&netns) {
        let pid = setup.recorded_pid(id).unwrap();
        let out = Command::new("ip")
            .args(["netns", "identify", &pid.to_string()])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ns);
    }

    // A normal server that needs half the host: one backfill server gets a termination notice.
    let normal = create(
        &tenant,
        &coord.url("servers/"),
        json!({"name": "paying", "cpu": half, "mem": 128u64 << 20,
               "workload": {"command": ["sleep", "300"]}}),
    )
    .await;
    post(
        &tenant,
        &coord.url(&format!("servers/{normal}/action/?do=start")),
        json!({}),
    )
    .await;
    let (victim, term) = eventually("a termination scheduled", || async {
        for (i, id) in guests.iter().enumerate() {
            let (_, b) = get(&tenant, &coord.url(&format!("bservers/{id}/"))).await;
            if b["runtime"]["termination"].is_object() {
                return Some((i, b["runtime"]["termination"].clone()));
            }
        }
        None
    })
    .await;
    assert!(term["terminate_at"].is_string());
    let (v_ns, other_ns) = (&netns[victim], &netns[1 - victim]);

    // All four formats tell the victim, once its agent has the new desired state.
    let m = eventually("termination keys in meta_data.json", || async {
        let m = guest_json(v_ns, &[&format!("{MD}/openstack/latest/meta_data.json")]);
        m["meta"]
            .get("cloud_termination_time")
            .is_some()
            .then_some(m)
    })
    .await;
    let at: i64 = m["meta"]["cloud_termination_time"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let announced: i64 = m["meta"]["cloud_termination_scheduled_event_time"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(at > announced);
    let action = guest_json(
        v_ns,
        &[&format!("{MD}/latest/meta-data/spot/instance-action")],
    );
    assert_eq!(action["action"], "terminate");
    // IMDSv2 works from the guest too.
    let (status, token) = guest_curl(
        v_ns,
        &[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            &format!("{MD}/latest/api/token"),
        ],
    );
    assert_eq!(status, 200);
    let (status, t) = guest_curl(
        v_ns,
        &[
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            &format!("{MD}/latest/meta-data/spot/termination-time"),
        ],
    );
    assert_eq!(status, 200);
    assert!(t.ends_with('Z'), "{t}");
    let (_, preempted) = guest_curl(
        v_ns,
        &[
            "-H",
            "Metadata-Flavor: Google",
            &format!("{MD}/computeMetadata/v1/instance/preempted"),
        ],
    );
    assert_eq!(preempted, "TRUE");
    let az = guest_json(
        v_ns,
        &[
            "-H",
            "Metadata: true",
            &format!("{MD}/metadata/scheduledevents?api-version=2020-07-01"),
        ],
    );
    assert_eq!(az["Events"][0]["EventType"], "Preempt");
    // The other guest is not told anything.
    let (status, _) = guest_curl(
        other_ns,
        &[&format!("{MD}/latest/meta-data/spot/instance-action")],
    );
    assert_eq!(status, 404);
    let (_, preempted) = guest_curl(
        other_ns,
        &[
            "-H",
            "Metadata-Flavor: Google",
            &format!("{MD}/computeMetadata/v1/instance/preempted"),
        ],
    );
    assert_eq!(preempted, "FALSE");

    // The victim acknowledges: its server ends long before the ten-minute notice runs out, and
    // the normal server gets the capacity.
    let (status, body) = guest_curl(
        v_ns,
        &["-X", "POST", &format!("{MD}/backfill/v1/acknowledge")],
    );
    assert_eq!(status, 202, "{body}");
    let victim_id = &guests[victim];
    eventually("the acknowledged server stopped", || async {
        let (_, b) = get(&tenant, &coord.url(&format!("bservers/{victim_id}/"))).await;
        (b["status"] == "stopped").then_some(())
    })
    .await;
    eventually("the normal server running", || async {
        let (_, b) = get(&tenant, &coord.url(&format!("servers/{normal}/"))).await;
        (b["status"] == "running").then_some(())
    })
    .await;
    wait_until("the victim's namespace removed", || {
        !std::path::Path::new("/run/netns").join(v_ns).exists()
    });
    // The survivor still answers.
    let m = guest_json(
        other_ns,
        &[&format!("{MD}/openstack/latest/meta_data.json")],
    );
    assert_eq!(m["uuid"], guests[1 - victim].as_str());
    // The agent counted the guests' requests by format and code.
    let (_, metrics) = http_get(&agent_admin, "/metrics");
    for line in [
        "backfill_agent_metadata_requests_total{format=\"openstack\",code=\"200\"}",
        "backfill_agent_metadata_requests_total{format=\"ec2\",code=\"404\"}",
        "backfill_agent_metadata_requests_total{format=\"backfill\",code=\"202\"}",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(line)),
            "{line} in\n{metrics}"
        );
    }
}
