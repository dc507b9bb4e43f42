//! Servers in creation order, per account and fleet-wide, and what each account holds: kept up
//! to date as the model's servers change, so a list page costs what the page holds and a quota
//! check costs the same for an account of ten servers as for one of a hundred thousand.

use crate::domain::server::ServerRecord;
use backfill_shared::{ServerClass, ServerId, ServerStatus};
use std::collections::{BTreeMap, BTreeSet};

/// Which servers an API family sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/bservers/`: backfill servers only.
    BServers,
    /// `/servers/`: every server of the account (backfill servers are a subset).
    Servers,
}

impl Scope {
    pub fn sees(self, class: ServerClass) -> bool {
        match self {
            Scope::BServers => class == ServerClass::Backfill,
            Scope::Servers => true,
        }
    }
}

/// What an account holds now, in the units of its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InUse {
    /// MHz of servers that hold resources.
    pub cpu: u64,
    pub mem: u64,
    pub gpus: u64,
    /// Servers that exist.
    pub servers: u64,
    /// Bytes of drives: not kept by this index (always 0 here); `accounts::in_use` adds it
    /// from the model's drives.
    pub storage: u64,
}

impl InUse {
    /// One server's share: it exists, and holds its size while placed or holding resources.
    fn of(s: &ServerRecord) -> InUse {
        let holds = s.status.holds_resources() || s.host.is_some();
        InUse {
            servers: 1,
            cpu: if holds { s.cpu } else { 0 },
            mem: if holds { s.mem } else { 0 },
            gpus: if holds {
                s.gpu_request.as_ref().map_or(0, |g| u64::from(g.count))
            } else {
                0
            },
            storage: 0,
        }
    }

    fn add(&mut self, o: InUse) {
        self.servers = self.servers.saturating_add(o.servers);
        self.cpu = self.cpu.saturating_add(o.cpu);
        self.mem = self.mem.saturating_add(o.mem);
        self.gpus = self.gpus.saturating_add(o.gpus);
        self.storage = self.storage.saturating_add(o.storage);
    }

    fn sub(&mut self, o: InUse) {
        self.servers = self.servers.saturating_sub(o.servers);
        self.cpu = self.cpu.saturating_sub(o.cpu);
        self.mem = self.mem.saturating_sub(o.mem);
        self.gpus = self.gpus.saturating_sub(o.gpus);
        self.storage = self.storage.saturating_sub(o.storage);
    }
}

type Order = BTreeSet<(i64, ServerId)>;

/// One set of servers in creation order, and its backfill subset.
#[derive(Debug, Default)]
struct Ordered {
    all: Order,
    backfill: Order,
}

impl Ordered {
    fn add(&mut self, s: &ServerRecord) {
        self.all.insert((s.created_at, s.uuid));
        if s.class == ServerClass::Backfill {
            self.backfill.insert((s.created_at, s.uuid));
        }
    }

    fn remove(&mut self, s: &ServerRecord) {
        self.all.remove(&(s.created_at, s.uuid));
        self.backfill.remove(&(s.created_at, s.uuid));
    }

    fn scoped(&self, scope: Scope) -> &Order {
        match scope {
            Scope::BServers => &self.backfill,
            Scope::Servers => &self.all,
        }
    }
}

#[derive(Debug, Default)]
struct Owner {
    servers: Ordered,
    in_use: InUse,
}

#[derive(Debug, Default)]
pub struct ServerIndex {
    fleet: Ordered,
    owners: BTreeMap<String, Owner>,
}

impl ServerIndex {
    /// Call with a server as it enters the model (after [`ServerIndex::remove`] of its old
    /// record, if it had one).
    pub fn add(&mut self, s: &ServerRecord) {
        self.fleet.add(s);
        let owner = self.owners.entry(s.owner.clone()).or_default();
        owner.servers.add(s);
        owner.in_use.add(InUse::of(s));
    }

    /// Call with a server's record as it was in the model, as it leaves or changes.
    pub fn remove(&mut self, s: &ServerRecord) {
        self.fleet.remove(s);
        if let Some(owner) = self.owners.get_mut(&s.owner) {
            owner.servers.remove(s);
            owner.in_use.sub(InUse::of(s));
            if owner.servers.all.is_empty() {
                self.owners.remove(&s.owner);
            }
        }
    }

    /// What `account` holds.
    pub fn in_use(&self, account: &str) -> InUse {
        self.owners
            .get(account)
            .map(|o| o.in_use)
            .unwrap_or_default()
    }

    /// One page of `owner`'s servers (every account's when `None`) in `scope` that match
    /// `query`: the total that match, and the page's ids. Without filters, in creation order,
    /// this walks the page only; filters or another order walk the owner's servers once,
    /// without copying them.
    pub fn page(
        &self,
        servers: &BTreeMap<ServerId, ServerRecord>,
        owner: Option<&str>,
        scope: Scope,
        query: &ServerQuery,
    ) -> (usize, Vec<ServerId>) {
        let empty = Order::new();
        let order = match owner {
            None => self.fleet.scoped(scope),
            Some(o) => self
                .owners
                .get(o)
                .map_or(&empty, |o| o.servers.scoped(scope)),
        };
        let take = if query.limit == 0 {
            usize::MAX
        } else {
            query.limit
        };
        let by_creation = matches!(query.order, None | Some((OrderKey::Created, _)));
        if query.filters.is_empty() && by_creation {
            let desc = matches!(query.order, Some((_, true)));
            let ids = |it: &mut dyn Iterator<Item = &(i64, ServerId)>| -> Vec<ServerId> {
                it.skip(query.offset)
                    .take(take)
                    .map(|(_, id)| *id)
                    .collect()
            };
            let page = if desc {
                ids(&mut order.iter().rev())
            } else {
                ids(&mut order.iter())
            };
            return (order.len(), page);
        }
        let mut hits: Vec<&ServerRecord> = order
            .iter()
            .filter_map(|(_, id)| servers.get(id))
            .filter(|s| query.matches(s))
            .collect();
        if let Some((key, desc)) = query.order {
            match key {
                OrderKey::Name => {
                    hits.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)))
                }
                OrderKey::Uuid => hits.sort_by_key(|s| s.uuid),
                OrderKey::Created => {}
            }
            if desc {
                hits.reverse();
            }
        }
        let total = hits.len();
        let page = hits
            .into_iter()
            .skip(query.offset)
            .take(take)
            .map(|s| s.uuid)
            .collect();
        (total, page)
    }
}

/// What a server list filters on (CloudSigma's GET parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKey {
    Name,
    NameContains,
    Tag,
    Uuid,
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKey {
    Name,
    Uuid,
    Created,
}

/// A validated server list query: filters (ANDed; each a list of alternatives, ORed), an
/// order (and whether reversed), and the page (`limit` 0 = all).
#[derive(Debug, Clone, Default)]
pub struct ServerQuery {
    pub filters: Vec<(FilterKey, Vec<String>)>,
    pub order: Option<(OrderKey, bool)>,
    pub limit: usize,
    pub offset: usize,
}

impl ServerQuery {
    pub fn matches(&self, s: &ServerRecord) -> bool {
        self.filters.iter().all(|(k, alts)| {
            alts.iter().any(|a| match k {
                FilterKey::Name => s.name == *a,
                FilterKey::NameContains => s.name.contains(a.as_str()),
                FilterKey::Tag => s.tags.iter().any(|t| t == a),
                FilterKey::Uuid => s.uuid.to_string() == *a,
                FilterKey::Status => ServerStatus::parse(a) == Some(s.status),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::sample_server as server;

    fn model_of(records: &[ServerRecord]) -> (ServerIndex, BTreeMap<ServerId, ServerRecord>) {
        let mut index = ServerIndex::default();
        let mut map = BTreeMap::new();
        for r in records {
            index.add(r);
            map.insert(r.uuid, r.clone());
        }
        (index, map)
    }

    #[test]
    fn pages_follow_creation_order_per_owner_and_scope() {
        let mut rs = Vec::new();
        for i in 0..10 {
            let mut r = server(if i % 2 == 0 { "a" } else { "b" });
            r.created_at = 100 - i;
            if i % 3 == 0 {
                r.class = ServerClass::Normal;
            }
            rs.push(r);
        }
        let (index, map) = model_of(&rs);
        let q = ServerQuery {
            limit: 2,
            offset: 1,
            ..ServerQuery::default()
        };
        let (total, page) = index.page(&map, Some("a"), Scope::Servers, &q);
        let mut a: Vec<&ServerRecord> = rs.iter().filter(|r| r.owner == "a").collect();
        a.sort_by_key(|r| (r.created_at, r.uuid));
        assert_eq!(total, 5);
        assert_eq!(page, vec![a[1].uuid, a[2].uuid]);
        let (total, _) = index.page(&map, Some("a"), Scope::BServers, &q);
        assert_eq!(
            total,
            a.iter()
                .filter(|r| r.class == ServerClass::Backfill)
                .count()
        );
        let (total, _) = index.page(&map, None, Scope::Servers, &q);
        assert_eq!(total, 10);
        let (total, page) = index.page(&map, Some("nobody"), Scope::Servers, &q);
        assert_eq!((total, page.len()), (0, 0));
    }

    #[test]
    fn filtered_and_ordered_pages_match_a_full_scan() {
        let mut rs = Vec::new();
        for i in 0..30 {
            let mut r = server("a");
            r.name = format!("n{}", (i * 7) % 11);
            r.created_at = i;
            rs.push(r);
        }
        let (index, map) = model_of(&rs);
        let q = ServerQuery {
            filters: vec![(FilterKey::NameContains, vec!["1".into(), "3".into()])],
            order: Some((OrderKey::Name, true)),
            limit: 4,
            offset: 2,
        };
        let mut want: Vec<&ServerRecord> = rs.iter().filter(|r| q.matches(r)).collect();
        want.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));
        want.reverse();
        let (total, page) = index.page(&map, Some("a"), Scope::Servers, &q);
        assert_eq!(total, want.len());
        let want: Vec<ServerId> = want.iter().skip(2).take(4).map(|r| r.uuid).collect();
        assert_eq!(page, want);
    }

    #[test]
    fn holdings_follow_changes_and_removal() {
        let mut index = ServerIndex::default();
        let mut r = server("a");
        r.cpu = 500;
        r.mem = 1 << 30;
        index.add(&r);
        assert_eq!(
            index.in_use("a"),
            InUse {
                servers: 1,
                ..InUse::default()
            }
        );
        let mut running = r.clone();
        running.status = ServerStatus::Running;
        index.remove(&r);
        index.add(&running);
        assert_eq!(
            index.in_use("a"),
            InUse {
                servers: 1,
                cpu: 500,
                mem: 1 << 30,
                gpus: 0,
                storage: 0,
            }
        );
        index.remove(&running);
        assert_eq!(index.in_use("a"), InUse::default());
        assert!(index.owners.is_empty());
    }
}
