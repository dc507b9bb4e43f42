//! The agent's configuration file (TOML), loaded and validated before anything starts.

pub use backfill_shared::config::ConfigError;
use backfill_shared::config::{load_toml, require_absolute, validate_tls_files};
use backfill_shared::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Whether workloads get real cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Real cgroups (v2 if usable, else v1). Needs root.
    Auto,
    /// No cgroups: limits are not enforced (development without root).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The coordinator's agent link address.
    pub coordinator: SocketAddr,
    /// The name in the coordinator's certificate to verify (a DNS name or an IP address).
    pub coordinator_name: String,
    /// Durable state, per-server logs. Must be absolute.
    pub state_dir: PathBuf,
    /// Parent cgroup of the servers' cgroups.
    #[serde(default = "default_parent")]
    pub cgroup_parent: String,
    #[serde(default = "default_mode")]
    pub cgroups: CgroupMode,
    /// User the workloads run as; empty = the agent's own user (only sensible when not root).
    #[serde(default = "default_user")]
    pub run_as: String,
    /// The command a server runs when its request names no workload.
    pub default_command: Vec<String>,
    /// Stop every workload and remove its cgroup when the agent exits (dev mode). Off in
    /// production: an agent restart must not touch running workloads.
    #[serde(default)]
    pub stop_workloads_on_exit: bool,
    /// Declares GPUs from a JSON file instead of NVML (machines without GPUs, tests).
    #[serde(default)]
    pub inventory_file: Option<PathBuf>,
    #[serde(default = "default_report_interval")]
    pub report_interval_secs: u64,
    pub tls: TlsFiles,
}

fn default_parent() -> String {
    "backfill".into()
}
fn default_mode() -> CgroupMode {
    CgroupMode::Auto
}
fn default_user() -> String {
    "nobody".into()
}
fn default_report_interval() -> u64 {
    5
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig = load_toml(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| ConfigError::invalid(path, key, reason);
        require_absolute(path, "state_dir", &self.state_dir)?;
        validate_tls_files(path, &self.tls)?;
        if let Some(f) = &self.inventory_file {
            require_absolute(path, "inventory_file", f)?;
        }
        if self.default_command.first().is_none_or(|c| c.is_empty()) {
            return Err(invalid("default_command", "must name a program"));
        }
        // The coordinator takes an agent silent for 30 s for gone.
        if !(1..=10).contains(&self.report_interval_secs) {
            return Err(invalid("report_interval_secs", "must be 1 to 10"));
        }
        crate::cgroups::validate_parent(&self.cgroup_parent)
            .map_err(|e| invalid("cgroup_parent", &e.to_string()))?;
        Ok(())
    }
}
