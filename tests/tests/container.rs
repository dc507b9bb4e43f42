//! The `container` driver end to end, as root: a local registry (Debian's docker-registry)
//! gets a tiny busybox image pushed from here; a backfill server runs it in its cgroup and
//! network namespace, reads its own metadata, is downsized by a normal server's arrival
//! (its CPU quota and soft memory limit), and stops on SIGTERM by itself. A corrupt layer, an
//! unknown image and an image larger than the cache are refused, leaving nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::registry::{BUSYBOX, LeftContainers, REGISTRY, RUNC, Registry, push};
use backfill_tests::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

/// The image cache's bound: the demo image fits (about 1 MiB compressed, 2 MiB unpacked);
/// the big one (10 MiB of noise) does not.
const CACHE_MAX: u64 = 8 << 20;

fn usable() -> bool {
    let missing: Vec<&str> = [RUNC, REGISTRY, BUSYBOX]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    let ok = is_root() && missing.is_empty();
    if !ok {
        eprintln!(
            "SKIP: the container end-to-end test needs root (root={}) and runc, docker-registry, busybox-static (missing: {missing:?})",
            is_root()
        );
    }
    ok
}

async fn status(c: &reqwest::Client, coord: &Coordinator, uuid: &str) -> Value {
    get(c, &coord.url(&format!("bservers/{uuid}/"))).await.1
}

/// Creates and starts a backfill server running `image`; its uuid.
async fn start_container(
    c: &reqwest::Client,
    coord: &Coordinator,
    name: &str,
    cpu: u64,
    mem: u64,
    image: &str,
) -> String {
    let id = create(
        c,
        &coord.url("bservers/"),
        json!({"name": name, "cpu": cpu, "mem": mem,
               "workload": {"container": {"image": image}}}),
    )
    .await;
    let (s, body) = post(
        c,
        &coord.url(&format!("bservers/{id}/action/?do=start")),
        json!({}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    id
}

/// Waits for a server that must fail to start: stopped, with the agent's reason in the
/// coordinator's log. Answers that reason's line.
async fn refused(c: &reqwest::Client, coord: &Coordinator, uuid: &str, needle: &str) -> String {
    eventually("the server stopped", || async {
        (status(c, coord, uuid).await["status"] == "stopped").then_some(())
    })
    .await;
    let line = coord
        .daemon
        .log_text()
        .lines()
        .find(|l| l.contains("workload failed") && l.contains(uuid))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(line.contains(needle), "want {needle:?} in: {line}");
    // The tenant sees it too.
    let shown = status(c, coord, uuid).await["stop_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        shown.contains("failed") && shown.contains(needle),
        "stop_reason: {shown}"
    );
    line
}

fn read_i64(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A namespace file's identity (`/proc/PID/ns/net` and `/run/netns/NAME` alike).
fn netns_inode(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_from_a_registry_and_bad_images_are_refused() {
    if !usable() {
        return;
    }
    backfill_shared::tls::install_default_provider();
    // A metadata address of this test's own: tests of other checkouts may hold
    // 169.254.169.254:80 on a shared machine. The guest is told it in $MD.
    let md = format!("169.254.171.{}", std::process::id() % 250 + 1);
    let registry = Registry::start();
    push(&registry, "demo:1", &[]).await;
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], "");
    let mut setup = AgentSetup::new(&pki, &coord, "host-ctr");
    setup.extra_toml = format!(
        "[metadata]\nbind = \"{md}:80\"\n[network]\npool = \"10.213.241.0/24\"\nroute_table = 2171\n[container]\ninsecure_registries = [{:?}]\ncache_max_bytes = {CACHE_MAX}\npull_timeout_secs = 60\n",
        registry.addr
    );
    let _left = LeftContainers(setup.state_dir());
    // Not stopped on exit: the container must outlive an agent restart.
    let mut agent = setup.start(false, "1");
    let runtime = agent.wait_log_value("container driver ready", "runtime");
    assert!(runtime.starts_with("runc"), "{runtime}");
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
    let total = &caps["free_resources"]["total"];
    let (host_cpu, host_mem) = (
        total["cpu"].as_u64().unwrap(),
        total["mem"].as_u64().unwrap(),
    );
    assert!(host_cpu >= 2_000, "this test needs 2,000 MHz: {caps}");
    let mhz_per_core: i64 = agent.wait_log_value("discovered", "mhz").parse().unwrap();

    // A backfill container that takes most of the host.
    let image = format!("{}/demo:1", registry.addr);
    let (bf_cpu, bf_mem) = (host_cpu - 500, host_mem - (256 << 20));
    let started = Instant::now();
    let ctr = create(
        &tenant,
        &coord.url("bservers/"),
        json!({"name": "ctr", "cpu": bf_cpu, "mem": bf_mem,
               "workload": {"container": {"image": image}, "env": {"MD": md}}}),
    )
    .await;
    post(
        &tenant,
        &coord.url(&format!("bservers/{ctr}/action/?do=start")),
        json!({}),
    )
    .await;
    let rt = eventually("the container running", || async {
        let b = status(&tenant, &coord, &ctr).await;
        (b["status"] == "running").then(|| b["runtime"].clone())
    })
    .await;
    let to_running = started.elapsed();
    let log = setup.state_dir().join("logs").join(format!("{ctr}.log"));
    let out = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the container read its metadata", || {
        out().contains("demo: metadata done")
    });
    let text = out();
    assert!(
        text.contains("demo: uid 65534 host ctr image_var from-image"),
        "{text}"
    );
    assert!(
        text.contains(&format!("\"uuid\": \"{ctr}\""))
            || text.contains(&format!("\"uuid\":\"{ctr}\"")),
        "{text}"
    );
    let agent_line = agent
        .log_text()
        .lines()
        .find(|l| l.contains("container started"))
        .unwrap_or_default()
        .to_owned();
    eprintln!(
        "MEASURED: start action to running {} ms; agent: {agent_line}",
        to_running.as_millis()
    );

    // In its cgroup (with the agent's limits, not runc's) and its network namespace.
    let pid = setup.recorded_pid(&ctr).unwrap();
    let procs = std::fs::read_to_string(setup.v1_cgroup("cpu", &ctr).join("cgroup.procs"))
        .unwrap_or_default();
    assert!(
        procs.lines().any(|p| p == pid.to_string()),
        "{pid} not in {procs}"
    );
    let full_quota = (i64::try_from(bf_cpu).unwrap() * 100_000 / mhz_per_core).min(100_000);
    let quota = || read_i64(&setup.v1_cgroup("cpu", &ctr).join("cpu.cfs_quota_us"));
    let soft = || {
        read_i64(
            &setup
                .v1_cgroup("memory", &ctr)
                .join("memory.soft_limit_in_bytes"),
        )
    };
    assert_eq!(quota(), Some(full_quota));
    let full_soft = soft().unwrap();
    // runc was given no CPU or memory resources: the agent's idle-class weight and hard
    // limit stand too.
    let cpu_dir = setup.v1_cgroup("cpu", &ctr);
    if cpu_dir.join("cpu.idle").exists() {
        assert_eq!(read_i64(&cpu_dir.join("cpu.idle")), Some(1));
    } else {
        assert_eq!(read_i64(&cpu_dir.join("cpu.shares")), Some(2));
    }
    let hard = read_i64(
        &setup
            .v1_cgroup("memory", &ctr)
            .join("memory.limit_in_bytes"),
    )
    .unwrap();
    assert!((hard - bf_mem as i64).abs() < 4096, "{hard} vs {bf_mem}");
    assert!(full_soft > 0 && full_soft <= bf_mem as i64, "{full_soft}");
    let netns = rt["netns"].as_str().unwrap();
    assert!(netns_inode(&format!("/proc/{pid}/ns/net")).is_some());
    assert_eq!(
        netns_inode(&format!("/proc/{pid}/ns/net")),
        netns_inode(&format!("/run/netns/{netns}"))
    );
    assert_ne!(
        netns_inode(&format!("/proc/{pid}/ns/net")),
        netns_inode("/proc/self/ns/net")
    );

    // A normal server arrives: the container is downsized, CPU and memory.
    let normal = create(
        &tenant,
        &coord.url("servers/"),
        json!({"name": "paying", "cpu": 1_500, "mem": 768u64 << 20,
               "workload": {"command": ["sleep", "120"]}}),
    )
    .await;
    post(
        &tenant,
        &coord.url(&format!("servers/{normal}/action/?do=start")),
        json!({}),
    )
    .await;
    let pf = eventually("the container downsized", || async {
        let b = status(&tenant, &coord, &ctr).await;
        let pf = &b["runtime"]["perf_factor"];
        (pf["cpu"].as_f64()? < 1.0 && pf["mem"].as_f64()? < 1.0).then(|| pf.clone())
    })
    .await;
    wait_until("quota and soft limit lowered", || {
        quota().is_some_and(|q| q < full_quota) && soft().is_some_and(|s| s < full_soft)
    });
    eprintln!(
        "downsized to {pf}: quota {:?}, soft limit {:?}",
        quota(),
        soft()
    );
    assert!(
        std::fs::read_to_string(setup.v1_cgroup("cpu", &ctr).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .any(|p| p == pid.to_string()),
        "still running in its cgroup"
    );
    post(
        &tenant,
        &coord.url(&format!("servers/{normal}/action/?do=stop")),
        json!({}),
    )
    .await;

    // Backfill yields: SCHED_IDLE (field 41 of stat) and first to die on OOM.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let policy = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(38);
    assert_eq!(policy, Some("5"), "SCHED_IDLE: {stat}");
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(adj.trim(), "1000");
    let rss = |a: &Daemon| {
        std::fs::read_to_string(format!("/proc/{}/status", a.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS"))
            .unwrap_or_default()
            .to_owned()
    };
    eprintln!("MEASURED: agent with one container: {}", rss(&agent));

    // The agent restarts; the new one re-adopts the running container (same init).
    agent.terminate();
    let mut agent = setup.start(true, "2");
    agent.wait_log_value("re-adopted running workload", "pid");
    assert_eq!(setup.recorded_pid(&ctr), Some(pid));
    assert_eq!(status(&tenant, &coord, &ctr).await["status"], "running");

    // A graceful shutdown: SIGTERM reaches the container's init, which exits by itself.
    let (s, body) = post(
        &tenant,
        &coord.url(&format!("bservers/{ctr}/action/?do=shutdown")),
        json!({}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    eventually("the container stopped", || async {
        (status(&tenant, &coord, &ctr).await["status"] == "stopped").then_some(())
    })
    .await;
    assert!(out().contains("demo: got SIGTERM"), "{}", out());
    let bundle = setup.state_dir().join("containers").join(&ctr);
    wait_until("its bundle removed", || !bundle.exists());
    assert!(!setup.state_dir().join("runc").join(&ctr).exists());

    // A corrupt layer: the registry serves bytes that do not match the manifest's digest.
    let cached_blobs = || -> Vec<String> {
        std::fs::read_dir(setup.state_dir().join("images/blobs/sha256"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let before = cached_blobs();
    assert_eq!(
        before.len(),
        2,
        "the demo image's config and layer: {before:?}"
    );
    let bad_layer = push(&registry, "bad:1", &[("etc/bad", b"bad".to_vec())]).await;
    let file = registry.blob_file(&bad_layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let bad = start_container(
        &tenant,
        &coord,
        "bad",
        500,
        64 << 20,
        &format!("{}/bad:1", registry.addr),
    )
    .await;
    let why = refused(&tenant, &coord, &bad, "is corrupt").await;
    eprintln!("REFUSED (corrupt): {why}");
    assert!(!setup.state_dir().join("containers").join(&bad).exists());
    assert_eq!(cached_blobs(), before, "nothing of the bad image is cached");
    let tmp: Vec<_> = std::fs::read_dir(setup.state_dir().join("images/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");

    // An image the registry does not have.
    let unknown = start_container(
        &tenant,
        &coord,
        "unknown",
        500,
        64 << 20,
        &format!("{}/nope:1", registry.addr),
    )
    .await;
    let why = refused(&tenant, &coord, &unknown, "nope:1").await;
    eprintln!("REFUSED (unknown): {why}");

    // An image larger than the whole cache.
    let mut noise = vec![0u8; 10 << 20];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).unwrap();
    push(&registry, "big:1", &[("noise", noise)]).await;
    let big = start_container(
        &tenant,
        &coord,
        "big",
        500,
        64 << 20,
        &format!("{}/big:1", registry.addr),
    )
    .await;
    let why = refused(&tenant, &coord, &big, "cache_max_bytes").await;
    eprintln!("REFUSED (too large): {why}");
    assert_eq!(cached_blobs(), before);
    drop(agent);
}

/// Many containers on one agent: how long until all run, and the agent's memory. A
/// measurement, not a check: `cargo test -p backfill-tests --test container -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn many_containers_measured() {
    if !usable() {
        return;
    }
    backfill_shared::tls::install_default_provider();
    let n: u64 = std::env::var("BACKFILL_CONTAINERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let registry = Registry::start();
    push(&registry, "demo:1", &[]).await;
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], "");
    let mut setup = AgentSetup::new(&pki, &coord, "host-many");
    setup.extra_toml = format!(
        "[metadata]\nbind = \"127.0.0.1:0\"\n[network]\npool = \"10.213.64.0/18\"\nroute_table = 2172\n[container]\ninsecure_registries = [{:?}]\n",
        registry.addr
    );
    let agent = setup.start(true, "1");
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
    let host_cpu = caps["free_resources"]["total"]["cpu"].as_u64().unwrap();
    let image = format!("{}/demo:1", registry.addr);
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            start_container(
                &tenant,
                &coord,
                &format!("c{i}"),
                host_cpu / (n + 1),
                64 << 20,
                &image,
            )
            .await,
        );
    }
    for id in &ids {
        eventually("running", || async {
            (status(&tenant, &coord, id).await["status"] == "running").then_some(())
        })
        .await;
    }
    let rss = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or_default()
        .to_owned();
    eprintln!(
        "MEASURED: {n} containers running {} ms after the first start; agent {rss}",
        started.elapsed().as_millis()
    );
    // The driver's own time per start (pull included for the first): from the agent's log.
    let mut ms: Vec<u64> = agent
        .log_text()
        .lines()
        .filter(|l| l.contains("container started"))
        .filter_map(|l| {
            l.split(" ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ms.sort_unstable();
    if let (Some(min), Some(max)) = (ms.first(), ms.last()) {
        eprintln!(
            "MEASURED: launch ms min {min} median {} max {max}",
            ms[ms.len() / 2]
        );
    }
    for id in &ids {
        post(
            &tenant,
            &coord.url(&format!("bservers/{id}/action/?do=stop")),
            json!({}),
        )
        .await;
    }
    for id in &ids {
        eventually("stopped", || async {
            (status(&tenant, &coord, id).await["status"] == "stopped").then_some(())
        })
        .await;
    }
    assert!(
        std::fs::read_dir(setup.state_dir().join("containers"))
            .unwrap()
            .next()
            .is_none(),
        "every bundle removed"
    );
}
