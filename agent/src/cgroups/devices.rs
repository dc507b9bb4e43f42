//! Which NVIDIA device files a server's workload may open: the rules for the v1 devices
//! controller, and the `nvidia-uvm` majors read from `/proc/devices`.
//!
//! The NVIDIA driver's character devices share major 195: `/dev/nvidia<N>` (minors 0-253, one
//! per GPU), `/dev/nvidia-modeset` (254) and `/dev/nvidiactl` (255). `nvidia-uvm` and
//! `nvidia-uvm-tools` get a dynamic major, listed in `/proc/devices`.
//!
//! A new v1 devices cgroup allows everything (`a *:* rwm`), and in that mode the kernel only
//! *removes* a deny exception when a rule is written to `devices.allow`: an allow cannot carve a
//! hole in a wildcard deny (`c 195:* rwm` would deny `nvidiactl` too, whatever is allowed
//! after). So [`nvidia_rules`] denies every GPU minor the server was not given, one by one, and
//! leaves the rest of the host's devices alone. For a server with GPUs it then writes allows for
//! its GPUs and the control devices: a no-op under an allow-all parent, and what makes them
//! usable under a deny-by-default one (the agent itself in a device-restricted container).

use super::CgroupError;
use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::Path;

/// The NVIDIA driver's character major.
pub const NVIDIA_MAJOR: u32 = 195;
/// `/dev/nvidia-modeset`.
pub const NVIDIA_MODESET_MINOR: u32 = 254;
/// `/dev/nvidiactl`.
pub const NVIDIA_CTL_MINOR: u32 = 255;
/// The highest `/dev/nvidia<N>` minor.
pub const NVIDIA_MAX_GPU_MINOR: u32 = 253;

/// One line for `devices.allow` or `devices.deny`: a character device (`c MAJOR:MINOR rwm`;
/// `minor: None` is `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub major: u32,
    pub minor: Option<u32>,
}

impl DeviceRule {
    pub fn allow(major: u32, minor: Option<u32>) -> DeviceRule {
        DeviceRule {
            allow: true,
            major,
            minor,
        }
    }

    pub fn deny(major: u32, minor: Option<u32>) -> DeviceRule {
        DeviceRule {
            allow: false,
            major,
            minor,
        }
    }

    /// `devices.allow` or `devices.deny`.
    pub fn file(&self) -> &'static str {
        if self.allow {
            "devices.allow"
        } else {
            "devices.deny"
        }
    }
}

/// What the kernel reads: `c 195:0 rwm`.
impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.minor {
            Some(m) => write!(f, "c {}:{m} rwm", self.major),
            None => write!(f, "c {}:* rwm", self.major),
        }
    }
}

/// The rules for a server given the GPUs at `/dev/nvidia<minor>` for each of `minors` (empty:
/// no GPUs), in the order they are written: first a deny for every other GPU minor (0-253),
/// then, for a server with GPUs, an allow for each of its GPUs, `nvidia-modeset`,
/// `nvidiactl` and every `nvidia-uvm` major in `uvm_majors`. Minors above 253 are not GPUs and
/// are ignored.
pub fn nvidia_rules(minors: &BTreeSet<u32>, uvm_majors: &[u32]) -> Vec<DeviceRule> {
    let mut rules: Vec<DeviceRule> = (0..=NVIDIA_MAX_GPU_MINOR)
        .filter(|m| !minors.contains(m))
        .map(|m| DeviceRule::deny(NVIDIA_MAJOR, Some(m)))
        .collect();
    let gpus: Vec<u32> = minors
        .iter()
        .copied()
        .filter(|m| *m <= NVIDIA_MAX_GPU_MINOR)
        .collect();
    if gpus.is_empty() {
        return rules;
    }
    rules.extend(
        gpus.into_iter()
            .chain([NVIDIA_MODESET_MINOR, NVIDIA_CTL_MINOR])
            .map(|m| DeviceRule::allow(NVIDIA_MAJOR, Some(m))),
    );
    let uvm: BTreeSet<u32> = uvm_majors.iter().copied().collect();
    rules.extend(uvm.into_iter().map(|major| DeviceRule::allow(major, None)));
    rules
}

/// The majors of `nvidia-uvm` and `nvidia-uvm-tools` in the "Character devices:" part of
/// `/proc/devices` (none when the module is not loaded).
pub fn uvm_majors(proc_devices: &str) -> Vec<u32> {
    let mut majors = BTreeSet::new();
    let mut in_char = false;
    for line in proc_devices.lines() {
        let line = line.trim();
        if line.ends_with(':') {
            in_char = line == "Character devices:";
            continue;
        }
        if !in_char {
            continue;
        }
        let mut words = line.split_whitespace();
        if let (Some(major), Some(name)) = (words.next(), words.next())
            && matches!(name, "nvidia-uvm" | "nvidia-uvm-tools")
            && let Ok(m) = major.parse::<u32>()
        {
            majors.insert(m);
        }
    }
    majors.into_iter().collect()
}

/// Writes `rules`, in order, into the v1 devices cgroup at `dir`, one rule per write (the
/// kernel reads one per write). On a simulated tree each rule is appended to its file instead,
/// so a test reads back everything written.
pub(super) fn write_rules(
    dir: &Path,
    rules: &[DeviceRule],
    simulated: bool,
) -> Result<(), CgroupError> {
    let ctl = DevicesController::new(dir.to_path_buf(), dir.to_path_buf());
    let perms = [
        DevicePermissions::Read,
        DevicePermissions::Write,
        DevicePermissions::MkNod,
    ];
    for rule in rules {
        let path = dir.join(rule.file());
        let data = rule.to_string();
        if simulated {
            let written = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(format!("{data}\n").as_bytes()));
            if let Err(source) = written {
                return Err(CgroupError::Write { path, data, source });
            }
            continue;
        }
        let (major, minor) = (i64::from(rule.major), rule.minor.map_or(-1, i64::from));
        let written = if rule.allow {
            ctl.allow_device(DeviceType::Char, major, minor, &perms)
        } else {
            ctl.deny_device(DeviceType::Char, major, minor, &perms)
        };
        written.map_err(|source| CgroupError::Control { path, data, source })?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn rules_for_two_gpus() {
        let minors: BTreeSet<u32> = [1, 3].into();
        let rules = nvidia_rules(&minors, &[236, 236, 237]);
        let text: Vec<String> = rules.iter().map(|r| format!("{} {r}", r.file())).collect();
        let denies: Vec<&String> = text
            .iter()
            .filter(|t| t.starts_with("devices.deny"))
            .collect();
        assert_eq!(denies.len(), 252);
        assert_eq!(denies[0], "devices.deny c 195:0 rwm");
        assert_eq!(denies[1], "devices.deny c 195:2 rwm");
        assert_eq!(denies[251], "devices.deny c 195:253 rwm");
        assert!(
            !text.iter().any(|t| t.contains("195:*")),
            "no wildcard deny"
        );
        assert_eq!(
            text[252..],
            [
                "devices.allow c 195:1 rwm",
                "devices.allow c 195:3 rwm",
                "devices.allow c 195:254 rwm",
                "devices.allow c 195:255 rwm",
                "devices.allow c 236:* rwm",
                "devices.allow c 237:* rwm",
            ]
        );
    }

    #[test]
    fn no_gpus_denies_them_all_and_allows_nothing() {
        let rules = nvidia_rules(&BTreeSet::new(), &[236]);
        assert_eq!(rules.len(), 254);
        assert!(rules.iter().all(|r| !r.allow && r.major == NVIDIA_MAJOR));
        // A minor that is not a GPU's is no GPU.
        assert_eq!(nvidia_rules(&[255].into(), &[236]), rules);
    }

    #[test]
    fn uvm_majors_from_proc_devices() {
        let text = "Character devices:\n  1 mem\n195 nvidia-frontend\n195 nvidia\n\
                    236 nvidia-uvm\n237 nvidia-uvm-tools\n238 nvidia-caps\n\n\
                    Block devices:\n 240 nvidia-uvm\n";
        assert_eq!(uvm_majors(text), vec![236, 237]);
        assert_eq!(
            uvm_majors("Character devices:\n  1 mem\n"),
            Vec::<u32>::new()
        );
        assert_eq!(uvm_majors(""), Vec::<u32>::new());
    }
}
