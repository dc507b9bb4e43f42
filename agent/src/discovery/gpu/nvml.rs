//! NVIDIA GPUs through NVML (nvml-wrapper), with libnvidia-ml.so.1 loaded at run time.

use super::GpuBackend;
use crate::discovery::DiscoveryError;
use backfill_shared::GpuDevice;
use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

/// NVML, initialised. Lists the physical GPUs (MIG instances are not listed separately).
#[derive(Debug)]
pub struct NvmlGpus {
    nvml: Nvml,
}

impl NvmlGpus {
    /// Loads and initialises NVML. No library or no driver = `Ok(None)` (the caller logs that
    /// the host has 0 GPUs); other failures (no permission, ...) are errors.
    pub fn load() -> Result<Option<NvmlGpus>, DiscoveryError> {
        match Nvml::init() {
            Ok(nvml) => Ok(Some(NvmlGpus { nvml })),
            Err(e) if no_driver(&e) => {
                tracing::debug!("NVML not usable: {e}");
                Ok(None)
            }
            Err(source) => Err(DiscoveryError::Nvml {
                what: "initialising".into(),
                source,
            }),
        }
    }
}

/// The library is missing, or present without a loaded driver.
fn no_driver(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::LibloadingError(_)
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::LibraryNotFound
            | NvmlError::DriverNotLoaded
    )
}

impl GpuBackend for NvmlGpus {
    fn name(&self) -> &'static str {
        "nvml"
    }

    /// Every GPU whose uuid NVML gives; one that fails even that (fallen off the bus...) is
    /// left out with a warning. A name, memory size or PCI id NVML cannot give is logged and
    /// left empty (0).
    fn devices(&self) -> Result<Vec<GpuDevice>, DiscoveryError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|source| DiscoveryError::Nvml {
                what: "counting devices".into(),
                source,
            })?;
        let mut out = Vec::new();
        for index in 0..count {
            let dev = match self.nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("NVML device {index}: {e}: left out");
                    continue;
                }
            };
            let uuid = match dev.uuid() {
                Ok(u) if !u.is_empty() => u,
                Ok(_) => {
                    tracing::warn!("NVML device {index}: empty uuid: left out");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("NVML device {index}: uuid: {e}: left out");
                    continue;
                }
            };
            let name = dev.name().unwrap_or_else(|e| {
                tracing::warn!("NVML device {index} ({uuid}): name: {e}");
                String::new()
            });
            let memory_bytes = dev.memory_info().map(|m| m.total).unwrap_or_else(|e| {
                tracing::warn!("NVML device {index} ({uuid}): memory: {e}");
                0
            });
            let pci_bus_id = dev.pci_info().map(|p| p.bus_id).unwrap_or_else(|e| {
                tracing::warn!("NVML device {index} ({uuid}): PCI info: {e}");
                String::new()
            });
            out.push(GpuDevice::whole(
                index,
                &uuid,
                &name,
                memory_bytes,
                &pci_bus_id,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn nvml_load_never_panics() {
        match NvmlGpus::load() {
            Ok(None) => eprintln!("NVML: no library or driver here"),
            Ok(Some(n)) => {
                let d = n.devices().unwrap();
                eprintln!("NVML: {} devices: {d:?}", d.len());
            }
            Err(e) => panic!("NvmlGpus::load failed: {e}"),
        }
    }

    /// Run on a GPU host with BACKFILL_EXPECT_GPU=1.
    #[test]
    fn nvml_discovery_real() {
        if std::env::var("BACKFILL_EXPECT_GPU").as_deref() != Ok("1") {
            eprintln!("skipping: BACKFILL_EXPECT_GPU not set");
            return;
        }
        let nvml = NvmlGpus::load()
            .unwrap()
            .expect("NVML did not load on a GPU host");
        let devices = nvml.devices().unwrap();
        assert!(!devices.is_empty(), "NVML lists no GPU");
        for d in &devices {
            assert!(!d.uuid.is_empty(), "{d:?}");
            assert!(!d.name.is_empty(), "{d:?}");
            assert!(d.memory_bytes > 0, "{d:?}");
        }
        let inv = crate::discovery::discover(&nvml).unwrap();
        assert_eq!(inv.gpus, devices);
        eprintln!("NVML devices: {devices:?}");
    }
}
