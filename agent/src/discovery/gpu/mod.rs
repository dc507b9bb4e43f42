//! GPU backends: NVML on real hosts, an inventory file for tests, none without a driver.

mod fake;
mod nvml;

pub use fake::FakeGpus;
pub use nvml::NvmlGpus;

use super::DiscoveryError;
use backfill_shared::GpuDevice;
use std::path::Path;

pub trait GpuBackend: Send + Sync + std::fmt::Debug {
    /// "nvml", "fake", "none"
    fn name(&self) -> &'static str;
    fn devices(&self) -> Result<Vec<GpuDevice>, DiscoveryError>;
}

/// No GPUs (no NVIDIA library or driver).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGpus;

impl GpuBackend for NoGpus {
    fn name(&self) -> &'static str {
        "none"
    }
    fn devices(&self) -> Result<Vec<GpuDevice>, DiscoveryError> {
        Ok(Vec::new())
    }
}

/// Chooses the backend: the inventory file if given (fake GPUs), else NVML if it loads, else
/// [`NoGpus`] (logged once, at info level).
pub fn gpu_backend(inventory_file: Option<&Path>) -> Result<Box<dyn GpuBackend>, DiscoveryError> {
    if let Some(path) = inventory_file {
        let fake = FakeGpus::from_file(path)?;
        tracing::info!(
            path = %path.display(),
            gpus = fake.len(),
            "GPUs from an inventory file (not NVML)"
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
    }
}
