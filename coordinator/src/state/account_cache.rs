//! The accounts every API request looks up (the caller's), kept in memory so that a request
//! does not wait for a store connection, which writes hold while they commit.
//!
//! Correct because every account write of a coordinator goes through its own
//! `Coordinator::{create,update,delete}_account`, which invalidate the entry here after the store
//! write (whatever its outcome). Several coordinators on PostgreSQL (`cmd::ha`): only the leader
//! writes (followers forward writes to it), and each term and each follower snapshot is a new
//! `Coordinator` with an empty cache, so a follower's accounts lag the store no more than its
//! model does (one snapshot period).
//!
//! A lookup that misses reads the store and fills the entry only if no account write happened
//! meanwhile (a generation counter), so a read that raced a write never leaves the old account
//! behind. Unknown names are not remembered.

use crate::domain::account::Account;
use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

#[derive(Debug, Default)]
pub struct AccountCache {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    accounts: HashMap<String, Account>,
    /// Grows at every account write.
    generation: u64,
}

impl AccountCache {
    /// The account `name` if it is remembered.
    pub fn get(&self, name: &str) -> Option<Account> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.accounts.get(name).cloned()
    }

    /// Take before reading an account from the store; hand to [`AccountCache::fill`].
    pub fn generation(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// Remembers `a`, read from the store after [`AccountCache::generation`] returned
    /// `generation`, unless an account was written since.
    pub fn fill(&self, a: &Account, generation: u64) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.generation == generation {
            inner.accounts.insert(a.name.clone(), a.clone());
        }
    }

    /// After a write of account `name` (done, failed or unknown): the next lookup reads the
    /// store, and lookups in flight do not fill.
    pub fn invalidate(&self, name: &str) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.generation = inner.generation.wrapping_add(1);
        inner.accounts.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, servers: u64) -> Account {
        Account {
            name: name.into(),
            uuid: String::new(),
            backfill: false,
            quota: crate::domain::account::Quota {
                servers: Some(servers),
                ..Default::default()
            },
            created_at: 0,
        }
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_remembered() {
        let c = AccountCache::default();
        let g = c.generation();
        // A write lands between the lookup's store read and its fill.
        c.invalidate("a");
        c.fill(&account("a", 1), g);
        assert_eq!(c.get("a"), None);
        let g = c.generation();
        c.fill(&account("a", 2), g);
        assert_eq!(c.get("a").map(|a| a.quota.servers), Some(Some(2)));
        c.invalidate("a");
        assert_eq!(c.get("a"), None);
    }
}
