//! Drives and library drives as the API answers them: `backfill-api`'s types, built from the
//! coordinator's records (CloudSigma's fields backfill has no use for are empty, false or
//! null).

use crate::api::AppState;
use crate::api::cloudsigma::views::owner;
use crate::api::cloudsigma::views::to_json;
use crate::domain::account::Account;
use crate::ops::drives::{DriveView, LibDrive};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use backfill_api::drives::{
    CreatedDrives, Drive, DriveRuntime, DriveSummary, LibraryDrive, MountedOn,
};
use std::collections::BTreeMap;

fn uri(id: impl std::fmt::Display) -> String {
    format!("/api/2.0/drives/{id}/")
}

/// The full drive object.
pub fn drive(account: &Account, d: &DriveView) -> Drive {
    let r = &d.record;
    Drive {
        affinities: Vec::new(),
        allow_multimount: false,
        grantees: Vec::new(),
        jobs: Vec::new(),
        licenses: Vec::new(),
        media: r.media.as_str().to_owned(),
        meta: r.meta.clone(),
        mounted_on: d
            .mounted_on
            .iter()
            .map(|s| MountedOn {
                resource_uri: format!("/api/2.0/servers/{s}/"),
                uuid: s.to_string(),
            })
            .collect(),
        name: r.name.clone(),
        owner: owner(account),
        permissions: Vec::new(),
        remote_snapshots: Vec::new(),
        resource_uri: uri(r.uuid),
        runtime: DriveRuntime {
            is_snapshotable: false,
            snapshots_allocated_size: 0,
            storage_type: "dssd".into(),
        },
        size: r.size,
        snapshots: Vec::new(),
        status: d.status.to_owned(),
        storage_type: "dssd".into(),
        tags: r.tags.clone(),
        uuid: r.uuid.to_string(),
        error: r.error.clone(),
    }
}

/// The answer to an action on a drive (202): the drive, in `objects`.
pub(in crate::api) fn accepted(account: &Account, d: &DriveView) -> Response {
    let body = to_json(&CreatedDrives {
        objects: vec![drive(account, d)],
    });
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// A drive in a list.
pub fn summary(account: &Account, d: &DriveView) -> DriveSummary {
    DriveSummary {
        media: d.record.media.as_str().to_owned(),
        name: d.record.name.clone(),
        owner: owner(account),
        resource_uri: uri(d.record.uuid),
        size: d.record.size,
        status: d.status.to_owned(),
        uuid: d.record.uuid.to_string(),
    }
}

/// A library drive: what the operator declared about its image (`[[drives.library]]`), else
/// defaults.
pub fn library(state: &AppState, l: &LibDrive) -> LibraryDrive {
    let decl = state.coordinator.drive_config.declared(&l.image);
    let s = |f: fn(&crate::domain::library::LibraryImage) -> &str, d: &str| {
        decl.map_or_else(|| d.to_owned(), |x| f(x).to_owned())
    };
    let install = decl.is_some_and(|d| d.image_type == "install");
    LibraryDrive {
        allow_multimount: false,
        arch: s(|d| &d.arch, "64"),
        category: Vec::new(),
        cloud_init_service: None,
        created_at: None,
        default_auth_method: None,
        default_pass: None,
        default_user: None,
        deprecated: false,
        description: s(|d| &d.description, ""),
        distribution: s(|d| &d.distribution, ""),
        favourite: false,
        favorite: false,
        image_type: s(|d| &d.image_type, "preinst"),
        install_notes: String::new(),
        licenses: Vec::new(),
        media: if install { "cdrom" } else { "disk" }.into(),
        meta: BTreeMap::from([
            ("image".to_owned(), l.image.clone()),
            ("format".to_owned(), l.format.clone()),
        ]),
        mounted_on: Vec::new(),
        name: decl
            .and_then(|d| d.name.clone())
            .unwrap_or_else(|| l.image.clone()),
        os: s(|d| &d.os, "linux"),
        owner: None,
        paid: false,
        resource_uri: format!("/api/2.0/libdrives/{}/", l.uuid),
        size: l.size,
        status: if l.hosts.is_empty() {
            "unavailable"
        } else {
            "unmounted"
        }
        .into(),
        storage_type: "dssd".into(),
        tags: Vec::new(),
        url: String::new(),
        uuid: l.uuid.to_string(),
        version: s(|d| &d.version, ""),
    }
}
