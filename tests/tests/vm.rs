//! The `vm` driver end to end, as root, on TCG: a minimal guest (Debian's cloud kernel and an
//! initramfs of busybox made here) boots in isolated mode, takes its address by DHCP, reads
//! its metadata, is squeezed (balloon and CPU quota) by a normal server and grows back, sees
//! its termination notice, and powers off through ACPI when its server is shut down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::guest;
use backfill_tests::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CLASSES: &str = "\n[scheduler.grow]\nmargin = 0.05\nmin_interval_s = 1\nmin_step = 0.1\n[classes.backfill]\ndownsizable = true\nfloor = 0.25\nmin_uptime_s = 0\nnotice_s = 600\n";
const MODULES: [&str; 11] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
    "drivers/virtio/virtio_balloon",
    "drivers/input/evdev",
    "drivers/acpi/button",
];
const BOOT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// The guest's /init: modules, DHCP, metadata, a power-button watcher, then the EC2 spot
/// notice polled once a second. Its lines start with GUEST- on the console.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox mount -t devtmpfs dev /dev
exec 0</dev/console 1>/dev/console 2>&1
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_balloon evdev button; do
    insmod /modules/$m.ko || echo "GUEST-INSMOD-FAILED $m"
done
for i in /sys/class/input/input*; do
    if grep -q "Power Button" $i/name; then
        for e in $i/event*; do
            ev=/dev/input/$(basename $e)
            [ -c $ev ] && (head -c 1 $ev >/dev/null && echo GUEST-POWER-BUTTON && poweroff -f) &
        done
    fi
done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -n -q -t 30 -T 1 -s /udhcpc.sh
echo "GUEST-ADDR $(ip -4 -o addr show eth0)"
get() {
    printf 'GET %s HTTP/1.0\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n' "$1" | nc 169.254.169.254 80
}
get /openstack/latest/meta_data.json > /tmp/md
echo "GUEST-MD-BEGIN $(cat /tmp/md | tr '\r\n' '  ') GUEST-MD-END"
while true; do
    get /latest/meta-data/spot/instance-action > /tmp/sa 2>/dev/null
    if head -n 1 /tmp/sa | grep -q ' 200 '; then
        echo "GUEST-SPOT $(tail -n 1 /tmp/sa)"
        # DHCP again: the agent that answers now re-adopted this VM.
        udhcpc -i eth0 -n -q -t 10 -T 1 -s /udhcpc.sh && echo "GUEST-REDHCP $(ip -4 -o addr show eth0)"
        break
    fi
    sleep 1
done
while true; do sleep 60; done
"#;

const UDHCPC: &str = r#"#!/bin/sh
case "$1" in
    bound|renew)
        ip addr flush dev $interface
        ip addr add $ip/$mask dev $interface
        [ -n "$router" ] && ip route replace default via $router
        ;;
esac
"#;

fn usable() -> Option<(PathBuf, PathBuf)> {
    match guest::usable(&MODULES) {
        Ok(k) => Some(k),
        Err(why) => {
            eprintln!(
                "SKIP: the vm end-to-end test needs root, QEMU, a cloud kernel and busybox: {why}"
            );
            None
        }
    }
}

/// `images/vmlinuz` and `images/initrd.cpio` for the guest, a broken kernel and a root disk.
fn make_images(dir: &Path, kernel: &Path, modules: &Path) -> PathBuf {
    let images = guest::make_images(
        dir,
        kernel,
        modules,
        &MODULES,
        INIT,
        &[("udhcpc.sh", UDHCPC)],
    );
    std::fs::write(images.join("vmlinuz-broken"), b"not a kernel").unwrap();
    // A root disk for the VM (its overlay is what the test looks at; the guest runs from RAM).
    std::fs::File::create(images.join("scratch.raw"))
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    images
}

/// The first console line that starts with `prefix`, waiting for it.
async fn console_line(log: &Path, agent: &Daemon, prefix: &str) -> String {
    guest::console_line(log, agent, prefix, 1, BOOT).await
}

fn metric(admin: &str, name: &str, server: &str) -> Option<f64> {
    let (_, m) = http_get(admin, "/metrics");
    let prefix = format!("{name}{{server=\"{server}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_learns_who_it_is_is_squeezed_and_powers_off_by_acpi() {
    let Some((kernel, modules)) = usable() else {
        return;
    };
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], CLASSES);
    let mut setup = AgentSetup::new(&pki, &coord, "host-vm");
    let images = make_images(setup.dir.path(), &kernel, &modules);
    setup.extra_toml = format!(
        "[metadata]\nbind = \"169.254.169.254:80\"\n[network]\npool = \"10.213.241.0/24\"\n[vm]\nimages_dir = {images:?}\n"
    );
    let mut agent = setup.start(true, "1");
    let admin = agent.wait_log_value("admin listening", "admin_addr");
    let accel = agent.wait_log_value("vm driver ready", "accel");
    eprintln!("accelerator: {accel}");
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));

    let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
    let host_cpu = caps["free_resources"]["total"]["cpu"].as_u64().unwrap();
    let host_mem = caps["free_resources"]["total"]["mem"].as_u64().unwrap();
    let vm_mem = 256 * MIB;
    let bf_cpu = host_cpu - 500;
    let rss = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    eprintln!("agent RSS without VMs: {}", rss(agent.child.id()));

    // A kernel QEMU cannot load: the server fails at once (stopped, never stuck starting),
    // with QEMU's own words in the reason.
    let broken = create(
        &tenant,
        &coord.url("bservers/"),
        json!({"name": "broken", "cpu": 500, "mem": vm_mem,
               "workload": {"vm": {"kernel": "vmlinuz-broken"}}}),
    )
    .await;
    post(
        &tenant,
        &coord.url(&format!("bservers/{broken}/action/?do=start")),
        json!({}),
    )
    .await;
    within("the broken vm stopped", BOOT, || async {
        let (_, b) = get(&tenant, &coord.url(&format!("bservers/{broken}/"))).await;
        (b["status"] == "stopped").then_some(())
    })
    .await;
    let said = coord.daemon.log_text();
    assert!(
        said.lines().any(|l| l.contains("workload failed")
            && l.contains(&broken)
            && l.contains("QEMU exited at once")),
        "{said}"
    );
    let vm = create(
        &tenant,
        &coord.url("bservers/"),
        json!({"name": "vm", "cpu": bf_cpu, "mem": vm_mem,
               "workload": {"vm": {"image": "scratch.raw", "kernel": "vmlinuz", "initrd": "initrd.cpio",
                                   "cmdline": "console=ttyS0 panic=-1 loglevel=4"}}}),
    )
    .await;
    let started = Instant::now();
    post(
        &tenant,
        &coord.url(&format!("bservers/{vm}/action/?do=start")),
        json!({}),
    )
    .await;
    let rt = within("the vm running", BOOT, || async {
        let (_, b) = get(&tenant, &coord.url(&format!("bservers/{vm}/"))).await;
        assert_ne!(b["status"], "stopped", "the vm stopped: {b}");
        (b["status"] == "running").then(|| b["runtime"].clone())
    })
    .await;
    eprintln!("running after {:?}", started.elapsed());
    let ip = rt["nics"][0]["ip_v4"]["uuid"].as_str().unwrap().to_owned();
    let netns = rt["netns"].as_str().unwrap().to_owned();
    // Its disk is a copy-on-write overlay of the image, under the agent's state directory.
    let overlay = setup.state_dir().join("vm").join(&vm).join("disk.qcow2");
    assert!(overlay.is_file(), "{}", overlay.display());
    let log = setup.state_dir().join("logs").join(format!("{vm}.log"));
    let console = || std::fs::read_to_string(&log).unwrap_or_default();
    // The guest took exactly its address, and the metadata service knows it by it.
    let line = console_line(&log, &agent, "GUEST-ADDR").await;
    eprintln!(
        "guest has its address after {:?}: {line}",
        started.elapsed()
    );
    assert!(
        line.contains(&format!("inet {ip}/30")),
        "{line}\n{}",
        console()
    );
    let md = console_line(&log, &agent, "GUEST-MD-BEGIN").await;
    assert!(md.contains(" 200 "), "{md}");
    assert!(md.contains(&vm), "its own uuid in {md}");

    // A normal server that needs CPU and nearly all memory: the vm is downsized, and its
    // balloon and CPU quota follow.
    let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
    eprintln!("free: {}", caps["free_resources"]["total"]);
    // Its quota at full perf_factor, before anything squeezes it.
    let full_quota = metric(&admin, "backfill_agent_cpu_quota_microseconds", &vm).unwrap();
    let normal = create(
        &tenant,
        &coord.url("servers/"),
        json!({"name": "paying", "cpu": 1_500, "mem": host_mem - 128 * MIB,
               "workload": {"command": ["sleep", "300"]}}),
    )
    .await;
    let asked = Instant::now();
    post(
        &tenant,
        &coord.url(&format!("servers/{normal}/action/?do=start")),
        json!({}),
    )
    .await;
    let perf = within("the vm downsized", BOOT, || async {
        let (_, b) = get(&tenant, &coord.url(&format!("bservers/{vm}/"))).await;
        let p = b["runtime"]["perf_factor"].clone();
        (p["mem"].as_f64()? < 1.0).then_some(p)
    })
    .await;
    let decided = Instant::now();
    let target = (vm_mem as f64 * perf["mem"].as_f64().unwrap()) as u64;
    let shrunk = within("the balloon inflated", BOOT, || async {
        metric(&admin, "backfill_agent_memory_limit_bytes", &vm)
            .filter(|m| (*m as u64) < vm_mem && (*m as u64) <= target + 4 * MIB)
    })
    .await;
    eprintln!(
        "perf {perf}: balloon {shrunk} bytes (target {target}) {:?} after the downsize ({:?} after the request)",
        decided.elapsed(),
        asked.elapsed()
    );
    // The quota drops with the perf_factor (or further, while the agent squeezes the vm under
    // pressure beside the normal server).
    within("the quota lowered", BOOT, || async {
        metric(&admin, "backfill_agent_cpu_quota_microseconds", &vm)
            .filter(|q| *q <= full_quota * perf["cpu"].as_f64().unwrap_or(1.0) + 2.0)
    })
    .await;
    assert!(perf["cpu"].as_f64().unwrap() < 1.0, "{perf}");

    // It goes; the vm grows back.
    post(
        &tenant,
        &coord.url(&format!("servers/{normal}/action/?do=stop")),
        json!({}),
    )
    .await;
    let grown = Instant::now();
    within("the balloon deflated", BOOT, || async {
        metric(&admin, "backfill_agent_memory_limit_bytes", &vm)
            .filter(|m| (*m as u64) >= vm_mem - MIB)
    })
    .await;
    eprintln!(
        "grown back {:?} after the normal server stopped",
        grown.elapsed()
    );
    within("the quota restored", BOOT, || async {
        metric(&admin, "backfill_agent_cpu_quota_microseconds", &vm)
            .filter(|q| (q - full_quota).abs() <= 2.0)
    })
    .await;

    eprintln!("agent RSS with one VM: {}", rss(agent.child.id()));

    // The agent dies and comes back: it re-adopts the VM, checks its bridge and answers for
    // its balloon again (the balloon's size, not the cgroup's, is its memory limit).
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let mut agent = setup.start(true, "2");
    let admin = agent.wait_log_value("admin listening", "admin_addr");
    agent.wait_log_value("VM re-adopted", "server");
    within("the balloon reported again", BOOT, || async {
        metric(&admin, "backfill_agent_memory_limit_bytes", &vm)
            .filter(|m| (*m as u64) >= vm_mem - MIB && (*m as u64) <= vm_mem)
    })
    .await;
    let link = Command::new("ip")
        .args(["-n", &netns, "-o", "link", "show", "eth0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&link.stdout).contains("master br0"));
    let addrs = Command::new("ip")
        .args(["-n", &netns, "-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
    assert!(
        !addrs.contains(&ip),
        "the namespace keeps no guest address: {addrs}"
    );

    // A normal server that needs the whole host: a termination notice, which the guest reads.
    let big = create(
        &tenant,
        &coord.url("servers/"),
        json!({"name": "big", "cpu": host_cpu, "mem": 256 * MIB,
               "workload": {"command": ["sleep", "300"]}}),
    )
    .await;
    post(
        &tenant,
        &coord.url(&format!("servers/{big}/action/?do=start")),
        json!({}),
    )
    .await;
    let spot = console_line(&log, &agent, "GUEST-SPOT").await;
    assert!(spot.contains("terminate"), "{spot}");
    let again = console_line(&log, &agent, "GUEST-REDHCP").await;
    assert!(again.contains(&format!("inet {ip}/30")), "{again}");

    // Shut down: the power button, and the guest powers itself off.
    let (status, body) = post(
        &tenant,
        &coord.url(&format!("bservers/{vm}/action/?do=shutdown")),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    within("the vm stopped", BOOT, || async {
        let (_, b) = get(&tenant, &coord.url(&format!("bservers/{vm}/"))).await;
        (b["status"] == "stopped").then_some(())
    })
    .await;
    // The guest powered itself off (QEMU ends when its guest does).
    let text = console();
    assert!(text.contains("GUEST-POWER-BUTTON"), "{text}");
    assert!(text.contains("reboot: Power down"), "{text}");
    assert!(
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("workload exited") && l.contains(&vm)),
        "{}",
        agent.log_text()
    );
    post(
        &tenant,
        &coord.url(&format!("servers/{big}/action/?do=stop")),
        json!({}),
    )
    .await;

    // Started again, and stopped: QEMU is asked to quit (flushing its disk) before the kill.
    post(
        &tenant,
        &coord.url(&format!("bservers/{vm}/action/?do=start")),
        json!({}),
    )
    .await;
    within("the vm booted again", BOOT, || async {
        (console()
            .lines()
            .filter(|l| l.starts_with("GUEST-ADDR"))
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let stopping = Instant::now();
    post(
        &tenant,
        &coord.url(&format!("bservers/{vm}/action/?do=stop")),
        json!({}),
    )
    .await;
    within("the vm stopped again", BOOT, || async {
        let (_, b) = get(&tenant, &coord.url(&format!("bservers/{vm}/"))).await;
        (b["status"] == "stopped").then_some(())
    })
    .await;
    eprintln!("stopped in {:?}", stopping.elapsed());
    assert!(
        agent
            .log_text()
            .lines()
            .any(|l| l.contains("VM quit through QMP") && l.contains(&vm)),
        "{}",
        agent.log_text()
    );
}
