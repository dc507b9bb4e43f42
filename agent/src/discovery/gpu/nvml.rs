//! NVIDIA GPUs through NVML (nvml-wrapper), with libnvidia-ml.so.1 loaded at run time.
//!
//! Per GPU a scan reads its uuid, name, memory, PCI id, `/dev/nvidia` minor number, CUDA compute
//! capability, health and use. A GPU in MIG mode is listed as its MIG instances (each with its
//! own uuid, profile, memory and memory use; NVML gives no utilisation per instance), not as
//! itself. Health is what NVML answers cheaply: pages pending retirement, uncorrectable ECC
//! errors since the driver loaded, a GPU lost or needing a reset, and critical XID errors, which
//! a background thread receives as NVML events (a GPU with one stays unhealthy until the agent
//! restarts, which an operator does after resetting the GPU). Queries a GPU does not support
//! are skipped quietly; any other failure for one GPU is a warning and a default, never a failed
//! scan.

use super::{GpuBackend, GpuScan};
use crate::discovery::DiscoveryError;
use backfill_shared::{GpuDevice, GpuUsage, MigInstance};
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Critical XID errors NVML reported, by GPU uuid (the last one).
type Xids = Arc<Mutex<BTreeMap<String, u64>>>;

/// nvmlDeviceGetMigMode's "enabled" (NVML_DEVICE_MIG_ENABLE).
const MIG_ENABLED: u32 = 1;

/// NVML, initialised.
#[derive(Debug)]
pub struct NvmlGpus {
    nvml: Arc<Nvml>,
    xids: Xids,
}

impl NvmlGpus {
    /// Loads and initialises NVML. No library or no driver = `Ok(None)` (the caller logs that
    /// the host has 0 GPUs); other failures (no permission, ...) are errors.
    pub fn load() -> Result<Option<NvmlGpus>, DiscoveryError> {
        match Nvml::init() {
            Ok(nvml) => {
                let nvml = Arc::new(nvml);
                let xids = Xids::default();
                watch_xids(nvml.clone(), xids.clone());
                Ok(Some(NvmlGpus { nvml, xids }))
            }
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

/// Receives critical XID error events for every GPU that offers them, on a thread of its own
/// (NVML's wait blocks), and records them for the scans. One event set per GPU: a GPU that
/// does not offer events does not stop the others.
fn watch_xids(nvml: Arc<Nvml>, xids: Xids) {
    let spawned = std::thread::Builder::new()
        .name("nvml-xid".into())
        .spawn(move || {
            let count = match nvml.device_count() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("NVML XID events: counting devices: {e}");
                    return;
                }
            };
            let mut sets = Vec::new();
            for index in 0..count {
                let Ok(dev) = nvml.device_by_index(index) else {
                    continue;
                };
                let Ok(uuid) = dev.uuid() else {
                    continue;
                };
                let set = match nvml.create_event_set() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(index, "NVML XID events: event set: {e}");
                        continue;
                    }
                };
                match dev.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(s) => sets.push((uuid, s)),
                    Err(e) => tracing::debug!(index, %uuid, "NVML XID events not offered: {}", e.error),
                }
            }
            if sets.is_empty() {
                return;
            }
            tracing::info!(gpus = sets.len(), "watching for critical XID errors");
            loop {
                for (uuid, set) in &sets {
                    match set.wait(250) {
                        Ok(event) => {
                            let xid = match event.event_data {
                                Some(XidError::Value(v)) => v,
                                _ => 0,
                            };
                            tracing::warn!(%uuid, xid, "critical XID error: the GPU is no longer allocatable");
                            if let Ok(mut x) = xids.lock() {
                                x.insert(uuid.clone(), xid);
                            }
                        }
                        Err(NvmlError::Timeout) => {}
                        Err(e) => {
                            tracing::warn!(%uuid, "NVML XID events: {e}");
                            std::thread::sleep(std::time::Duration::from_secs(1));
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the XID event thread: {e}; XID errors are not watched");
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

/// This GPU, driver or library does not offer the query: not a failure.
fn unsupported(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::NotSupported | NvmlError::FunctionNotFound | NvmlError::FailedToLoadSymbol(_)
    )
}

/// One device's queries, logged with its index and uuid.
struct Query<'a> {
    index: u32,
    uuid: &'a str,
}

impl Query<'_> {
    /// The answer, or `None` (an unsupported query quietly, any other failure with a warning).
    fn get<T>(&self, what: &str, r: Result<T, NvmlError>) -> Option<T> {
        r.map_err(|e| self.failed(what, &e)).ok()
    }

    /// Logs a failed query: at debug level if the GPU or driver does not offer it, else warn.
    fn failed(&self, what: &str, e: &NvmlError) {
        if unsupported(e) {
            tracing::debug!(index = self.index, uuid = self.uuid, "NVML {what}: {e}");
        } else {
            tracing::warn!(index = self.index, uuid = self.uuid, "NVML {what}: {e}");
        }
    }
}

/// Why a GPU is unhealthy, if NVML says it is.
fn health(dev: &Device<'_>, q: &Query<'_>) -> Option<String> {
    let mut why = Vec::new();
    let lost = |e: &NvmlError| match e {
        NvmlError::GpuLost => Some("the GPU is lost (fallen off the bus)"),
        NvmlError::ResetRequired => Some("the GPU needs a reset"),
        _ => None,
    };
    match dev.are_pages_pending_retired() {
        Ok(true) => why.push("pages are pending retirement (a reset retires them)".to_owned()),
        Ok(false) => {}
        Err(e) => match lost(&e) {
            Some(w) => why.push(w.to_owned()),
            None => q.failed("pending page retirement", &e),
        },
    }
    match dev.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile) {
        Ok(0) => {}
        Ok(n) => why.push(format!(
            "{n} uncorrectable ECC errors since the driver loaded"
        )),
        Err(e) => match lost(&e) {
            Some(w) if !why.iter().any(|x| x == w) => why.push(w.to_owned()),
            Some(_) => {}
            None => q.failed("uncorrectable ECC errors", &e),
        },
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// "1g.10gb" from a MIG device's name ("NVIDIA A100-SXM4-40GB MIG 1g.5gb"), else from its
/// attributes (GPU slices and memory), else "unknown".
fn mig_profile(name: Option<&str>, mig: &Device<'_>, q: &Query<'_>) -> String {
    if let Some((_, p)) = name.and_then(|n| n.rsplit_once("MIG "))
        && !p.trim().is_empty()
    {
        return p.trim().to_owned();
    }
    match q.get("MIG attributes", mig.attributes()) {
        Some(a) => format!(
            "{}g.{}gb",
            a.gpu_instance_slice_count,
            a.memory_size_mb.div_ceil(1024)
        ),
        None => "unknown".to_owned(),
    }
}

impl NvmlGpus {
    /// One physical GPU into `scan`: itself, or its MIG instances when MIG mode is on.
    fn read_gpu(&self, index: u32, scan: &mut GpuScan) {
        let dev = match self.nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("NVML device {index}: {e}: left out");
                return;
            }
        };
        let uuid = match dev.uuid() {
            Ok(u) if !u.is_empty() => u,
            Ok(_) => {
                tracing::warn!("NVML device {index}: empty uuid: left out");
                return;
            }
            Err(e) => {
                tracing::warn!("NVML device {index}: uuid: {e}: left out");
                return;
            }
        };
        let q = Query { index, uuid: &uuid };
        let name = q.get("name", dev.name()).unwrap_or_default();
        let memory = q.get("memory", dev.memory_info());
        let pci_bus_id = q
            .get("PCI info", dev.pci_info())
            .map(|p| p.bus_id)
            .unwrap_or_default();
        let minor = q.get("minor number", dev.minor_number()).unwrap_or(index);
        let mut gpu = GpuDevice::whole(
            index,
            &uuid,
            &name,
            memory.as_ref().map_or(0, |m| m.total),
            &pci_bus_id,
        );
        gpu.compute_capability = q
            .get("compute capability", dev.cuda_compute_capability())
            .map(|c| format!("{}.{}", c.major, c.minor));
        gpu.health = health(&dev, &q).or_else(|| {
            let xid = self.xids.lock().ok()?.get(&uuid).copied()?;
            Some(format!("critical XID error {xid}"))
        });
        gpu.healthy = gpu.health.is_none();
        if let Some(why) = &gpu.health {
            tracing::debug!(index, uuid = %uuid, "NVML: unhealthy: {why}");
        }
        let mig_on = q
            .get("MIG mode", dev.mig_mode())
            .is_some_and(|m| m.current == MIG_ENABLED);
        if !mig_on {
            let utilization_percent = q
                .get("utilization", dev.utilization_rates())
                .map_or(0, |u| u.gpu.min(100));
            scan.usage.push(GpuUsage {
                uuid: uuid.clone(),
                utilization_percent,
                memory_used_bytes: memory.map_or(0, |m| m.used),
            });
            scan.minors.insert(uuid, minor);
            scan.devices.push(gpu);
            return;
        }
        let slots = q
            .get("MIG device count", dev.mig_device_count())
            .unwrap_or(0);
        for slot in 0..slots {
            let mig = match dev.mig_device_by_index(slot) {
                Ok(m) => m,
                Err(NvmlError::NotFound) => continue, // an empty slot
                Err(e) => {
                    q.failed(&format!("MIG device {slot}"), &e);
                    continue;
                }
            };
            let Some(mig_uuid) = q
                .get(&format!("MIG device {slot} uuid"), mig.uuid())
                .filter(|u| !u.is_empty())
            else {
                continue;
            };
            let mq = Query {
                index,
                uuid: &mig_uuid,
            };
            let mig_name = mq.get("MIG name", mig.name());
            let profile = mig_profile(mig_name.as_deref(), &mig, &mq);
            let mig_memory = mq.get("MIG memory", mig.memory_info());
            scan.usage.push(GpuUsage {
                uuid: mig_uuid.clone(),
                utilization_percent: 0,
                memory_used_bytes: mig_memory.as_ref().map_or(0, |m| m.used),
            });
            scan.minors.insert(mig_uuid.clone(), minor);
            scan.devices.push(GpuDevice {
                uuid: mig_uuid,
                name: mig_name.unwrap_or_else(|| format!("{name} MIG {profile}")),
                memory_bytes: mig_memory.map_or(0, |m| m.total),
                mig: Some(MigInstance {
                    parent_uuid: uuid.clone(),
                    profile,
                }),
                ..gpu.clone()
            });
        }
    }
}

impl GpuBackend for NvmlGpus {
    fn name(&self) -> &'static str {
        "nvml"
    }

    /// Every GPU whose uuid NVML gives; one that fails even that (fallen off the bus...) is
    /// left out with a warning. A name, memory size or PCI id NVML cannot give is logged and
    /// left empty (0). Only a failure to count the GPUs fails the scan.
    fn scan(&self) -> Result<GpuScan, DiscoveryError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|source| DiscoveryError::Nvml {
                what: "counting devices".into(),
                source,
            })?;
        let mut scan = GpuScan::default();
        for index in 0..count {
            self.read_gpu(index, &mut scan);
        }
        Ok(scan)
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
                let s = n.scan().unwrap();
                eprintln!("NVML: {} devices: {s:?}", s.devices.len());
            }
            Err(e) => panic!("NvmlGpus::load failed: {e}"),
        }
    }

    /// Where there is no driver, the backend the agent picks lists zero GPUs without an error.
    #[test]
    fn no_driver_means_zero_gpus() {
        if NvmlGpus::load().unwrap().is_some() {
            eprintln!("skipping: NVML loads here (a GPU host)");
            return;
        }
        let b = crate::discovery::gpu_backend(None).unwrap();
        assert_eq!(b.name(), "none");
        assert_eq!(b.scan().unwrap(), GpuScan::default());
        assert!(b.usage().is_empty());
    }

    #[test]
    fn which_errors_are_quiet() {
        assert!(unsupported(&NvmlError::NotSupported));
        assert!(unsupported(&NvmlError::FunctionNotFound));
        assert!(!unsupported(&NvmlError::GpuLost));
        assert!(no_driver(&NvmlError::DriverNotLoaded));
        assert!(!no_driver(&NvmlError::NoPermission));
        let q = Query {
            index: 0,
            uuid: "GPU-x",
        };
        assert_eq!(q.get("x", Ok::<u32, NvmlError>(3)), Some(3));
        assert_eq!(q.get::<u32>("x", Err(NvmlError::NotSupported)), None);
        assert_eq!(q.get::<u32>("x", Err(NvmlError::Unknown)), None);
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
        let scan = nvml.scan().unwrap();
        let devices = scan.devices.clone();
        assert!(!devices.is_empty(), "NVML lists no GPU");
        for d in &devices {
            assert!(!d.uuid.is_empty(), "{d:?}");
            assert!(!d.name.is_empty(), "{d:?}");
            assert!(d.memory_bytes > 0, "{d:?}");
            assert!(d.compute_capability.is_some(), "{d:?}");
            assert!(scan.minor(&d.uuid).is_some(), "{d:?}");
            assert!(scan.usage.iter().any(|u| u.uuid == d.uuid), "{d:?}");
        }
        let inv = crate::discovery::discover(&nvml).unwrap();
        assert_eq!(
            inv.gpus.iter().map(|d| &d.uuid).collect::<Vec<_>>(),
            devices.iter().map(|d| &d.uuid).collect::<Vec<_>>()
        );
        eprintln!("NVML scan: {scan:?}");
    }
}
