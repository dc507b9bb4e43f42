//! A real cloud-init under the `vm` driver (issue 17): a Debian bookworm root filesystem with
//! cloud-init, built with `mmdebstrap` and cached between runs, boots on TCG in isolated mode;
//! cloud-init finds the OpenStack datasource at 169.254.169.254, sets the hostname our
//! metadata gives, and runs the server's `cloudinit-user-data`.
//!
//! Heavy (a Debian bootstrap when the cache is cold, a systemd boot on TCG): it runs only with
//! `BACKFILL_CLOUDINIT_TEST=1`, as root, with QEMU, `mmdebstrap` and `mkfs.ext4`. The image
//! is cached under `${XDG_CACHE_HOME:-$HOME/.cache}/backfill/cloudinit-<hash of the recipe>/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_tests::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What Debian's cloud images carry for cloud-init to work: systemd, udev, ifupdown with a
/// DHCP client (cloud-init's ENI renderer), and the cloud kernel (its initramfs has virtio).
const PACKAGES: &str = "systemd-sysv,udev,dbus,cloud-init,ifupdown,isc-dhcp-client,iproute2,netbase,linux-image-cloud-amd64";
/// Only the OpenStack datasource: ds-identify takes a single entry as is, and the datasource
/// itself recognises the platform by its DMI product name (which the vm driver sets).
const DS_CFG: &str = "datasource_list: [OpenStack, None]\ndatasource:\n  OpenStack:\n    max_wait: 120\n    timeout: 10\n    retries: 5\n";
const INTERFACES: &str = "auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n";
const FSTAB: &str = "/dev/vda / ext4 rw,errors=remount-ro 0 1\n";
/// Not the name our metadata gives, so that cloud-init's is seen to take.
const HOSTNAME_BEFORE: &str = "bootstrapped\n";
/// Units that only cost boot time on TCG.
const MASK: [&str; 5] = [
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
];
const IMAGE_BYTES: u64 = 2 << 30;
/// TCG with systemd and cloud-init's four stages is slow.
const BOOT: Duration = Duration::from_secs(420);
const MIB: u64 = 1 << 20;

const USER_DATA: &str = r#"#cloud-config
runcmd:
  - [sh, -c, 'echo "CLOUDINIT-USERDATA-RAN host=$(hostname) iid=$(cat /var/lib/cloud/data/instance-id)" > /dev/ttyS0']
"#;

fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("backfill")
}

/// FNV-1a over everything that goes into the image: a change to the recipe is a new cache.
fn recipe_hash() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let recipe = [
        SUITE,
        MIRROR,
        PACKAGES,
        DS_CFG,
        INTERFACES,
        FSTAB,
        HOSTNAME_BEFORE,
        &MASK.join(","),
        &IMAGE_BYTES.to_string(),
    ]
    .join("\0");
    for b in recipe.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn usable() -> bool {
    let has = |p: &str| Path::new(p).is_file();
    let why = if std::env::var("BACKFILL_CLOUDINIT_TEST").as_deref() != Ok("1") {
        "BACKFILL_CLOUDINIT_TEST=1 is not set (.ci/run sets it)"
    } else if !is_root() {
        "not root"
    } else if !has("/usr/bin/qemu-system-x86_64") || !has("/usr/bin/qemu-img") {
        "no qemu-system-x86_64/qemu-img (install qemu-system-x86)"
    } else if !has("/usr/bin/mmdebstrap") {
        "no mmdebstrap (install mmdebstrap)"
    } else if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        "no mkfs.ext4 (install e2fsprogs)"
    } else {
        return true;
    };
    eprintln!("SKIP: the real cloud-init test: {why}");
    false
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cached images directory: `vmlinuz`, `initrd.img` and `root.raw` (ext4), built when
/// missing. A half-built one is never taken for the real thing: it is built beside and
/// renamed into place.
fn images() -> PathBuf {
    let root = cache_root();
    let dir = root.join(format!("cloudinit-{}", recipe_hash()));
    if dir.join("root.raw").is_file() {
        eprintln!("cached image: {}", dir.display());
        return dir;
    }
    let started = Instant::now();
    std::fs::create_dir_all(&root).unwrap();
    let work = tempfile::tempdir_in(&root).unwrap();
    let rootfs = work.path().join("rootfs");
    run(Command::new("mmdebstrap")
        .args(["--variant=minbase", "--include", PACKAGES, SUITE])
        .arg(&rootfs)
        .arg(MIRROR));
    let out = work.path().join("images");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = rootfs.join("etc/cloud/cloud.cfg.d");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("90-backfill-test.cfg"), DS_CFG).unwrap();
    std::fs::write(rootfs.join("etc/network/interfaces"), INTERFACES).unwrap();
    std::fs::create_dir_all(rootfs.join("etc/network/interfaces.d")).unwrap();
    std::fs::write(rootfs.join("etc/fstab"), FSTAB).unwrap();
    std::fs::write(rootfs.join("etc/hostname"), HOSTNAME_BEFORE).unwrap();
    for unit in MASK {
        let _ =
            std::os::unix::fs::symlink("/dev/null", rootfs.join("etc/systemd/system").join(unit));
    }
    let boot: Vec<PathBuf> = std::fs::read_dir(rootfs.join("boot"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let pick = |prefix: &str| {
        boot.iter()
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("no /boot/{prefix}* in the rootfs: {boot:?}"))
            .clone()
    };
    std::fs::copy(pick("vmlinuz-"), out.join("vmlinuz")).unwrap();
    std::fs::copy(pick("initrd.img-"), out.join("initrd.img")).unwrap();
    let raw = out.join("root.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(IMAGE_BYTES)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(&rootfs)
        .arg(&raw));
    // Another run that built it meanwhile wins; its image is as good as this one.
    if let Err(e) = std::fs::rename(&out, &dir) {
        assert!(dir.join("root.raw").is_file(), "{}: {e}", dir.display());
    }
    eprintln!(
        "built the cloud-init image in {:?}: {}",
        started.elapsed(),
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debian_guest_with_cloud_init_takes_our_hostname_and_runs_its_user_data() {
    if !usable() {
        return;
    }
    let t0 = Instant::now();
    let images = images();
    let built = t0.elapsed();

    let pki = Pki::new();
    let coord = Coordinator::start(&pki, &["tenant"]);
    let mut setup = AgentSetup::new(&pki, &coord, "host-cloudinit");
    setup.extra_toml = format!(
        "[metadata]\nbind = \"169.254.169.254:80\"\n[network]\npool = \"10.213.242.0/24\"\n[vm]\nimages_dir = {images:?}\n"
    );
    let mut agent = setup.start(true, "1");
    let accel = agent.wait_log_value("vm driver ready", "accel");
    eprintln!("accelerator: {accel}");
    let tenant = client(
        &pki.ca(),
        Some(&pki.issue(backfill_shared::pki::Role::Account, "tenant")),
    );
    let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
    let host_cpu = caps["free_resources"]["total"]["cpu"].as_u64().unwrap();

    // The name gives the hostname (lower case, runs of anything else one dash).
    let name = "Cloud Init_Guest";
    let hostname = "cloud-init-guest";
    let vm = create(
        &tenant,
        &coord.url("bservers/"),
        json!({"name": name, "cpu": host_cpu.min(2_000), "mem": 768 * MIB,
               "meta": {"cloudinit-user-data": USER_DATA},
               "workload": {"vm": {"image": "root.raw", "kernel": "vmlinuz", "initrd": "initrd.img",
                                   "cmdline": "console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1"}}}),
    )
    .await;
    let started = Instant::now();
    post(
        &tenant,
        &coord.url(&format!("bservers/{vm}/action/?do=start")),
        json!({}),
    )
    .await;
    let log = setup.state_dir().join("logs").join(format!("{vm}.log"));
    let console = || std::fs::read_to_string(&log).unwrap_or_default();
    // Polls the console for a line containing `needle` (the console and the agent's log in
    // the panic message when it does not come in time).
    let line = |needle: &'static str| {
        let deadline = started + BOOT;
        let console = &console;
        let agent = &agent;
        async move {
            loop {
                let text = console();
                if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                    return l.to_owned();
                }
                assert!(
                    Instant::now() < deadline,
                    "no {needle:?} on the console after {BOOT:?}:\n{text}\n--- agent:\n{}",
                    agent.log_text()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };

    let ran = line("CLOUDINIT-USERDATA-RAN").await;
    let booted = started.elapsed();
    eprintln!("user-data ran after {booted:?}: {ran}");
    assert!(ran.contains(&format!("host={hostname} ")), "{ran}");
    assert!(ran.contains(&format!("iid={vm}")), "{ran}");
    // cloud-final's closing message: "Cloud-init v. X finished at ... Datasource ...".
    let finished = line("finished at").await;
    eprintln!(
        "cloud-init finished after {:?}: {finished}",
        started.elapsed()
    );
    assert!(
        finished.contains("Cloud-init v.") && finished.contains("DataSourceOpenStack"),
        "{finished}"
    );
    let text = console();
    for l in text.lines().filter(|l| {
        l.contains("Cloud-init v.")
            || l.contains("CLOUDINIT-")
            || l.contains("ci-info: |  eth0")
            || l.contains("WARN")
            || l.contains("Traceback")
    }) {
        eprintln!("console: {l}");
    }

    assert!(
        !text.contains("Traceback"),
        "cloud-init failed somewhere:\n{text}"
    );

    let stopping = Instant::now();
    post(
        &tenant,
        &coord.url(&format!("bservers/{vm}/action/?do=stop")),
        json!({}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, b) = get(&tenant, &coord.url(&format!("bservers/{vm}/"))).await;
        if b["status"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "the vm did not stop: {b}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "timings: image {built:?} (cached or built), start to user-data {booted:?}, stop {:?}, total {:?}",
        stopping.elapsed(),
        t0.elapsed()
    );
}
