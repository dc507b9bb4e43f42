//! The OpenAPI document's `/drives/` and `/libdrives/` operations; their schemas are
//! `backfill_api::drives`' types, which `api/cloudsigma/drive_views.rs` builds.

use utoipa::openapi::path::HttpMethod;

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
        Some("DriveMove"),
        "202",
        Some("CreatedDrives"),
    ),
];
