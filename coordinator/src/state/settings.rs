//! The settings the coordinator's state holds (sections of its configuration), and its
//! provisioning log: below the use cases that read them.

use crate::policy::scheduler::{Classes, GrowPolicy, Strategy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// `[scheduler]` in the coordinator's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// `best_fit` (default) or `spread`.
    #[serde(default)]
    pub strategy: Strategy,
    /// `[scheduler.grow]`: margin, min_interval_s, min_step.
    #[serde(default)]
    pub grow: GrowPolicy,
    /// How long a graceful `shutdown` asks the workload to stop before the server returns to
    /// `running` (CloudSigma: a minute).
    #[serde(default = "default_grace")]
    pub shutdown_grace_s: u64,
}

fn default_grace() -> u64 {
    60
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            strategy: Strategy::default(),
            grow: GrowPolicy::default(),
            shutdown_grace_s: default_grace(),
        }
    }
}

/// Everything the scheduling code needs: `[scheduler]` and `[classes]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerSettings {
    pub strategy: Strategy,
    pub grow: GrowPolicy,
    pub classes: Classes,
    pub shutdown_grace_s: i64,
}

impl Default for SchedulerSettings {
    fn default() -> SchedulerSettings {
        SchedulerSettings::new(SchedulerConfig::default(), Classes::default())
    }
}

impl SchedulerSettings {
    pub fn new(config: SchedulerConfig, classes: Classes) -> SchedulerSettings {
        SchedulerSettings {
            strategy: config.strategy,
            grow: config.grow,
            classes,
            shutdown_grace_s: i64::try_from(config.shutdown_grace_s).unwrap_or(60),
        }
    }
}

/// `[operator]` in the coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Accepted as `Authorization: Bearer <token>` on the admin APIs, as Arvados' management
    /// token is. Absent: token requests get 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_token: Option<String>,
    /// A TLS listener for the admin APIs that asks for, but does not require, a client
    /// certificate (Arvados' own tools cannot present one): the token is enough there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_addr: Option<SocketAddr>,
    /// Auto mode at first start; afterwards `PUT|DELETE /dynamiccluster/server/auto` decides.
    #[serde(default)]
    pub auto_mode: bool,
    /// Auto mode removes hosts idle longer than this.
    #[serde(default = "default_idle")]
    pub max_idle_time_s: u64,
    /// Auto mode gives up on launched hosts not registered within this.
    #[serde(default = "default_launch")]
    pub max_launch_time_s: u64,
}

fn default_idle() -> u64 {
    600
}

fn default_launch() -> u64 {
    1200
}

impl Default for OperatorConfig {
    fn default() -> OperatorConfig {
        OperatorConfig {
            management_token: None,
            management_addr: None,
            auto_mode: false,
            max_idle_time_s: default_idle(),
            max_launch_time_s: default_launch(),
        }
    }
}

/// What a provisioner command did wrong, per host (shown until the host is forgotten), and
/// how many commands failed per pool.
#[derive(Debug, Default)]
pub struct ProvisionLog {
    pub errors: BTreeMap<String, String>,
    pub failures: BTreeMap<String, u64>,
}

pub type SharedProvisionLog = Arc<Mutex<ProvisionLog>>;

/// `[webhooks]` in the coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Allow `http://` receivers (otherwise https only).
    #[serde(default)]
    pub allow_http: bool,
    /// Allow receivers on loopback, link-local and private addresses (tests, labs).
    #[serde(default)]
    pub allow_private: bool,
    /// How long a delivery is retried before it is given up (seconds).
    #[serde(default = "default_retry_for")]
    pub retry_for_s: u64,
    /// The first retry's delay; each next one doubles, up to `backoff_max_s`.
    #[serde(default = "default_backoff_base")]
    pub backoff_base_s: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_s: u64,
    /// One request's limit (connect, send, answer).
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Requests in flight to one receiver at a time.
    #[serde(default = "default_concurrency")]
    pub per_receiver_concurrency: u32,
    /// Webhooks an account may register.
    #[serde(default = "default_max_webhooks")]
    pub max_per_account: u32,
}

fn default_retry_for() -> u64 {
    86_400
}
fn default_backoff_base() -> u64 {
    5
}
fn default_backoff_max() -> u64 {
    600
}
fn default_timeout() -> u64 {
    10
}
fn default_concurrency() -> u32 {
    2
}
fn default_max_webhooks() -> u32 {
    20
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            allow_http: false,
            allow_private: false,
            retry_for_s: default_retry_for(),
            backoff_base_s: default_backoff_base(),
            backoff_max_s: default_backoff_max(),
            timeout_s: default_timeout(),
            per_receiver_concurrency: default_concurrency(),
            max_per_account: default_max_webhooks(),
        }
    }
}

impl WebhookConfig {
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=30 * 86_400).contains(&self.retry_for_s) {
            return Err(("webhooks.retry_for_s", "must be 1 to 2592000"));
        }
        if self.backoff_base_s == 0 || self.backoff_max_s < self.backoff_base_s {
            return Err((
                "webhooks.backoff_max_s",
                "backoff_base_s must be at least 1 and backoff_max_s at least backoff_base_s",
            ));
        }
        if !(1..=120).contains(&self.timeout_s) {
            return Err(("webhooks.timeout_s", "must be 1 to 120"));
        }
        if !(1..=64).contains(&self.per_receiver_concurrency) {
            return Err(("webhooks.per_receiver_concurrency", "must be 1 to 64"));
        }
        Ok(())
    }
}
