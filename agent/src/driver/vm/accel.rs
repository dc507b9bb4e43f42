//! Which accelerator guests get. `/dev/kvm` that opens is not enough: some hosts (nested
//! virtualisation without the CPU's extensions) create KVM VMs that never run a guest
//! kernel. So `auto` boots a probe guest on KVM once, at agent start, and takes KVM only
//! when the guest shows it runs before a deadline:
//! - with a Linux kernel (the first kernel of the image directory, else the host's own
//!   `/boot/vmlinuz-$(uname -r)`, else the newest `/boot/vmlinuz-*`): its first console line
//!   (`Linux version`, through `earlyprintk`) must appear;
//! - without one: a 64 KiB firmware that enters long mode and writes to QEMU's
//!   `isa-debug-exit` port, which makes QEMU exit with status 3 (weaker: a host whose KVM
//!   runs this firmware but no Linux kernel passes it).
//!
//! The probe guest gets the machine and CPU model VMs get (`q35`, `-cpu host` on KVM).

use super::config::Accel;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the probe guest has to show it runs.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// The accelerator chosen, and the warning to log when `auto` fell back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub accel: &'static str,
    pub warning: Option<String>,
}

/// The choice: `tcg` and `kvm` as configured; `auto` probes KVM when `/dev/kvm` exists.
pub fn choose(
    configured: Accel,
    kvm_exists: bool,
    probe: impl FnOnce() -> Result<(), String>,
) -> Chosen {
    match configured {
        Accel::Tcg => Chosen {
            accel: "tcg",
            warning: None,
        },
        Accel::Kvm => Chosen {
            accel: "kvm",
            warning: None,
        },
        Accel::Auto if !kvm_exists => Chosen {
            accel: "tcg",
            warning: Some("no /dev/kvm: guests run on TCG (slow)".into()),
        },
        Accel::Auto => match probe() {
            Ok(()) => Chosen {
                accel: "kvm",
                warning: None,
            },
            Err(why) => Chosen {
                accel: "tcg",
                warning: Some(format!(
                    "/dev/kvm is here but a probe guest did not run on it ({why}): guests run on TCG (slow)"
                )),
            },
        },
    }
}

/// The probe firmware: at the reset vector, a jump to code that builds identity-mapped page
/// tables at 0x1000, enters long mode and writes 1 to port 0xf4 (QEMU exits with 3).
pub fn probe_firmware() -> Vec<u8> {
    const CODE: &[u8] = &[
        0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x66, 0xc7, 0x06, 0x00, 0x10, 0x03, 0x20, 0x00, 0x00, 0x66,
        0xc7, 0x06, 0x04, 0x10, 0x00, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x00, 0x20, 0x03, 0x30,
        0x00, 0x00, 0x66, 0xc7, 0x06, 0x04, 0x20, 0x00, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x00,
        0x30, 0x83, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x04, 0x30, 0x00, 0x00, 0x00, 0x00, 0x2e,
        0x66, 0x0f, 0x01, 0x16, 0x90, 0x00, 0x0f, 0x20, 0xe0, 0x66, 0x83, 0xc8, 0x20, 0x0f, 0x22,
        0xe0, 0x66, 0xb8, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x22, 0xd8, 0x66, 0xb9, 0x80, 0x00, 0x00,
        0xc0, 0x0f, 0x32, 0x66, 0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x66,
        0x0d, 0x01, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0x66, 0xea, 0x79, 0x00, 0x0f, 0x00, 0x08,
        0x00, 0xb0, 0x01, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x9b, 0xaf, 0x00, 0x0f, 0x00, 0x80, 0x00, 0x0f, 0x00,
    ];
    let mut fw = vec![0u8; 0x10000];
    fw[..CODE.len()].copy_from_slice(CODE);
    // ljmp $0xf000, $0 at the reset vector.
    fw[0xfff0..0xfff5].copy_from_slice(&[0xea, 0x00, 0x00, 0x00, 0xf0]);
    fw
}

/// A kernel to probe with: the image directory's first, else the host's own.
pub fn probe_kernel(images_dir: &Path) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(images_dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| crate::images::boot_file_kind(n) == Some("kernel"))
        .collect();
    names.sort();
    if let Some(p) = names
        .first()
        .and_then(|n| crate::images::resolve(images_dir, n).ok())
    {
        return Some(p);
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let host = PathBuf::from(format!("/boot/vmlinuz-{}", release.trim()));
    if host.is_file() {
        return Some(host);
    }
    // In a container the running kernel's may be absent; any of /boot's will do.
    let mut boot: Vec<PathBuf> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
                && p.is_file()
        })
        .collect();
    boot.sort();
    boot.pop()
}

/// Boots the probe guest with `accel` in `work` (a scratch directory of the agent's).
pub fn probe(qemu: &Path, accel: &str, kernel: Option<&Path>, work: &Path) -> Result<(), String> {
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let console = work.join("accel-probe.log");
    let _ = std::fs::remove_file(&console);
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-m",
        "256",
    ])
    // The machine and CPU model VMs get (see argv.rs): `-cpu host` is what fails on some
    // hosts whose KVM runs simpler guests.
    .args(["-machine", "q35", "-accel", accel, "-no-reboot"])
    .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(k) = kernel {
        cmd.arg("-kernel")
            .arg(k)
            .args(["-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()));
    } else {
        let fw = work.join("accel-probe.bin");
        std::fs::write(&fw, probe_firmware()).map_err(|e| format!("{}: {e}", fw.display()))?;
        cmd.arg("-bios")
            .arg(&fw)
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", qemu.display()))?;
    let deadline = Instant::now() + PROBE_DEADLINE;
    let result = loop {
        // Looked at before the console: a guest that printed and then ended counts.
        let status = child.try_wait();
        if kernel.is_some()
            && std::fs::read(&console).is_ok_and(|t| t.windows(13).any(|w| w == b"Linux version"))
        {
            break Ok(());
        }
        match status {
            Ok(Some(s)) if kernel.is_none() && s.code() == Some(3) => break Ok(()),
            Ok(Some(s)) => break Err(format!("the probe guest ended ({s}) without running")),
            Ok(None) if Instant::now() > deadline => {
                break Err(format!(
                    "no sign of life within {} s",
                    PROBE_DEADLINE.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(e.to_string()),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_choice() {
        let never = || -> Result<(), String> { panic!("probed") };
        assert_eq!(choose(Accel::Tcg, true, never).accel, "tcg");
        assert_eq!(choose(Accel::Kvm, false, never).accel, "kvm");
        let c = choose(Accel::Auto, false, never);
        assert_eq!(c.accel, "tcg");
        assert!(c.warning.is_some());
        assert_eq!(
            choose(Accel::Auto, true, || Ok(())),
            Chosen {
                accel: "kvm",
                warning: None
            }
        );
        let c = choose(Accel::Auto, true, || Err("no sign of life".into()));
        assert_eq!(c.accel, "tcg");
        assert!(c.warning.unwrap().contains("no sign of life"));
    }

    #[test]
    fn the_probe_runs_on_tcg() {
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        if !qemu.exists() {
            eprintln!("SKIP: no {} (install qemu-system-x86)", qemu.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        probe(qemu, "tcg", None, dir.path()).unwrap();
        if let Some(k) = probe_kernel(Path::new("/nonexistent")) {
            probe(qemu, "tcg", Some(&k), dir.path()).unwrap();
        }
        // A firmware that never reaches the port is not taken for a running guest.
        let e = probe(qemu, "tcg", Some(Path::new("/dev/null")), dir.path()).unwrap_err();
        assert!(!e.is_empty());
    }
}
