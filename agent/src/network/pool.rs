//! The guest address pool: an IPv4 prefix cut into /30 links, one per isolated server. Slot
//! `n` is the `n`th /30: the host end takes its first usable address, the guest the second.

use std::net::Ipv4Addr;
use std::str::FromStr;

/// A guest's point-to-point link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub slot: u32,
    pub host: Ipv4Addr,
    pub guest: Ipv4Addr,
}

/// Prefix length of each guest link.
pub const LINK_PREFIX: u8 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool {
    base: u32,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("{0:?} is not an IPv4 prefix such as 10.213.0.0/16")]
    Syntax(String),
    #[error("{0:?}: the prefix length must be 8 to 30")]
    Length(String),
    #[error("{0:?}: host bits are set; did you mean {1}?")]
    HostBits(String, String),
}

impl FromStr for AddressPool {
    type Err = PoolError;
    fn from_str(s: &str) -> Result<AddressPool, PoolError> {
        let syntax = || PoolError::Syntax(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = len.parse().map_err(|_| syntax())?;
        if !(8..=LINK_PREFIX).contains(&prefix) {
            return Err(PoolError::Length(s.to_owned()));
        }
        let base = u32::from(addr);
        let mask = u32::MAX << (32 - u32::from(prefix));
        if base & !mask != 0 {
            return Err(PoolError::HostBits(
                s.to_owned(),
                format!("{}/{prefix}", Ipv4Addr::from(base & mask)),
            ));
        }
        Ok(AddressPool { base, prefix })
    }
}

impl AddressPool {
    /// How many guests fit.
    pub fn capacity(&self) -> u32 {
        1 << (LINK_PREFIX - self.prefix)
    }

    pub fn link(&self, slot: u32) -> Option<Link> {
        if slot >= self.capacity() {
            return None;
        }
        let net = self.base + slot * 4;
        Some(Link {
            slot,
            host: Ipv4Addr::from(net + 1),
            guest: Ipv4Addr::from(net + 2),
        })
    }

    /// The pool's network address and prefix length.
    pub fn network(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::from(self.base), self.prefix)
    }

    /// The slot whose /30 holds `addr`, if the pool does.
    pub fn slot_of(&self, addr: Ipv4Addr) -> Option<u32> {
        let offset = u32::from(addr).checked_sub(self.base)?;
        let slot = offset / 4;
        (slot < self.capacity()).then_some(slot)
    }

    /// The lowest slot not in `used`.
    pub fn first_free(&self, used: impl IntoIterator<Item = u32>) -> Option<Link> {
        let mut used: Vec<u32> = used.into_iter().collect();
        used.sort_unstable();
        used.dedup();
        let mut want = 0;
        for u in used {
            if u == want {
                want += 1;
            } else if u > want {
                break;
            }
        }
        self.link(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_slash_30s() {
        let p: AddressPool = "10.213.0.0/16".parse().unwrap();
        assert_eq!(p.capacity(), 16384);
        let l0 = p.link(0).unwrap();
        assert_eq!(
            (l0.host, l0.guest),
            ("10.213.0.1".parse().unwrap(), "10.213.0.2".parse().unwrap())
        );
        let l1 = p.link(1).unwrap();
        assert_eq!(l1.guest, "10.213.0.6".parse::<Ipv4Addr>().unwrap());
        let last = p.link(16383).unwrap();
        assert_eq!(last.guest, "10.213.255.254".parse::<Ipv4Addr>().unwrap());
        assert_eq!(p.link(16384), None);
        assert_eq!(p.slot_of("10.213.0.6".parse().unwrap()), Some(1));
        assert_eq!(p.slot_of("10.213.0.4".parse().unwrap()), Some(1));
        assert_eq!(p.slot_of("10.213.255.255".parse().unwrap()), Some(16383));
        assert_eq!(p.slot_of("10.214.0.0".parse().unwrap()), None);
        assert_eq!(p.slot_of("10.212.255.255".parse().unwrap()), None);
    }

    #[test]
    fn first_free_fills_gaps() {
        let p: AddressPool = "192.168.7.0/28".parse().unwrap();
        assert_eq!(p.capacity(), 4);
        assert_eq!(p.first_free([]).unwrap().slot, 0);
        assert_eq!(p.first_free([0, 1, 3]).unwrap().slot, 2);
        assert_eq!(p.first_free([1, 1, 0]).unwrap().slot, 2);
        assert_eq!(p.first_free([0, 1, 2, 3]), None);
    }

    #[test]
    fn bad_prefixes_say_why() {
        assert!(matches!(
            "10.0.0.0".parse::<AddressPool>(),
            Err(PoolError::Syntax(_))
        ));
        assert!(matches!(
            "10.0.0.0/31".parse::<AddressPool>(),
            Err(PoolError::Length(_))
        ));
        assert!(matches!(
            "10.0.0.0/4".parse::<AddressPool>(),
            Err(PoolError::Length(_))
        ));
        assert_eq!(
            "10.0.0.1/16".parse::<AddressPool>(),
            Err(PoolError::HostBits(
                "10.0.0.1/16".into(),
                "10.0.0.0/16".into()
            ))
        );
    }
}
