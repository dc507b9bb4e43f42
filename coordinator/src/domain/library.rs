//! `[drives]`: the storage quota per account and the operator's declared library drives.
//!
//! Every disk image (qcow2 or raw) in a connected host's `[vm] images_dir` is offered as a
//! library drive; `[[drives.library]]` names, describes and pins the checksum of those the
//! operator declares. With `only_declared = true` only the declared ones are offered.

use serde::{Deserialize, Serialize};

/// One declared library image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibraryImage {
    /// Its file name in the hosts' image directories.
    pub image: String,
    /// What the API calls it (the file name when absent).
    #[serde(default)]
    pub name: Option<String>,
    /// `linux`, `windows`, `other`.
    #[serde(default = "default_os")]
    pub os: String,
    /// `64` or `32`, as CloudSigma writes it.
    #[serde(default = "default_arch")]
    pub arch: String,
    #[serde(default)]
    pub distribution: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// `preinst` (an installed system) or `install` (an installer CD).
    #[serde(default = "default_image_type")]
    pub image_type: String,
    /// Its SHA-256 (hex): a host checks it before it clones the image, and a clone of an
    /// image that differs fails.
    #[serde(default)]
    pub sha256: Option<String>,
}

fn default_os() -> String {
    "linux".into()
}
fn default_arch() -> String {
    "64".into()
}
fn default_image_type() -> String {
    "preinst".into()
}

fn default_storage_price() -> String {
    "0.0001".into()
}

/// `[drives]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivesConfig {
    /// The bytes of drives an account may hold when its own storage quota is unset (unlimited
    /// when absent too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_quota_bytes: Option<u64>,
    /// Offer only the declared library images (else every disk image of the hosts).
    #[serde(default)]
    pub only_declared: bool,
    /// The price of storage per GiB-hour (a decimal string, like `[billing]` prices): drives
    /// are metered as usage rows of class `drive`.
    #[serde(default = "default_storage_price")]
    pub storage_gib_hour: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub library: Vec<LibraryImage>,
}

impl Default for DrivesConfig {
    fn default() -> DrivesConfig {
        DrivesConfig {
            storage_quota_bytes: None,
            only_declared: false,
            storage_gib_hour: default_storage_price(),
            library: Vec::new(),
        }
    }
}

impl DrivesConfig {
    /// The storage price in micro-currency per GiB-hour (0 if it does not parse; `validate`
    /// refuses such a configuration).
    pub fn storage_price(&self) -> i64 {
        crate::domain::billing::parse_money(&self.storage_gib_hour).unwrap_or(0)
    }

    /// What is wrong with it: `(key, reason)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        crate::domain::billing::parse_money(&self.storage_gib_hour)
            .map_err(|e| ("drives.storage_gib_hour".to_owned(), e))?;
        for (i, l) in self.library.iter().enumerate() {
            backfill_shared::workload::check_file_name(&l.image)
                .map_err(|e| (format!("drives.library[{i}].image"), e))?;
            if let Some(h) = &l.sha256
                && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err((
                    format!("drives.library[{i}].sha256"),
                    "a SHA-256 is 64 hex digits".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn declared(&self, image: &str) -> Option<&LibraryImage> {
        self.library.iter().find(|l| l.image == image)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn declared_images_are_checked() {
        let ok: DrivesConfig = toml::from_str(
            "storage_quota_bytes = 1073741824\n[[library]]\nimage = \"debian-12.qcow2\"\nname = \"Debian 12\"\n",
        )
        .unwrap();
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.declared("debian-12.qcow2").unwrap().os, "linux");
        let bad: DrivesConfig =
            toml::from_str("[[library]]\nimage = \"../x\"\nsha256 = \"ab\"\n").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "drives.library[0].image");
        assert!(toml::from_str::<DrivesConfig>("nope = 1").is_err());
    }
}
