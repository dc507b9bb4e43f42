//! IPv4 ranges as the egress policy names them (`egress_allow`, `egress_deny`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 range (`10.0.0.0/8`; a bare address is a /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub(super) addr: Ipv4Addr,
    pub(super) prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 range such as 10.0.0.0/8 or an address such as 10.0.0.2")]
    Syntax(String),
    #[error("{0:?}: guests have IPv4 only (IPv6 is off on their links); give an IPv4 range")]
    Ipv6(String),
    #[error("{0:?}: the prefix length must be 0 to 32")]
    Length(String),
    #[error("{0:?}: host bits are set; did you mean {1}?")]
    HostBits(String, String),
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        if addr.parse::<std::net::Ipv6Addr>().is_ok() {
            return Err(CidrError::Ipv6(s.to_owned()));
        }
        let addr: Ipv4Addr = addr.parse().map_err(|_| CidrError::Syntax(s.to_owned()))?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::Syntax(s.to_owned()));
        }
        let prefix: u8 = len.parse().map_err(|_| CidrError::Length(s.to_owned()))?;
        if prefix > 32 {
            return Err(CidrError::Length(s.to_owned()));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let bits = u32::from(addr);
        if bits & !mask != 0 {
            let fixed = Cidr {
                addr: Ipv4Addr::from(bits & mask),
                prefix,
            };
            return Err(CidrError::HostBits(s.to_owned(), fixed.to_string()));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Ranges guests never reach, before and whatever `egress_allow` says: loopback and
/// link-local.
pub const NEVER: [Cidr; 2] = [
    Cidr {
        addr: Ipv4Addr::new(127, 0, 0, 0),
        prefix: 8,
    },
    Cidr {
        addr: Ipv4Addr::new(169, 254, 0, 0),
        prefix: 16,
    },
];

impl Cidr {
    /// The range of [`NEVER`] that holds all of this one, if any.
    pub fn never_reachable(&self) -> Option<Cidr> {
        NEVER
            .into_iter()
            .find(|n| n.prefix <= self.prefix && n.contains(self.addr))
    }

    /// `-d <range>` as iptables prints it (nothing for 0.0.0.0/0, which matches everything).
    pub(super) fn dst(&self) -> String {
        if self.prefix == 0 {
            String::new()
        } else {
            format!("-d {self} ")
        }
    }

    /// Whether `addr` is in the range.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(addr) & mask == u32::from(self.addr)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_strictly_and_say_why_not() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert!(cidr("169.254.0.0/16").contains("169.254.169.254".parse().unwrap()));
        assert!(!cidr("169.254.0.0/16").contains("169.255.0.1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBits(
                "10.0.0.1/8".into(),
                "10.0.0.0/8".into()
            ))
        );
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0/8",
            "10.0.0.0/8/8",
            "ten",
            "10.0.0.0/+8",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Length(_))
        ));
        assert!(matches!(
            "10.0.0.0/300".parse::<Cidr>(),
            Err(CidrError::Length(_))
        ));
        assert!(matches!("fd00::1".parse::<Cidr>(), Err(CidrError::Ipv6(_))));
        assert!(matches!(
            "fd00::/8".parse::<Cidr>(),
            Err(CidrError::Ipv6(_))
        ));
        assert_eq!(cidr("169.254.169.254").never_reachable(), Some(NEVER[1]));
        assert_eq!(cidr("127.0.0.0/8").never_reachable(), Some(NEVER[0]));
        assert_eq!(cidr("169.0.0.0/8").never_reachable(), None);
        assert_eq!(cidr("0.0.0.0/0").never_reachable(), None);
        assert_eq!(cidr("10.0.0.2").never_reachable(), None);
        let e = "10.0.0.1/8".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
    }
}
