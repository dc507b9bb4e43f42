//! The agent's configuration file (TOML), loaded and validated before anything starts.

use backfill_shared::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        if !self.state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path".into()));
        }
        for (key, p) in [
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} must be an absolute path", p.display()),
                ));
            }
            if !p.is_file() {
                return Err(invalid(key, format!("{} does not exist", p.display())));
            }
        }
        if self.default_command.first().is_none_or(|c| c.is_empty()) {
            return Err(invalid("default_command", "must name a program".into()));
        }
        if !(1..=300).contains(&self.report_interval_secs) {
            return Err(invalid("report_interval_secs", "must be 1 to 300".into()));
        }
        if let Some(f) = self.inventory_file.as_ref().filter(|f| !f.is_absolute()) {
            return Err(invalid(
                "inventory_file",
                format!("{} must be an absolute path", f.display()),
            ));
        }
        let parent_ok = !self.cgroup_parent.is_empty()
            && self.cgroup_parent.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        if !parent_ok {
            return Err(invalid(
                "cgroup_parent",
                "use path components of a-z, A-Z, 0-9, '.', '-', '_'".into(),
            ));
        }
        Ok(())
    }
}
