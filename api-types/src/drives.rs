//! `/drives/` (an account's drives) and `/libdrives/` (the fleet's library).

use crate::common::{Owner, lists, objects};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A server a drive is attached to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct MountedOn {
    pub resource_uri: String,
    pub uuid: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DriveRuntime {
    /// Always false.
    pub is_snapshotable: bool,
    /// Always 0.
    pub snapshots_allocated_size: u64,
    /// Always `dssd`.
    pub storage_type: String,
}

/// A tenant's drive, in full (`GET /drives/{uuid}/`, `/drives/detail/`, a create's or an
/// action's `objects`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Drive {
    /// Always empty.
    pub affinities: Vec<String>,
    /// Always false: a drive is mounted on one server at a time.
    pub allow_multimount: bool,
    /// Always empty.
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub grantees: Vec<Value>,
    /// Always empty.
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub jobs: Vec<Value>,
    /// Always empty.
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub licenses: Vec<Value>,
    #[cfg_attr(feature = "utoipa", schema(pattern = "^(disk|cdrom)$"))]
    pub media: String,
    pub meta: BTreeMap<String, String>,
    /// The servers it is attached to.
    pub mounted_on: Vec<MountedOn>,
    pub name: String,
    pub owner: Owner,
    /// Always empty.
    pub permissions: Vec<String>,
    /// Always empty.
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub remote_snapshots: Vec<Value>,
    pub resource_uri: String,
    pub runtime: DriveRuntime,
    /// Bytes.
    pub size: u64,
    /// Always empty.
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub snapshots: Vec<Value>,
    /// `creating`, `unmounted`, `mounted`, `cloning_src`, `cloning_dst` or `failed`.
    pub status: String,
    /// Always `dssd`.
    pub storage_type: String,
    pub tags: Vec<String>,
    #[cfg_attr(feature = "utoipa", schema(format = "uuid"))]
    pub uuid: String,
    /// Why the drive failed (status `failed`), else null.
    pub error: Option<String>,
}

/// A drive in a list (`GET /drives/`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DriveSummary {
    #[cfg_attr(feature = "utoipa", schema(pattern = "^(disk|cdrom)$"))]
    pub media: String,
    pub name: String,
    pub owner: Owner,
    pub resource_uri: String,
    /// Bytes.
    pub size: u64,
    pub status: String,
    #[cfg_attr(feature = "utoipa", schema(format = "uuid"))]
    pub uuid: String,
}

/// A library drive: an image the fleet offers (`/libdrives/`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct LibraryDrive {
    /// Always false.
    pub allow_multimount: bool,
    /// Default `64`.
    pub arch: String,
    /// Always empty.
    pub category: Vec<String>,
    /// Always null.
    pub cloud_init_service: Option<String>,
    /// Always null.
    pub created_at: Option<String>,
    /// Always null.
    pub default_auth_method: Option<String>,
    /// Always null.
    pub default_pass: Option<String>,
    /// Always null.
    pub default_user: Option<String>,
    /// Always false.
    pub deprecated: bool,
    pub description: String,
    pub distribution: String,
    /// Always false (British spelling, as CloudSigma also answers).
    pub favourite: bool,
    /// Always false.
    pub favorite: bool,
    /// `preinst` (default) or `install` (a cdrom).
    pub image_type: String,
    /// Always empty.
    pub install_notes: String,
    /// Always empty.
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub licenses: Vec<Value>,
    /// `cdrom` for an install image, else `disk`.
    pub media: String,
    /// `image` (its file name on the hosts) and `format`.
    pub meta: BTreeMap<String, String>,
    /// Always empty.
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub mounted_on: Vec<Value>,
    pub name: String,
    /// Default `linux`.
    pub os: String,
    /// Always null.
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub owner: Option<Value>,
    /// Always false.
    pub paid: bool,
    pub resource_uri: String,
    /// Bytes.
    pub size: u64,
    /// `unmounted`, or `unavailable` while no connected host holds it.
    pub status: String,
    /// Always `dssd`.
    pub storage_type: String,
    /// Always empty.
    pub tags: Vec<String>,
    /// Always empty.
    pub url: String,
    #[cfg_attr(feature = "utoipa", schema(format = "uuid"))]
    pub uuid: String,
    pub version: String,
}

lists! {
    /// `GET /drives/detail/`.
    DriveList: Drive;
    /// `GET /drives/`.
    DriveSummaryList: DriveSummary;
    /// `GET /libdrives/`.
    LibraryDriveList: LibraryDrive;
}

objects! {
    /// A create's or action's answer.
    CreatedDrives: Drive;
}

/// `POST /drives/`: 1 to 100 drives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DriveCreate {
    #[cfg_attr(feature = "utoipa", schema(min_items = 1, max_items = 100))]
    pub objects: Vec<DriveFields>,
}

/// A drive to create, or an edit's (or resize's) changes: present fields change. A `PUT` may
/// also carry the full object's read-only fields (ignored); any other field is refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DriveFields {
    /// Required on create; 1 to 200 characters.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 200))]
    pub name: String,
    /// Bytes; required on create. An edit or resize may grow an unmounted drive, never shrink
    /// it.
    #[cfg_attr(
        feature = "utoipa",
        schema(minimum = 1_048_576_u64, maximum = 17_592_186_044_416_u64)
    )]
    pub size: u64,
    /// `disk` or `cdrom`; required on create.
    #[cfg_attr(feature = "utoipa", schema(pattern = "^(disk|cdrom)$"))]
    pub media: String,
    /// As a server's meta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<BTreeMap<String, String>>,
    /// As a server's tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Only false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_multimount: Option<bool>,
}

/// `POST /operator/drives/{uuid}/move/`: the agent host the drive moves to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DriveMove {
    /// The target host's id: a connected VM host with room for the drive.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 63))]
    pub host: String,
}

/// A clone's optional body: only what is given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct CloneFields {
    /// The new drive's name (default: the source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    /// `disk` or `cdrom` (default: the source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(pattern = "^(disk|cdrom)$"))]
    pub media: Option<String>,
    /// Bytes, never below the source's (default: the source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(minimum = 1_048_576_u64, maximum = 17_592_186_044_416_u64)
    )]
    pub size: Option<u64>,
}
