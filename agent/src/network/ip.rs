//! The real thing, through iproute2's `ip`.

use super::egress::{EgressPolicy, GuestLink, Rules as EgressRules};
use super::firewall::Firewall;
use super::nsfs;
use super::rules::{self, Rule};
use super::{AddressPool, GuestNet, GuestNetworks, Link, NetTag, NetworkError, Restored};
use backfill_shared::ServerId;
use std::collections::BTreeSet;
use std::fs::TryLockError;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NETNS_DIR: &str = "/run/netns";
const SYS_NET: &str = "/sys/class/net";
/// Policy rules for guest interfaces sit well before the main table (32766).
const RULE_PREF: u32 = 1000;
/// Held while an agent picks and claims a slot, so that agents sharing a pool on one host do
/// not claim the same one at once.
const LOCK_FILE: &str = "/run/lock/backfill-agent-network.lock";
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How often running guests' egress rules are checked (two `iptables -S`).
const ENFORCE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct IpNetworks {
    pool: AddressPool,
    /// The metadata listener's address, routed locally for guests only.
    metadata: Option<Ipv4Addr>,
    table: u32,
    /// Marks this agent's namespaces, interfaces and rules.
    tag: NetTag,
    /// The egress policy's rules, when the agent installs them.
    firewall: Option<Firewall>,
    /// When [`GuestNetworks::enforce`] last looked at the rules.
    enforced: std::sync::Mutex<Option<Instant>>,
}

fn ip_output(args: &[&str]) -> Result<String, NetworkError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetworkError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetworkError::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn ip(args: &[&str]) -> Result<(), NetworkError> {
    ip_output(args).map(drop)
}

fn list_rules() -> Result<Vec<Rule>, NetworkError> {
    ip_output(&["-j", "-N", "rule", "show"]).map(|j| rules::parse_rules(&j))
}

fn del_rule(rule: &Rule) {
    let args = rule.del_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Err(e) = ip(&args) {
        tracing::warn!(error = %e, "cannot remove a policy rule");
    }
}

/// Names of the entries of `dir` (empty when it does not exist).
fn names_in(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn interface_exists(name: &str) -> bool {
    Path::new(SYS_NET).join(name).exists()
}

/// The (device, inode) of an open namespace.
fn identity(ns: &std::fs::File) -> std::io::Result<(u64, u64)> {
    ns.metadata().map(|m| (m.dev(), m.ino()))
}

/// The (device, inode) of a namespace file; `None` when it does not exist.
fn ns_identity(path: &Path) -> Result<Option<(u64, u64)>, NetworkError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((m.dev(), m.ino()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetworkError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// An exclusive lock on [`LOCK_FILE`], released when dropped.
fn host_lock() -> Result<std::fs::File, NetworkError> {
    let path = Path::new(LOCK_FILE);
    let io = |source| NetworkError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io)?;
    // Held for a few `ip` commands; an agent frozen while holding it must not freeze this one.
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(NetworkError::Unavailable(
                    "another agent on this host has held the network lock for 5 s",
                ));
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
    }
}

impl IpNetworks {
    /// Installs the guests-only local route for the metadata address. `tag` marks what this
    /// agent creates ([`NetTag::for_host`] of its host id).
    pub fn new(
        pool: AddressPool,
        metadata: Option<Ipv4Addr>,
        table: u32,
        tag: NetTag,
    ) -> Result<IpNetworks, NetworkError> {
        let t = table.to_string();
        if let Some(md) = metadata {
            let dst = format!("{md}/32");
            // Never removed: agents that share the table share this one identical route.
            ip(&["route", "replace", "local", &dst, "dev", "lo", "table", &t])?;
        }
        tracing::info!(
            tag = tag.as_str(),
            table,
            "guest networks of this agent are tagged"
        );
        Ok(IpNetworks {
            pool,
            metadata,
            table,
            tag,
            firewall: None,
            enforced: std::sync::Mutex::new(None),
        })
    }

    /// Guests' traffic follows `policy` (see `network::egress`): rules per guest, installed
    /// with its network and removed with it. `metadata_port` is the metadata listener's bound
    /// port, the one host port guests may reach. Fails when iptables cannot run here.
    pub fn with_egress(
        mut self,
        policy: EgressPolicy,
        metadata_port: Option<u16>,
    ) -> Result<IpNetworks, NetworkError> {
        let metadata = self
            .metadata
            .zip(metadata_port)
            .map(|(ip, port)| SocketAddrV4::new(ip, port));
        let rules = EgressRules::new(&self.tag, self.pool, metadata, policy);
        self.firewall = Some(Firewall::new(rules)?);
        tracing::info!(?metadata, "guests' egress policy enforced (iptables)");
        Ok(self)
    }

    /// Removes every egress rule and chain of this agent (it no longer installs them).
    pub fn remove_egress_rules(&self, policy: EgressPolicy) {
        let rules = EgressRules::new(&self.tag, self.pool, None, policy);
        if let Err(e) = Firewall::new(rules).and_then(|f| f.teardown()) {
            tracing::debug!(error = %e, "no egress rules to remove");
        }
    }

    pub fn tag(&self) -> &NetTag {
        &self.tag
    }

    /// Slots that other interfaces' addresses hold, with those interfaces.
    fn foreign(&self) -> Vec<(u32, String)> {
        match ip_output(&["-j", "-4", "addr", "show"]) {
            Ok(j) => rules::foreign_slots(&j, &self.pool, &self.tag),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the host's addresses");
                Vec::new()
            }
        }
    }

    fn try_create(&self, netns: &str, host_if: &str, link: Link) -> Result<(), NetworkError> {
        ip(&["netns", "add", netns])?;
        self.make_pair(netns, host_if, link)
    }

    /// The veth pair into `netns`, configured.
    fn make_pair(&self, netns: &str, host_if: &str, link: Link) -> Result<(), NetworkError> {
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ])?;
        self.configure(netns, host_if, link).map(drop)
    }

    /// Addresses, routes and the rule on an existing pair. Idempotent; says whether the rule
    /// had to be made.
    fn configure(&self, netns: &str, host_if: &str, link: Link) -> Result<bool, NetworkError> {
        let host_cidr = format!("{}/{}", link.host, super::pool::LINK_PREFIX);
        let guest_cidr = format!("{}/{}", link.guest, super::pool::LINK_PREFIX);
        let host = link.host.to_string();
        ip(&["addr", "replace", &host_cidr, "dev", host_if])?;
        ip(&["link", "set", host_if, "up"])?;
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        ip(&["-n", netns, "addr", "replace", &guest_cidr, "dev", "eth0"])?;
        ip(&["-n", netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", netns, "route", "replace", "default", "via", &host])?;
        let rule_made = self.ensure_rule(host_if)?;
        let fw_changed = match &self.firewall {
            Some(f) => f.add_guest(GuestLink {
                host_if,
                address: link.guest,
            })?,
            None => false,
        };
        Ok(rule_made || fw_changed)
    }

    /// Exactly one rule for `host_if`, into this agent's table. Says whether it was made.
    fn ensure_rule(&self, host_if: &str) -> Result<bool, NetworkError> {
        let all = list_rules()?;
        let mine = rules::rules_of(&all, host_if);
        let table = self.table.to_string();
        let right = |r: &&Rule| r.priority == RULE_PREF && r.table.as_deref() == Some(&table);
        if mine.len() == 1 && mine.iter().all(right) {
            return Ok(false);
        }
        for r in mine {
            del_rule(r);
        }
        let pref = RULE_PREF.to_string();
        ip(&[
            "rule", "add", "iif", host_if, "lookup", &table, "pref", &pref,
        ])?;
        Ok(true)
    }

    /// Removes the namespace `netns`, the interface `host_if` and its rules (this agent's);
    /// with `last_goes`, also the agent's egress chains if no guest has rules left.
    fn remove(&self, netns: &str, host_if: &str, last_goes: bool) {
        match list_rules() {
            Ok(all) => rules::rules_of(&all, host_if)
                .into_iter()
                .for_each(del_rule),
            Err(_) => while ip(&["rule", "del", "iif", host_if]).is_ok() {},
        }
        if Path::new(NETNS_DIR).join(netns).exists()
            && let Err(e) = ip(&["netns", "del", netns])
        {
            tracing::warn!(%netns, error = %e, "cannot remove the network namespace");
        }
        // Gone with the namespace normally; only a half-made pair, or one whose namespace
        // lives on in a process, is left over.
        if interface_exists(host_if)
            && let Err(e) = ip(&["link", "del", host_if])
        {
            tracing::warn!(%host_if, error = %e, "cannot remove the guest interface");
        }
        // Last, so that the interface is never without rules: without its own it is cut off,
        // but without the agent's chains it would be let loose.
        let gone = !interface_exists(host_if);
        if let Some(f) = &self.firewall
            && let Err(e) = f.remove_guest(host_if, last_goes && gone)
        {
            tracing::warn!(%host_if, error = %e, "cannot remove the guest's egress rules");
        }
    }
}

impl GuestNetworks for IpNetworks {
    fn create(&self, server: &ServerId, link: Link) -> Result<GuestNet, NetworkError> {
        let netns = self.tag.netns(server);
        let host_if = self.tag.host_if(link.slot);
        let _lock = host_lock()?;
        // Another agent sharing the pool may have claimed the slot since it was picked.
        if let Some((_, other)) = self.foreign().into_iter().find(|(s, _)| *s == link.slot) {
            return Err(NetworkError::InUse {
                slot: link.slot,
                address: link.host,
                interface: other,
            });
        }
        // Leftovers of an earlier run (this agent's own names) would make `add` fail.
        self.remove(&netns, &host_if, false);
        if let Err(e) = self.try_create(&netns, &host_if, link) {
            self.remove(&netns, &host_if, true);
            return Err(e);
        }
        tracing::info!(server = %server, %netns, %host_if, address = %link.guest, metadata = ?self.metadata, "guest network up");
        Ok(GuestNet {
            slot: link.slot,
            address: link.guest,
            host_address: link.host,
            netns,
            host_if,
        })
    }

    fn destroy(&self, net: &GuestNet) {
        // Agents sharing the host change the built-in chains one at a time.
        let _lock = self.firewall.as_ref().and_then(|_| host_lock().ok());
        self.remove(&net.netns, &net.host_if, true);
    }

    fn restore(&self, net: &GuestNet, pid: u32) -> Result<Restored, NetworkError> {
        let fail = |reason: String| NetworkError::Restore {
            netns: net.netns.clone(),
            reason,
        };
        let Some(ns) = nsfs::open_process_ns(pid)? else {
            return Err(fail(format!("its workload (pid {pid}) is gone")));
        };
        let theirs = identity(&ns).map_err(|source| NetworkError::Io {
            path: PathBuf::from(format!("/proc/{pid}/ns/net")),
            source,
        })?;
        if ns_identity(Path::new("/proc/self/ns/net"))? == Some(theirs) {
            return Err(fail(format!(
                "its workload (pid {pid}) runs in the host's network namespace"
            )));
        }
        let link = Link {
            slot: net.slot,
            host: net.host_address,
            guest: net.address,
        };
        let mut rebuilt = false;
        let _lock = host_lock()?;
        let path = net.netns_path();
        match ns_identity(&path)? {
            Some(id) if id == theirs => {}
            found => {
                if found.is_some() {
                    ip(&["netns", "del", &net.netns])?;
                }
                // The workload still holds its namespace: give it its name back.
                nsfs::attach(&ns, &path)?;
                tracing::warn!(netns = %net.netns, "the guest's namespace had lost its name; restored");
                rebuilt = true;
            }
        }
        if !interface_exists(&net.host_if) {
            if let Some((_, other)) = self.foreign().into_iter().find(|(s, _)| *s == net.slot) {
                return Err(fail(format!(
                    "its veth is gone and its address {} is on {other} now",
                    net.host_address
                )));
            }
            // A veth pair dies whole: the guest end went with the host end.
            let _ = ip(&["-n", &net.netns, "link", "del", "eth0"]);
            ip(&[
                "link",
                "add",
                &net.host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &net.netns,
            ])?;
            tracing::warn!(netns = %net.netns, host_if = %net.host_if, "the guest's veth was gone; rebuilt");
            rebuilt = true;
        }
        if self.configure(&net.netns, &net.host_if, link)? {
            rebuilt = true;
        }
        Ok(if rebuilt {
            Restored::Rebuilt
        } else {
            Restored::Intact
        })
    }

    fn sweep(&self, keep: &[&GuestNet]) {
        let keep_ns: BTreeSet<&str> = keep.iter().map(|n| n.netns.as_str()).collect();
        let keep_if: BTreeSet<&str> = keep.iter().map(|n| n.host_if.as_str()).collect();
        for name in names_in(NETNS_DIR) {
            if let Some(server) = self.tag.own_netns(&name)
                && !keep_ns.contains(name.as_str())
            {
                tracing::warn!(%server, netns = %name, "removing a network namespace this agent left behind");
                if let Err(e) = ip(&["netns", "del", &name]) {
                    tracing::warn!(netns = %name, error = %e, "cannot remove the network namespace");
                }
            }
        }
        for name in names_in(SYS_NET) {
            if self.tag.own_if(&name).is_some() && !keep_if.contains(name.as_str()) {
                tracing::warn!(host_if = %name, "removing a guest interface this agent left behind");
                if let Err(e) = ip(&["link", "del", &name]) {
                    tracing::warn!(host_if = %name, error = %e, "cannot remove the guest interface");
                }
            }
        }
        match list_rules() {
            Ok(all) => {
                for r in rules::own_rules(&all, &self.tag, &keep_if) {
                    tracing::warn!(iif = ?r.iif, "removing a policy rule this agent left behind");
                    del_rule(r);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list policy rules"),
        }
        if let Some(f) = &self.firewall {
            // The agent's chains stay while an interface of its own that could not be removed
            // is still there.
            let lingering = names_in(SYS_NET)
                .iter()
                .any(|n| self.tag.own_if(n).is_some() && !keep_if.contains(n.as_str()));
            let _lock = host_lock().ok();
            if let Err(e) = f.sweep(&keep_if, !lingering) {
                tracing::warn!(error = %e, "cannot remove egress rules this agent left behind");
            }
        }
    }

    fn enforce(&self, running: &[&GuestNet]) {
        let Some(f) = &self.firewall else { return };
        if running.is_empty() {
            return;
        }
        {
            let mut last = self
                .enforced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < ENFORCE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let links: Vec<GuestLink<'_>> = running
            .iter()
            .map(|n| GuestLink {
                host_if: &n.host_if,
                address: n.address,
            })
            .collect();
        let _lock = host_lock().ok();
        match f.enforce(&links) {
            Ok(false) => {}
            Ok(true) => tracing::warn!(
                guests = links.len(),
                "the guests' egress rules had been removed or changed by something else; restored"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot check the guests' egress rules"),
        }
    }

    fn looks_whole(&self, net: &GuestNet) -> bool {
        net.netns_path().exists() && interface_exists(&net.host_if)
    }

    fn pool(&self) -> Option<AddressPool> {
        Some(self.pool)
    }

    fn taken(&self) -> Vec<u32> {
        self.foreign().into_iter().map(|(s, _)| s).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "egress_tests.rs"]
mod egress_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "ip_tests.rs"]
mod tests;
