//! The iptables side of the rules: tables, rules as `iptables -S` prints them, and
//! `iptables-restore` batches.

use std::collections::BTreeMap;
use std::fmt;

/// The two tables the rules live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(in crate::network) enum Table {
    Filter,
    Nat,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// One rule: its chain and its specification, exactly as `iptables -S` prints it after
/// `-A <chain> `.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(in crate::network) struct Rule {
    pub chain: String,
    pub spec: String,
}

impl Rule {
    pub(super) fn new(chain: impl Into<String>, spec: impl Into<String>) -> Rule {
        Rule {
            chain: chain.into(),
            spec: spec.into(),
        }
    }

    /// The value of option `opt` (`-j`, `-i`), if the rule has it.
    pub(super) fn option(&self, opt: &str) -> Option<&str> {
        let mut words = self.spec.split_whitespace();
        while let Some(w) = words.next() {
            if w == opt {
                return words.next();
            }
        }
        None
    }
}

/// A table as `iptables -t <table> -S` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(in crate::network) struct Listing {
    /// Every chain, built-in (`-P`) and user-defined (`-N`), in order.
    pub chains: Vec<String>,
    pub rules: Vec<Rule>,
}

impl Listing {
    pub fn parse(text: &str) -> Listing {
        let mut l = Listing::default();
        for line in text.lines() {
            let mut words = line.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("-P" | "-N"), Some(chain), _) => l.chains.push(chain.to_owned()),
                (Some("-A"), Some(chain), rest) => {
                    l.rules
                        .push(Rule::new(chain, rest.unwrap_or_default().trim_end()));
                }
                _ => {}
            }
        }
        l
    }

    pub(super) fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }

    pub(super) fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

/// A batch for `iptables-restore --noflush`: applied whole or not at all, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(in crate::network) struct Script {
    pub(super) lines: BTreeMap<Table, Vec<String>>,
}

impl Script {
    pub(super) fn push(&mut self, table: Table, line: String) {
        self.lines.entry(table).or_default().push(line);
    }

    pub fn is_empty(&self) -> bool {
        self.lines.values().all(Vec::is_empty)
    }

    pub fn append(&mut self, other: Script) {
        for (t, lines) in other.lines {
            self.lines.entry(t).or_default().extend(lines);
        }
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (table, lines) in self.lines.iter().filter(|(_, l)| !l.is_empty()) {
            writeln!(f, "*{}", table.name())?;
            for l in lines {
                writeln!(f, "{l}")?;
            }
            writeln!(f, "COMMIT")?;
        }
        Ok(())
    }
}
