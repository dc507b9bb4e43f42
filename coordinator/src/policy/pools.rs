//! Pools (Dynamic Cluster's "resources"): named groups of hosts with min, max, priority, an
//! optional reservation and an optional provisioner that launches and deletes hosts. Which pool
//! a host is in: the pool that launched it, else the first whose `hosts` patterns match its id.

use backfill_shared::HostId;
use serde::{Deserialize, Serialize};

/// `[[pools]]` in the coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// Auto mode keeps at least this many hosts.
    #[serde(default)]
    pub min: u32,
    /// Never more than this many hosts (manual launches are refused beyond it).
    pub max: u32,
    /// Lower is preferred when auto mode picks a pool to grow (Dynamic Cluster's order).
    #[serde(default)]
    pub priority: i32,
    /// The flavor its hosts are (Arvados' instance type); informs price and launches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    /// Host ids that belong here without being launched by it: `*` matches any run of
    /// characters (`gpu-*`).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Only this account's servers land on the pool's hosts and make it grow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_account: Option<String>,
    /// Only servers of this class (`normal`, `backfill`, `spot`) land here and make it grow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_queue: Option<String>,
    /// How hosts of the pool are created and destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioner: Option<ProvisionerConfig>,
}

/// A command per operation. Arguments are templates: `{host}` (the new host's id), `{pool}`.
/// The command's output goes to the coordinator's log; a non-zero exit or a timeout is a
/// failure, counted and shown on the host (`worker_state` / Dynamic Cluster's Error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionerConfig {
    pub launch: Vec<String>,
    pub delete: Vec<String>,
    /// How long one command may run.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_timeout() -> u64 {
    120
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, rest) = parts.split_at(1);
    let Some(mut left) = text.strip_prefix(first[0]) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return true;
    };
    for part in middle {
        match left.find(part) {
            Some(i) => left = &left[i + part.len()..],
            None => return false,
        }
    }
    left.len() >= last.len() && left.ends_with(last)
}

/// The configured pools, checked at load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pools {
    list: Vec<PoolConfig>,
}

impl Pools {
    pub fn new(
        list: Vec<PoolConfig>,
        flavors: &crate::domain::flavors::Flavors,
    ) -> Result<Pools, (String, String)> {
        for (i, p) in list.iter().enumerate() {
            let key = |k: &str| format!("pools[{i}].{k}");
            if backfill_shared::pki::validate_name(&p.name).is_err() {
                return Err((
                    key("name"),
                    "letters, digits, '-', '_' or '.', at most 64".into(),
                ));
            }
            if list[..i].iter().any(|o| o.name == p.name) {
                return Err((key("name"), format!("{:?} is named twice", p.name)));
            }
            if p.min > p.max {
                return Err((key("min"), "min is more than max".into()));
            }
            if let Some(f) = &p.flavor
                && flavors.get(f).is_none()
            {
                return Err((key("flavor"), format!("no flavor is named {f:?}")));
            }
            if let Some(q) = &p.reservation_queue
                && backfill_shared::ServerClass::parse(q).is_none()
            {
                return Err((key("reservation_queue"), "normal, backfill or spot".into()));
            }
            if let Some(pr) = &p.provisioner {
                if pr.launch.is_empty() || pr.delete.is_empty() {
                    return Err((
                        key("provisioner"),
                        "launch and delete must each name a command".into(),
                    ));
                }
                if !(1..=3600).contains(&pr.timeout_s) {
                    return Err((key("provisioner.timeout_s"), "must be 1 to 3600".into()));
                }
            }
        }
        Ok(Pools { list })
    }

    pub fn all(&self) -> &[PoolConfig] {
        &self.list
    }

    pub fn get(&self, name: &str) -> Option<&PoolConfig> {
        self.list.iter().find(|p| p.name == name)
    }

    /// A pool's reservation for placement (`None` when it has none).
    pub fn reservation(&self, pool: Option<&str>) -> Option<crate::policy::scheduler::Reservation> {
        let p = self.get(pool?)?;
        let class = p
            .reservation_queue
            .as_deref()
            .and_then(backfill_shared::ServerClass::parse);
        (p.reservation_account.is_some() || class.is_some()).then(|| {
            crate::policy::scheduler::Reservation {
                account: p.reservation_account.clone(),
                class,
            }
        })
    }

    /// The pool whose `hosts` patterns match the host's id, if any.
    pub fn pool_of(&self, host: &HostId) -> Option<&str> {
        self.list
            .iter()
            .find(|p| p.hosts.iter().any(|g| glob_match(g, host.as_str())))
            .map(|p| p.name.as_str())
    }
}

/// Dynamic Cluster's resource `flag`, computed from the limits in force against the configured
/// ones: 0 Normal, 1 Frozen (min = max = current, not as configured), 2 Draining (0/0 with
/// hosts left), 3 Drained (0/0, empty).
pub fn flag(configured: (u32, u32), in_force: (u32, u32), current: u32) -> u8 {
    if in_force == configured {
        0
    } else if in_force == (0, 0) {
        if current > 0 { 2 } else { 3 }
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_a_shell_would_for_star() {
        assert!(glob_match("gpu-*", "gpu-01"));
        assert!(glob_match("gpu-*", "gpu-"));
        assert!(!glob_match("gpu-*", "cpu-01"));
        assert!(glob_match("*-a-*", "x-a-y"));
        assert!(!glob_match("*-a-*", "x-b-y"));
        assert!(glob_match("h1", "h1"));
        assert!(!glob_match("h1", "h10"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*bc", "abc-"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn flags_follow_the_limits_in_force() {
        assert_eq!(flag((1, 3), (1, 3), 2), 0);
        assert_eq!(flag((1, 3), (2, 2), 2), 1);
        assert_eq!(flag((1, 3), (0, 0), 2), 2);
        assert_eq!(flag((1, 3), (0, 0), 0), 3);
        // A pool configured 0/0 is just normal.
        assert_eq!(flag((0, 0), (0, 0), 0), 0);
    }
}
