//! GPUs read from an inventory file, for tests and for hosts whose GPUs NVML does not see. The
//! file is read again at every scan, so editing it (a GPU removed, marked unhealthy, its use
//! changed) shows at the next rescan without restarting the agent.
//!
//! ```json
//! {"gpus": [
//!   {"index": 0, "uuid": "GPU-aaaa", "name": "NVIDIA H100 80GB HBM3",
//!    "memory_bytes": 85899345920, "pci_bus_id": "00000000:19:00.0",
//!    "compute_capability": "9.0", "utilization_percent": 35, "memory_used_bytes": 1073741824},
//!   {"index": 1, "uuid": "GPU-bbbb", "name": "NVIDIA A100-SXM4-40GB", "memory_bytes": 42949672960,
//!    "healthy": false, "health": "pages pending retirement",
//!    "mig_instances": [
//!      {"uuid": "MIG-cccc", "profile": "3g.20gb", "memory_bytes": 21474836480,
//!       "utilization_percent": 0, "memory_used_bytes": 0}]}
//! ]}
//! ```
//!
//! Per GPU, `index`, `uuid`, `name` and `memory_bytes` are required; `pci_bus_id` (default
//! empty), `compute_capability` ("major.minor"), `healthy` (default true), `health` (why it is
//! unhealthy; only with `"healthy": false`), `utilization_percent` (0-100) and
//! `memory_used_bytes` (default 0) are optional. A GPU with `mig_instances` (even an empty list:
//! MIG mode on, nothing carved) is reported as its MIG instances, not as itself: each one a
//! device of its own with the parent's index, PCI id, compute capability and health, the name
//! "<parent name> MIG <profile>", and its own `uuid`, `profile` and `memory_bytes` (required)
//! and use (optional, as for a GPU). Unknown fields are refused; uuids must be unique over GPUs
//! and MIG instances, indexes over GPUs. The `/dev/nvidia<minor>` of a GPU is its index.

use super::{GpuBackend, GpuScan};
use crate::discovery::DiscoveryError;
use backfill_shared::{GpuDevice, GpuUsage, MigInstance};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    gpus: Vec<FileGpu>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGpu {
    index: u32,
    uuid: String,
    name: String,
    memory_bytes: u64,
    #[serde(default)]
    pci_bus_id: String,
    #[serde(default)]
    compute_capability: Option<String>,
    #[serde(default = "yes")]
    healthy: bool,
    #[serde(default)]
    health: Option<String>,
    #[serde(default)]
    utilization_percent: u32,
    #[serde(default)]
    memory_used_bytes: u64,
    #[serde(default)]
    mig_instances: Option<Vec<FileMig>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMig {
    uuid: String,
    profile: String,
    memory_bytes: u64,
    #[serde(default)]
    utilization_percent: u32,
    #[serde(default)]
    memory_used_bytes: u64,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Fixed(GpuScan),
}

/// GPUs from an inventory file (re-read at every scan), or a fixed list.
#[derive(Debug, Clone)]
pub struct FakeGpus {
    source: Source,
}

impl Default for FakeGpus {
    fn default() -> FakeGpus {
        FakeGpus::from_scan(GpuScan::default())
    }
}

impl FakeGpus {
    /// Reads and validates an inventory file now (so a broken one is refused at startup); each
    /// scan reads it again.
    pub fn from_file(path: &Path) -> Result<FakeGpus, DiscoveryError> {
        read_inventory(path)?;
        Ok(FakeGpus {
            source: Source::File(path.to_path_buf()),
        })
    }

    /// The given devices, as they are, with no usage.
    pub fn from_devices(devices: Vec<GpuDevice>) -> FakeGpus {
        FakeGpus::from_scan(GpuScan {
            devices,
            ..GpuScan::default()
        })
    }

    /// A fixed scan result.
    pub fn from_scan(scan: GpuScan) -> FakeGpus {
        FakeGpus {
            source: Source::Fixed(scan),
        }
    }
}

impl GpuBackend for FakeGpus {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn scan(&self) -> Result<GpuScan, DiscoveryError> {
        match &self.source {
            Source::File(path) => read_inventory(path),
            Source::Fixed(scan) => Ok(scan.clone()),
        }
    }
}

/// Reads, parses and validates an inventory file.
pub fn read_inventory(path: &Path) -> Result<GpuScan, DiscoveryError> {
    let text = std::fs::read_to_string(path).map_err(|source| DiscoveryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_inventory(&text).map_err(|why| DiscoveryError::Inventory {
        path: path.to_path_buf(),
        why,
    })
}

fn parse_inventory(text: &str) -> Result<GpuScan, String> {
    let file: InventoryFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut uuids: BTreeMap<String, String> = BTreeMap::new();
    let mut indexes: BTreeMap<u32, usize> = BTreeMap::new();
    let mut claim = |uuid: &str, entry: &str| -> Result<(), String> {
        if uuid.trim().is_empty() {
            return Err(format!("{entry}: empty uuid"));
        }
        if let Some(valid) = bad_uuid(uuid) {
            return Err(format!("{entry}: uuid {uuid:?} {valid}"));
        }
        match uuids.insert(uuid.to_owned(), entry.to_owned()) {
            Some(first) => Err(format!(
                "{entry}: uuid {uuid:?} is also the uuid of {first}"
            )),
            None => Ok(()),
        }
    };
    let mut scan = GpuScan::default();
    for (i, g) in file.gpus.into_iter().enumerate() {
        let entry = format!("gpus[{i}]");
        claim(&g.uuid, &entry)?;
        if let Some(first) = indexes.insert(g.index, i) {
            return Err(format!(
                "{entry}: index {} is also the index of gpus[{first}]",
                g.index
            ));
        }
        check_use(
            &entry,
            g.utilization_percent,
            g.memory_used_bytes,
            g.memory_bytes,
        )?;
        if let Some(cc) = &g.compute_capability
            && !valid_compute_capability(cc)
        {
            return Err(format!(
                "{entry}: compute_capability {cc:?} is not \"major.minor\" (\"9.0\")"
            ));
        }
        let health = match (g.healthy, g.health) {
            (true, Some(_)) => {
                return Err(format!(
                    "{entry}: health explains an unhealthy GPU; set \"healthy\": false or drop it"
                ));
            }
            (true, None) => None,
            (false, why) => {
                Some(why.unwrap_or_else(|| "marked unhealthy in the inventory file".into()))
            }
        };
        let mut parent = GpuDevice::whole(g.index, &g.uuid, &g.name, g.memory_bytes, &g.pci_bus_id);
        parent.compute_capability = g.compute_capability;
        parent.healthy = g.healthy;
        parent.health = health;
        let Some(migs) = g.mig_instances else {
            scan.minors.insert(g.uuid.clone(), g.index);
            scan.usage.push(GpuUsage {
                uuid: g.uuid,
                utilization_percent: g.utilization_percent,
                memory_used_bytes: g.memory_used_bytes,
            });
            scan.devices.push(parent);
            continue;
        };
        for (j, m) in migs.into_iter().enumerate() {
            let entry = format!("{entry}.mig_instances[{j}]");
            claim(&m.uuid, &entry)?;
            if m.profile.trim().is_empty() {
                return Err(format!("{entry}: empty profile (\"1g.10gb\")"));
            }
            if m.memory_bytes > g.memory_bytes {
                return Err(format!(
                    "{entry}: memory_bytes {} is more than its GPU's {}",
                    m.memory_bytes, g.memory_bytes
                ));
            }
            check_use(
                &entry,
                m.utilization_percent,
                m.memory_used_bytes,
                m.memory_bytes,
            )?;
            scan.minors.insert(m.uuid.clone(), g.index);
            scan.usage.push(GpuUsage {
                uuid: m.uuid.clone(),
                utilization_percent: m.utilization_percent,
                memory_used_bytes: m.memory_used_bytes,
            });
            scan.devices.push(GpuDevice {
                uuid: m.uuid,
                name: format!("{} MIG {}", parent.name, m.profile),
                memory_bytes: m.memory_bytes,
                mig: Some(MigInstance {
                    parent_uuid: parent.uuid.clone(),
                    profile: m.profile,
                }),
                ..parent.clone()
            });
        }
    }
    Ok(scan)
}

/// Why a uuid cannot be handed to a workload in `CUDA_VISIBLE_DEVICES`, if it cannot.
fn bad_uuid(uuid: &str) -> Option<&'static str> {
    if uuid.len() > 128 {
        return Some("is longer than 128 characters");
    }
    let ok = uuid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'.' | b':'));
    (!ok).then_some("has a character outside A-Z a-z 0-9 - _ / . :")
}

fn check_use(entry: &str, percent: u32, used: u64, total: u64) -> Result<(), String> {
    if percent > 100 {
        return Err(format!(
            "{entry}: utilization_percent {percent} is over 100"
        ));
    }
    if used > total {
        return Err(format!(
            "{entry}: memory_used_bytes {used} is more than memory_bytes {total}"
        ));
    }
    Ok(())
}

fn valid_compute_capability(cc: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    cc.split_once('.')
        .is_some_and(|(major, minor)| digits(major) && digits(minor))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn file(content: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    fn err(content: &str) -> String {
        let (_dir, path) = file(content);
        let e = FakeGpus::from_file(&path).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DiscoveryError::Inventory { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        msg
    }

    #[test]
    fn good_file() {
        let (_dir, path) = file(
            r#"{"gpus": [
                {"index": 0, "uuid": "GPU-aaaa", "name": "NVIDIA H100 80GB HBM3",
                 "memory_bytes": 85899345920, "pci_bus_id": "00000000:19:00.0"},
                {"index": 1, "uuid": "GPU-bbbb", "name": "NVIDIA H100 80GB HBM3",
                 "memory_bytes": 85899345920}
            ]}"#,
        );
        let g = FakeGpus::from_file(&path).unwrap();
        assert_eq!(g.name(), "fake");
        let d = g.devices().unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].uuid, "GPU-aaaa");
        assert_eq!(d[0].pci_bus_id, "00000000:19:00.0");
        assert_eq!(d[1].index, 1);
        assert_eq!(d[1].memory_bytes, 85_899_345_920);
        assert_eq!(d[1].pci_bus_id, "");
        assert!(
            d.iter()
                .all(|d| d.healthy && d.health.is_none() && d.mig.is_none())
        );
        assert_eq!(d[0].compute_capability, None);
        let (_dir, path) = file(r#"{"gpus": []}"#);
        assert!(
            FakeGpus::from_file(&path)
                .unwrap()
                .devices()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn mig_unhealthy_and_usage() {
        let (_dir, path) = file(
            r#"{"gpus": [
                {"index": 0, "uuid": "GPU-a", "name": "NVIDIA H100", "memory_bytes": 80000,
                 "compute_capability": "9.0", "utilization_percent": 35,
                 "memory_used_bytes": 1000},
                {"index": 2, "uuid": "GPU-b", "name": "NVIDIA A100", "memory_bytes": 40000,
                 "pci_bus_id": "00000000:3b:00.0", "compute_capability": "8.0",
                 "mig_instances": [
                    {"uuid": "MIG-b1", "profile": "3g.20gb", "memory_bytes": 20000,
                     "utilization_percent": 50, "memory_used_bytes": 300},
                    {"uuid": "MIG-b2", "profile": "1g.5gb", "memory_bytes": 5000}]},
                {"index": 3, "uuid": "GPU-c", "name": "NVIDIA T4", "memory_bytes": 16000,
                 "healthy": false, "health": "pages pending retirement"},
                {"index": 4, "uuid": "GPU-d", "name": "NVIDIA A30", "memory_bytes": 24000,
                 "healthy": false, "mig_instances": [
                    {"uuid": "MIG-d1", "profile": "2g.12gb", "memory_bytes": 12000}]},
                {"index": 5, "uuid": "GPU-e", "name": "NVIDIA A30", "memory_bytes": 24000,
                 "mig_instances": []}
            ]}"#,
        );
        let s = FakeGpus::from_file(&path).unwrap().scan().unwrap();
        let uuids: Vec<&str> = s.devices.iter().map(|d| d.uuid.as_str()).collect();
        // MIG GPUs are their instances; a MIG GPU with none carved offers nothing.
        assert_eq!(uuids, ["GPU-a", "MIG-b1", "MIG-b2", "GPU-c", "MIG-d1"]);
        let a = s.device("GPU-a").unwrap();
        assert_eq!(a.compute_capability.as_deref(), Some("9.0"));
        assert!(a.mig.is_none() && a.healthy);
        let b1 = s.device("MIG-b1").unwrap();
        assert_eq!(
            b1.mig,
            Some(MigInstance {
                parent_uuid: "GPU-b".into(),
                profile: "3g.20gb".into()
            })
        );
        assert_eq!(b1.index, 2);
        assert_eq!(b1.name, "NVIDIA A100 MIG 3g.20gb");
        assert_eq!(b1.memory_bytes, 20000);
        assert_eq!(b1.pci_bus_id, "00000000:3b:00.0");
        assert_eq!(b1.compute_capability.as_deref(), Some("8.0"));
        let c = s.device("GPU-c").unwrap();
        assert!(!c.healthy);
        assert_eq!(c.health.as_deref(), Some("pages pending retirement"));
        let d1 = s.device("MIG-d1").unwrap();
        assert!(!d1.healthy, "a MIG instance is as healthy as its GPU");
        assert_eq!(
            d1.health.as_deref(),
            Some("marked unhealthy in the inventory file")
        );
        assert_eq!((s.healthy(), s.unhealthy()), (3, 2));
        assert_eq!(s.minor("MIG-b2"), Some(2));
        assert_eq!(s.minor("GPU-c"), Some(3));
        let usage = |u: &str| s.usage.iter().find(|x| x.uuid == u).cloned().unwrap();
        assert_eq!(
            usage("GPU-a"),
            GpuUsage {
                uuid: "GPU-a".into(),
                utilization_percent: 35,
                memory_used_bytes: 1000
            }
        );
        assert_eq!(usage("MIG-b1").utilization_percent, 50);
        assert_eq!(usage("MIG-b1").memory_used_bytes, 300);
        assert_eq!(usage("MIG-b2").memory_used_bytes, 0);
        assert_eq!(s.usage.len(), s.devices.len());
    }

    #[test]
    fn the_file_is_read_at_every_scan() {
        let (_dir, path) =
            file(r#"{"gpus": [{"index": 0, "uuid": "GPU-a", "name": "A", "memory_bytes": 1}]}"#);
        let g = FakeGpus::from_file(&path).unwrap();
        assert_eq!(g.devices().unwrap().len(), 1);
        std::fs::write(&path, r#"{"gpus": []}"#).unwrap();
        assert!(g.devices().unwrap().is_empty());
        std::fs::write(&path, "broken").unwrap();
        assert!(matches!(g.scan(), Err(DiscoveryError::Inventory { .. })));
        assert!(g.usage().is_empty());
    }

    #[test]
    fn bad_files() {
        let m = err(
            r#"{"gpus": [{"index": 0, "uuid": "GPU-a", "name": "A", "memory_bytes": 1,
                      "cores": 5}]}"#,
        );
        assert!(m.contains("unknown field `cores`"), "{m}");
        let m = err(r#"{"gpus": [], "extra": 1}"#);
        assert!(m.contains("unknown field `extra`"), "{m}");
        let m = err(r#"{"gpus": [
            {"index": 0, "uuid": "GPU-a", "name": "A", "memory_bytes": 1},
            {"index": 1, "uuid": "GPU-a", "name": "B", "memory_bytes": 1}]}"#);
        assert!(
            m.contains("gpus[1]: uuid \"GPU-a\" is also the uuid of gpus[0]"),
            "{m}"
        );
        let m = err(r#"{"gpus": [
            {"index": 3, "uuid": "GPU-a", "name": "A", "memory_bytes": 1},
            {"index": 3, "uuid": "GPU-b", "name": "B", "memory_bytes": 1}]}"#);
        assert!(
            m.contains("gpus[1]: index 3 is also the index of gpus[0]"),
            "{m}"
        );
        let m = err(r#"{"gpus": [{"index": 0, "uuid": " ", "name": "A", "memory_bytes": 1}]}"#);
        assert!(m.contains("gpus[0]: empty uuid"), "{m}");
        let m = err(r#"{"gpus": [{"index": 0, "uuid": "a,b", "name": "A", "memory_bytes": 1}]}"#);
        assert!(m.contains("gpus[0]: uuid \"a,b\" has a character"), "{m}");
        let m = err(r#"{"gpus": [{"index": 0, "name": "A", "memory_bytes": 1}]}"#);
        assert!(m.contains("missing field `uuid`"), "{m}");
        let m = err(r#"{"gpus": [{"index": -1, "uuid": "x", "name": "A", "memory_bytes": 1}]}"#);
        assert!(m.contains("line 1"), "{m}");
        err("not json");
    }

    #[test]
    fn bad_mig_health_and_use() {
        let gpu = |extra: &str| {
            format!(
                r#"{{"gpus": [{{"index": 0, "uuid": "GPU-a", "name": "A", "memory_bytes": 100{extra}}}]}}"#
            )
        };
        let m = err(&gpu(
            r#", "mig_instances": [{"uuid": "GPU-a", "profile": "1g", "memory_bytes": 1}]"#,
        ));
        assert!(
            m.contains("gpus[0].mig_instances[0]: uuid \"GPU-a\" is also the uuid of gpus[0]"),
            "{m}"
        );
        let m = err(&gpu(
            r#", "mig_instances": [{"uuid": "M", "profile": "1g", "memory_bytes": 1},
                                   {"uuid": "M", "profile": "1g", "memory_bytes": 1}]"#,
        ));
        assert!(
            m.contains(
                "gpus[0].mig_instances[1]: uuid \"M\" is also the uuid of gpus[0].mig_instances[0]"
            ),
            "{m}"
        );
        let m = err(&gpu(
            r#", "mig_instances": [{"uuid": "M", "profile": " ", "memory_bytes": 1}]"#,
        ));
        assert!(m.contains("gpus[0].mig_instances[0]: empty profile"), "{m}");
        let m = err(&gpu(
            r#", "mig_instances": [{"uuid": "M", "profile": "1g", "memory_bytes": 101}]"#,
        ));
        assert!(
            m.contains("mig_instances[0]: memory_bytes 101 is more"),
            "{m}"
        );
        let m = err(&gpu(
            r#", "mig_instances": [{"uuid": "M", "profile": "1g", "memory_bytes": 1, "x": 1}]"#,
        ));
        assert!(m.contains("unknown field `x`"), "{m}");
        let m = err(&gpu(
            r#", "mig_instances": [{"uuid": "M", "profile": "1g", "memory_bytes": 1,
                                    "utilization_percent": 101}]"#,
        ));
        assert!(
            m.contains("gpus[0].mig_instances[0]: utilization_percent 101 is over 100"),
            "{m}"
        );
        let m = err(&gpu(r#", "memory_used_bytes": 101"#));
        assert!(m.contains("gpus[0]: memory_used_bytes 101 is more"), "{m}");
        let m = err(&gpu(r#", "health": "fine""#));
        assert!(
            m.contains("gpus[0]: health explains an unhealthy GPU"),
            "{m}"
        );
        let m = err(&gpu(r#", "compute_capability": "9""#));
        assert!(m.contains("gpus[0]: compute_capability \"9\""), "{m}");
        let m = err(&gpu(r#", "healthy": "no""#));
        assert!(m.contains("invalid type"), "{m}");
    }

    #[test]
    fn missing_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.json");
        let e = FakeGpus::from_file(&path).unwrap_err();
        assert!(matches!(e, DiscoveryError::Read { .. }));
        assert!(e.to_string().contains("nope.json"), "{e}");
    }
}
