//! Which namespaces, interfaces and policy rules are this agent's.
//!
//! Several agents may share one host (dev mode's local pool, or a host split between two
//! deployments), so an agent must recognise what it made without guessing. Every agent has a
//! **tag**: the first 6 hex digits of SHA-256 of its host id (the CN of its certificate), which
//! is stable across restarts and upgrades and differs between the agents of a host (two agents'
//! tags collide with odds of 1 in 16.7 million). Its names:
//!
//! - network namespace: `bf-<tag>-<server uuid>` (under `/run/netns`);
//! - host end of a guest's veth pair: `bf<tag>-<slot in hex>`, at most 15 bytes (the kernel's
//!   `IFNAMSIZ` less its NUL): 2 + 6 + 1 + at most 6 (a /8 pool has 2^22 slots, `3fffff`);
//! - policy rule: `iif <its host interface> lookup <route_table> pref 1000`, so a rule is the
//!   agent's when its input interface carries the agent's prefix.
//!
//! Names made by agents before tags (`bf-<uuid>`, `bf<12 hex digits>`) never match a tagged
//! prefix; a re-adopted server keeps the names its state file recorded, and unrecorded old
//! names are left alone, as is anything else on the host.

use backfill_shared::ServerId;

/// Hex digits in a tag.
pub const TAG_LEN: usize = 6;
/// The kernel's limit on interface names (IFNAMSIZ less the terminating NUL).
pub const IFNAME_MAX: usize = 15;

/// A per-agent tag that marks the agent's own network resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetTag(String);

impl NetTag {
    /// The tag of the agent whose host id is `host`.
    pub fn for_host(host: &str) -> NetTag {
        let digest = ring::digest::digest(&ring::digest::SHA256, host.as_bytes());
        let hex: String = digest
            .as_ref()
            .iter()
            .flat_map(|b| [b >> 4, b & 0xf])
            .take(TAG_LEN)
            .map(|n| char::from_digit(u32::from(n), 16).unwrap_or('0'))
            .collect();
        NetTag(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace of `server`'s guest.
    pub fn netns(&self, server: &ServerId) -> String {
        format!("{}{server}", self.netns_prefix())
    }

    /// The host end of the veth pair on pool slot `slot`.
    pub fn host_if(&self, slot: u32) -> String {
        format!("{}{slot:x}", self.if_prefix())
    }

    fn netns_prefix(&self) -> String {
        format!("bf-{}-", self.0)
    }

    /// `bf<tag>-`: the start of every host interface of this agent's guests.
    pub(super) fn if_prefix(&self) -> String {
        format!("bf{}-", self.0)
    }

    /// The server whose namespace `name` is, if it is one of this agent's.
    pub fn own_netns(&self, name: &str) -> Option<ServerId> {
        name.strip_prefix(&self.netns_prefix())?.parse().ok()
    }

    /// The slot whose host interface `name` is, if it is one of this agent's.
    pub fn own_if(&self, name: &str) -> Option<u32> {
        let hex = name.strip_prefix(&self.if_prefix())?;
        if hex.is_empty() || hex.len() > 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_stable_and_differs_between_hosts() {
        let a = NetTag::for_host("host-a");
        assert_eq!(a, NetTag::for_host("host-a"));
        assert_eq!(a.as_str().len(), TAG_LEN);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, NetTag::for_host("host-b"));
        // The first bytes of SHA-256("host-a"): the tag must never change between versions,
        // or an upgraded agent would no longer recognise its own leftovers.
        assert_eq!(a.as_str(), "c151e3");
        assert_eq!(NetTag::for_host("host-b").as_str(), "86947d");
    }

    #[test]
    fn interface_names_fit_the_kernel_limit_for_every_slot() {
        let t = NetTag::for_host("a-rather-long-host-name.example.org");
        let biggest = (1u32 << 22) - 1; // a /8 pool's last slot
        for slot in [0, 1, 15, 16, 4095, 65_536, biggest] {
            let name = t.host_if(slot);
            assert!(name.len() <= IFNAME_MAX, "{name}");
            assert_eq!(t.own_if(&name), Some(slot), "{name}");
        }
        assert_eq!(t.host_if(biggest).len(), IFNAME_MAX);
    }

    #[test]
    fn only_this_agents_names_are_its_own() {
        let mine = NetTag::for_host("host-a");
        let theirs = NetTag::for_host("host-b");
        let id = ServerId::new_random();
        assert_eq!(mine.own_netns(&mine.netns(&id)), Some(id));
        assert_eq!(mine.own_netns(&theirs.netns(&id)), None);
        assert_eq!(theirs.own_if(&mine.host_if(3)), None);
        assert_eq!(mine.own_if(&mine.host_if(3)), Some(3));
        // Names of agents before tags, and anything else.
        let legacy_hex: String = id.to_string().replace('-', "")[..12].to_owned();
        assert_eq!(mine.own_netns(&format!("bf-{id}")), None);
        assert_eq!(mine.own_if(&format!("bf{legacy_hex}")), None);
        let prefix = format!("bf{}", mine.as_str());
        assert_eq!(mine.own_if(&format!("{prefix}0a1b2c")), None);
        for other in [
            "eth0",
            "lo",
            "",
            "bf",
            &format!("{prefix}-"),
            &format!("{prefix}-xyz"),
        ] {
            assert_eq!(mine.own_if(other), None, "{other}");
            assert_eq!(mine.own_netns(other), None, "{other}");
        }
        assert_eq!(mine.own_if(&format!("{prefix}-1234567")), None);
    }
}
