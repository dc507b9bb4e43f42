//! The `[vm]` section of the agent's configuration.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which accelerator guests run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when `/dev/kvm` exists and a probe guest really runs on it (once, at agent start),
    /// else TCG with a logged warning.
    #[default]
    Auto,
    /// KVM, unprobed (the operator vouches for it).
    Kvm,
    /// QEMU's emulator: slow, but runs anywhere.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// `[vm]`: QEMU virtual machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Offer the `vm` driver when QEMU and the image directory are here.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// QEMU's system emulator.
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    /// `qemu-img`, for overlays and the image inventory.
    #[serde(default = "default_qemu_img")]
    pub qemu_img: PathBuf,
    /// The operator's disk images, kernels and initrds; VMs name files in it.
    #[serde(default = "default_images_dir")]
    pub images_dir: PathBuf,
    #[serde(default)]
    pub accel: Accel,
    /// Memory a VM's cgroup allows beyond its guest memory, for QEMU itself (MiB).
    #[serde(default = "default_overhead")]
    pub memory_overhead_mib: u64,
    /// A VM's console log is rotated (to `<log>.1`) when it grows past this (MiB).
    #[serde(default = "default_console_max")]
    pub console_log_max_mib: u64,
}

impl Default for VmConfig {
    fn default() -> VmConfig {
        VmConfig {
            enabled: true,
            qemu: default_qemu(),
            qemu_img: default_qemu_img(),
            images_dir: default_images_dir(),
            accel: Accel::Auto,
            memory_overhead_mib: default_overhead(),
            console_log_max_mib: default_console_max(),
        }
    }
}

impl VmConfig {
    /// What is wrong with it: `(key, reason)`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        for (key, p) in [
            ("vm.qemu", &self.qemu),
            ("vm.qemu_img", &self.qemu_img),
            ("vm.images_dir", &self.images_dir),
        ] {
            if !p.is_absolute() {
                return Err((key, "must be an absolute path"));
            }
        }
        if !(64..=65_536).contains(&self.memory_overhead_mib) {
            return Err(("vm.memory_overhead_mib", "must be 64 to 65536"));
        }
        if !(1..=4096).contains(&self.console_log_max_mib) {
            return Err(("vm.console_log_max_mib", "must be 1 to 4096"));
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}
fn default_qemu() -> PathBuf {
    PathBuf::from("/usr/bin/qemu-system-x86_64")
}
fn default_qemu_img() -> PathBuf {
    PathBuf::from("/usr/bin/qemu-img")
}
fn default_images_dir() -> PathBuf {
    PathBuf::from("/var/lib/backfill-agent/images")
}
fn default_overhead() -> u64 {
    256
}
fn default_console_max() -> u64 {
    16
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_typos() {
        let c: VmConfig = toml::from_str("").unwrap();
        assert_eq!(c, VmConfig::default());
        assert_eq!(c.validate(), Ok(()));
        let c: VmConfig = toml::from_str("accel = \"tcg\"\nqemu = \"/opt/q\"").unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(toml::from_str::<VmConfig>("accel = \"hvf\"").is_err());
        assert!(toml::from_str::<VmConfig>("qemu_binary = \"/x\"").is_err());
        let rel: VmConfig = toml::from_str("images_dir = \"images\"").unwrap();
        assert_eq!(rel.validate().unwrap_err().0, "vm.images_dir");
    }
}
