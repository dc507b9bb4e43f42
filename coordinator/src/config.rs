//! The coordinator's configuration file (TOML). Loaded and validated before anything binds.

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Public API (HTTPS, client certificate required).
    pub api_addr: SocketAddr,
    /// Agent link (TLS, agent certificates).
    pub link_addr: SocketAddr,
    /// The SQLite database file.
    pub database: PathBuf,
    /// Accounts given the backfill permission at startup.
    #[serde(default)]
    pub backfill_accounts: Vec<String>,
    pub tls: TlsFiles,
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: CoordinatorConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Catches what would otherwise fail later: relative paths, missing files, bad names.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        if !self.database.is_absolute() {
            return Err(invalid("database", "must be an absolute path".into()));
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
        for name in &self.backfill_accounts {
            backfill_shared::pki::validate_name(name)
                .map_err(|e| invalid("backfill_accounts", e.to_string()))?;
        }
        Ok(())
    }
}
