//! The egress policy on the host: [`super::egress`]'s rules through `iptables`, and the two
//! kernel settings the policy needs (IPv4 forwarding on; IPv6 off on guests' host interfaces).
//!
//! **Why iptables, not nft.** The rules go in through `iptables` and `iptables-restore`, the
//! binaries the host's alternatives select, so they land in the same backend (nf_tables or
//! legacy) as those of Docker, Kubernetes and the other software that manages rules through
//! iptables; mixing backends is what breaks hosts. In the same table, an ACCEPT of ours is final
//! for its hook, so Docker's `FORWARD` policy DROP does not cut guests off; in an nft table of
//! our own, another table's drop would still win, and the `nft` binary is not on every host
//! (iptables is). Ownership stays exact: every chain is named after the agent's tag, every jump
//! to it is found by its target, and each change is one `iptables-restore --noflush` batch,
//! applied whole or not at all.

use super::NetworkError;
use super::egress::{GuestLink, Listing, Rules, Script, Table};
use std::collections::BTreeSet;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Seconds to wait for the xtables lock (legacy backend; nf_tables ignores it).
const WAIT: &str = "5";

/// The agent's rules on this host.
#[derive(Debug)]
pub(super) struct Firewall {
    rules: Rules,
}

fn run(program: &'static str, args: &[&str], input: Option<&str>) -> Result<String, NetworkError> {
    let spawn = |source| NetworkError::Firewall { program, source };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut command = format!("{program} {}", args.join(" "));
        if let Some(text) = input {
            command.push_str(" <<EOF\n");
            command.push_str(text);
            command.push_str("EOF");
        }
        Err(NetworkError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn list(table: Table) -> Result<Listing, NetworkError> {
    run("iptables", &["-w", WAIT, "-t", table.name(), "-S"], None).map(|t| Listing::parse(&t))
}

fn apply(script: &Script) -> Result<(), NetworkError> {
    if script.is_empty() {
        return Ok(());
    }
    run(
        "iptables-restore",
        &["-w", WAIT, "--noflush"],
        Some(&script.to_string()),
    )
    .map(drop)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError + '_ {
    move |source| NetworkError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Turns on IPv4 forwarding (guests reach the outside through the host), saying so.
fn ensure_forwarding() -> Result<(), NetworkError> {
    let path = Path::new(IP_FORWARD);
    let now = std::fs::read_to_string(path).map_err(io(path))?;
    if now.trim() != "1" {
        std::fs::write(path, "1\n").map_err(io(path))?;
        tracing::info!(
            "turned on net.ipv4.ip_forward so that guests reach the outside through this host (NAT); only guests' traffic is forwarded by the agent's rules, other forwarding follows the host's FORWARD policy"
        );
    }
    Ok(())
}

/// No IPv6 on the host end of a guest's link: the guest cannot reach the host over link-local
/// IPv6, which the IPv4 rules do not see. Nothing to do where IPv6 is off altogether.
fn disable_ipv6(host_if: &str) -> Result<(), NetworkError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"));
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => std::fs::write(&path, "1\n").map_err(io(&path)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&path)(e)),
    }
}

impl Firewall {
    /// Checks that iptables runs here; installs nothing yet (the first guest does).
    pub fn new(rules: Rules) -> Result<Firewall, NetworkError> {
        list(Table::Filter)?;
        list(Table::Nat)?;
        Ok(Firewall { rules })
    }

    /// Makes sure the agent's chains follow the configuration and `guest` has exactly its
    /// rules. Says whether anything had to change.
    pub fn add_guest(&self, guest: GuestLink<'_>) -> Result<bool, NetworkError> {
        let started = Instant::now();
        ensure_forwarding()?;
        disable_ipv6(guest.host_if)?;
        let filter = list(Table::Filter)?;
        let nat = list(Table::Nat)?;
        let mut script = self.rules.base_plan(&filter, &nat);
        let base_changed = !script.is_empty();
        let guest_plan = self.rules.guest_plan(&filter, guest);
        let guest_changed = !guest_plan.is_empty();
        script.append(guest_plan);
        apply(&script)?;
        tracing::debug!(
            host_if = guest.host_if,
            base_changed,
            guest_changed,
            elapsed_ms = started.elapsed().as_millis(),
            "egress rules in place"
        );
        Ok(base_changed || guest_changed)
    }

    /// Removes `host_if`'s rules, and the agent's chains with them when no guest has rules
    /// left and `last_goes`.
    pub fn remove_guest(&self, host_if: &str, last_goes: bool) -> Result<(), NetworkError> {
        let filter = list(Table::Filter)?;
        let nat = list(Table::Nat)?;
        apply(
            &self
                .rules
                .removal_plan(&filter, &nat, |i| i == host_if, last_goes),
        )
    }

    /// Removes the rules of this agent's guests other than `keep` (host interfaces), and
    /// everything of this agent when none is kept and `drop_base`.
    pub fn sweep(&self, keep: &BTreeSet<&str>, drop_base: bool) -> Result<(), NetworkError> {
        let filter = list(Table::Filter)?;
        let nat = list(Table::Nat)?;
        for i in self.rules.guests_with_rules(&filter) {
            if !keep.contains(i.as_str()) {
                tracing::warn!(host_if = %i, "removing egress rules this agent left behind");
            }
        }
        apply(
            &self
                .rules
                .removal_plan(&filter, &nat, |i| !keep.contains(i), drop_base),
        )
    }

    /// Puts back whatever of the agent's chains, jumps and `guests`' rules something else
    /// removed or changed. Says whether anything had to change.
    pub fn enforce(&self, guests: &[GuestLink<'_>]) -> Result<bool, NetworkError> {
        let filter = list(Table::Filter)?;
        let nat = list(Table::Nat)?;
        let mut script = self.rules.base_plan(&filter, &nat);
        for g in guests {
            script.append(self.rules.guest_plan(&filter, *g));
        }
        apply(&script)?;
        Ok(!script.is_empty())
    }

    /// Removes every rule and chain of this agent.
    pub fn teardown(&self) -> Result<(), NetworkError> {
        let filter = list(Table::Filter)?;
        let nat = list(Table::Nat)?;
        apply(&self.rules.teardown(&filter, &nat))
    }
}
