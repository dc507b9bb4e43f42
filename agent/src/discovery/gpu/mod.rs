//! GPU backends: NVML on real hosts, an inventory file for tests, none without a driver; and
//! [`GpuMonitor`], which re-reads them while the agent runs.
//!
//! A backend answers one question, [`GpuBackend::scan`]: the devices now (a GPU in MIG mode is
//! listed as its MIG instances, not as itself), their use, and the `/dev/nvidia<minor>` each one
//! needs. Nothing is cached by a backend: every scan asks again, so a GPU that falls off the bus
//! or turns unhealthy shows in the next one.

mod fake;
mod monitor;
mod nvml;

pub use fake::FakeGpus;
pub use monitor::{DEFAULT_RESCAN_INTERVAL, GpuMonitor, run_rescans};
pub use nvml::NvmlGpus;

use super::DiscoveryError;
use backfill_shared::{GpuDevice, GpuUsage};
use std::collections::BTreeMap;
use std::path::Path;

/// What a backend saw in one scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuScan {
    /// Whole GPUs, and MIG instances in place of the GPUs they are carved from.
    pub devices: Vec<GpuDevice>,
    /// Use per device uuid, where the backend knows it.
    pub usage: Vec<GpuUsage>,
    /// The minor number of the `/dev/nvidia<minor>` node each device uuid needs (a MIG
    /// instance: its parent GPU's). A device missing here is taken to be its `index`.
    pub minors: BTreeMap<String, u32>,
}

impl GpuScan {
    pub fn device(&self, uuid: &str) -> Option<&GpuDevice> {
        self.devices.iter().find(|d| d.uuid == uuid)
    }

    /// The `/dev/nvidia<minor>` that `uuid` needs, if the device is listed.
    pub fn minor(&self, uuid: &str) -> Option<u32> {
        let d = self.device(uuid)?;
        Some(self.minors.get(uuid).copied().unwrap_or(d.index))
    }

    pub fn healthy(&self) -> usize {
        self.devices.iter().filter(|d| d.healthy).count()
    }

    pub fn unhealthy(&self) -> usize {
        self.devices.len() - self.healthy()
    }
}

pub trait GpuBackend: Send + Sync + std::fmt::Debug {
    /// "nvml", "fake", "none"
    fn name(&self) -> &'static str;
    /// Reads the devices and their use now. An error means the backend as a whole could not be
    /// asked (a failure for one device is logged and that device defaulted or left out).
    fn scan(&self) -> Result<GpuScan, DiscoveryError>;
    fn devices(&self) -> Result<Vec<GpuDevice>, DiscoveryError> {
        Ok(self.scan()?.devices)
    }
    /// Per-device use now; empty where the backend knows none (or cannot be asked).
    fn usage(&self) -> Vec<GpuUsage> {
        match self.scan() {
            Ok(s) => s.usage,
            Err(e) => {
                tracing::warn!(backend = self.name(), error = %e, "GPU usage unavailable");
                Vec::new()
            }
        }
    }
}

/// No GPUs (no NVIDIA library or driver).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGpus;

impl GpuBackend for NoGpus {
    fn name(&self) -> &'static str {
        "none"
    }
    fn scan(&self) -> Result<GpuScan, DiscoveryError> {
        Ok(GpuScan::default())
    }
}

/// Chooses the backend: the inventory file if given (fake GPUs, validated now and re-read at
/// every scan), else NVML if it loads, else [`NoGpus`] (logged once, at info level).
pub fn gpu_backend(inventory_file: Option<&Path>) -> Result<Box<dyn GpuBackend>, DiscoveryError> {
    if let Some(path) = inventory_file {
        let fake = FakeGpus::from_file(path)?;
        tracing::info!(
            path = %path.display(),
            gpus = fake.scan()?.devices.len(),
            "GPUs from an inventory file (not NVML), re-read at every scan"
        );
        return Ok(Box::new(fake));
    }
    match NvmlGpus::load()? {
        Some(nvml) => Ok(Box::new(nvml)),
        None => {
            tracing::info!("no NVIDIA library or driver: this host has 0 GPUs");
            Ok(Box::new(NoGpus))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn backend_choice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        std::fs::write(
            &path,
            r#"{"gpus": [{"index": 0, "uuid": "GPU-a", "name": "A", "memory_bytes": 1}]}"#,
        )
        .unwrap();
        let b = gpu_backend(Some(&path)).unwrap();
        assert_eq!(b.name(), "fake");
        assert_eq!(b.devices().unwrap().len(), 1);
        assert!(gpu_backend(Some(&dir.path().join("missing.json"))).is_err());
        // Without a file: NVML where it loads, else none; either way it must not fail here.
        let b = gpu_backend(None).unwrap();
        assert!(["nvml", "none"].contains(&b.name()), "{}", b.name());
        assert_eq!(NoGpus.devices().unwrap(), vec![]);
        assert_eq!(NoGpus.usage(), vec![]);
    }

    #[test]
    fn scan_lookups() {
        let mut s = GpuScan {
            devices: vec![
                GpuDevice::whole(0, "GPU-a", "A", 1, ""),
                GpuDevice::whole(3, "GPU-b", "B", 1, ""),
            ],
            ..GpuScan::default()
        };
        s.devices[1].healthy = false;
        s.minors.insert("GPU-a".into(), 7);
        assert_eq!(s.minor("GPU-a"), Some(7));
        assert_eq!(s.minor("GPU-b"), Some(3), "no minor known: the index");
        assert_eq!(s.minor("GPU-c"), None);
        assert_eq!((s.healthy(), s.unhealthy()), (1, 1));
    }
}
