//! Drives: a tenant's disks as CloudSigma has them. A drive lives on the host whose agent made
//! it (a qcow2 file under the agent's state directory); servers attach drives by boot order.
//!
//! The link carries drives in messages of their own, appended at the end of the protocol's
//! enums: [`DriveOrders`] (coordinator -> agent: every drive the host should hold, and the
//! drives it should delete) and [`DriveReport`] (agent -> coordinator: the drives it holds).
//! Both are whole states, so a lost or repeated message loses nothing.

use crate::ids::IdError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// At most this many drives on one server.
pub const MAX_ATTACHED: usize = 16;
/// The largest drive (bytes): 16 TiB.
pub const MAX_DRIVE_BYTES: u64 = 16 << 40;
/// The smallest drive (bytes): 1 MiB.
pub const MIN_DRIVE_BYTES: u64 = 1 << 20;

/// A drive's UUID. Printed lower-case and hyphenated, so it is a safe file name component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DriveId(uuid::Uuid);

impl DriveId {
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
    pub fn from_u128(v: u128) -> Self {
        Self(uuid::Uuid::from_u128(v))
    }
    /// A stable id for a library image named `name` (the same on every coordinator).
    pub fn for_library(name: &str) -> Self {
        // FNV-1a over the name, twice with different offsets: stable, not cryptographic.
        let fnv = |seed: u64| {
            name.bytes().fold(seed, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        let v =
            (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x8422_2325_cbf2_9ce4));
        // Version 8 (custom) and the RFC 4122 variant, so it reads as a UUID everywhere.
        let v = (v & !(0xf << 76)) | (0x8 << 76);
        let v = (v & !(0x3 << 62)) | (0x2 << 62);
        Self(uuid::Uuid::from_u128(v))
    }
}

impl FromStr for DriveId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() != 36 {
            return Err(IdError::BadDriveId(s.chars().take(64).collect()));
        }
        uuid::Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| IdError::BadDriveId(s.chars().take(64).collect()))
    }
}

impl TryFrom<String> for DriveId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<DriveId> for String {
    fn from(id: DriveId) -> String {
        id.to_string()
    }
}

impl fmt::Display for DriveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

/// What a drive is to its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Media {
    #[default]
    Disk,
    Cdrom,
}

impl Media {
    pub fn as_str(self) -> &'static str {
        match self {
            Media::Disk => "disk",
            Media::Cdrom => "cdrom",
        }
    }
    pub fn parse(s: &str) -> Option<Media> {
        match s {
            "disk" => Some(Media::Disk),
            "cdrom" => Some(Media::Cdrom),
            _ => None,
        }
    }
}

/// The bus a drive is attached on (CloudSigma's `device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveDevice {
    #[default]
    Virtio,
    Ide,
}

impl DriveDevice {
    pub fn as_str(self) -> &'static str {
        match self {
            DriveDevice::Virtio => "virtio",
            DriveDevice::Ide => "ide",
        }
    }
    pub fn parse(s: &str) -> Option<DriveDevice> {
        match s {
            "virtio" => Some(DriveDevice::Virtio),
            "ide" => Some(DriveDevice::Ide),
            _ => None,
        }
    }
}

/// A drive attached to a server: the VM boots from `boot_order` 1 and attaches the rest in
/// order (drives without a boot order last, in the order given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveAttachment {
    pub drive: DriveId,
    pub boot_order: Option<u32>,
    /// CloudSigma's `dev_channel` (`controller:unit`, e.g. `0:0`).
    pub dev_channel: String,
    pub device: DriveDevice,
    /// Filled in by the coordinator from the drive: a `cdrom` attaches as a CD.
    pub media: Media,
}

/// `dev_channel` as CloudSigma writes it: `controller:unit`, each 0..=99.
pub fn check_dev_channel(s: &str) -> bool {
    s.split_once(':').is_some_and(|(c, u)| {
        [c, u]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Attachments in the order a VM gets them: by boot order, then those without one.
pub fn boot_sequence(drives: &[DriveAttachment]) -> Vec<&DriveAttachment> {
    let mut v: Vec<&DriveAttachment> = drives.iter().collect();
    v.sort_by_key(|d| d.boot_order.unwrap_or(u32::MAX));
    v
}

/// Where a new drive's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriveSource {
    /// Empty.
    Blank,
    /// A copy-on-write clone of an image of the agent's image directory (a library drive);
    /// `sha256`, when the operator declared it, is checked before the clone is made.
    Library {
        image: String,
        sha256: Option<String>,
    },
    /// A full copy of another drive on the same host.
    Clone { drive: DriveId },
}

/// One drive a host should hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredDrive {
    pub id: DriveId,
    /// Its size (bytes): made this size, and grown to it when smaller (never shrunk).
    pub size: u64,
    pub source: DriveSource,
}

/// Coordinator -> agent: every drive this host should hold, and the drives it should delete.
/// A drive in neither list is left alone (and reported): only an explicit delete removes data.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DriveOrders {
    pub drives: Vec<DesiredDrive>,
    pub delete: Vec<DriveId>,
}

/// Agent -> coordinator: the drives this host holds, and those it could not make.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DriveReport {
    pub drives: Vec<ObservedDrive>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedDrive {
    pub id: DriveId,
    /// Its virtual size (bytes); 0 when it failed.
    pub size: u64,
    pub state: ObservedDriveState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObservedDriveState {
    Ready,
    Failed { reason: String },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_and_library_ids_are_stable() {
        assert!("../x".parse::<DriveId>().is_err());
        assert!(
            "0f0e0d0c0b0a49888776655443322110"
                .parse::<DriveId>()
                .is_err()
        );
        let a = DriveId::for_library("debian-12.qcow2");
        assert_eq!(a, DriveId::for_library("debian-12.qcow2"));
        assert_ne!(a, DriveId::for_library("debian-13.qcow2"));
        assert_eq!(a.to_string().parse::<DriveId>().unwrap(), a);
        assert_eq!(a.to_string().as_bytes()[14], b'8');
    }

    #[test]
    fn dev_channels_and_boot_sequence() {
        assert!(check_dev_channel("0:0") && check_dev_channel("12:3"));
        for bad in ["", "0", "a:0", "0:", "100:0", "0:0:0"] {
            assert!(!check_dev_channel(bad), "{bad}");
        }
        let att = |n: u128, b: Option<u32>| DriveAttachment {
            drive: DriveId::from_u128(n),
            boot_order: b,
            dev_channel: "0:0".into(),
            device: DriveDevice::Virtio,
            media: Media::Disk,
        };
        let v = [att(1, None), att(2, Some(2)), att(3, Some(1))];
        let order: Vec<DriveId> = boot_sequence(&v).iter().map(|d| d.drive).collect();
        assert_eq!(
            order,
            vec![
                DriveId::from_u128(3),
                DriveId::from_u128(2),
                DriveId::from_u128(1)
            ]
        );
    }
}
