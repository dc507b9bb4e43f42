//! The supervisor's GPU side: which GPUs a workload sees (`CUDA_VISIBLE_DEVICES`,
//! `NVIDIA_VISIBLE_DEVICES`) and which NVIDIA device files it may open (the v1 devices cgroup).
//!
//! A workload sees exactly the GPUs its server was given, by uuid, whatever its own environment
//! says; a server given none sees none (`CUDA_VISIBLE_DEVICES=""`, and `NVIDIA_VISIBLE_DEVICES=void`,
//! which the NVIDIA container toolkit reads as "no GPUs and no driver capabilities"). On a host
//! with GPUs, the v1 devices controller also denies every `/dev/nvidia<N>` but the server's (see
//! [`crate::cgroups::nvidia_rules`]). Where that is not possible (cgroup v2, no devices
//! controller, no cgroups) and for MIG instances (which share their GPU's `/dev/nvidia<N>`; the
//! `/dev/nvidia-caps` files that separate them are left alone), isolation is by visibility only,
//! and the agent says so once in its log.

use super::Supervisor;
use crate::cgroups::{DeviceControl, nvidia_rules, uvm_majors};
use crate::discovery::gpu::GpuScan;
use backfill_shared::ServerId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
pub const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
/// The toolkit's "no GPUs, no driver capabilities" (`none` would still mount the driver).
pub const NVIDIA_NO_DEVICES: &str = "void";

/// What was already said once in the log.
#[derive(Debug, Default)]
pub(super) struct SaidOnce {
    visibility_only: AtomicBool,
    mig: AtomicBool,
}

/// A server's GPUs, checked against the host's latest scan.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Assigned {
    /// In the order given, without repeats.
    pub(super) uuids: Vec<String>,
    /// Their `/dev/nvidia<minor>`s.
    pub(super) minors: BTreeSet<u32>,
    /// Some are MIG instances.
    pub(super) mig: bool,
}

/// Resolves the uuids a server was given against `scan`: each must be one of the host's
/// devices now (one that is gone, or was never here, fails the start and says which).
pub(super) fn resolve(gpus: &[String], scan: &GpuScan) -> Result<Assigned, String> {
    let mut a = Assigned::default();
    for uuid in gpus {
        if a.uuids.contains(uuid) {
            continue;
        }
        let (Some(dev), Some(minor)) = (scan.device(uuid), scan.minor(uuid)) else {
            return Err(format!(
                "GPU {uuid:?} is not on this host (it has {})",
                listed(scan)
            ));
        };
        if !dev.healthy {
            tracing::warn!(
                uuid = %uuid,
                health = dev.health.as_deref().unwrap_or("unknown"),
                "starting a workload on an unhealthy GPU, as the coordinator asks"
            );
        }
        a.mig |= dev.mig.is_some();
        a.minors.insert(minor);
        a.uuids.push(uuid.clone());
    }
    Ok(a)
}

fn listed(scan: &GpuScan) -> String {
    if scan.devices.is_empty() {
        return "no GPUs".into();
    }
    let uuids: Vec<&str> = scan.devices.iter().map(|d| d.uuid.as_str()).collect();
    uuids.join(", ")
}

/// The workload's environment with the GPU visibility variables set over it: the given uuids,
/// comma-joined, or none.
pub fn gpu_env(env: &BTreeMap<String, String>, uuids: &[String]) -> BTreeMap<String, String> {
    let mut env = env.clone();
    let (cuda, nvidia) = if uuids.is_empty() {
        (String::new(), NVIDIA_NO_DEVICES.to_owned())
    } else {
        (uuids.join(","), uuids.join(","))
    };
    env.insert(CUDA_VISIBLE_DEVICES.to_owned(), cuda);
    env.insert(NVIDIA_VISIBLE_DEVICES.to_owned(), nvidia);
    env
}

impl Supervisor {
    /// The host's GPUs as last scanned (none when the supervisor has no monitor).
    pub fn gpu_scan(&self) -> std::sync::Arc<GpuScan> {
        self.gpus.as_ref().map(|m| m.current()).unwrap_or_default()
    }

    /// On a host with GPUs, writes the server's device rules (its cgroup exists). A rule the
    /// kernel refuses fails the start; where rules cannot be enforced, says so once.
    pub(super) fn isolate_gpus(&self, id: &ServerId, a: &Assigned) -> Result<(), String> {
        let majors = match std::fs::read_to_string(&self.proc_devices) {
            Ok(text) => uvm_majors(&text),
            Err(e) => {
                tracing::warn!(path = %self.proc_devices.display(), error = %e, "cannot read the nvidia-uvm major");
                Vec::new()
            }
        };
        let rules = nvidia_rules(&a.minors, &majors);
        match self.cgroups.restrict_devices(id, &rules) {
            Ok(DeviceControl::Enforced) => {
                if a.mig && !self.said.mig.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "MIG instances share their GPU's /dev/nvidia<N>: a workload is kept to its \
                         MIG instances by visibility (CUDA_VISIBLE_DEVICES) only"
                    );
                }
                Ok(())
            }
            Ok(DeviceControl::NotEnforced(why)) => {
                if !self.said.visibility_only.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "GPU isolation is by visibility (CUDA_VISIBLE_DEVICES, \
                         NVIDIA_VISIBLE_DEVICES) only, device files are not restricted: {why}"
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.cgroup_errors.inc();
                Err(format!("restricting GPU device files: {e}"))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use backfill_shared::{GpuDevice, MigInstance};

    fn scan() -> GpuScan {
        let mut mig = GpuDevice::whole(2, "MIG-1", "A100 MIG 1g.5gb", 5, "");
        mig.mig = Some(MigInstance {
            parent_uuid: "GPU-c".into(),
            profile: "1g.5gb".into(),
        });
        let mut s = GpuScan {
            devices: vec![
                GpuDevice::whole(0, "GPU-a", "T4", 16, ""),
                GpuDevice::whole(1, "GPU-b", "T4", 16, ""),
                mig,
            ],
            ..GpuScan::default()
        };
        s.minors.insert("GPU-b".into(), 5);
        s
    }

    #[test]
    fn resolving_a_servers_gpus() {
        let s = scan();
        let a = resolve(&["GPU-b".into(), "GPU-a".into(), "GPU-b".into()], &s).unwrap();
        assert_eq!(a.uuids, ["GPU-b", "GPU-a"]);
        assert_eq!(a.minors, [0, 5].into());
        assert!(!a.mig);
        let m = resolve(&["MIG-1".into()], &s).unwrap();
        assert!(m.mig);
        assert_eq!(m.minors, [2].into());
        assert_eq!(resolve(&[], &s).unwrap(), Assigned::default());
        let e = resolve(&["GPU-z".into()], &s).unwrap_err();
        assert_eq!(
            e,
            "GPU \"GPU-z\" is not on this host (it has GPU-a, GPU-b, MIG-1)"
        );
        let e = resolve(&["GPU-a".into()], &GpuScan::default()).unwrap_err();
        assert!(e.ends_with("(it has no GPUs)"), "{e}");
    }

    #[test]
    fn the_visibility_variables_override_the_workloads() {
        let own: BTreeMap<String, String> = [
            ("CUDA_VISIBLE_DEVICES".to_string(), "0,1,2,3".to_string()),
            ("NVIDIA_VISIBLE_DEVICES".to_string(), "all".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ]
        .into();
        let env = gpu_env(&own, &["GPU-a".into(), "MIG-1".into()]);
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "GPU-a,MIG-1");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "GPU-a,MIG-1");
        assert_eq!(env["OTHER"], "x");
        let env = gpu_env(&own, &[]);
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "void");
    }
}
