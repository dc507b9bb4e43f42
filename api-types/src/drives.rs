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
    pub is_snapshotable: bool,
    pub snapshots_allocated_size: u64,
    pub storage_type: String,
}

/// A tenant's drive, in full (`GET /drives/{uuid}/`, `/drives/detail/`, a create's or an
/// action's `objects`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Drive {
    pub affinities: Vec<String>,
    pub allow_multimount: bool,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub grantees: Vec<Value>,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub jobs: Vec<Value>,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub licenses: Vec<Value>,
    /// `disk` or `cdrom`.
    pub media: String,
    pub meta: BTreeMap<String, String>,
    /// The servers it is attached to.
    pub mounted_on: Vec<MountedOn>,
    pub name: String,
    pub owner: Owner,
    pub permissions: Vec<String>,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub remote_snapshots: Vec<Value>,
    pub resource_uri: String,
    pub runtime: DriveRuntime,
    /// Bytes.
    pub size: u64,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub snapshots: Vec<Value>,
    /// `creating`, `unmounted`, `mounted`, `cloning_src`, `cloning_dst` or `failed`.
    pub status: String,
    pub storage_type: String,
    pub tags: Vec<String>,
    pub uuid: String,
    /// Why the drive failed (status `failed`), else null.
    pub error: Option<String>,
}

/// A drive in a list (`GET /drives/`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DriveSummary {
    pub media: String,
    pub name: String,
    pub owner: Owner,
    pub resource_uri: String,
    /// Bytes.
    pub size: u64,
    pub status: String,
    pub uuid: String,
}

/// A library drive: an image the fleet offers (`/libdrives/`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct LibraryDrive {
    pub allow_multimount: bool,
    pub arch: String,
    pub category: Vec<String>,
    pub cloud_init_service: Option<String>,
    pub created_at: Option<String>,
    pub default_auth_method: Option<String>,
    pub default_pass: Option<String>,
    pub default_user: Option<String>,
    pub deprecated: bool,
    pub description: String,
    pub distribution: String,
    pub favourite: bool,
    pub favorite: bool,
    /// `preinst` (default) or `install` (a cdrom).
    pub image_type: String,
    pub install_notes: String,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub licenses: Vec<Value>,
    pub media: String,
    /// `image` (its file name on the hosts) and `format`.
    pub meta: BTreeMap<String, String>,
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<Object>))]
    pub mounted_on: Vec<Value>,
    pub name: String,
    pub os: String,
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub owner: Option<Value>,
    pub paid: bool,
    pub resource_uri: String,
    /// Bytes.
    pub size: u64,
    /// `unmounted`, or `unavailable` while no connected host holds it.
    pub status: String,
    pub storage_type: String,
    pub tags: Vec<String>,
    pub url: String,
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
    /// `POST /drives/`.
    DriveCreate: DriveFields;
}

/// A drive to create, or a resize's (edit's) changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DriveFields {
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// `disk` or `cdrom`.
    pub media: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_multimount: Option<bool>,
}

/// `POST /operator/drives/{uuid}/move/`: the agent host the drive moves to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DriveMove {
    pub host: String,
}

/// A clone's optional body: only what is given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct CloneFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}
