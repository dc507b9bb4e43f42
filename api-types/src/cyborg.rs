//! OpenStack Cyborg's accelerator API (`/accelerator/v2/`): version documents, device profiles
//! and accelerator requests (ARQs). Fields are in the order the coordinator writes them (by
//! name, as a JSON object's keys sort), so an answer's bytes do not depend on these types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `{"href", "rel": "self"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Link {
    pub href: String,
    pub rel: String,
}

/// A version (`GET /accelerator/v2/`, and in the root document).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ApiVersion {
    /// `v2.0` (`/v2/`) or `v2` (the root document).
    pub id: String,
    pub links: Vec<Link>,
    /// `2.x`.
    pub max_version: String,
    pub min_version: String,
    /// `CURRENT`.
    pub status: String,
}

/// `GET /accelerator/`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct RootDocument {
    pub default_version: ApiVersion,
    pub description: String,
    pub name: String,
    pub versions: Vec<ApiVersion>,
}

/// The wsme fault inside an error's `error_message` (a JSON string).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Fault {
    /// Always null.
    pub debuginfo: Option<String>,
    /// `Client` (4xx) or `Server` (5xx).
    pub faultcode: String,
    pub faultstring: String,
}

/// Cyborg's error body: `error_message` is a `Fault` written as a JSON string. 423 answers
/// have no body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct CyborgErrorBody {
    pub error_message: String,
}

impl CyborgErrorBody {
    /// The fault `error_message` holds, if it holds one.
    pub fn fault(&self) -> Option<Fault> {
        serde_json::from_str(&self.error_message).ok()
    }
}

/// A device profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DeviceProfile {
    /// `YYYY-MM-DD HH:MM:SS+00:00`.
    pub created_at: String,
    pub description: String,
    /// Each group: `resources:GPU` = count, `trait:...` = `required`, ...
    pub groups: Vec<BTreeMap<String, String>>,
    pub links: Vec<Link>,
    pub name: String,
    /// As `created_at`; null until it changes.
    pub updated_at: Option<String>,
    pub uuid: String,
}

/// `GET device_profiles`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DeviceProfileList {
    pub device_profiles: Vec<DeviceProfile>,
}

/// `GET device_profiles/{uuid or name}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DeviceProfileOne {
    pub device_profile: DeviceProfile,
}

/// A device profile to create: `POST device_profiles` takes a list holding exactly one.
/// `uuid` is accepted and ignored (the coordinator names it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceProfileCreate {
    /// `^[a-zA-Z0-9-_]+$`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub groups: Vec<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// An accelerator request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Arq {
    /// Once bound: `bus`, `device`, `domain`, `function` (PCI) or the device's details.
    pub attach_handle_info: BTreeMap<String, String>,
    /// `PCI` (or `MDEV`, a MIG slice) once bound, empty before.
    pub attach_handle_type: String,
    pub attach_handle_uuid: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub device_profile_group_id: u32,
    pub device_profile_name: String,
    pub device_rp_uuid: Option<String>,
    pub hostname: Option<String>,
    pub instance_uuid: Option<String>,
    pub links: Vec<Link>,
    pub project_id: Option<String>,
    /// `Initial`, `BindStarted`, `Bound`, `Unbound`, `BindFailed`, `UnbindFailed` or `Deleting`.
    pub state: String,
    /// RFC 3339; null until it changes.
    pub updated_at: Option<String>,
    pub uuid: String,
}

/// `GET accelerator_requests`, and what `POST accelerator_requests` creates (201).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ArqList {
    pub arqs: Vec<Arq>,
}

/// `POST accelerator_requests`: one ARQ per device group of the profile (account
/// certificates).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ArqCreate {
    pub device_profile_name: String,
}

/// One JSON-patch operation of a bind (`add` of `/hostname`, `/device_rp_uuid`,
/// `/instance_uuid` and, from 2.1, `/project_id`) or an unbind (`remove`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct PatchOp {
    /// `add` or `remove`.
    pub op: String,
    pub path: String,
    /// For `add`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl PatchOp {
    pub fn add(path: &str, value: &str) -> PatchOp {
        PatchOp {
            op: "add".into(),
            path: path.into(),
            value: Some(value.into()),
        }
    }

    pub fn remove(path: &str) -> PatchOp {
        PatchOp {
            op: "remove".into(),
            path: path.into(),
            value: None,
        }
    }
}

/// `PATCH accelerator_requests` (operators): ARQ uuid to its patch, all binds or unbinds.
pub type ArqPatches = BTreeMap<String, Vec<PatchOp>>;
