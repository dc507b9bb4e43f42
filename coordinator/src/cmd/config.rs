//! The coordinator's configuration file (TOML). Loaded and validated before anything binds.

pub use backfill_shared::config::ConfigError;
use backfill_shared::config::{env_override, load_toml, require_absolute, validate_tls_files};
use backfill_shared::listener::{HttpLimits, HttpLimitsConfig};
use backfill_shared::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Public API (HTTPS, client certificate required).
    pub api_addr: SocketAddr,
    /// Agent link (TLS, agent certificates).
    pub link_addr: SocketAddr,
    /// The metrics listener (key `admin_addr`): `/metrics`, `/healthz`, `/ready` in plain
    /// HTTP; keep it on loopback or a management network.
    #[serde(default = "default_metrics_addr", rename = "admin_addr")]
    pub metrics_addr: SocketAddr,
    /// The store: a SQLite file (an absolute path) or a `postgres://` URL.
    pub database: crate::store::Database,
    /// Accounts created at startup (if missing) with the backfill permission. Accounts are
    /// otherwise managed through the admin API (`backfillctl account ...`).
    #[serde(default)]
    pub backfill_accounts: Vec<String>,
    /// Accounts created at startup (if missing) without it.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// `[billing]`: currency, prices (normal, burst) and the metering flush interval.
    #[serde(default)]
    pub billing: crate::domain::billing::BillingConfig,
    pub tls: TlsFiles,
    /// On SIGTERM, how long requests in flight get to finish.
    #[serde(default = "default_drain")]
    pub drain_timeout_s: u64,
    /// `[scheduler]`: placement strategy and grow-back hysteresis.
    #[serde(default)]
    pub scheduler: crate::state::settings::SchedulerConfig,
    /// `[classes.backfill]`, `[classes.spot]`: downsizable, floor, min_uptime_s, notice_s.
    #[serde(default)]
    pub classes: crate::policy::scheduler::Classes,
    /// `[operator]`: the management token and listener, auto mode and its timeouts.
    #[serde(default)]
    pub operator: crate::state::settings::OperatorConfig,
    /// `[[flavors]]`: named sizes with a price (instance types).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flavors: Vec<crate::domain::flavors::Flavor>,
    /// `[webhooks]`: which receiver URLs are allowed, retries, timeouts and limits.
    #[serde(default)]
    pub webhooks: crate::state::settings::WebhookConfig,
    /// `[[pools]]`: groups of hosts with limits and an optional provisioner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<crate::policy::pools::PoolConfig>,
    /// `[link]`: when an agent is taken for lost (silence_s), how often it hears from us.
    #[serde(default)]
    pub link: crate::link::LinkConfig,
    /// `[http.api]`, `[http.management]`, `[http.admin]`: timeouts and connection caps.
    #[serde(default)]
    pub http: HttpSettings,
    /// `[drivers]`: who may run `exec`, `vm` and `container` workloads and use the host's
    /// network.
    #[serde(default)]
    pub drivers: crate::state::access::DriverAccess,
    /// `[ha]`: several coordinators on one PostgreSQL (name, advertised addresses, lease).
    #[serde(default)]
    pub ha: crate::cmd::ha::HaConfig,
    /// `[drives]`: the storage quota per account and the declared library drives.
    #[serde(default)]
    pub drives: crate::domain::library::DrivesConfig,
}

/// Each HTTP listener's limits; a key left out takes that listener's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default)]
    pub api: HttpLimitsConfig,
    #[serde(default)]
    pub management: HttpLimitsConfig,
    /// The metrics listener's (`[http.admin]`).
    #[serde(default, rename = "admin")]
    pub metrics: HttpLimitsConfig,
}

impl HttpSettings {
    pub fn api(&self) -> HttpLimits {
        self.api.resolve(HttpLimits::API)
    }
    pub fn management(&self) -> HttpLimits {
        self.management.resolve(HttpLimits::API)
    }
    pub fn metrics(&self) -> HttpLimits {
        self.metrics.resolve(HttpLimits::ADMIN)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        for (table, cfg) in [
            ("api", &self.api),
            ("management", &self.management),
            ("admin", &self.metrics),
        ] {
            cfg.validate().map_err(|(key, reason)| {
                ConfigError::invalid(path, format!("http.{table}.{key}"), reason)
            })?;
        }
        Ok(())
    }
}

fn default_drain() -> u64 {
    10
}

fn default_metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let mut cfg: CoordinatorConfig = load_toml(path)?;
        // The few keys a container sets from its environment.
        env_override("BACKFILL_API_ADDR", &mut cfg.api_addr)?;
        env_override("BACKFILL_LINK_ADDR", &mut cfg.link_addr)?;
        env_override("BACKFILL_ADMIN_ADDR", &mut cfg.metrics_addr)?;
        env_override("BACKFILL_DATABASE", &mut cfg.database)?;
        if let Ok(token) = std::env::var("BACKFILL_MANAGEMENT_TOKEN") {
            cfg.operator.management_token = Some(token);
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Catches what would otherwise fail later: relative paths, missing files, bad names.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if let crate::store::Database::Sqlite(file) = &self.database {
            require_absolute(path, "database", file)?;
        }
        validate_tls_files(path, &self.tls)?;
        self.drives
            .validate()
            .map_err(|(key, reason)| ConfigError::invalid(path, key, reason))?;
        for (key, names) in [
            ("backfill_accounts", &self.backfill_accounts),
            ("accounts", &self.accounts),
            ("drivers.operator_accounts", &self.drivers.operator_accounts),
        ] {
            for name in names {
                backfill_shared::pki::validate_name(name)
                    .map_err(|e| ConfigError::invalid(path, key, e.to_string()))?;
            }
        }
        crate::domain::billing::Billing::from_config(&self.billing)
            .map_err(|(key, reason)| ConfigError::invalid(path, key, reason))?;
        self.webhooks
            .validate()
            .map_err(|(key, reason)| ConfigError::invalid(path, key, reason))?;
        self.link
            .validate()
            .map_err(|(key, reason)| ConfigError::invalid(path, key, reason))?;
        self.http.validate(path)?;
        if let Err(crate::cmd::ha::HaError::Config { key, reason }) = self.ha.validate() {
            return Err(ConfigError::invalid(path, key, reason));
        }
        let flavors = self.flavors(path)?;
        self.pools(path, &flavors)?;
        if let Some(t) = &self.operator.management_token
            && (t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError::invalid(
                path,
                "operator.management_token",
                "at least 16 characters, no spaces",
            ));
        }
        for (key, v) in [
            ("operator.max_idle_time_s", self.operator.max_idle_time_s),
            (
                "operator.max_launch_time_s",
                self.operator.max_launch_time_s,
            ),
        ] {
            if !(1..=86_400).contains(&v) {
                return Err(ConfigError::invalid(path, key, "must be 1 to 86400"));
            }
        }
        if !(1..=600).contains(&self.drain_timeout_s) {
            return Err(ConfigError::invalid(
                path,
                "drain_timeout_s",
                "must be 1 to 600",
            ));
        }
        Ok(())
    }

    /// The configuration as JSON with its secrets (the management token) replaced.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(t) = v.pointer_mut("/operator/management_token") {
            *t = serde_json::Value::String("<redacted>".into());
        }
        if let Some(d) = v.pointer_mut("/database") {
            *d = serde_json::Value::String(self.database.redacted());
        }
        v
    }

    /// The validated flavors.
    pub fn flavors(&self, path: &Path) -> Result<crate::domain::flavors::Flavors, ConfigError> {
        crate::domain::flavors::Flavors::new(self.flavors.clone())
            .map_err(|(key, reason)| ConfigError::invalid(path, key, reason))
    }

    /// The validated pools.
    pub fn pools(
        &self,
        path: &Path,
        flavors: &crate::domain::flavors::Flavors,
    ) -> Result<crate::policy::pools::Pools, ConfigError> {
        crate::policy::pools::Pools::new(self.pools.clone(), flavors)
            .map_err(|(key, reason)| ConfigError::invalid(path, key, reason))
    }

    /// The validated billing settings.
    pub fn billing(&self) -> Result<crate::domain::billing::Billing, ConfigError> {
        crate::domain::billing::Billing::from_config(&self.billing).map_err(|(key, reason)| {
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
        let text = include_str!("../../../config/coordinator.toml");
        let example: CoordinatorConfig = toml::from_str(text).unwrap();
        assert_eq!(
            example.billing,
            crate::domain::billing::BillingConfig::default()
        );
        assert_eq!(
            example.classes,
            crate::policy::scheduler::Classes::default()
        );
        assert_eq!(
            example.http.api(),
            HttpLimits::API,
            "the documented defaults"
        );
        assert_eq!(example.http.management(), HttpLimits::API);
        assert_eq!(example.http.metrics(), HttpLimits::ADMIN);
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

    /// The example's commented-out flavors, pools and operator keys, uncommented.
    fn uncommented_example() -> String {
        let text = include_str!("../../../config/coordinator.toml");
        let mut out = String::new();
        let mut block = false;
        for line in text.lines() {
            if line.starts_with("# [[") {
                block = true;
            }
            let key = line.starts_with("# management_");
            if (block || key) && line.starts_with('#') {
                let body = line.trim_start_matches('#');
                out.push_str(body.strip_prefix(' ').unwrap_or(body));
            } else {
                block = block && !line.trim().is_empty();
                out.push_str(line);
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_commented_examples_are_valid_when_uncommented() {
        let text = uncommented_example();
        let cfg: CoordinatorConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg.flavors.len(), 2);
        assert_eq!(cfg.pools.len(), 1);
        assert!(cfg.pools[0].provisioner.is_some());
        assert!(cfg.operator.management_token.is_some());
        assert!(cfg.operator.management_addr.is_some());
        let flavors = cfg.flavors(Path::new("x")).unwrap();
        cfg.pools(Path::new("x"), &flavors).unwrap();
        let redacted = cfg.redacted();
        assert_eq!(redacted["operator"]["management_token"], "<redacted>");
        assert_eq!(redacted["pools"][0]["name"], "batch");
    }

    #[test]
    fn operator_mistakes_name_their_key() {
        let bad = |extra: &str| {
            let cfg: CoordinatorConfig = toml::from_str(&format!("{BASE}\n{extra}")).unwrap();
            let flavors = cfg.flavors(Path::new("c.toml"));
            let err = match flavors {
                Err(e) => e,
                Ok(f) => match cfg.pools(Path::new("c.toml"), &f) {
                    Err(e) => e,
                    Ok(_) => return String::new(),
                },
            };
            err.to_string()
        };
        assert!(bad("[[pools]]\nname = \"p\"\nmin = 3\nmax = 1\n").contains("pools[0].min"));
        assert!(
            bad("[[pools]]\nname = \"p\"\nmax = 1\nflavor = \"nope\"\n")
                .contains("pools[0].flavor")
        );
        assert!(
            bad("[[flavors]]\nname = \"a\"\nvcpus = 0\nram = 1\n").contains("flavors[0].vcpus")
        );
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
        assert_eq!(
            cfg.scheduler.strategy,
            crate::policy::scheduler::Strategy::Spread
        );
        assert_eq!(cfg.classes.backfill.floor, 0.25);
        assert_eq!(cfg.classes.spot.notice_s, 120);
        let typo = format!("{BASE}\n[classes.spot]\nflor = 0.5\n");
        assert!(toml::from_str::<CoordinatorConfig>(&typo).is_err());
    }

    #[test]
    fn http_limits_are_set_per_listener_and_checked() {
        let text = format!(
            "{BASE}\n[http.api]\nidle_timeout_s = 5\nmax_connections_per_client = 4\n[http.admin]\nmax_connections = 2\n"
        );
        let cfg: CoordinatorConfig = toml::from_str(&text).unwrap();
        assert_eq!(
            cfg.http.api().idle_timeout,
            std::time::Duration::from_secs(5)
        );
        assert_eq!(cfg.http.api().max_connections_per_client, 4);
        assert_eq!(
            cfg.http.api().header_timeout,
            HttpLimits::API.header_timeout
        );
        assert_eq!(cfg.http.metrics().max_connections, 2);
        assert_eq!(cfg.http.management(), HttpLimits::API);
        let typo = format!("{BASE}\n[http.api]\nidle_timeout = 5\n");
        assert!(toml::from_str::<CoordinatorConfig>(&typo).is_err());
        let zero = format!("{BASE}\n[http.management]\nbody_timeout_s = 0\n");
        let cfg: CoordinatorConfig = toml::from_str(&zero).unwrap();
        let err = cfg
            .http
            .validate(Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.management.body_timeout_s"), "{err}");
    }

    #[test]
    fn the_database_is_a_path_or_a_postgres_url_and_its_password_stays_hidden() {
        let with = |db: &str| BASE.replace("/var/lib/backfill/coordinator.sqlite", db);
        let cfg: CoordinatorConfig =
            toml::from_str(&with("postgres://backfill:hunter2@db:5432/backfill")).unwrap();
        assert!(matches!(
            cfg.database,
            crate::store::Database::Postgres(ref u) if u.contains("hunter2")
        ));
        let view = cfg.redacted().to_string();
        assert!(!view.contains("hunter2"), "{view}");
        assert!(view.contains("postgres://backfill:<redacted>@db:5432/backfill"));
        // A relative SQLite path is refused at load, a URL is not a path.
        // (validate checks the database before the TLS files, which do not exist here)
        let cfg: CoordinatorConfig = toml::from_str(&with("db.sqlite")).unwrap();
        let err = cfg.validate(Path::new("c.toml")).unwrap_err().to_string();
        assert!(
            err.contains("database") && err.contains("absolute"),
            "{err}"
        );
        let cfg: CoordinatorConfig = toml::from_str(&with("postgres://db/backfill")).unwrap();
        let err = cfg.validate(Path::new("c.toml")).unwrap_err().to_string();
        assert!(!err.contains("database"), "{err}");
        // An unknown scheme or a malformed URL fails to parse, naming the key.
        for bad in ["mysql://db/backfill", "postgres://db:port/x"] {
            let err = toml::from_str::<CoordinatorConfig>(&with(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains("database"), "{bad}: {err}");
        }
    }
}
