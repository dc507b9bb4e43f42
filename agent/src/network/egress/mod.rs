//! The egress policy for guests, as iptables rules: what they are, and which are this agent's.
//! Pure (text in, text out), so rule generation and ownership are tested without root; running
//! the commands is [`super::firewall`]'s.
//!
//! **The model.** Each agent has its own chains, named `BF-<tag>-…` after its tag (see
//! [`super::naming`]), reached from the built-in chains by jump rules that match its guests'
//! host interfaces (`-i bf<tag>-+`) or its pool (NAT). A rule is this agent's when it sits in
//! one of its chains, or when it jumps to one; nothing else on the host is ever touched.
//!
//! ```text
//! filter INPUT    -i bf<tag>-+ -j BF-<tag>-IN     guests -> the host itself
//! filter FORWARD  -i bf<tag>-+ -j BF-<tag>-FWD    guests -> anywhere else
//!                 -o bf<tag>-+ -j BF-<tag>-TO     anywhere else -> guests (replies only)
//! nat POSTROUTING -s <pool>    -j BF-<tag>-NAT    MASQUERADE unless out to a guest
//!
//! BF-<tag>-IN     replies to the host's connections; BF-<tag>-IN-G; reject
//! BF-<tag>-IN-G   per guest: -s <address> -i <host_if> -j BF-<tag>-HOST
//! BF-<tag>-HOST   the metadata listener (its address and port), ping of the guest's gateway
//! BF-<tag>-FWD    BF-<tag>-FWD-G; drop (a spoofed source, or an interface without rules)
//! BF-<tag>-FWD-G  per guest: -s <address> -i <host_if> -j BF-<tag>-EGRESS
//! BF-<tag>-EGRESS rate limits; replies; loopback and link-local -> reject; egress_allow ->
//!                 accept; egress_deny and the pool -> reject; accept
//! BF-<tag>-TO     replies -> accept; drop
//! BF-<tag>-REJECT TCP reset, else ICMP administratively prohibited
//! ```
//!
//! A guest whose per-guest rules are missing is cut off, not let loose: its interface carries
//! the agent's prefix, so its packets take the jumps and end in a reject or a drop.
//!
//! **Order.** Loopback (127.0.0.0/8) and link-local (169.254.0.0/16: the underlying cloud's
//! metadata service, whose credentials are the host's) are refused first, whatever the lists
//! say; our own metadata service is local to the host and never forwarded. Then `egress_allow`
//! is checked before `egress_deny`: an address in both is allowed, so an exception (an internal
//! mirror in 10.0.0.0/8) goes in `egress_allow`, as does the pool for guests that may talk to
//! each other. The host's own
//! addresses are never reached through `FORWARD` (they go to `INPUT`), so no allow entry opens
//! the host; the only host service a guest reaches is the metadata listener.

mod cidr;
mod script;

pub use cidr::{Cidr, CidrError, NEVER};
pub(super) use script::{Listing, Rule, Script, Table};

use super::{AddressPool, NetTag};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The configured policy (`[network] egress_*`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EgressPolicy {
    /// Always reachable (checked first).
    pub allow: Vec<Cidr>,
    /// Never reachable unless allowed; the agent's own pool is added to it.
    pub deny: Vec<Cidr>,
    /// Per guest, packets out per second beyond which packets are dropped (0: no limit).
    pub packets_per_second: u32,
    /// Per guest, KiB out per second beyond which packets are dropped (0: no limit).
    pub kib_per_second: u32,
}

/// Most packets per second a limit may name.
pub const MAX_PACKETS_PER_SECOND: u32 = 1_000_000;
/// Most KiB per second a limit may name (1 GiB/s).
pub const MAX_KIB_PER_SECOND: u32 = 1 << 20;

/// The agent's chains, by role.
const IN: &str = "IN";
const IN_G: &str = "IN-G";
const HOST: &str = "HOST";
const FWD: &str = "FWD";
const FWD_G: &str = "FWD-G";
const EGRESS: &str = "EGRESS";
const TO: &str = "TO";
const REJECT: &str = "REJECT";
const NAT: &str = "NAT";

/// One guest's link, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GuestLink<'a> {
    pub host_if: &'a str,
    pub address: Ipv4Addr,
}

/// This agent's rules: the desired ones, and which of those on the host are its own.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    /// `BF-<tag>-`.
    prefix: String,
    /// `bf<tag>-+`: every host interface of this agent's guests.
    wildcard: String,
    pool: AddressPool,
    metadata: Option<SocketAddrV4>,
    policy: EgressPolicy,
    /// `bf-<tag>`: hashlimit table names (per agent, so agents never share buckets).
    limit_name: String,
}

impl Rules {
    pub fn new(
        tag: &NetTag,
        pool: AddressPool,
        metadata: Option<SocketAddrV4>,
        policy: EgressPolicy,
    ) -> Rules {
        Rules {
            prefix: format!("BF-{}-", tag.as_str()),
            wildcard: format!("{}+", tag.if_prefix()),
            pool,
            metadata,
            policy,
            limit_name: format!("bf-{}", tag.as_str()),
        }
    }

    pub fn chain(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// Whether `chain` is one of this agent's.
    pub fn own_chain(&self, chain: &str) -> bool {
        chain.starts_with(&self.prefix)
    }

    /// Whether `rule` is this agent's: in one of its chains, or a jump to one.
    pub fn own_rule(&self, rule: &Rule) -> bool {
        self.own_chain(&rule.chain)
            || ["-j", "-g"]
                .iter()
                .any(|o| rule.option(o).is_some_and(|t| self.own_chain(t)))
    }

    /// The chains whose contents are per guest (kept when the rest is rewritten).
    fn guest_chains(&self) -> [(Table, String); 2] {
        [
            (Table::Filter, self.chain(IN_G)),
            (Table::Filter, self.chain(FWD_G)),
        ]
    }

    /// The chains written whole from the configuration, with their rules in order.
    fn fixed_chains(&self) -> Vec<(Table, String, Vec<String>)> {
        let c = |r| self.chain(r);
        let reject = format!("-j {}", c(REJECT));
        let replies = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_owned();
        let mut host = Vec::new();
        if let Some(md) = self.metadata {
            host.push(format!(
                "-d {}/32 -p tcp -m tcp --dport {} -j ACCEPT",
                md.ip(),
                md.port()
            ));
        }
        // Ping of the guest's own gateway (the address of the interface it came in on).
        host.push(
            "-p icmp -m icmp --icmp-type 8 -m addrtype --dst-type LOCAL --limit-iface-in -j ACCEPT"
                .to_owned(),
        );
        let mut egress = Vec::new();
        let p = &self.policy;
        if p.packets_per_second > 0 {
            egress.push(format!(
                "-m hashlimit --hashlimit-above {n}/sec --hashlimit-burst {n} --hashlimit-mode srcip --hashlimit-name {}-p -j DROP",
                self.limit_name,
                n = p.packets_per_second
            ));
        }
        if p.kib_per_second > 0 {
            let rate = if p.kib_per_second.is_multiple_of(1024) {
                format!("{}mb/s", p.kib_per_second / 1024)
            } else {
                format!("{}kb/s", p.kib_per_second)
            };
            egress.push(format!(
                "-m hashlimit --hashlimit-above {rate} --hashlimit-mode srcip --hashlimit-name {}-b -j DROP",
                self.limit_name
            ));
        }
        egress.push(replies.clone());
        for n in NEVER {
            egress.push(format!("{}{reject}", n.dst()));
        }
        for a in &p.allow {
            egress.push(format!("{}-j ACCEPT", a.dst()));
        }
        let (base, len) = self.pool.network();
        let pool = Cidr {
            addr: base,
            prefix: len,
        };
        for d in p.deny.iter().chain([&pool]) {
            egress.push(format!("{}{reject}", d.dst()));
        }
        egress.push("-j ACCEPT".to_owned());
        vec![
            (
                Table::Filter,
                c(IN),
                vec![replies.clone(), format!("-j {}", c(IN_G)), reject.clone()],
            ),
            (Table::Filter, c(HOST), host),
            (
                Table::Filter,
                c(FWD),
                vec![format!("-j {}", c(FWD_G)), "-j DROP".to_owned()],
            ),
            (Table::Filter, c(EGRESS), egress),
            (
                Table::Filter,
                c(TO),
                vec![replies.clone(), "-j DROP".to_owned()],
            ),
            (
                Table::Filter,
                c(REJECT),
                vec![
                    "-p tcp -j REJECT --reject-with tcp-reset".to_owned(),
                    "-j REJECT --reject-with icmp-admin-prohibited".to_owned(),
                ],
            ),
            (
                Table::Nat,
                c(NAT),
                vec![
                    format!("-o {} -j RETURN", self.wildcard),
                    "-j MASQUERADE".to_owned(),
                ],
            ),
        ]
    }

    /// The jumps from the built-in chains, in the order they must appear in each.
    fn jumps(&self) -> Vec<(Table, Rule)> {
        let (base, len) = self.pool.network();
        vec![
            (
                Table::Filter,
                Rule::new(
                    "INPUT",
                    format!("-i {} -j {}", self.wildcard, self.chain(IN)),
                ),
            ),
            (
                Table::Filter,
                Rule::new(
                    "FORWARD",
                    format!("-i {} -j {}", self.wildcard, self.chain(FWD)),
                ),
            ),
            (
                Table::Filter,
                Rule::new(
                    "FORWARD",
                    format!("-o {} -j {}", self.wildcard, self.chain(TO)),
                ),
            ),
            (
                Table::Nat,
                Rule::new(
                    "POSTROUTING",
                    format!("-s {base}/{len} -j {}", self.chain(NAT)),
                ),
            ),
        ]
    }

    /// A guest's own rules.
    pub fn guest_rules(&self, g: GuestLink<'_>) -> Vec<Rule> {
        let m = format!("-s {}/32 -i {}", g.address, g.host_if);
        vec![
            Rule::new(self.chain(IN_G), format!("{m} -j {}", self.chain(HOST))),
            Rule::new(self.chain(FWD_G), format!("{m} -j {}", self.chain(EGRESS))),
        ]
    }

    /// Per-guest rules on the host whose interface `matches`.
    fn guest_rules_on<'a>(
        &'a self,
        filter: &'a Listing,
        matches: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        let chains = self.guest_chains().map(|(_, c)| c);
        filter
            .rules
            .iter()
            .filter(move |r| chains.contains(&r.chain) && r.option("-i").is_none_or(&matches))
    }

    /// The host interfaces that have per-guest rules.
    pub fn guests_with_rules(&self, filter: &Listing) -> Vec<String> {
        let mut ifs: Vec<String> = self
            .guest_rules_on(filter, |_| true)
            .filter_map(|r| r.option("-i").map(str::to_owned))
            .collect();
        ifs.sort();
        ifs.dedup();
        ifs
    }

    /// What makes the chains and jumps match the configuration, leaving per-guest rules as
    /// they are; empty when all is in place.
    pub fn base_plan(&self, filter: &Listing, nat: &Listing) -> Script {
        let listing = |t: Table| match t {
            Table::Filter => filter,
            Table::Nat => nat,
        };
        let fixed = self.fixed_chains();
        let jumps = self.jumps();
        let fixed_ok = fixed.iter().all(|(t, chain, rules)| {
            let l = listing(*t);
            l.has_chain(chain) && l.rules_in(chain).map(|r| &r.spec).eq(rules.iter())
        });
        let guest_ok = self
            .guest_chains()
            .iter()
            .all(|(t, c)| listing(*t).has_chain(c));
        // In each built-in chain, exactly this agent's jumps in their order (listings go
        // chain by chain, so only the order within a chain counts).
        let jumps_ok = [Table::Filter, Table::Nat].iter().all(|t| {
            let l = listing(*t);
            let have: Vec<&Rule> = l
                .rules
                .iter()
                .filter(|r| !self.own_chain(&r.chain) && self.own_rule(r))
                .collect();
            let want: Vec<&Rule> = jumps
                .iter()
                .filter(|(jt, _)| jt == t)
                .map(|(_, r)| r)
                .collect();
            have.len() == want.len()
                && want.iter().all(|w| {
                    let in_chain = |r: &&&Rule| r.chain == w.chain;
                    have.iter()
                        .filter(in_chain)
                        .eq(want.iter().filter(in_chain))
                })
        });
        let wanted: Vec<String> = fixed
            .iter()
            .map(|(_, c, _)| c.clone())
            .chain(self.guest_chains().map(|(_, c)| c))
            .collect();
        let stale: Vec<(Table, &String)> = [Table::Filter, Table::Nat]
            .iter()
            .flat_map(|t| {
                listing(*t)
                    .chains
                    .iter()
                    .filter(|c| self.own_chain(c) && !wanted.contains(c))
                    .map(move |c| (*t, c))
            })
            .collect();
        let mut s = Script::default();
        if fixed_ok && guest_ok && jumps_ok && stale.is_empty() {
            return s;
        }
        // Declaring a chain creates it, or empties it when it exists (--noflush).
        for (t, chain, _) in &fixed {
            s.push(*t, format!(":{chain} - [0:0]"));
        }
        for (t, chain) in self.guest_chains() {
            if !listing(t).has_chain(&chain) {
                s.push(t, format!(":{chain} - [0:0]"));
            }
        }
        for (t, chain, rules) in &fixed {
            for r in rules {
                s.push(*t, format!("-A {chain} {r}"));
            }
        }
        for t in [Table::Filter, Table::Nat] {
            for r in listing(t)
                .rules
                .iter()
                .filter(|r| !self.own_chain(&r.chain) && self.own_rule(r))
            {
                s.push(t, format!("-D {} {}", r.chain, r.spec));
            }
        }
        // Inserted at the top, last first, so they end up in order.
        for (t, r) in jumps.iter().rev() {
            s.push(*t, format!("-I {} 1 {}", r.chain, r.spec));
        }
        for (t, c) in &stale {
            s.push(*t, format!("-F {c}"));
        }
        for (t, c) in &stale {
            s.push(*t, format!("-X {c}"));
        }
        s
    }

    /// What gives `guest` exactly its own rules (none of an earlier guest on its interface);
    /// empty when they are in place. Assumes the chains exist ([`Rules::base_plan`]).
    pub fn guest_plan(&self, filter: &Listing, guest: GuestLink<'_>) -> Script {
        let want = self.guest_rules(guest);
        let have: Vec<&Rule> = self
            .guest_rules_on(filter, |i| i == guest.host_if)
            .collect();
        let mut s = Script::default();
        if have.len() == want.len() && want.iter().all(|w| have.contains(&w)) {
            return s;
        }
        for r in have {
            s.push(Table::Filter, format!("-D {} {}", r.chain, r.spec));
        }
        for r in want {
            s.push(Table::Filter, format!("-A {} {}", r.chain, r.spec));
        }
        s
    }

    /// What removes the per-guest rules of the interfaces `gone` says are gone, and, when no
    /// guest would have rules left and `drop_base_when_empty`, everything else of this agent.
    pub fn removal_plan(
        &self,
        filter: &Listing,
        nat: &Listing,
        gone: impl Fn(&str) -> bool,
        drop_base_when_empty: bool,
    ) -> Script {
        let mut s = Script::default();
        let mut left = false;
        for r in self.guest_rules_on(filter, |_| true) {
            if r.option("-i").is_none_or(&gone) {
                s.push(Table::Filter, format!("-D {} {}", r.chain, r.spec));
            } else {
                left = true;
            }
        }
        if !left && drop_base_when_empty {
            s.append(self.teardown(filter, nat));
        }
        s
    }

    /// What removes every rule and chain of this agent.
    pub fn teardown(&self, filter: &Listing, nat: &Listing) -> Script {
        let mut s = Script::default();
        for (t, l) in [(Table::Filter, filter), (Table::Nat, nat)] {
            for r in l
                .rules
                .iter()
                .filter(|r| !self.own_chain(&r.chain) && self.own_rule(r))
            {
                s.push(t, format!("-D {} {}", r.chain, r.spec));
            }
            let own: Vec<&String> = l.chains.iter().filter(|c| self.own_chain(c)).collect();
            for c in &own {
                s.push(t, format!("-F {c}"));
            }
            for c in &own {
                s.push(t, format!("-X {c}"));
            }
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn rules(tag: &str, policy: EgressPolicy) -> Rules {
        Rules::new(
            &NetTag::for_host(tag),
            "10.213.0.0/16".parse().unwrap(),
            Some("169.254.169.254:80".parse().unwrap()),
            policy,
        )
    }

    fn policy() -> EgressPolicy {
        EgressPolicy {
            allow: vec![cidr("10.9.9.0/24")],
            deny: vec![cidr("10.0.0.0/8"), cidr("100.64.0.0/10")],
            packets_per_second: 0,
            kib_per_second: 0,
        }
    }

    /// Applies `script` to listings the way iptables-restore would (enough for the tests).
    fn apply(filter: &mut Listing, nat: &mut Listing, script: &Script) {
        for (table, lines) in &script.lines {
            let l = match table {
                Table::Filter => &mut *filter,
                Table::Nat => &mut *nat,
            };
            for line in lines {
                let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
                if let Some(chain) = cmd.strip_prefix(':') {
                    if l.has_chain(chain) {
                        l.rules.retain(|r| r.chain != chain);
                    } else {
                        l.chains.push(chain.to_owned());
                    }
                    continue;
                }
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                match cmd {
                    "-A" => l.rules.push(Rule::new(chain, spec)),
                    "-I" => {
                        let spec = spec.split_once(' ').unwrap().1;
                        let at = l.rules.iter().position(|r| r.chain == chain);
                        l.rules
                            .insert(at.unwrap_or(l.rules.len()), Rule::new(chain, spec));
                    }
                    "-D" => {
                        let at = l
                            .rules
                            .iter()
                            .position(|r| r.chain == chain && r.spec == spec)
                            .unwrap_or_else(|| panic!("no rule to delete: {line}"));
                        l.rules.remove(at);
                    }
                    "-F" => l.rules.retain(|r| r.chain != chain),
                    "-X" => {
                        assert!(
                            !l.rules
                                .iter()
                                .any(|r| r.chain == chain || r.option("-j") == Some(chain)),
                            "{line}: the chain is not empty or is referenced"
                        );
                        l.chains.retain(|c| c != chain);
                    }
                    other => panic!("unexpected {other}"),
                }
            }
        }
    }

    fn host() -> (Listing, Listing) {
        let filter = Listing::parse(
            "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N DOCKER-USER\n\
             -A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\n",
        );
        let nat = Listing::parse(
            "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n\
             -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n",
        );
        (filter, nat)
    }

    #[test]
    fn the_chains_follow_the_configuration_in_the_documented_order() {
        let r = rules("host-a", policy()); // tag c151e3
        let (filter, nat) = host();
        let s = r.base_plan(&filter, &nat).to_string();
        let expected = "*filter
:BF-c151e3-IN - [0:0]
:BF-c151e3-HOST - [0:0]
:BF-c151e3-FWD - [0:0]
:BF-c151e3-EGRESS - [0:0]
:BF-c151e3-TO - [0:0]
:BF-c151e3-REJECT - [0:0]
:BF-c151e3-IN-G - [0:0]
:BF-c151e3-FWD-G - [0:0]
-A BF-c151e3-IN -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A BF-c151e3-IN -j BF-c151e3-IN-G
-A BF-c151e3-IN -j BF-c151e3-REJECT
-A BF-c151e3-HOST -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j ACCEPT
-A BF-c151e3-HOST -p icmp -m icmp --icmp-type 8 -m addrtype --dst-type LOCAL --limit-iface-in -j ACCEPT
-A BF-c151e3-FWD -j BF-c151e3-FWD-G
-A BF-c151e3-FWD -j DROP
-A BF-c151e3-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A BF-c151e3-EGRESS -d 127.0.0.0/8 -j BF-c151e3-REJECT
-A BF-c151e3-EGRESS -d 169.254.0.0/16 -j BF-c151e3-REJECT
-A BF-c151e3-EGRESS -d 10.9.9.0/24 -j ACCEPT
-A BF-c151e3-EGRESS -d 10.0.0.0/8 -j BF-c151e3-REJECT
-A BF-c151e3-EGRESS -d 100.64.0.0/10 -j BF-c151e3-REJECT
-A BF-c151e3-EGRESS -d 10.213.0.0/16 -j BF-c151e3-REJECT
-A BF-c151e3-EGRESS -j ACCEPT
-A BF-c151e3-TO -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A BF-c151e3-TO -j DROP
-A BF-c151e3-REJECT -p tcp -j REJECT --reject-with tcp-reset
-A BF-c151e3-REJECT -j REJECT --reject-with icmp-admin-prohibited
-I FORWARD 1 -o bfc151e3-+ -j BF-c151e3-TO
-I FORWARD 1 -i bfc151e3-+ -j BF-c151e3-FWD
-I INPUT 1 -i bfc151e3-+ -j BF-c151e3-IN
COMMIT
*nat
:BF-c151e3-NAT - [0:0]
-A BF-c151e3-NAT -o bfc151e3-+ -j RETURN
-A BF-c151e3-NAT -j MASQUERADE
-I POSTROUTING 1 -s 10.213.0.0/16 -j BF-c151e3-NAT
COMMIT
";
        assert_eq!(s, expected);
    }

    #[test]
    fn rate_limits_and_a_catch_all_range_print_as_iptables_does() {
        let mut p = policy();
        p.packets_per_second = 500;
        p.kib_per_second = 2048;
        p.deny.push(cidr("0.0.0.0/0"));
        let r = rules("host-a", p);
        let (filter, nat) = host();
        let s = r.base_plan(&filter, &nat).to_string();
        let egress: Vec<&str> = s
            .lines()
            .filter(|l| l.starts_with("-A BF-c151e3-EGRESS"))
            .collect();
        assert_eq!(
            egress[..2],
            [
                "-A BF-c151e3-EGRESS -m hashlimit --hashlimit-above 500/sec --hashlimit-burst 500 --hashlimit-mode srcip --hashlimit-name bf-c151e3-p -j DROP",
                "-A BF-c151e3-EGRESS -m hashlimit --hashlimit-above 2mb/s --hashlimit-mode srcip --hashlimit-name bf-c151e3-b -j DROP",
            ]
        );
        assert!(egress.contains(&"-A BF-c151e3-EGRESS -j BF-c151e3-REJECT"));
        let mut p = policy();
        p.kib_per_second = 3;
        let s = rules("host-a", p).base_plan(&filter, &nat).to_string();
        assert!(s.contains("--hashlimit-above 3kb/s"), "{s}");
    }

    #[test]
    fn a_second_look_finds_everything_in_place_and_a_changed_policy_is_rewritten() {
        let r = rules("host-a", policy());
        let (mut filter, mut nat) = host();
        let s = r.base_plan(&filter, &nat);
        apply(&mut filter, &mut nat, &s);
        assert!(r.base_plan(&filter, &nat).is_empty());
        // Our jumps come first; Docker's stays.
        let fwd: Vec<&str> = filter
            .rules_in("FORWARD")
            .map(|r| r.spec.as_str())
            .collect();
        assert_eq!(
            fwd,
            [
                "-i bfc151e3-+ -j BF-c151e3-FWD",
                "-o bfc151e3-+ -j BF-c151e3-TO",
                "-j DOCKER-USER"
            ]
        );
        let g = GuestLink {
            host_if: "bfc151e3-1",
            address: "10.213.0.6".parse().unwrap(),
        };
        let plan = r.guest_plan(&filter, g);
        apply(&mut filter, &mut nat, &plan);
        assert!(r.guest_plan(&filter, g).is_empty());
        // Another deny list: the fixed chains are rewritten, the guest's rules kept.
        let mut p = policy();
        p.deny.push(cidr("192.168.0.0/16"));
        let r2 = rules("host-a", p);
        let s = r2.base_plan(&filter, &nat);
        assert!(!s.to_string().contains("IN-G - [0:0]"), "{s}");
        apply(&mut filter, &mut nat, &s);
        assert!(r2.base_plan(&filter, &nat).is_empty());
        assert!(r2.guest_plan(&filter, g).is_empty());
        assert_eq!(r2.guests_with_rules(&filter), ["bfc151e3-1"]);
        // A lost jump (someone flushed INPUT) is put back, and only it is missing.
        filter.rules.retain(|r| r.chain != "INPUT");
        let s = r2.base_plan(&filter, &nat);
        assert!(!s.is_empty());
        apply(&mut filter, &mut nat, &s);
        assert!(r2.base_plan(&filter, &nat).is_empty());
    }

    #[test]
    fn a_guest_gets_exactly_its_own_rules_replacing_an_earlier_guests() {
        let r = rules("host-a", policy());
        let (mut filter, mut nat) = host();
        let plan = r.base_plan(&filter, &nat);
        apply(&mut filter, &mut nat, &plan);
        let old = GuestLink {
            host_if: "bfc151e3-1",
            address: "10.213.0.6".parse().unwrap(),
        };
        let plan = r.guest_plan(&filter, old);
        apply(&mut filter, &mut nat, &plan);
        let s = r.guest_plan(&filter, old).to_string();
        assert_eq!(s, "");
        let g = r.guest_rules(old);
        assert_eq!(
            g.iter()
                .map(|r| format!("-A {} {}", r.chain, r.spec))
                .collect::<Vec<_>>(),
            [
                "-A BF-c151e3-IN-G -s 10.213.0.6/32 -i bfc151e3-1 -j BF-c151e3-HOST",
                "-A BF-c151e3-FWD-G -s 10.213.0.6/32 -i bfc151e3-1 -j BF-c151e3-EGRESS",
            ]
        );
        // The same interface with another address (a rebuilt pool): old rules go.
        let new = GuestLink {
            host_if: "bfc151e3-1",
            address: "10.213.0.10".parse().unwrap(),
        };
        let s = r.guest_plan(&filter, new);
        assert_eq!(s.to_string().matches("-D ").count(), 2, "{s}");
        apply(&mut filter, &mut nat, &s);
        assert_eq!(
            filter
                .rules
                .iter()
                .filter(|r| r.spec.contains("10.213.0.6/32"))
                .count(),
            0
        );
    }

    #[test]
    fn only_this_agents_rules_are_its_own_and_removed() {
        let a = rules("host-a", policy());
        let b = Rules::new(
            &NetTag::for_host("host-b"),
            "10.214.0.0/16".parse().unwrap(),
            None,
            policy(),
        );
        let (mut filter, mut nat) = host();
        for r in [&a, &b] {
            let plan = r.base_plan(&filter, &nat);
            apply(&mut filter, &mut nat, &plan);
        }
        let ga = GuestLink {
            host_if: "bfc151e3-0",
            address: "10.213.0.2".parse().unwrap(),
        };
        let ga2 = GuestLink {
            host_if: "bfc151e3-1",
            address: "10.213.0.6".parse().unwrap(),
        };
        let gb = GuestLink {
            host_if: "bf86947d-0",
            address: "10.214.0.2".parse().unwrap(),
        };
        for (r, g) in [(&a, ga), (&a, ga2), (&b, gb)] {
            let plan = r.guest_plan(&filter, g);
            apply(&mut filter, &mut nat, &plan);
        }
        // Installing one agent's base did not disturb the other's.
        assert!(a.base_plan(&filter, &nat).is_empty());
        assert!(b.base_plan(&filter, &nat).is_empty());
        let jump = Rule::new("INPUT", "-i bf86947d-+ -j BF-86947d-IN");
        assert!(!a.own_rule(&jump) && b.own_rule(&jump));
        assert!(!a.own_rule(&Rule::new("FORWARD", "-j DOCKER-USER")));
        assert!(!a.own_rule(&Rule::new("BF-c151e3x-IN", "-j ACCEPT")));
        // A removes one guest: its other guest and all of B's stay.
        let s = a.removal_plan(&filter, &nat, |i| i == ga.host_if, true);
        assert!(!s.to_string().contains("bf86947d"), "{s}");
        apply(&mut filter, &mut nat, &s);
        assert_eq!(a.guests_with_rules(&filter), [ga2.host_if]);
        assert!(a.base_plan(&filter, &nat).is_empty());
        // A removes its last: everything of A goes, nothing of B's or Docker's.
        let s = a.removal_plan(&filter, &nat, |i| i == ga2.host_if, true);
        apply(&mut filter, &mut nat, &s);
        let all = |l: &Listing| {
            l.chains
                .iter()
                .cloned()
                .chain(l.rules.iter().map(|r| format!("{} {}", r.chain, r.spec)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(!all(&filter).contains("c151e3"), "{}", all(&filter));
        assert!(!all(&nat).contains("c151e3"), "{}", all(&nat));
        assert!(b.base_plan(&filter, &nat).is_empty());
        assert!(b.guest_plan(&filter, gb).is_empty());
        assert!(all(&filter).contains("-j DOCKER-USER"));
        assert!(all(&nat).contains("docker0"));
        // Removing with guests left but base kept: only the rules.
        let s = b.removal_plan(&filter, &nat, |_| true, false);
        apply(&mut filter, &mut nat, &s);
        assert!(b.guests_with_rules(&filter).is_empty());
        assert!(b.base_plan(&filter, &nat).is_empty());
        let plan = b.teardown(&filter, &nat);
        apply(&mut filter, &mut nat, &plan);
        assert_eq!((filter, nat), host());
    }

    #[test]
    fn stale_chains_of_this_agent_go_and_listings_parse() {
        let r = rules("host-a", policy());
        let (mut filter, mut nat) = host();
        let plan = r.base_plan(&filter, &nat);
        apply(&mut filter, &mut nat, &plan);
        filter.chains.push("BF-c151e3-OLD".into());
        filter.rules.push(Rule::new("BF-c151e3-OLD", "-j ACCEPT"));
        let s = r.base_plan(&filter, &nat).to_string();
        assert!(s.contains("-F BF-c151e3-OLD\n-X BF-c151e3-OLD"), "{s}");
        let text = "# Warning: iptables-legacy tables present\n-P INPUT ACCEPT\n-N X\n\
                    -A X -s 10.0.0.2/32 -i bfx-1 -j Y\n\n";
        let l = Listing::parse(text);
        assert_eq!(l.chains, ["INPUT", "X"]);
        assert_eq!(l.rules, [Rule::new("X", "-s 10.0.0.2/32 -i bfx-1 -j Y")]);
        assert_eq!(l.rules[0].option("-i"), Some("bfx-1"));
        assert_eq!(l.rules[0].option("-o"), None);
    }
}
