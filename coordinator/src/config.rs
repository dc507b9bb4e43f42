//! The coordinator's configuration file (TOML). Loaded and validated before anything binds.

pub use backfill_shared::config::ConfigError;
use backfill_shared::config::{load_toml, require_absolute, validate_tls_files};
use backfill_shared::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Public API (HTTPS, client certificate required).
    pub api_addr: SocketAddr,
    /// Agent link (TLS, agent certificates).
    pub link_addr: SocketAddr,
    /// The SQLite database file.
    pub database: PathBuf,
    /// The accounts with the backfill permission: exactly these (applied at startup).
    #[serde(default)]
    pub backfill_accounts: Vec<String>,
    pub tls: TlsFiles,
    /// Placement strategy, grow-back hysteresis and the preemptible classes.
    #[serde(default)]
    pub scheduler: crate::schedule::SchedulerSettings,
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let cfg: CoordinatorConfig = load_toml(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Catches what would otherwise fail later: relative paths, missing files, bad names.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        require_absolute(path, "database", &self.database)?;
        validate_tls_files(path, &self.tls)?;
        for name in &self.backfill_accounts {
            backfill_shared::pki::validate_name(name)
                .map_err(|e| ConfigError::invalid(path, "backfill_accounts", e.to_string()))?;
        }
        Ok(())
    }
}
