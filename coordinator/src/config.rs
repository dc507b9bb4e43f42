//! The coordinator's configuration file (TOML). Loaded and validated before anything binds.

pub use backfill_shared::config::ConfigError;
use backfill_shared::config::{env_override, load_toml, require_absolute, validate_tls_files};
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
    /// `/metrics`, `/healthz`, `/ready` in plain HTTP: keep it on loopback or a management
    /// network.
    #[serde(default = "default_admin_addr")]
    pub admin_addr: SocketAddr,
    /// The SQLite database file.
    pub database: PathBuf,
    /// Accounts created at startup (if missing) with the backfill permission. Accounts are
    /// otherwise managed through the admin API (`backfillctl account ...`).
    #[serde(default)]
    pub backfill_accounts: Vec<String>,
    /// Accounts created at startup (if missing) without it.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// `[billing]`: currency, prices (normal, burst) and the metering flush interval.
    #[serde(default)]
    pub billing: crate::billing::BillingConfig,
    pub tls: TlsFiles,
    /// On SIGTERM, how long requests in flight get to finish.
    #[serde(default = "default_drain")]
    pub drain_timeout_s: u64,
    /// `[scheduler]`: placement strategy and grow-back hysteresis.
    #[serde(default)]
    pub scheduler: crate::schedule::SchedulerConfig,
    /// `[classes.backfill]`, `[classes.spot]`: downsizable, floor, min_uptime_s, notice_s.
    #[serde(default)]
    pub classes: crate::scheduler::Classes,
}

fn default_drain() -> u64 {
    10
}

fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let mut cfg: CoordinatorConfig = load_toml(path)?;
        // The few keys a container sets from its environment.
        env_override("BACKFILL_API_ADDR", &mut cfg.api_addr)?;
        env_override("BACKFILL_LINK_ADDR", &mut cfg.link_addr)?;
        env_override("BACKFILL_ADMIN_ADDR", &mut cfg.admin_addr)?;
        env_override("BACKFILL_DATABASE", &mut cfg.database)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Catches what would otherwise fail later: relative paths, missing files, bad names.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        require_absolute(path, "database", &self.database)?;
        validate_tls_files(path, &self.tls)?;
        for (key, names) in [
            ("backfill_accounts", &self.backfill_accounts),
            ("accounts", &self.accounts),
        ] {
            for name in names {
                backfill_shared::pki::validate_name(name)
                    .map_err(|e| ConfigError::invalid(path, key, e.to_string()))?;
            }
        }
        crate::billing::Billing::from_config(&self.billing)
            .map_err(|(key, reason)| ConfigError::invalid(path, key, reason))?;
        if !(1..=600).contains(&self.drain_timeout_s) {
            return Err(ConfigError::invalid(
                path,
                "drain_timeout_s",
                "must be 1 to 600",
            ));
        }
        Ok(())
    }

    /// The validated billing settings.
    pub fn billing(&self) -> Result<crate::billing::Billing, ConfigError> {
        crate::billing::Billing::from_config(&self.billing).map_err(|(key, reason)| {
            ConfigError::invalid(Path::new("coordinator config"), key, reason)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
api_addr = "127.0.0.1:8443"
link_addr = "127.0.0.1:8444"
database = "/var/lib/backfill/coordinator.sqlite"
[tls]
ca = "/etc/backfill/ca.pem"
cert = "/etc/backfill/coordinator.pem"
key = "/etc/backfill/coordinator.key"
"#;

    /// Every key a configuration can hold, as dotted paths.
    fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                keys(v, &path, out);
            }
        }
    }

    #[test]
    fn the_example_parses_and_documents_every_key() {
        let text = include_str!("../../config/coordinator.toml");
        let example: CoordinatorConfig = toml::from_str(text).unwrap();
        assert_eq!(example.billing, crate::billing::BillingConfig::default());
        assert_eq!(example.classes, crate::scheduler::Classes::default());
        let mut all = Vec::new();
        keys(&toml::Value::try_from(&example).unwrap(), "", &mut all);
        let mut in_example = Vec::new();
        keys(
            &toml::from_str::<toml::Value>(text).unwrap(),
            "",
            &mut in_example,
        );
        for k in all {
            assert!(
                in_example.contains(&k),
                "config/coordinator.toml does not document {k}"
            );
        }
    }

    #[test]
    fn scheduler_and_classes_have_defaults_and_can_be_set() {
        let cfg: CoordinatorConfig = toml::from_str(BASE).unwrap();
        assert_eq!(cfg.classes.spot.min_uptime_s, 1_800);
        assert_eq!(cfg.classes.backfill.floor, 0.1);
        let text = format!(
            "{BASE}\n[scheduler]\nstrategy = \"spread\"\n[scheduler.grow]\nmargin = 0.1\nmin_interval_s = 5\nmin_step = 0.2\n[classes.backfill]\ndownsizable = true\nfloor = 0.25\nmin_uptime_s = 0\nnotice_s = 30\n[classes.spot]\ndownsizable = true\nfloor = 0.5\nmin_uptime_s = 600\nnotice_s = 120\n"
        );
        let cfg: CoordinatorConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg.scheduler.strategy, crate::scheduler::Strategy::Spread);
        assert_eq!(cfg.classes.backfill.floor, 0.25);
        assert_eq!(cfg.classes.spot.notice_s, 120);
        let typo = format!("{BASE}\n[classes.spot]\nflor = 0.5\n");
        assert!(toml::from_str::<CoordinatorConfig>(&typo).is_err());
    }
}
