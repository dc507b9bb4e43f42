//! GPUs read from an inventory file, for tests and for hosts whose GPUs NVML does not see.
//!
//! ```json
//! {"gpus": [{"index": 0, "uuid": "GPU-...", "name": "NVIDIA H100", "memory_bytes": 85899345920,
//!            "pci_bus_id": "00000000:01:00.0"}]}
//! ```
//! `pci_bus_id` may be left out; other fields are required and unknown ones refused.

use super::GpuBackend;
use crate::discovery::DiscoveryError;
use backfill_shared::GpuDevice;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

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
}

/// A fixed list of GPUs.
#[derive(Debug, Clone, Default)]
pub struct FakeGpus {
    devices: Vec<GpuDevice>,
}

impl FakeGpus {
    /// Reads and validates an inventory file: unique, non-empty uuids and unique indexes.
    pub fn from_file(path: &Path) -> Result<FakeGpus, DiscoveryError> {
        let text = std::fs::read_to_string(path).map_err(|source| DiscoveryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |why: String| DiscoveryError::Inventory {
            path: path.to_path_buf(),
            why,
        };
        let file: InventoryFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut uuids = BTreeMap::new();
        let mut indexes = BTreeMap::new();
        for (i, g) in file.gpus.iter().enumerate() {
            if g.uuid.trim().is_empty() {
                return Err(bad(format!("gpus[{i}]: empty uuid")));
            }
            if let Some(first) = uuids.insert(g.uuid.as_str(), i) {
                return Err(bad(format!(
                    "gpus[{i}]: uuid {:?} is also the uuid of gpus[{first}]",
                    g.uuid
                )));
            }
            if let Some(first) = indexes.insert(g.index, i) {
                return Err(bad(format!(
                    "gpus[{i}]: index {} is also the index of gpus[{first}]",
                    g.index
                )));
            }
        }
        let devices = file
            .gpus
            .into_iter()
            .map(|g| GpuDevice::whole(g.index, &g.uuid, &g.name, g.memory_bytes, &g.pci_bus_id))
            .collect();
        Ok(FakeGpus { devices })
    }

    /// The given devices, as they are.
    pub fn from_devices(devices: Vec<GpuDevice>) -> FakeGpus {
        FakeGpus { devices }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

impl GpuBackend for FakeGpus {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn devices(&self) -> Result<Vec<GpuDevice>, DiscoveryError> {
        Ok(self.devices.clone())
    }
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
        let (_dir, path) = file(r#"{"gpus": []}"#);
        assert!(FakeGpus::from_file(&path).unwrap().is_empty());
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
        assert!(m.contains("index 3"), "{m}");
        let m = err(r#"{"gpus": [{"index": 0, "uuid": " ", "name": "A", "memory_bytes": 1}]}"#);
        assert!(m.contains("empty uuid"), "{m}");
        let m = err(r#"{"gpus": [{"index": 0, "name": "A", "memory_bytes": 1}]}"#);
        assert!(m.contains("missing field `uuid`"), "{m}");
        let m = err(r#"{"gpus": [{"index": -1, "uuid": "x", "name": "A", "memory_bytes": 1}]}"#);
        assert!(m.contains("line 1"), "{m}");
        err("not json");
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
