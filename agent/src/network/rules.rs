//! Reading what is on the host from `ip -j` output: policy rules by input interface, and which
//! pool slots another interface's address holds. Pure, so the ownership decisions are tested
//! without root.

use super::{AddressPool, NetTag};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// One policy rule, as `ip -j -N rule show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(super) struct Rule {
    #[serde(default)]
    pub priority: u32,
    #[serde(default)]
    pub iif: Option<String>,
    #[serde(default)]
    pub table: Option<String>,
}

impl Rule {
    /// The arguments that delete exactly this rule.
    pub fn del_args(&self) -> Vec<String> {
        let mut a = vec!["rule".into(), "del".into(), "pref".into()];
        a.push(self.priority.to_string());
        if let Some(i) = &self.iif {
            a.extend(["iif".into(), i.clone()]);
        }
        if let Some(t) = &self.table {
            a.extend(["lookup".into(), t.clone()]);
        }
        a
    }
}

/// The rules in `json` (`ip -j -N rule show`); unparseable output is no rules.
pub(super) fn parse_rules(json: &str) -> Vec<Rule> {
    serde_json::from_str(json).unwrap_or_default()
}

/// The rules whose input interface is `host_if`.
pub(super) fn rules_of<'a>(rules: &'a [Rule], host_if: &str) -> Vec<&'a Rule> {
    rules
        .iter()
        .filter(|r| r.iif.as_deref() == Some(host_if))
        .collect()
}

/// This agent's rules (its interfaces' prefix) other than those of `keep`.
pub(super) fn own_rules<'a>(
    rules: &'a [Rule],
    tag: &NetTag,
    keep: &BTreeSet<&str>,
) -> Vec<&'a Rule> {
    rules
        .iter()
        .filter(|r| {
            r.iif
                .as_deref()
                .is_some_and(|i| tag.own_if(i).is_some() && !keep.contains(i))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct Interface {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<Address>,
}

#[derive(Debug, Deserialize)]
struct Address {
    #[serde(default)]
    local: Option<String>,
}

/// Slots of `pool` where an interface that is not this agent's holds an address
/// (`ip -j -4 addr show`), with the interface's name.
pub(super) fn foreign_slots(json: &str, pool: &AddressPool, tag: &NetTag) -> Vec<(u32, String)> {
    let ifs: Vec<Interface> = serde_json::from_str(json).unwrap_or_default();
    let mut out = Vec::new();
    for i in ifs.iter().filter(|i| tag.own_if(&i.ifname).is_none()) {
        for a in &i.addr_info {
            let slot = a
                .local
                .as_deref()
                .and_then(|l| l.parse::<Ipv4Addr>().ok())
                .and_then(|addr| pool.slot_of(addr));
            if let Some(s) = slot {
                out.push((s, i.ifname.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const RULES: &str = r#"[{"priority":0,"src":"all","table":"local"},
        {"priority":1000,"src":"all","iif":"bfc151e3-0","table":"2169"},
        {"priority":1000,"src":"all","iif":"bfc151e3-1","iif_detached":true,"table":"2169"},
        {"priority":1000,"src":"all","iif":"bf86947d-0","table":"2170"},
        {"priority":1000,"src":"all","iif":"bf0123456789ab","table":"2169"},
        {"priority":32766,"src":"all","table":"main"}]"#;

    #[test]
    fn only_this_agents_rules_are_swept() {
        let rules = parse_rules(RULES);
        assert_eq!(rules.len(), 6);
        let tag = NetTag::for_host("host-a"); // c151e3
        let keep = BTreeSet::from(["bfc151e3-0"]);
        let own = own_rules(&rules, &tag, &keep);
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].iif.as_deref(), Some("bfc151e3-1"));
        assert_eq!(
            own[0].del_args().join(" "),
            "rule del pref 1000 iif bfc151e3-1 lookup 2169"
        );
        // Nothing kept: both of its own, and never another agent's or an untagged one.
        assert_eq!(own_rules(&rules, &tag, &BTreeSet::new()).len(), 2);
        assert_eq!(rules_of(&rules, "bf0123456789ab").len(), 1);
        assert!(parse_rules("not json").is_empty());
    }

    #[test]
    fn addresses_of_other_interfaces_take_their_slots() {
        let json = r#"[{"ifname":"lo","addr_info":[{"local":"127.0.0.1"}]},
            {"ifname":"bf86947d-0","addr_info":[{"local":"10.213.0.1","prefixlen":30}]},
            {"ifname":"bfc151e3-1","addr_info":[{"local":"10.213.0.5","prefixlen":30}]},
            {"ifname":"eth9","addr_info":[{"local":"10.213.0.10","prefixlen":24}]},
            {"ifname":"eth1","addr_info":[{"local":"192.168.1.1"}]}]"#;
        let pool: AddressPool = "10.213.0.0/16".parse().unwrap();
        let tag = NetTag::for_host("host-a");
        assert_eq!(
            foreign_slots(json, &pool, &tag),
            vec![(0, "bf86947d-0".to_owned()), (2, "eth9".to_owned())]
        );
    }
}
