//! Who may run what (`[drivers]`): per driver, and for host networking, `everyone`,
//! `operators` (the accounts named in `operator_accounts`) or `nobody`. A packaged coordinator
//! lets tenants run VMs and containers only; the `exec` driver (a process on the host) is the
//! operator's, for development and tests.

use crate::domain::account::Account;
use crate::state::coordinator::OpError;
use backfill_shared::{DriverKind, NetworkMode, Workload};
use serde::{Deserialize, Serialize};

/// Who may use something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Who {
    Everyone,
    Operators,
    Nobody,
}

impl Who {
    fn as_str(self) -> &'static str {
        match self {
            Who::Everyone => "everyone",
            Who::Operators => "operators",
            Who::Nobody => "nobody",
        }
    }
}

/// `[drivers]` in the coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverAccess {
    /// Processes on the fleet's hosts: `nobody` unless an operator chooses otherwise.
    #[serde(default = "nobody")]
    pub exec: Who,
    #[serde(default = "everyone")]
    pub vm: Who,
    #[serde(default = "everyone")]
    pub container: Who,
    /// `"network": "host"` for a VM or a container (an `exec` workload is on the host anyway).
    #[serde(default = "operators")]
    pub host_network: Who,
    /// The accounts that count as operators here.
    #[serde(default)]
    pub operator_accounts: Vec<String>,
}

fn nobody() -> Who {
    Who::Nobody
}
fn everyone() -> Who {
    Who::Everyone
}
fn operators() -> Who {
    Who::Operators
}

impl Default for DriverAccess {
    fn default() -> DriverAccess {
        DriverAccess {
            exec: Who::Nobody,
            vm: Who::Everyone,
            container: Who::Everyone,
            host_network: Who::Operators,
            operator_accounts: Vec::new(),
        }
    }
}

impl DriverAccess {
    /// Development: everyone may use every driver and the host's network.
    pub fn dev() -> DriverAccess {
        DriverAccess {
            exec: Who::Everyone,
            host_network: Who::Everyone,
            ..DriverAccess::default()
        }
    }

    fn who(&self, kind: DriverKind) -> Who {
        match kind {
            DriverKind::Exec => self.exec,
            DriverKind::Vm => self.vm,
            DriverKind::Container => self.container,
        }
    }

    fn allows(&self, who: Who, account: &Account) -> bool {
        match who {
            Who::Everyone => true,
            Who::Operators => self.operator_accounts.contains(&account.name),
            Who::Nobody => false,
        }
    }

    /// Whether `account` may run `workload` (`None`: the host's default command, `exec`).
    pub fn check(&self, account: &Account, workload: Option<&Workload>) -> Result<(), OpError> {
        let kind = workload
            .map_or(Ok(DriverKind::Exec), Workload::kind)
            .unwrap_or_default();
        let who = self.who(kind);
        if !self.allows(who, account) {
            return Err(OpError::Forbidden(format!(
                "the {kind} driver is for {} here ([drivers] {kind} = \"{}\" in the coordinator's configuration){}",
                who.as_str(),
                who.as_str(),
                if kind == DriverKind::Exec {
                    "; run a \"vm\" or a \"container\" workload instead"
                } else {
                    ""
                }
            )));
        }
        let explicit_host = workload.is_some_and(|w| w.network == Some(NetworkMode::Host));
        if explicit_host && kind != DriverKind::Exec && !self.allows(self.host_network, account) {
            return Err(OpError::Forbidden(format!(
                "\"network\": \"host\" is for {} here ([drivers] host_network = \"{}\"); guests get an isolated network",
                self.host_network.as_str(),
                self.host_network.as_str()
            )));
        }
        Ok(())
    }

    /// Says at start what is open beyond the packaged defaults.
    pub fn warn_if_open(&self) {
        if self.exec != Who::Nobody {
            tracing::warn!(
                exec = self.exec.as_str(),
                "the exec driver is enabled: these accounts' workloads run as processes on the fleet's hosts ([drivers] exec)"
            );
        }
        if self.host_network == Who::Everyone {
            tracing::warn!(
                "every account may put a guest on its host's network ([drivers] host_network)"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn account(name: &str) -> Account {
        Account {
            name: name.into(),
            uuid: String::new(),
            backfill: true,
            quota: Default::default(),
            created_at: 0,
        }
    }

    fn w(json: &str) -> Workload {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn packaged_defaults_keep_tenants_off_the_host() {
        let a = DriverAccess::default();
        let t = account("tenant");
        let err = a.check(&t, Some(&w(r#"{"command":["sh"]}"#))).unwrap_err();
        assert!(
            matches!(err, OpError::Forbidden(ref m) if m.contains("[drivers] exec = \"nobody\"")),
            "{err}"
        );
        assert!(
            a.check(&t, None).is_err(),
            "the default command is exec too"
        );
        assert!(
            a.check(&t, Some(&w(r#"{"vm":{"image":"d.qcow2"}}"#)))
                .is_ok()
        );
        assert!(
            a.check(&t, Some(&w(r#"{"container":{"image":"x"}}"#)))
                .is_ok()
        );
        let host_net = w(r#"{"container":{"image":"x"},"network":"host"}"#);
        let err = a.check(&t, Some(&host_net)).unwrap_err();
        assert!(err.to_string().contains("host_network"), "{err}");
    }

    #[test]
    fn operators_are_the_accounts_named() {
        let a = DriverAccess {
            exec: Who::Operators,
            operator_accounts: vec!["ops".into()],
            ..DriverAccess::default()
        };
        let cmd = w(r#"{"command":["sh"]}"#);
        assert!(a.check(&account("ops"), Some(&cmd)).is_ok());
        assert!(a.check(&account("tenant"), Some(&cmd)).is_err());
        let host_net = w(r#"{"container":{"image":"x"},"network":"host"}"#);
        assert!(a.check(&account("ops"), Some(&host_net)).is_ok());
        let dev = DriverAccess::dev();
        assert!(dev.check(&account("tenant"), Some(&cmd)).is_ok());
        assert!(dev.check(&account("tenant"), Some(&host_net)).is_ok());
    }

    #[test]
    fn the_section_parses_and_refuses_unknown_keys() {
        let a: DriverAccess = toml::from_str("exec = \"everyone\"").unwrap();
        assert_eq!(a.exec, Who::Everyone);
        assert_eq!(a.vm, Who::Everyone);
        assert!(toml::from_str::<DriverAccess>("exec = \"some\"").is_err());
        assert!(toml::from_str::<DriverAccess>("lambda = \"everyone\"").is_err());
    }
}
