//! IMDSv2 session tokens, sealed: an expiry and a MAC over (guest address, expiry) under a key
//! the agent draws at start. The agent keeps no table; a token only works for the guest it was
//! issued to, until it expires (or the agent restarts, when clients simply ask again).

use ring::hmac;
use std::net::IpAddr;

pub const MIN_TTL_S: i64 = 1;
pub const MAX_TTL_S: i64 = 21_600;
const MAC_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("X-aws-ec2-metadata-token-ttl-seconds must be an integer from 1 to 21600")]
    BadTtl,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token was not issued to this guest")]
    Forged,
}

#[derive(Debug)]
pub struct TokenSealer {
    key: hmac::Key,
}

fn message(ip: &IpAddr, expires: i64) -> Vec<u8> {
    let mut m = expires.to_be_bytes().to_vec();
    match ip {
        IpAddr::V4(v4) => m.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => m.extend_from_slice(&v6.octets()),
    }
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl TokenSealer {
    /// A sealer with a fresh random key.
    pub fn random() -> Result<TokenSealer, TokenError> {
        let rng = ring::rand::SystemRandom::new();
        let key =
            hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| TokenError::Malformed)?;
        Ok(TokenSealer { key })
    }

    /// A sealer with a fixed key (tests, or several listeners sharing one).
    pub fn with_key(secret: &[u8]) -> TokenSealer {
        TokenSealer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// Issues a token for `ip`, valid `ttl` seconds from `now`.
    pub fn issue(&self, ip: &IpAddr, ttl: i64, now: i64) -> Result<String, TokenError> {
        if !(MIN_TTL_S..=MAX_TTL_S).contains(&ttl) {
            return Err(TokenError::BadTtl);
        }
        let expires = now.saturating_add(ttl);
        let tag = hmac::sign(&self.key, &message(ip, expires));
        Ok(format!(
            "{}{}",
            hex(&expires.to_be_bytes()),
            hex(tag.as_ref())
        ))
    }

    /// Checks a token presented by `ip` at `now`.
    pub fn verify(&self, token: &str, ip: &IpAddr, now: i64) -> Result<(), TokenError> {
        let raw = unhex(token.trim()).ok_or(TokenError::Malformed)?;
        if raw.len() != 8 + MAC_BYTES {
            return Err(TokenError::Malformed);
        }
        let (exp, mac) = raw.split_at(8);
        let expires = i64::from_be_bytes(exp.try_into().map_err(|_| TokenError::Malformed)?);
        // Constant-time comparison of the whole HMAC-SHA256 tag.
        hmac::verify(&self.key, &message(ip, expires), mac).map_err(|_| TokenError::Forged)?;
        if now >= expires {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_guest_and_expiry() {
        let s = TokenSealer::with_key(b"k");
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        let t = s.issue(&a, 60, 1_000).unwrap();
        assert_eq!(s.verify(&t, &a, 1_059), Ok(()));
        assert_eq!(s.verify(&t, &a, 1_060), Err(TokenError::Expired));
        assert_eq!(s.verify(&t, &b, 1_000), Err(TokenError::Forged));
        assert_eq!(s.verify("zz", &a, 1_000), Err(TokenError::Malformed));
        assert_eq!(s.verify("", &a, 1_000), Err(TokenError::Malformed));
        // Another agent's key does not verify.
        assert_eq!(
            TokenSealer::with_key(b"other").verify(&t, &a, 1_000),
            Err(TokenError::Forged)
        );
        for bad in [0, 21_601, -5] {
            assert_eq!(s.issue(&a, bad, 0), Err(TokenError::BadTtl));
        }
        assert!(s.issue(&a, 21_600, 0).is_ok());
    }
}
