//! The driver against the real runtime (root and runc only; skipped otherwise, saying why).

#![allow(clippy::unwrap_used)]

use super::cache::{ImageRecord, sha256_hex};
use super::*;
use crate::driver::Driver;
use backfill_shared::{ContainerWorkload, GuestProfile, ServerClass, Workload};
use std::collections::BTreeMap;

#[test]
fn loopback_name_servers_are_left_out() {
    let r = resolv_conf();
    assert!(!r.contains("nameserver 127."), "{r}");
}

/// Removes the run however the test ends (a failed assertion must not leave a container).
struct Cleanup<'a>(&'a ContainerDriver, ServerId);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.0.release(&self.1);
    }
}

/// Why this host cannot run the real-runtime test, if it cannot.
fn cannot_run() -> Option<&'static str> {
    if !crate::driver::running_as_root() {
        return Some("not root");
    }
    if !Path::new("/usr/sbin/runc").exists() {
        return Some("no /usr/sbin/runc");
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("no /bin/busybox (busybox-static)");
    }
    None
}

/// An image put straight into the cache: busybox and a shell.
fn seed_image(driver: &ContainerDriver, reference: &str) -> String {
    let manifest = sha256_hex(reference.as_bytes());
    let tmp = driver.cache.tmp_path("rootfs");
    std::fs::create_dir_all(tmp.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", tmp.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", tmp.join("bin/sh")).unwrap();
    driver
        .cache
        .commit_image(
            &tmp,
            &ImageRecord {
                references: vec![reference.into()],
                manifest: manifest.clone(),
                config: spec::ImageConfig {
                    cmd: vec!["/bin/sh".into(), "-c".into(), "echo from-image".into()],
                    env: vec!["FROM_IMAGE=1".into()],
                    ..Default::default()
                },
                blobs: vec![],
                unpacked_bytes: 1,
            },
        )
        .unwrap();
    manifest
}

#[test]
fn a_container_runs_is_asked_to_stop_and_leaves_nothing() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = ContainerConfig::default();
    let driver = ContainerDriver::new(&cfg, dir.path()).unwrap();
    let mut inv = backfill_shared::Drivers::default();
    driver.report(&mut inv);
    assert!(inv.container.unwrap().runtime.starts_with("runc "));
    seed_image(&driver, "example.invalid/demo:1");
    let id = ServerId::from_u128(0xc0ffee);
    let workload = Workload {
        container: Some(ContainerWorkload {
            image: "example.invalid/demo:1".into(),
            workdir: Some("/tmp".into()),
        }),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "trap 'echo got-term; exit 0' TERM; echo uid=$(id -u) pwd=$(pwd) host=$(hostname) img=$FROM_IMAGE wl=$WL; touch /ro 2>/dev/null || echo read-only; while true; do sleep 0.1; done".into(),
        ],
        ..Workload::default()
    };
    let env: BTreeMap<String, String> = [("WL".into(), "yes".into())].into();
    let guest = GuestProfile {
        name: "c".into(),
        hostname: "box-1".into(),
        account: "t".into(),
        class: ServerClass::Backfill,
        instance_type: "x".into(),
        meta: Default::default(),
        user_data: None,
    };
    let log = dir.path().join("c.log");
    let launch = Launch {
        server: id,
        workload: &workload,
        resources: Default::default(),
        perf_factor: Default::default(),
        class: ServerClass::Backfill,
        env: &env,
        gpus: &[],
        join_files: &[],
        cgroup_path: None,
        log_file: &log,
        network: None,
        guest: &guest,
        run_as: Some(crate::driver::RunAs {
            uid: 65534,
            gid: 65534,
        }),
    };
    let _cleanup = Cleanup(&driver, id);
    let launched = driver.launch(&launch).unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !read().contains("read-only") {
        assert!(std::time::Instant::now() < deadline, "log: {}", read());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        read().contains("uid=65534 pwd=/tmp host=box-1 img=1 wl=yes"),
        "{}",
        read()
    );
    let bundle = dir.path().join("containers").join(id.to_string());
    driver.sweep(&[id]);
    assert!(bundle.exists(), "a running container is kept");
    driver.request_shutdown(&id, &launched.process);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::driver::alive(&launched.process) {
        assert!(std::time::Instant::now() < deadline, "SIGTERM ignored");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(read().contains("got-term"), "{}", read());
    driver.release(&id);
    assert!(!dir.path().join("containers").join(id.to_string()).exists());
    assert!(!dir.path().join("runc").join(id.to_string()).exists());
    // A command that does not exist: a clear error and nothing left.
    let bad = Workload {
        command: vec!["/nope".into()],
        ..workload.clone()
    };
    let err = driver
        .launch(&Launch {
            workload: &bad,
            ..launch.clone()
        })
        .unwrap_err();
    assert!(err.to_string().contains("/nope"), "{err}");
    assert!(!dir.path().join("containers").join(id.to_string()).exists());
    // An image the cache does not have, from a registry that does not exist.
    let missing = Workload {
        container: Some(ContainerWorkload {
            image: "127.0.0.1:1/missing:1".into(),
            workdir: None,
        }),
        ..workload.clone()
    };
    let err = driver
        .launch(&Launch {
            workload: &missing,
            ..launch.clone()
        })
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1/missing:1"), "{err}");
}

/// A one-layer OCI layout of busybox under `root/NAME`, tagged `1`.
fn write_layout(root: &Path, name: &str) {
    use std::io::Write;
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let put = |data: &[u8]| {
        let hex = sha256_hex(data);
        std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
        (format!("sha256:{hex}"), data.len())
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    h.set_size(busybox.len() as u64);
    h.set_mode(0o755);
    b.append_data(&mut h, "bin/busybox", busybox.as_slice())
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "bin/sh", "busybox").unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    let (layer, lsize) = put(&gz.finish().unwrap());
    let (config, csize) = put(br#"{"config":{"Cmd":["/bin/sh","-c","echo from-layout"]}}"#);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{csize}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{lsize}}}]}}"#
    );
    let (m, msize) = put(manifest.as_bytes());
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{msize},"annotations":{{"org.opencontainers.image.ref.name":"1"}}}}]}}"#
        ),
    )
    .unwrap();
}

#[test]
fn an_image_from_an_oci_layout_runs_its_own_command() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_layout(&dir.path().join("oci"), "demo");
    let cfg = ContainerConfig {
        layouts_dir: Some(dir.path().join("oci")),
        ..ContainerConfig::default()
    };
    let driver = ContainerDriver::new(&cfg, &dir.path().join("state")).unwrap();
    let workload = Workload {
        container: Some(ContainerWorkload {
            image: "layout.invalid/demo:1".into(),
            workdir: None,
        }),
        ..Workload::default()
    };
    let guest = GuestProfile {
        name: "c".into(),
        hostname: "box-2".into(),
        account: "t".into(),
        class: ServerClass::Normal,
        instance_type: "x".into(),
        meta: Default::default(),
        user_data: None,
    };
    let log = dir.path().join("c.log");
    let id = ServerId::from_u128(0x1a70);
    let env = BTreeMap::new();
    let _cleanup = Cleanup(&driver, id);
    let launched = driver.launch(&Launch {
        server: id,
        workload: &workload,
        resources: Default::default(),
        perf_factor: Default::default(),
        class: ServerClass::Normal,
        env: &env,
        gpus: &[],
        join_files: &[],
        cgroup_path: None,
        log_file: &log,
        network: None,
        guest: &guest,
        run_as: None,
    });
    // It may have printed and exited before the start was checked: either is fine.
    if let Err(e) = &launched {
        assert!(e.to_string().contains("exited at once"), "{e}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("from-layout")
    {
        assert!(std::time::Instant::now() < deadline, "nothing logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    driver.release(&id);
    let cached = driver.cache.find("layout.invalid/demo:1").unwrap();
    assert_eq!(cached.blobs.len(), 2);
    assert!(cached.unpacked_bytes > 1_000_000, "busybox unpacked");
    // Unknown tags and agents without layouts are clear errors.
    let err = driver
        .puller
        .get(
            "layout.invalid/demo:2",
            Duration::from_secs(10),
            BTreeSet::new(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("no manifest for 2"), "{err}");
}

#[test]
fn in_a_user_namespace_the_image_root_is_an_unprivileged_host_user() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // runc enters the bundle as the mapped root: the state directory must be o+x.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    write_layout(&dir.path().join("oci"), "demo");
    let cfg = ContainerConfig {
        layouts_dir: Some(dir.path().join("oci")),
        userns_base: Some(300_000),
        ..ContainerConfig::default()
    };
    let driver = ContainerDriver::new(&cfg, &dir.path().join("state")).unwrap();
    let workload = Workload {
        container: Some(ContainerWorkload {
            image: "layout.invalid/demo:1".into(),
            workdir: None,
        }),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo uid=$(/bin/busybox id -u) map=$(/bin/busybox cat /proc/self/uid_map); trap 'exit 0' TERM; while true; do /bin/busybox sleep 0.1; done".into(),
        ],
        ..Workload::default()
    };
    let guest = GuestProfile {
        name: "c".into(),
        hostname: "box-3".into(),
        account: "t".into(),
        class: ServerClass::Backfill,
        instance_type: "x".into(),
        meta: Default::default(),
        user_data: None,
    };
    let log = dir.path().join("c.log");
    let id = ServerId::from_u128(0x5e5);
    let env = BTreeMap::new();
    let _cleanup = Cleanup(&driver, id);
    let launched = driver
        .launch(&Launch {
            server: id,
            workload: &workload,
            resources: Default::default(),
            perf_factor: Default::default(),
            class: ServerClass::Backfill,
            env: &env,
            gpus: &[],
            join_files: &[],
            cgroup_path: None,
            log_file: &log,
            network: None,
            guest: &guest,
            run_as: None,
        })
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !read().contains("map=") {
        assert!(std::time::Instant::now() < deadline, "log: {}", read());
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = read();
    let line = text
        .lines()
        .find(|l| l.starts_with("uid="))
        .unwrap_or_default();
    // uid_map pads its columns: "map=         0     300000      65536".
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words, ["uid=0", "map=", "0", "300000", "65536"], "{text}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", launched.process.pid)).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.contains("300000"), "{uid_line}");
    driver.request_shutdown(&id, &launched.process);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::driver::alive(&launched.process) {
        assert!(std::time::Instant::now() < deadline, "SIGTERM ignored");
        std::thread::sleep(Duration::from_millis(20));
    }
    driver.release(&id);
    assert!(
        !dir.path()
            .join("state/containers")
            .join(id.to_string())
            .exists()
    );
}

#[test]
fn a_missing_runtime_means_no_driver_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ContainerConfig {
        runtime: "/nonexistent/runc".into(),
        ..ContainerConfig::default()
    };
    assert!(ContainerDriver::detect(&cfg, dir.path()).is_none());
    let err = ContainerDriver::new(&cfg, dir.path()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/runc"), "{err}");
    let off = ContainerConfig {
        enabled: false,
        ..ContainerConfig::default()
    };
    assert!(ContainerDriver::detect(&off, dir.path()).is_none());
}
