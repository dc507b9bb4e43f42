//! The agent's configuration file (TOML), loaded and validated before anything starts.

pub use backfill_shared::config::ConfigError;
use backfill_shared::config::{env_override, load_toml, require_absolute, validate_tls_files};
use backfill_shared::listener::{HttpLimits, HttpLimitsConfig};
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The coordinator's agent link address (one coordinator; `coordinators` for several).
    #[serde(default)]
    pub coordinator: Option<SocketAddr>,
    /// The agent link addresses of several coordinators sharing one PostgreSQL: the agent
    /// connects to any of them and is redirected to the leader (docs/ha.md). Every one's
    /// certificate must carry `coordinator_name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coordinators: Vec<SocketAddr>,
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
    /// Whether this host runs `exec` workloads: processes on the host itself, for development
    /// and tests. Off, the agent does not offer the driver (the coordinator places no such
    /// server here) and refuses one it is sent anyway.
    #[serde(default)]
    pub exec_driver: bool,
    /// Stop every workload and remove its cgroup when the agent exits (dev mode). Off in
    /// production: an agent restart must not touch running workloads.
    #[serde(default)]
    pub stop_workloads_on_exit: bool,
    /// Declares GPUs from a JSON file instead of NVML (machines without GPUs, tests).
    #[serde(default)]
    pub inventory_file: Option<PathBuf>,
    #[serde(default = "default_report_interval")]
    pub report_interval_secs: u64,
    /// Seconds without a frame from the coordinator (it re-sends the desired state every 10 s)
    /// after which the agent drops the link and redials, 5 to 600.
    #[serde(default = "default_coordinator_silence")]
    pub coordinator_silence_secs: u64,
    /// Whether normal servers are held to the MHz they were sold (a CPU quota) or may also use
    /// idle cycles. Their CPU weight holds either way; backfill and spot always have a quota.
    #[serde(default = "default_true")]
    pub normal_cpu_quota: bool,
    /// Seconds between re-reads of the GPUs (NVML or the inventory file), 1 to 3600.
    #[serde(default = "default_gpu_rescan")]
    pub gpu_rescan_interval_secs: u64,
    pub tls: TlsFiles,
    #[serde(default)]
    pub metadata: MetadataSettings,
    #[serde(default)]
    pub network: NetworkSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    /// `[pressure]`: the agent's own squeeze of backfill when the kernel reports stalls.
    #[serde(default)]
    pub pressure: crate::pressure::PressureSettings,
    /// `[container]`: the `container` driver (OCI runtime, image cache).
    #[serde(default)]
    pub container: crate::driver::container::ContainerConfig,
    #[serde(default)]
    pub vm: crate::driver::vm::VmConfig,
}

/// `[admin]`: `/metrics`, `/healthz`, `/ready` in plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Keep it on loopback or a management network.
    #[serde(default = "default_admin_bind")]
    pub bind: SocketAddr,
    /// `[admin.http]`: timeouts and connection caps (defaults: [`HttpLimits::ADMIN`]).
    #[serde(default)]
    pub http: HttpLimitsConfig,
}

impl Default for AdminSettings {
    fn default() -> AdminSettings {
        AdminSettings {
            bind: default_admin_bind(),
            http: HttpLimitsConfig::default(),
        }
    }
}

impl AdminSettings {
    pub fn limits(&self) -> HttpLimits {
        self.http.resolve(HttpLimits::ADMIN)
    }
}

fn default_admin_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9465))
}

/// `[metadata]`: the guests' metadata service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataSettings {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where the listener binds. The address need not exist on any interface: guests in
    /// isolated network mode reach it through a guests-only local route.
    #[serde(default = "default_metadata_bind")]
    pub bind: SocketAddr,
    /// Serve EC2 paths without an IMDSv2 session token.
    #[serde(default = "yes")]
    pub imdsv1: bool,
    /// What guests are told their availability zone is.
    #[serde(default = "default_zone")]
    pub availability_zone: String,
    /// Per-guest token bucket: sustained requests per second, and the burst.
    #[serde(default = "default_rate")]
    pub rate_per_second: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// The longest a long-poll (`wait_for_change`, `/backfill/v1/?wait=true`) waits.
    #[serde(default = "default_max_wait")]
    pub max_wait_secs: u64,
    /// Proxy mode: a file holding the secret that signs `X-Instance-ID` (Neutron's
    /// `metadata_proxy_shared_secret`). Absent: the header is not believed.
    #[serde(default)]
    pub proxy_secret_file: Option<PathBuf>,
    /// `[metadata.http]`: timeouts and connection caps, per guest address too (defaults:
    /// [`HttpLimits::METADATA`]).
    #[serde(default)]
    pub http: HttpLimitsConfig,
}

impl MetadataSettings {
    pub fn limits(&self) -> HttpLimits {
        self.http.resolve(HttpLimits::METADATA)
    }
}

impl Default for MetadataSettings {
    fn default() -> MetadataSettings {
        MetadataSettings {
            enabled: true,
            bind: default_metadata_bind(),
            imdsv1: true,
            availability_zone: default_zone(),
            rate_per_second: default_rate(),
            burst: default_burst(),
            max_wait_secs: default_max_wait(),
            proxy_secret_file: None,
            http: HttpLimitsConfig::default(),
        }
    }
}

/// `[network]`: isolated network mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    /// Guest addresses: an IPv4 prefix cut into one /30 per isolated server. Agents on one
    /// host should have disjoint pools; if they share one, each skips the slots whose address
    /// another already holds.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// The routing table holding the guests-only route to the metadata address. Agents on one
    /// host may share it (the route is the same and never removed); the policy rules that lead
    /// to it are each agent's own, by interface name (see `network::naming`).
    #[serde(default = "default_table")]
    pub route_table: u32,
    /// Whether the agent installs the guests' egress policy (iptables rules per agent and per
    /// guest, see `network::egress`) and turns on IPv4 forwarding. Off, guests reach whatever
    /// the host's own firewall lets them, the host's services included.
    #[serde(default = "yes")]
    pub egress_policy: bool,
    /// IPv4 ranges guests may always reach, checked before `egress_deny`.
    #[serde(default)]
    pub egress_allow: Vec<String>,
    /// IPv4 ranges guests may not reach unless allowed; the pool (other guests) is added.
    #[serde(default = "default_egress_deny")]
    pub egress_deny: Vec<String>,
    /// Per guest, packets per second out beyond which packets are dropped; 0: no limit.
    #[serde(default)]
    pub egress_packets_per_second: u32,
    /// Per guest, KiB per second out beyond which packets are dropped; 0: no limit.
    #[serde(default)]
    pub egress_kib_per_second: u32,
}

impl Default for NetworkSettings {
    fn default() -> NetworkSettings {
        NetworkSettings {
            pool: default_pool(),
            route_table: default_table(),
            egress_policy: true,
            egress_allow: Vec::new(),
            egress_deny: default_egress_deny(),
            egress_packets_per_second: 0,
            egress_kib_per_second: 0,
        }
    }
}

impl NetworkSettings {
    /// The egress policy, or the first entry that is not a range, with its key.
    pub fn egress(&self) -> Result<crate::network::EgressPolicy, (String, String)> {
        let ranges = |key: &str, list: &[String]| {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    s.parse::<crate::network::Cidr>()
                        .map_err(|e| (format!("network.{key}[{i}]"), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let policy = crate::network::EgressPolicy {
            allow: ranges("egress_allow", &self.egress_allow)?,
            deny: ranges("egress_deny", &self.egress_deny)?,
            packets_per_second: self.egress_packets_per_second,
            kib_per_second: self.egress_kib_per_second,
        };
        for (i, a) in policy.allow.iter().enumerate() {
            if let Some(n) = a.never_reachable() {
                return Err((
                    format!("network.egress_allow[{i}]"),
                    format!(
                        "{a} is in {n}: guests never reach loopback or link-local addresses (the metadata service is the agent's own, not forwarded)"
                    ),
                ));
            }
        }
        if policy.packets_per_second > crate::network::MAX_PACKETS_PER_SECOND {
            return Err((
                "network.egress_packets_per_second".into(),
                format!(
                    "must be 0 (no limit) to {}",
                    crate::network::MAX_PACKETS_PER_SECOND
                ),
            ));
        }
        if policy.kib_per_second > crate::network::MAX_KIB_PER_SECOND {
            return Err((
                "network.egress_kib_per_second".into(),
                format!(
                    "must be 0 (no limit) to {} (1 GiB/s)",
                    crate::network::MAX_KIB_PER_SECOND
                ),
            ));
        }
        Ok(policy)
    }
}

/// "This network", private, shared (CGNAT), multicast and reserved ranges. Loopback and
/// link-local are refused whatever the lists say (`network::NEVER`).
fn default_egress_deny() -> Vec<String> {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ]
    .map(String::from)
    .to_vec()
}

fn yes() -> bool {
    true
}
fn default_metadata_bind() -> SocketAddr {
    SocketAddr::from(([169, 254, 169, 254], 80))
}
fn default_zone() -> String {
    "default".into()
}
fn default_rate() -> u32 {
    20
}
fn default_burst() -> u32 {
    50
}
fn default_max_wait() -> u64 {
    300
}
fn default_pool() -> String {
    "10.213.0.0/16".into()
}
fn default_table() -> u32 {
    2169
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
fn default_gpu_rescan() -> u64 {
    crate::discovery::gpu::DEFAULT_RESCAN_INTERVAL.as_secs()
}

fn default_report_interval() -> u64 {
    5
}

fn default_true() -> bool {
    true
}

fn default_coordinator_silence() -> u64 {
    30
}

impl AgentConfig {
    /// Every coordinator to try, `coordinator` first, each once.
    pub fn coordinator_addrs(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self.coordinator.into_iter().collect();
        for a in &self.coordinators {
            if !all.contains(a) {
                all.push(*a);
            }
        }
        all
    }

    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let mut cfg: AgentConfig = load_toml(path)?;
        // The few keys a container sets from its environment.
        if std::env::var_os("BACKFILL_COORDINATOR").is_some() {
            let mut one = SocketAddr::from(([127, 0, 0, 1], 0));
            env_override("BACKFILL_COORDINATOR", &mut one)?;
            cfg.coordinator = Some(one);
        }
        env_override("BACKFILL_COORDINATOR_NAME", &mut cfg.coordinator_name)?;
        env_override("BACKFILL_STATE_DIR", &mut cfg.state_dir)?;
        env_override("BACKFILL_METADATA_BIND", &mut cfg.metadata.bind)?;
        env_override("BACKFILL_ADMIN_BIND", &mut cfg.admin.bind)?;
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
        if self.coordinator_addrs().is_empty() {
            return Err(invalid(
                "coordinator",
                "name the coordinator's agent link (`coordinator = \"ip:port\"`) or several \
                 (`coordinators = [\"ip:port\", ...]`)",
            ));
        }
        if self.coordinators.len() > 16 {
            return Err(invalid("coordinators", "at most 16 addresses"));
        }
        if self.default_command.first().is_none_or(|c| c.is_empty()) {
            return Err(invalid("default_command", "must name a program"));
        }
        self.pressure
            .validate()
            .map_err(|(key, reason)| ConfigError::invalid(path, key, reason))?;
        // The coordinator takes an agent silent for 30 s for gone.
        if !(1..=10).contains(&self.report_interval_secs) {
            return Err(invalid("report_interval_secs", "must be 1 to 10"));
        }
        if !(5..=600).contains(&self.coordinator_silence_secs) {
            return Err(invalid("coordinator_silence_secs", "must be 5 to 600"));
        }
        if !(1..=3600).contains(&self.gpu_rescan_interval_secs) {
            return Err(invalid("gpu_rescan_interval_secs", "must be 1 to 3600"));
        }
        crate::cgroups::validate_parent(&self.cgroup_parent)
            .map_err(|e| invalid("cgroup_parent", &e.to_string()))?;
        for (table, http) in [
            ("metadata.http", &self.metadata.http),
            ("admin.http", &self.admin.http),
        ] {
            http.validate().map_err(|(key, reason)| {
                ConfigError::invalid(path, format!("{table}.{key}"), reason)
            })?;
        }
        let m = &self.metadata;
        if m.rate_per_second == 0 || m.burst == 0 {
            return Err(invalid(
                "metadata.rate_per_second",
                "rate_per_second and burst must be at least 1",
            ));
        }
        if !(1..=3600).contains(&m.max_wait_secs) {
            return Err(invalid("metadata.max_wait_secs", "must be 1 to 3600"));
        }
        if m.availability_zone.is_empty() || m.availability_zone.len() > 255 {
            return Err(invalid(
                "metadata.availability_zone",
                "must be 1 to 255 bytes",
            ));
        }
        if let Some(f) = &m.proxy_secret_file {
            require_absolute(path, "metadata.proxy_secret_file", f)?;
            self.proxy_secret()
                .map_err(|e| invalid("metadata.proxy_secret_file", &e))?;
        }
        self.network
            .pool
            .parse::<crate::network::AddressPool>()
            .map_err(|e| invalid("network.pool", &e.to_string()))?;
        self.container
            .validate()
            .map_err(|(key, reason)| invalid(key, &reason))?;
        self.vm
            .validate()
            .map_err(|(key, reason)| ConfigError::invalid(path, key, reason))?;
        if matches!(self.network.route_table, 0 | 253..=255) {
            return Err(invalid(
                "network.route_table",
                "0, 253, 254 and 255 are the kernel's own tables; pick another",
            ));
        }
        self.network
            .egress()
            .map_err(|(key, reason)| ConfigError::invalid(path, key, reason))?;
        Ok(())
    }

    /// The proxy signing secret, if proxy mode is configured.
    pub fn proxy_secret(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(f) = &self.metadata.proxy_secret_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let secret = text.trim();
        if secret.len() < 16 {
            return Err(format!(
                "{}: the secret must be at least 16 characters",
                f.display()
            ));
        }
        Ok(Some(secret.as_bytes().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = include_str!("../../config/agent.toml");
        let mut example: AgentConfig = toml::from_str(text).unwrap();
        assert_eq!(example.metadata, MetadataSettings::default());
        assert_eq!(example.network, NetworkSettings::default());
        assert_eq!(example.metadata.limits(), HttpLimits::METADATA);
        assert_eq!(example.admin.limits(), HttpLimits::ADMIN);
        let uncommented: String = text
            .lines()
            .map(|l| {
                let numeric = |l: &&str| {
                    l.split_once(" = ").is_some_and(|(k, v)| {
                        k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                            && v.bytes().all(|b| b.is_ascii_digit())
                    })
                };
                l.strip_prefix("# ").filter(numeric).unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let shown: AgentConfig = toml::from_str(&uncommented).unwrap();
        assert_eq!(
            shown.metadata.limits(),
            HttpLimits::METADATA,
            "the documented defaults"
        );
        // Optional keys are commented out in the example; they are documented all the same.
        example.inventory_file = Some("/etc/backfill/gpus.json".into());
        example.metadata.proxy_secret_file = Some("/etc/backfill/metadata-proxy.secret".into());
        let mut all = Vec::new();
        keys(&toml::Value::try_from(&example).unwrap(), "", &mut all);
        let documented = |k: &str| {
            let leaf = k.rsplit('.').next().unwrap_or(k);
            text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{leaf} =")) || l.starts_with(&format!("[{k}]"))
            })
        };
        for k in all {
            assert!(documented(&k), "config/agent.toml does not document {k}");
        }
    }

    #[test]
    fn egress_ranges_are_checked_and_name_the_bad_entry() {
        let example: AgentConfig = toml::from_str(include_str!("../../config/agent.toml")).unwrap();
        let policy = example.network.egress().unwrap();
        assert!(policy.allow.is_empty());
        assert_eq!(policy.deny.len(), 7);
        assert!(example.network.egress_policy);
        let mut n = example.network.clone();
        n.egress_allow = vec!["10.0.0.2".into(), "10.1.0.0/16".into()];
        assert_eq!(n.egress().unwrap().allow[0].to_string(), "10.0.0.2/32");
        n.egress_deny = vec!["10.0.0.0/8".into(), "172.16.0.1/12".into()];
        let (key, reason) = n.egress().unwrap_err();
        assert_eq!(key, "network.egress_deny[1]");
        assert!(reason.contains("did you mean 172.16.0.0/12"), "{reason}");
        n.egress_deny = vec!["fd00::/8".into()];
        assert!(n.egress().unwrap_err().1.contains("IPv4 only"));
        let mut n = example.network.clone();
        n.egress_allow = vec!["10.0.0.0/8".into(), "169.254.169.0/24".into()];
        let (key, reason) = n.egress().unwrap_err();
        assert_eq!(key, "network.egress_allow[1]");
        assert!(reason.contains("in 169.254.0.0/16"), "{reason}");
        let mut n = example.network.clone();
        n.egress_packets_per_second = 2_000_000;
        assert_eq!(
            n.egress().unwrap_err().0,
            "network.egress_packets_per_second"
        );
        let mut n = example.network.clone();
        n.egress_kib_per_second = (1 << 20) + 1;
        assert_eq!(n.egress().unwrap_err().0, "network.egress_kib_per_second");
        let text = include_str!("../../config/agent.toml")
            .replace("egress_allow = []", "egress_allow = [\"mirror\"]");
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        let (key, reason) = cfg.network.egress().unwrap_err();
        assert_eq!(key, "network.egress_allow[0]");
        assert!(
            reason.contains("\"mirror\" is not an IPv4 range"),
            "{reason}"
        );
    }

    #[test]
    fn http_limits_are_set_and_typos_refused() {
        let text = include_str!("../../config/agent.toml")
            .replace("[admin.http]", "[admin.http]\nbody_timeout_s = 7");
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        assert_eq!(
            cfg.admin.limits().body_timeout,
            std::time::Duration::from_secs(7)
        );
        let typo = include_str!("../../config/agent.toml")
            .replace("[metadata.http]", "[metadata.http]\nheader_timeout = 1");
        assert!(toml::from_str::<AgentConfig>(&typo).is_err());
    }
}
