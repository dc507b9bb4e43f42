//! Minimal guests for the `vm` driver's end-to-end tests: Debian's cloud kernel and an
//! initramfs of a static busybox with a test's own `/init` and the kernel modules it needs.

use crate::Daemon;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The virtio modules every guest loads (PCI transport), in load order.
pub const VIRTIO: [&str; 5] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
];

/// The newest `/boot/vmlinuz-*-cloud-amd64` and its modules directory, when every module of
/// `modules` is there uncompressed.
pub fn cloud_kernel(modules: &[&str]) -> Option<(PathBuf, PathBuf)> {
    let mut k: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
        })
        .collect();
    k.sort();
    let kernel = k.pop()?;
    let release = kernel
        .file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")?
        .to_owned();
    let dir = PathBuf::from("/lib/modules").join(release).join("kernel");
    modules
        .iter()
        .all(|m| dir.join(format!("{m}.ko")).is_file())
        .then_some((kernel, dir))
}

/// Why this machine cannot boot test guests (root, QEMU, busybox, cpio, a cloud kernel with
/// `modules`), or the kernel and its modules directory.
pub fn usable(modules: &[&str]) -> Result<(PathBuf, PathBuf), &'static str> {
    let has = |p: &str| Path::new(p).is_file();
    if !crate::is_root() {
        Err("not root")
    } else if !has("/usr/bin/qemu-system-x86_64") || !has("/usr/bin/qemu-img") {
        Err("no qemu-system-x86_64/qemu-img (install qemu-system-x86)")
    } else if !has("/bin/busybox") {
        Err("no /bin/busybox (install busybox-static)")
    } else if Command::new("cpio").arg("--version").output().is_err() {
        Err("no cpio")
    } else {
        cloud_kernel(modules).ok_or(
            "no /boot/vmlinuz-*-cloud-amd64 with uncompressed modules (install linux-image-cloud-amd64)",
        )
    }
}

/// Writes `images/vmlinuz` and `images/initrd.cpio` under `dir`: busybox, `init` as `/init`,
/// each of `modules` as `/modules/<name>.ko`, and `files` (name, text) executable at the root.
/// Answers the image directory.
pub fn make_images(
    dir: &Path,
    kernel: &Path,
    modules_dir: &Path,
    modules: &[&str],
    init: &str,
    files: &[(&str, &str)],
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let stage = dir.join("stage");
    for d in ["bin", "modules", "dev", "proc", "sys", "tmp", "mnt"] {
        std::fs::create_dir_all(stage.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", stage.join("bin/busybox")).unwrap();
    for m in modules {
        let name = Path::new(m).file_name().unwrap().to_str().unwrap();
        std::fs::copy(
            modules_dir.join(format!("{m}.ko")),
            stage.join(format!("modules/{name}.ko")),
        )
        .unwrap();
    }
    for (name, text) in std::iter::once(("init", init)).chain(files.iter().copied()) {
        let p = stage.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::os::unix::fs::symlink("busybox", stage.join("bin/sh")).unwrap();
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let out = std::fs::File::create(images.join("initrd.cpio")).unwrap();
    let ok = Command::new("sh")
        .args(["-c", "find . | cpio -o -H newc --quiet"])
        .current_dir(&stage)
        .stdout(out)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::copy(kernel, images.join("vmlinuz")).unwrap();
    images
}

/// The `n`th (from 1) console line of `log` that starts with `prefix`, waiting up to `limit`
/// for it (the console and the agent's log in the panic message when it does not come).
pub async fn console_line(
    log: &Path,
    agent: &Daemon,
    prefix: &str,
    n: usize,
    limit: Duration,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().filter(|l| l.starts_with(prefix)).nth(n - 1) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {prefix} (#{n}) on the console:\n{text}\n--- agent:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
