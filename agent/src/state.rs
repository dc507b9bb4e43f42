//! The agent's durable state: which workloads it started (pid + start time) and their limits,
//! so a restarted agent re-adopts them instead of killing or duplicating them. Written with
//! write-to-temp, fsync, rename, fsync-dir: a crash leaves the old file or the new one.

use crate::driver::ProcessIdentity;
use crate::network::GuestNet;
use backfill_shared::{DriverKind, GuestProfile, PerfFactor, Resources, ServerId, Termination};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid agent state file ({reason}); move it aside to start afresh")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedServer {
    pub server: ServerId,
    pub process: ProcessIdentity,
    pub started_at: i64,
    pub resources: Resources,
    pub perf_factor: PerfFactor,
    pub incarnation: u64,
    /// A scheduled termination, enforced even while the coordinator is away.
    #[serde(default)]
    pub termination: Option<Termination>,
    /// What the metadata service tells its guest.
    #[serde(default)]
    pub guest: Option<GuestProfile>,
    /// Its network namespace, in isolated network mode.
    #[serde(default)]
    pub network: Option<GuestNet>,
    #[serde(default)]
    pub acknowledged: bool,
    /// The driver that runs it (state files of earlier agents: `exec`).
    #[serde(default = "exec")]
    pub driver: DriverKind,
}

fn exec() -> DriverKind {
    DriverKind::Exec
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    servers: Vec<PersistedServer>,
}

#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// No file yet = nothing to adopt.
    pub fn load(&self) -> Result<Vec<PersistedServer>, StateError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let file: File = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if file.version != VERSION {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                reason: format!("version {} (this agent writes {VERSION})", file.version),
            });
        }
        Ok(file.servers)
    }

    pub fn save(&self, servers: &[PersistedServer]) -> Result<(), StateError> {
        let tmp = self.path.with_extension("json.tmp");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        let body = serde_json::to_vec_pretty(&File {
            version: VERSION,
            servers: servers.to_vec(),
        })
        .map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&body).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert!(f.load().unwrap().is_empty());
        let s = PersistedServer {
            server: ServerId::from_u128(3),
            process: ProcessIdentity {
                pid: 10,
                start_ticks: 20,
            },
            started_at: 30,
            resources: Resources {
                cpu_mhz: 1000,
                vcpus: 1,
                mem_bytes: 1 << 28,
            },
            perf_factor: PerfFactor { cpu: 0.5, mem: 1.0 },
            incarnation: 9,
            termination: Some(Termination {
                scheduled_at: 1,
                terminate_at: 2,
            }),
            guest: None,
            network: None,
            acknowledged: false,
            driver: DriverKind::Vm,
        };
        f.save(std::slice::from_ref(&s)).unwrap();
        assert_eq!(f.load().unwrap(), vec![s]);
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        std::fs::write(f.path(), "{not json").unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(
            e.contains("state.json") && e.contains("move it aside"),
            "{e}"
        );
    }
}
