//! Identifiers that end up in paths (cgroup names, log files, state files) are validated once,
//! at the edge, and are then safe by construction.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error(
        "server id {0:?} is not a UUID (expected the form 0f0e0d0c-0b0a-4988-8776-655443322110)"
    )]
    BadServerId(String),
    #[error(
        "host id {0:?} is invalid: use 1 to 63 characters from a-z, A-Z, 0-9, '.', '-', '_', not starting with '.' or '-'"
    )]
    BadHostId(String),
    #[error(
        "drive id {0:?} is not a UUID (expected the form 0f0e0d0c-0b0a-4988-8776-655443322110)"
    )]
    BadDriveId(String),
}

/// A server's UUID. Always printed lower-case and hyphenated, so it is a safe path component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerId(uuid::Uuid);

impl ServerId {
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
    pub fn from_u128(v: u128) -> Self {
        Self(uuid::Uuid::from_u128(v))
    }
}

impl FromStr for ServerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        // Only the hyphenated form: the simple, braced and URN forms would give the same server
        // two spellings.
        if s.len() != 36 {
            return Err(IdError::BadServerId(truncate(s)));
        }
        uuid::Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| IdError::BadServerId(truncate(s)))
    }
}

impl TryFrom<String> for ServerId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<ServerId> for String {
    fn from(id: ServerId) -> String {
        id.to_string()
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

/// A host's id: the CN of its agent certificate. Used as a file and cgroup name component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostId(String);

impl HostId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Sorts before every valid id: a lower bound for range queries, never a real host.
    pub fn min() -> HostId {
        HostId(String::new())
    }
}

impl FromStr for HostId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let ok_len = (1..=63).contains(&s.len());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        let ok_start = !s.starts_with('.') && !s.starts_with('-');
        if ok_len && ok_chars && ok_start {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadHostId(truncate(s)))
        }
    }
}

impl TryFrom<String> for HostId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<HostId> for String {
    fn from(id: HostId) -> String {
        id.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Error messages echo at most 80 characters of what they were given.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_id_round_trips_lowercase() {
        let id: ServerId = "4E31777B-92B5-4633-9F31-C28443A63CFD".parse().unwrap();
        assert_eq!(id.to_string(), "4e31777b-92b5-4633-9f31-c28443a63cfd");
    }

    #[test]
    fn server_id_refuses_paths_and_other_forms() {
        for bad in [
            "",
            "../../etc/passwd",
            "4e31777b92b546339f31c28443a63cfd",
            "{4e31777b-92b5-4633-9f31-c28443a63cfd}",
            "4e31777b-92b5-4633-9f31-c28443a63cf/",
        ] {
            assert!(bad.parse::<ServerId>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn host_id_rules() {
        assert!("node-1.example_a".parse::<HostId>().is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "a b", "..", &"x".repeat(64)] {
            assert!(bad.parse::<HostId>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn serde_validates() {
        let r: Result<ServerId, _> = serde_json::from_str("\"../x\"");
        assert!(r.is_err());
    }
}
