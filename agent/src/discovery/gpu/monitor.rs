//! [`GpuMonitor`]: the host's GPUs as last read, re-read periodically ([`run_rescans`]) and on
//! request (`POST /gpus/rescan` on the admin listener), without restarting the agent. Every
//! report to the coordinator carries the latest scan; a GPU that disappears or turns unhealthy
//! is logged at warn level and makes the agent report at once.

use super::{GpuBackend, GpuScan};
use crate::discovery::DiscoveryError;
use backfill_shared::GpuDevice;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the agent re-reads its GPUs unless told otherwise.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(30);

/// A GPU backend and what it answered last.
#[derive(Debug)]
pub struct GpuMonitor {
    backend: Box<dyn GpuBackend>,
    current: RwLock<Arc<GpuScan>>,
    /// One scan at a time (the periodic one and requested ones).
    scanning: Mutex<()>,
}

impl GpuMonitor {
    /// Scans once; an error here (the backend cannot be asked at all) is the caller's.
    pub fn start(backend: Box<dyn GpuBackend>) -> Result<GpuMonitor, DiscoveryError> {
        let first = backend.scan()?;
        Ok(GpuMonitor {
            backend,
            current: RwLock::new(Arc::new(first)),
            scanning: Mutex::new(()),
        })
    }

    /// "nvml", "fake" or "none".
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The latest scan.
    pub fn current(&self) -> Arc<GpuScan> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Scans again (blocking: NVML or a file), logs what changed and keeps the result. Returns
    /// whether the devices changed (their use changes all the time and does not count). On an
    /// error the previous scan is kept: a backend that cannot be asked for a moment does not
    /// make the GPUs vanish.
    pub fn rescan(&self) -> Result<bool, DiscoveryError> {
        let _one = self.scanning.lock().unwrap_or_else(PoisonError::into_inner);
        let new = self.backend.scan()?;
        let old = self.current();
        let changed = old.devices != new.devices;
        if changed {
            log_changes(&old.devices, &new.devices);
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
        Ok(changed)
    }
}

/// Logs each difference: gone and newly unhealthy GPUs at warn, the rest at info.
fn log_changes(old: &[GpuDevice], new: &[GpuDevice]) {
    let by_uuid = |d: &[GpuDevice]| -> BTreeMap<String, GpuDevice> {
        d.iter().map(|g| (g.uuid.clone(), g.clone())).collect()
    };
    let (old, new) = (by_uuid(old), by_uuid(new));
    for (uuid, o) in &old {
        match new.get(uuid) {
            None => {
                tracing::warn!(uuid = %uuid, name = %o.name, index = o.index, "GPU gone: it is no longer listed")
            }
            Some(n) if o.healthy && !n.healthy => tracing::warn!(
                uuid = %uuid,
                name = %n.name,
                index = n.index,
                health = n.health.as_deref().unwrap_or("unknown"),
                "GPU unhealthy: it is no longer allocatable"
            ),
            Some(n) if !o.healthy && n.healthy => {
                tracing::info!(uuid = %uuid, name = %n.name, "GPU healthy again")
            }
            Some(n) if n != o => tracing::info!(uuid = %uuid, before = ?o, now = ?n, "GPU changed"),
            Some(_) => {}
        }
    }
    for (uuid, n) in new.iter().filter(|(u, _)| !old.contains_key(*u)) {
        tracing::info!(uuid = %uuid, name = %n.name, index = n.index, healthy = n.healthy, "GPU appeared");
    }
}

/// Rescans every `interval` until `shutdown`; a change of devices wakes `changed` (the link
/// reports at once). A failed scan is logged and the previous one kept.
pub async fn run_rescans(
    monitor: Arc<GpuMonitor>,
    interval: Duration,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: the monitor has just scanned
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let m = monitor.clone();
        match tokio::task::spawn_blocking(move || m.rescan()).await {
            Ok(Ok(true)) => changed.notify_one(),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(backend = monitor.backend_name(), error = %e, "GPU rescan failed; keeping the last scan")
            }
            Err(e) => tracing::warn!(error = %e, "GPU rescan did not finish"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::discovery::FakeGpus;

    const TWO: &str = r#"{"gpus": [
        {"index": 0, "uuid": "GPU-a", "name": "A", "memory_bytes": 10, "utilization_percent": 5},
        {"index": 1, "uuid": "GPU-b", "name": "B", "memory_bytes": 10}]}"#;

    fn monitor(content: &str) -> (tempfile::TempDir, std::path::PathBuf, Arc<GpuMonitor>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        std::fs::write(&path, content).unwrap();
        let m = GpuMonitor::start(Box::new(FakeGpus::from_file(&path).unwrap())).unwrap();
        (dir, path, Arc::new(m))
    }

    #[test]
    fn rescan_picks_up_an_edited_inventory_file() {
        let (_dir, path, m) = monitor(TWO);
        assert_eq!(m.backend_name(), "fake");
        assert_eq!(m.current().devices.len(), 2);
        assert!(!m.rescan().unwrap(), "nothing changed");
        // Only the use changes: not a change of devices, but the new use is kept.
        std::fs::write(
            &path,
            TWO.replace("\"utilization_percent\": 5", "\"utilization_percent\": 90"),
        )
        .unwrap();
        assert!(!m.rescan().unwrap());
        assert_eq!(m.current().usage[0].utilization_percent, 90);
        // GPU-b turns unhealthy, GPU-a disappears.
        std::fs::write(
            &path,
            r#"{"gpus": [{"index": 1, "uuid": "GPU-b", "name": "B", "memory_bytes": 10,
                          "healthy": false, "health": "XID 79"}]}"#,
        )
        .unwrap();
        assert!(m.rescan().unwrap());
        let now = m.current();
        assert_eq!(now.devices.len(), 1);
        assert!(!now.devices[0].healthy);
        assert_eq!(now.devices[0].health.as_deref(), Some("XID 79"));
        // A broken file: an error, and the last scan stays.
        std::fs::write(&path, "{").unwrap();
        assert!(m.rescan().is_err());
        assert_eq!(m.current(), now);
    }

    #[tokio::test]
    async fn the_rescan_loop_reports_changes() {
        let (_dir, path, m) = monitor(TWO);
        let changed = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_rescans(
            m.clone(),
            Duration::from_millis(20),
            changed.clone(),
            shutdown.clone(),
        ));
        std::fs::write(&path, r#"{"gpus": []}"#).unwrap();
        // The next tick's scan notices the change and says so.
        tokio::time::timeout(Duration::from_secs(10), changed.notified())
            .await
            .expect("no change noticed");
        assert!(m.current().devices.is_empty());
        shutdown.cancel();
        task.await.unwrap();
    }
}
