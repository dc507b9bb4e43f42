//! The OpenAPI document's `/drives/` and `/libdrives/`: the shapes `api/cloudsigma/drives.rs`
//! answers and accepts (its `drive_json`, `summary_json`, `lib_json`, `parse_drive`,
//! `clone_opts`), and their operations.

use crate::api::cloudsigma::views::{ListMeta, Owner};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa::openapi::path::HttpMethod;

/// A server a drive is attached to.
#[derive(Debug, Serialize, ToSchema)]
pub struct MountedOn {
    pub resource_uri: String,
    pub uuid: String,
}

#[derive(Debug, Serialize, ToSchema)]
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
#[derive(Debug, Serialize, ToSchema)]
pub struct Drive {
    /// Always empty.
    #[schema(value_type = Vec<String>)]
    pub affinities: Vec<String>,
    /// Always false: a drive is mounted on one server at a time.
    pub allow_multimount: bool,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub grantees: Vec<serde_json::Value>,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub jobs: Vec<serde_json::Value>,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub licenses: Vec<serde_json::Value>,
    #[schema(pattern = "^(disk|cdrom)$")]
    pub media: String,
    pub meta: BTreeMap<String, String>,
    /// The servers it is attached to.
    pub mounted_on: Vec<MountedOn>,
    pub name: String,
    pub owner: Owner,
    /// Always empty.
    pub permissions: Vec<String>,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub remote_snapshots: Vec<serde_json::Value>,
    pub resource_uri: String,
    pub runtime: DriveRuntime,
    /// Bytes.
    pub size: u64,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub snapshots: Vec<serde_json::Value>,
    /// `creating`, `unmounted`, `mounted`, `cloning_src`, `cloning_dst` or `failed`.
    pub status: String,
    /// Always `dssd`.
    pub storage_type: String,
    pub tags: Vec<String>,
    #[schema(format = "uuid")]
    pub uuid: String,
    /// Why the drive failed (status `failed`), else null.
    pub error: Option<String>,
}

/// A drive in a list (`GET /drives/`).
#[derive(Debug, Serialize, ToSchema)]
pub struct DriveSummary {
    #[schema(pattern = "^(disk|cdrom)$")]
    pub media: String,
    pub name: String,
    pub owner: Owner,
    pub resource_uri: String,
    /// Bytes.
    pub size: u64,
    pub status: String,
    #[schema(format = "uuid")]
    pub uuid: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DriveSummaryList {
    pub meta: ListMeta,
    pub objects: Vec<DriveSummary>,
}

/// A page of drives in full; also a create's or action's answer (`objects` only).
#[derive(Debug, Serialize, ToSchema)]
pub struct DriveList {
    pub meta: ListMeta,
    pub objects: Vec<Drive>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedDrives {
    pub objects: Vec<Drive>,
}

/// A drive to create, or an edit's (or resize's) changes: present fields change. A `PUT` may
/// also carry the full object's read-only fields (ignored); any other field is refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct DriveFields {
    /// Required on create; 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Bytes; required on create. An edit or resize may grow an unmounted drive, never shrink
    /// it.
    #[schema(minimum = 1_048_576_u64, maximum = 17_592_186_044_416_u64)]
    pub size: u64,
    /// `disk` or `cdrom`; required on create.
    #[schema(pattern = "^(disk|cdrom)$")]
    pub media: String,
    /// As a server's meta.
    pub meta: Option<BTreeMap<String, String>>,
    /// As a server's tags.
    pub tags: Option<Vec<String>>,
    /// Only false.
    pub allow_multimount: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DriveCreate {
    #[schema(min_items = 1, max_items = 100)]
    pub objects: Vec<DriveFields>,
}

/// A clone's optional body.
#[derive(Debug, Serialize, ToSchema)]
pub struct CloneFields {
    /// The new drive's name (default: the source's).
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// `disk` or `cdrom` (default: the source's).
    #[schema(pattern = "^(disk|cdrom)$")]
    pub media: Option<String>,
    /// Bytes, never below the source's (default: the source's).
    #[schema(minimum = 1_048_576_u64, maximum = 17_592_186_044_416_u64)]
    pub size: Option<u64>,
}

/// The operator's move of a drive to another host.
#[derive(Debug, Serialize, ToSchema)]
pub struct DriveMoveFields {
    /// The target host's id: a connected VM host with room for the drive.
    #[schema(min_length = 1, max_length = 63)]
    pub host: String,
}

/// A library drive: an image the fleet offers (`/libdrives/`).
#[derive(Debug, Serialize, ToSchema)]
pub struct LibraryDrive {
    /// Always false.
    pub allow_multimount: bool,
    /// Default `64`.
    pub arch: String,
    /// Always empty.
    pub category: Vec<String>,
    /// Always null.
    #[schema(value_type = Option<String>)]
    pub cloud_init_service: Option<String>,
    /// Always null.
    #[schema(value_type = Option<String>)]
    pub created_at: Option<String>,
    /// Always null.
    #[schema(value_type = Option<String>)]
    pub default_auth_method: Option<String>,
    /// Always null.
    #[schema(value_type = Option<String>)]
    pub default_pass: Option<String>,
    /// Always null.
    #[schema(value_type = Option<String>)]
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
    #[schema(value_type = Vec<Object>)]
    pub licenses: Vec<serde_json::Value>,
    /// `cdrom` for an install image, else `disk`.
    pub media: String,
    /// `image` (its file name on the hosts) and `format`.
    pub meta: BTreeMap<String, String>,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub mounted_on: Vec<serde_json::Value>,
    pub name: String,
    /// Default `linux`.
    pub os: String,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub owner: Option<serde_json::Value>,
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
    #[schema(format = "uuid")]
    pub uuid: String,
    pub version: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LibraryDriveList {
    pub meta: ListMeta,
    pub objects: Vec<LibraryDrive>,
}

/// `(path, method, summary, request schema, success status, response schema)`; a request
/// named `Name?` is an optional body, `A|B` either schema.
pub(in crate::api) type Op = (
    &'static str,
    HttpMethod,
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
);

pub(in crate::api) const DRIVE_OPS: &[Op] = &[
    (
        "/drives/",
        HttpMethod::Get,
        "List the account's drives (summary); limit, offset, filters name, tag, uuid, status, media",
        None,
        "200",
        Some("DriveSummaryList"),
    ),
    (
        "/drives/",
        HttpMethod::Post,
        "Create blank drives (name, size, media), within the account's storage quota",
        Some("DriveCreate"),
        "201",
        Some("CreatedDrives"),
    ),
    (
        "/drives/detail/",
        HttpMethod::Get,
        "List the account's drives (full objects); as the list",
        None,
        "200",
        Some("DriveList"),
    ),
    (
        "/drives/{uuid}/",
        HttpMethod::Get,
        "Get one drive",
        None,
        "200",
        Some("Drive"),
    ),
    (
        "/drives/{uuid}/",
        HttpMethod::Put,
        "Edit name, meta, tags; size grows a drive that is not mounted, never shrinks it",
        Some("DriveFields"),
        "200",
        Some("Drive"),
    ),
    (
        "/drives/{uuid}/",
        HttpMethod::Delete,
        "Delete a drive that is not attached to a running server",
        None,
        "204",
        None,
    ),
    (
        "/drives/{uuid}/action/",
        HttpMethod::Post,
        "?do=clone (optional body: name, media, size; answers the new drive) or ?do=resize (body: the drive with its new size, grown only while unmounted); answers the drive in objects",
        Some("CloneFields|DriveFields?"),
        "202",
        Some("CreatedDrives"),
    ),
    (
        "/libdrives/",
        HttpMethod::Get,
        "List the library drives the fleet offers; limit, offset, filters name, os, uuid, version, arch, image_type",
        None,
        "200",
        Some("LibraryDriveList"),
    ),
    (
        "/libdrives/detail/",
        HttpMethod::Get,
        "List the library drives (as the list)",
        None,
        "200",
        Some("LibraryDriveList"),
    ),
    (
        "/libdrives/{uuid}/",
        HttpMethod::Get,
        "Get one library drive",
        None,
        "200",
        Some("LibraryDrive"),
    ),
    (
        "/libdrives/{uuid}/action/",
        HttpMethod::Post,
        "?do=clone (optional body: name, media, size): the account's own copy, in objects",
        Some("CloneFields?"),
        "202",
        Some("CreatedDrives"),
    ),
    (
        "/operator/drives/{uuid}/move/",
        HttpMethod::Post,
        "Operator (admin certificate): move a drive to another host; refused while a server that is not stopped uses it, when the target is not a connected VM host or lacks the space, or when the drive is already moving; the copy runs in the background (status cloning_src) and the drive's host changes once it is verified",
        Some("DriveMoveFields"),
        "202",
        Some("CreatedDrives"),
    ),
];
