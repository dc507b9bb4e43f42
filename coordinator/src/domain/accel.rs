//! Accelerators as OpenStack Cyborg models them: device profiles (named lists of groups, each a
//! flat map of `resources:`, `trait:` and `accel:` keys) and accelerator requests (ARQs, one
//! per device asked for) with their seven states. This module is the pure part: validation,
//! the state machine, and what a profile means for the scheduler.

use crate::domain::gpu::{GpuKind, GpuMatch, trait_word};
use crate::domain::server::GpuRequest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A device profile or an ARQ change that breaks Cyborg's rules, saying which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAccel(pub String);

/// A device profile as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub uuid: String,
    pub name: String,
    pub description: String,
    pub groups: Vec<BTreeMap<String, String>>,
    pub created_at: i64,
    pub updated_at: Option<i64>,
}

/// Resource classes Cyborg knows; `CUSTOM_*` are accepted too.
const RESOURCE_CLASSES: &[&str] = &[
    "FPGA",
    "GPU",
    "VGPU",
    "PGPU",
    "CUSTOM_QAT",
    "CUSTOM_NIC",
    "CUSTOM_SSD",
];
const MAX_GROUPS: usize = 16;
const MAX_DEVICES: u32 = 64;

/// Validates a profile's name (`^[a-zA-Z0-9-_]+$`), description (at most 255 characters) and
/// groups as Cyborg does.
pub fn validate_profile(
    name: &str,
    description: &str,
    groups: &[BTreeMap<String, String>],
) -> Result<(), InvalidAccel> {
    let bad = |m: String| Err(InvalidAccel(m));
    if name.is_empty()
        || name.len() > 255
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return bad(format!(
            "device profile name {name:?} must match ^[a-zA-Z0-9-_]+$"
        ));
    }
    if description.chars().count() > 255 {
        return bad("description is longer than 255 characters".into());
    }
    if groups.is_empty() || groups.len() > MAX_GROUPS {
        return bad(format!("a device profile has 1 to {MAX_GROUPS} groups"));
    }
    for (i, g) in groups.iter().enumerate() {
        let mut devices = 0u32;
        for (k, v) in g {
            if let Some(rc) = k.strip_prefix("resources:") {
                if !RESOURCE_CLASSES.contains(&rc) && !rc.starts_with("CUSTOM_") {
                    return bad(format!("groups[{i}]: unknown resource class {rc:?}"));
                }
                let n: u32 = v.parse().map_err(|_| {
                    InvalidAccel(format!("groups[{i}]: {k} must be a count, not {v:?}"))
                })?;
                if n == 0 {
                    return bad(format!("groups[{i}]: {k} must be at least 1"));
                }
                devices = devices.saturating_add(n);
            } else if let Some(t) = k.strip_prefix("trait:") {
                if !t.starts_with("CUSTOM_") {
                    return bad(format!("groups[{i}]: trait {t:?} must start with CUSTOM_"));
                }
                if v != "required" && v != "forbidden" {
                    return bad(format!(
                        "groups[{i}]: {k} must be \"required\" or \"forbidden\""
                    ));
                }
            } else if !k.starts_with("accel:") {
                return bad(format!(
                    "groups[{i}]: key {k:?} must start with resources:, trait: or accel:"
                ));
            }
        }
        if devices == 0 {
            return bad(format!("groups[{i}] asks for no resources:<class>=<count>"));
        }
        if devices > MAX_DEVICES {
            return bad(format!(
                "groups[{i}] asks for more than {MAX_DEVICES} devices"
            ));
        }
    }
    Ok(())
}

/// Devices a group asks for (the sum of its `resources:` counts): the ARQs made per group.
pub fn group_devices(g: &BTreeMap<String, String>) -> u32 {
    g.iter()
        .filter(|(k, _)| k.starts_with("resources:"))
        .filter_map(|(_, v)| v.parse::<u32>().ok())
        .sum()
}

/// What one group asks each GPU device to be.
fn group_match(i: usize, g: &BTreeMap<String, String>) -> Result<GpuMatch, InvalidAccel> {
    let mut m = GpuMatch::default();
    let mut kinds = Vec::new();
    for (k, v) in g {
        if let Some(rc) = k.strip_prefix("resources:") {
            kinds.push(match rc {
                "GPU" => GpuKind::Any,
                "PGPU" => GpuKind::Whole,
                "VGPU" => GpuKind::Mig,
                other => {
                    return Err(InvalidAccel(format!(
                        "groups[{i}]: {other} is not a GPU resource class this cloud offers (GPU, PGPU, VGPU)"
                    )));
                }
            });
        } else if let Some(t) = k.strip_prefix("trait:") {
            match v.as_str() {
                "forbidden" => m.forbidden.push(t.to_owned()),
                _ => m.required.push(t.to_owned()),
            }
        } else if k == "accel:min_memory_mb" {
            m.min_memory_mb = v.parse().map_err(|_| {
                InvalidAccel(format!("groups[{i}]: accel:min_memory_mb must be a number"))
            })?;
        } else if k == "accel:mig_profile" {
            m.required.push(format!("CUSTOM_MIG_{}", trait_word(v)));
            kinds.push(GpuKind::Mig);
        }
    }
    kinds.dedup();
    match kinds.as_slice() {
        [k] => m.kind = *k,
        [] => {}
        _ => {
            return Err(InvalidAccel(format!(
                "groups[{i}] mixes GPU resource classes; use one per group"
            )));
        }
    }
    m.required.sort();
    m.forbidden.sort();
    Ok(m)
}

/// What a server created with `profile` asks of the scheduler: every group's devices, which
/// must all be alike (one set of requirements per server, for now).
pub fn gpu_request(profile: &DeviceProfile) -> Result<GpuRequest, InvalidAccel> {
    let mut matcher: Option<GpuMatch> = None;
    let mut count = 0u32;
    for (i, g) in profile.groups.iter().enumerate() {
        let m = group_match(i, g)?;
        if matcher.as_ref().is_some_and(|first| *first != m) {
            return Err(InvalidAccel(format!(
                "device profile {} has groups with different GPU requirements; a server takes one kind of GPU",
                profile.name
            )));
        }
        matcher = Some(m);
        count = count.saturating_add(group_devices(g));
    }
    Ok(GpuRequest {
        device_profile: profile.name.clone(),
        count,
        matcher: matcher.unwrap_or_default(),
    })
}

/// Cyborg's seven ARQ states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArqState {
    Initial,
    BindStarted,
    Bound,
    Unbound,
    BindFailed,
    UnbindFailed,
    Deleting,
}

impl ArqState {
    pub fn as_str(self) -> &'static str {
        match self {
            ArqState::Initial => "Initial",
            ArqState::BindStarted => "BindStarted",
            ArqState::Bound => "Bound",
            ArqState::Unbound => "Unbound",
            ArqState::BindFailed => "BindFailed",
            ArqState::UnbindFailed => "UnbindFailed",
            ArqState::Deleting => "Deleting",
        }
    }

    pub fn parse(s: &str) -> Option<ArqState> {
        Some(match s {
            "Initial" => ArqState::Initial,
            "BindStarted" => ArqState::BindStarted,
            "Bound" => ArqState::Bound,
            "Unbound" => ArqState::Unbound,
            "BindFailed" => ArqState::BindFailed,
            "UnbindFailed" => ArqState::UnbindFailed,
            "Deleting" => ArqState::Deleting,
            _ => return None,
        })
    }

    /// The transitions the reference allows (target <- sources).
    pub fn can_become(self, to: ArqState) -> bool {
        use ArqState::*;
        match to {
            Initial => false,
            BindStarted => matches!(self, Initial | Unbound),
            Bound => self == BindStarted,
            Unbound => matches!(self, Initial | BindStarted | Bound | BindFailed),
            BindFailed => matches!(self, BindStarted | Bound),
            UnbindFailed => false,
            Deleting => matches!(self, Initial | BindStarted | Bound | Unbound | BindFailed),
        }
    }

    /// Nova's "resolved": bound, or failed for good.
    pub fn resolved(self) -> bool {
        matches!(
            self,
            ArqState::Bound | ArqState::BindFailed | ArqState::Deleting
        )
    }
}

/// An accelerator request as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arq {
    pub uuid: String,
    pub owner: String,
    pub state: ArqState,
    pub device_profile_name: String,
    pub device_profile_group_id: u32,
    pub hostname: Option<String>,
    pub device_rp_uuid: Option<String>,
    pub instance_uuid: Option<String>,
    pub project_id: Option<String>,
    pub attach_handle_type: String,
    pub attach_handle_uuid: Option<String>,
    pub attach_handle_info: BTreeMap<String, String>,
    /// The server that made it, if it was made for one.
    pub server: Option<String>,
    pub created_at: i64,
    pub updated_at: Option<i64>,
}

impl Arq {
    /// A state change, refused when the reference does not allow it.
    pub fn to(&mut self, state: ArqState, now: i64) -> Result<(), InvalidAccel> {
        if !self.state.can_become(state) {
            return Err(InvalidAccel(format!(
                "accelerator request {} cannot go from {} to {}",
                self.uuid,
                self.state.as_str(),
                state.as_str()
            )));
        }
        self.state = state;
        self.updated_at = Some(now);
        Ok(())
    }
}

/// `attach_handle_info` of a PCI device from its bus id (`00000000:0c:00.0`).
pub fn pci_handle(bus_id: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let (domain, rest) = bus_id
        .rsplit_once(':')
        .map_or(("", bus_id), |(a, b)| (a, b));
    let (domain, bus) = domain.rsplit_once(':').unwrap_or(("0000", domain));
    let (device, function) = rest.split_once('.').unwrap_or((rest, "0"));
    let domain = domain.trim_start_matches('0');
    out.insert(
        "domain".into(),
        format!("{:0>4}", if domain.is_empty() { "0" } else { domain }),
    );
    out.insert("bus".into(), bus.to_lowercase());
    out.insert("device".into(), device.to_lowercase());
    out.insert("function".into(), function.to_owned());
    out
}

#[cfg(test)]
#[path = "accel_tests.rs"]
mod tests;
