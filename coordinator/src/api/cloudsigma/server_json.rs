//! Servers in CloudSigma's JSON shape, and validation of create requests.

use crate::api::ApiError;
use crate::api::text::{check_name, check_text};
use crate::domain::flavors::{Flavor, Flavors};
use crate::domain::server::ServerRecord;
use crate::state::coordinator::NewServer;
use backfill_shared::Workload;
use backfill_shared::drive::{DriveAttachment, DriveDevice, DriveId};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub const MAX_OBJECTS: usize = 100;
const MAX_NAME: usize = 200;
const MIN_MEM: u64 = 64 << 20;
const MAX_MEM: u64 = 16 << 40;
const MAX_CPU: u64 = 10_000_000;
const MAX_SMP: u64 = 1024;
const MAX_META: usize = 100;
const MAX_META_KEY: usize = 64;
const MAX_META_VALUE: usize = 4096;
const MAX_TAGS: usize = 100;

/// The fields a create request may carry.
pub(crate) const FIELDS: &[&str] = &[
    "name",
    "cpu",
    "mem",
    "smp",
    "meta",
    "tags",
    "vnc_password",
    "workload",
    "priority",
    "flavor",
    "device_profile",
    "drives",
];

pub fn location(collection: &str, s: &ServerRecord) -> String {
    format!("/api/2.0/{collection}/{}/", s.uuid)
}

/// Parses `{"objects": [...]}` into validated create requests.
pub fn parse_create(v: &Value, flavors: &Flavors) -> Result<Vec<NewServer>, ApiError> {
    let Some(objects) = v.as_object().and_then(|o| o.get("objects")) else {
        return Err(ApiError::validation(
            "objects",
            "expected {\"objects\": [ {...}, ... ]}",
        ));
    };
    let Some(list) = objects.as_array() else {
        return Err(ApiError::validation("objects", "objects must be a list"));
    };
    if list.is_empty() || list.len() > MAX_OBJECTS {
        return Err(ApiError::validation(
            "objects",
            format!("objects must hold 1 to {MAX_OBJECTS} servers"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, o)| parse_one(i, o, flavors))
        .collect()
}

/// Read-only fields of the full object: a client may send them back in a `PUT` (GET, change,
/// PUT); they are ignored. Anything else unknown is refused.
const READ_ONLY: &[&str] = &[
    "class",
    "context",
    "cpu_model",
    "cpu_type",
    "cpus_instead_of_cores",
    "enable_numa",
    "gpus",
    "grantees",
    "hv_relaxed",
    "hv_tsc",
    "hypervisor",
    "is_grey",
    "jobs",
    "nics",
    "owner",
    "pending_reason",
    "permissions",
    "pubkeys",
    "requirements",
    "resource_uri",
    "runtime",
    "status",
    "stop_reason",
    "uuid",
];

/// A `PUT` body applied over `current`: the fields it names change, validated as on create.
/// Returns the whole edited server.
pub fn parse_edit(
    current: &ServerRecord,
    v: &Value,
    flavors: &Flavors,
) -> Result<NewServer, ApiError> {
    let Some(o) = v.as_object() else {
        return Err(ApiError::validation(
            "body",
            "the body must be a JSON object",
        ));
    };
    if let Some(uuid) = o.get("uuid").and_then(Value::as_str)
        && uuid != current.uuid.to_string()
    {
        return Err(ApiError::validation("uuid", "the uuid cannot change"));
    }
    let mut merged = json!({
        "name": current.name,
        "cpu": current.cpu,
        "mem": current.mem,
        "smp": current.smp,
        "meta": current.meta,
        "tags": current.tags,
        "vnc_password": current.vnc_password,
        "workload": current.workload,
        "priority": current.priority,
        "flavor": current.flavor,
        "device_profile": current.gpu_request.as_ref().map(|g| g.device_profile.clone()),
        "drives": drives_json(&current.drives),
    });
    for (k, val) in o {
        if READ_ONLY.contains(&k.as_str()) {
            continue;
        }
        if k == "device_profile" {
            let now = current
                .gpu_request
                .as_ref()
                .map(|g| g.device_profile.as_str());
            if val.as_str() != now && !(val.is_null() && now.is_none()) {
                return Err(ApiError::validation(
                    "device_profile",
                    "the device profile is chosen at create and cannot change; create a new server",
                ));
            }
            continue;
        }
        // A GET shows the flavor a server is scheduled as; sent back unchanged it changes
        // nothing.
        if k == "flavor" && val.as_str() == Some(current.instance_type.as_str()) {
            continue;
        }
        if !FIELDS.contains(&k.as_str()) {
            return Err(ApiError::validation(
                k.clone(),
                format!(
                    "unknown field {k:?}; editable fields: {}",
                    FIELDS.join(", ")
                ),
            ));
        }
        merged[k] = val.clone();
    }
    parse_one(0, &merged, flavors).map_err(|mut e| {
        e.point = e
            .point
            .map(|p| p.trim_start_matches("objects[0].").to_owned());
        e
    })
}

/// The flavor a create names, if any: it must be configured.
fn parse_flavor<'f>(v: Option<&Value>, flavors: &'f Flavors) -> Result<Option<&'f Flavor>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => match flavors.get(name) {
            Some(f) => Ok(Some(f)),
            None if flavors.all().is_empty() => Err(format!(
                "unknown flavor {name:?}: no flavors are configured"
            )),
            None => Err(format!(
                "unknown flavor {name:?}; configured: {}",
                flavors.names().join(", ")
            )),
        },
        Some(_) => Err("flavor must be a flavor's name".into()),
    }
}

fn parse_one(i: usize, v: &Value, flavors: &Flavors) -> Result<NewServer, ApiError> {
    let at = |f: &str| format!("objects[{i}].{f}");
    let Some(o) = v.as_object() else {
        return Err(ApiError::validation(
            format!("objects[{i}]"),
            "must be an object",
        ));
    };
    if let Some(unknown) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::validation(
            at(unknown),
            format!(
                "unknown field {unknown:?}; accepted fields: {}",
                FIELDS.join(", ")
            ),
        ));
    }
    let name = match o.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_NAME => {
            s.clone()
        }
        Some(_) => {
            return Err(ApiError::validation(
                at("name"),
                format!("name must be a non-empty string of at most {MAX_NAME} characters"),
            ));
        }
        None => return Err(ApiError::validation(at("name"), "This field is required")),
    };
    check_name(&name).map_err(|e| ApiError::validation(at("name"), format!("name {e}")))?;
    let flavor = parse_flavor(o.get("flavor"), flavors)
        .map_err(|m| ApiError::validation(at("flavor"), m))?;
    // A flavor gives the size; sizes named besides it must fit in it.
    let (cpu0, mem0, smp0) = match flavor {
        Some(f) => (
            Some(f.cpu.unwrap_or(u64::from(f.vcpus) * 1000)),
            Some(f.ram),
            Some(u64::from(f.vcpus)),
        ),
        None => (None, None, Some(1)),
    };
    let cpu = int(o, "cpu", 1, MAX_CPU, cpu0).map_err(|m| ApiError::validation(at("cpu"), m))?;
    let mem =
        int(o, "mem", MIN_MEM, MAX_MEM, mem0).map_err(|m| ApiError::validation(at("mem"), m))?;
    let smp = int(o, "smp", 1, MAX_SMP, smp0).map_err(|m| ApiError::validation(at("smp"), m))?;
    if let Some(f) = flavor
        && !f.fits(cpu, u32::try_from(smp).unwrap_or(u32::MAX), mem)
    {
        return Err(ApiError::validation(
            at("flavor"),
            format!(
                "cpu {cpu}, smp {smp} and mem {mem} do not fit in flavor {:?} ({} vCPUs, {} bytes)",
                f.name, f.vcpus, f.ram
            ),
        ));
    }
    let meta = parse_meta(o.get("meta")).map_err(|m| ApiError::validation(at("meta"), m))?;
    let tags = parse_tags(o.get("tags")).map_err(|m| ApiError::validation(at("tags"), m))?;
    let vnc_password = match o.get("vnc_password") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 64 => {
            check_text(s).map_err(|e| {
                ApiError::validation(at("vnc_password"), format!("vnc_password {e}"))
            })?;
            Some(s.clone())
        }
        Some(_) => {
            return Err(ApiError::validation(
                at("vnc_password"),
                "vnc_password must be a string of at most 64 characters",
            ));
        }
    };
    let priority = match o.get("priority") {
        None => 0,
        Some(v) => v
            .as_i64()
            .filter(|p| (-1000..=1000).contains(p))
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| {
                ApiError::validation(
                    at("priority"),
                    "priority must be an integer from -1000 to 1000",
                )
            })?,
    };
    let workload =
        parse_workload(o.get("workload")).map_err(|m| ApiError::validation(at("workload"), m))?;
    let device_profile = match o.get("device_profile") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::validation(
                at("device_profile"),
                "device_profile must be a device profile's name",
            ));
        }
    };
    let drives =
        parse_drives(o.get("drives")).map_err(|m| ApiError::validation(at("drives"), m))?;
    Ok(NewServer {
        drives,
        name,
        cpu,
        smp: u32::try_from(smp).unwrap_or(1),
        mem,
        meta,
        tags,
        vnc_password,
        workload,
        priority,
        flavor: flavor.map(|f| f.name.clone()),
        preemptible: flavor.is_some_and(Flavor::is_preemptible),
        device_profile,
        gpu_request: None,
    })
}

fn int(
    o: &Map<String, Value>,
    field: &str,
    min: u64,
    max: u64,
    default: Option<u64>,
) -> Result<u64, String> {
    match (o.get(field), default) {
        (None, Some(d)) => Ok(d),
        (None, None) => Err("This field is required".into()),
        (Some(v), _) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!("{field} must be an integer from {min} to {max}")),
        },
    }
}

pub(in crate::api) fn parse_meta(v: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    let Some(o) = v.as_object() else {
        return Err("meta must be an object of strings".into());
    };
    if o.len() > MAX_META {
        return Err(format!("meta holds at most {MAX_META} keys"));
    }
    o.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) if !k.is_empty() && k.len() <= MAX_META_KEY && s.len() <= MAX_META_VALUE => {
                check_name(k).map_err(|e| format!("meta key {k:?} {e}"))?;
                check_text(s).map_err(|e| format!("meta {k:?}: the value {e}"))?;
                Ok((k.clone(), s.to_owned()))
            }
            _ => Err(format!(
                "meta {k:?}: keys are 1 to {MAX_META_KEY} bytes, values strings of at most {MAX_META_VALUE} bytes"
            )),
        })
        .collect()
}

pub(in crate::api) fn parse_tags(v: Option<&Value>) -> Result<Vec<String>, String> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let list = v.as_array().ok_or("tags must be a list of strings")?;
    if list.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags"));
    }
    list.iter()
        .map(|t| match t.as_str() {
            Some(s) if !s.is_empty() && s.len() <= MAX_META_KEY => check_name(s)
                .map(|()| s.to_owned())
                .map_err(|e| format!("tag {s:?} {e}")),
            _ => Err(format!("tags are strings of 1 to {MAX_META_KEY} bytes")),
        })
        .collect()
}

/// A server's drives as CloudSigma shows them: `drive` as `{resource_uri, uuid}`.
pub fn drives_json(drives: &[DriveAttachment]) -> Value {
    Value::Array(
        drives
            .iter()
            .map(|a| {
                json!({
                    "boot_order": a.boot_order,
                    "dev_channel": a.dev_channel,
                    "device": a.device.as_str(),
                    "drive": {
                        "resource_uri": format!("/api/2.0/drives/{}/", a.drive),
                        "uuid": a.drive.to_string(),
                    },
                    "runtime": null,
                })
            })
            .collect(),
    )
}

/// `drives`: `[{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": "<uuid>"}]`
/// (`drive` may be the `{uuid, resource_uri}` a GET shows). Whether the drives may be attached
/// is the coordinator's to check.
fn parse_drives(v: Option<&Value>) -> Result<Vec<DriveAttachment>, String> {
    let list =
        match v {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(l)) => l,
            Some(_) => return Err(
                "drives must be a list of {\"boot_order\", \"dev_channel\", \"device\", \"drive\"}"
                    .into(),
            ),
        };
    if list.len() > backfill_shared::drive::MAX_ATTACHED {
        return Err(format!(
            "a server has at most {} drives",
            backfill_shared::drive::MAX_ATTACHED
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            let o = d
                .as_object()
                .ok_or_else(|| format!("drives[{i}] must be an object"))?;
            if let Some(k) = o.keys().find(|k| {
                !["boot_order", "dev_channel", "device", "drive", "runtime"].contains(&k.as_str())
            }) {
                return Err(format!(
                    "drives[{i}]: unknown field {k:?}; fields: boot_order, dev_channel, device, drive"
                ));
            }
            let uuid = match o.get("drive") {
                Some(Value::String(u)) => u.as_str(),
                Some(Value::Object(d)) => d.get("uuid").and_then(Value::as_str).unwrap_or(""),
                _ => "",
            };
            let drive = uuid
                .parse::<DriveId>()
                .map_err(|e| format!("drives[{i}].drive: {e}"))?;
            let boot_order = match o.get("boot_order") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .filter(|b| (1..=100).contains(b))
                        .and_then(|b| u32::try_from(b).ok())
                        .ok_or_else(|| format!("drives[{i}].boot_order must be 1 to 100 or null"))?,
                ),
            };
            let dev_channel = match o.get("dev_channel") {
                None | Some(Value::Null) => format!("0:{i}"),
                Some(Value::String(c)) if backfill_shared::drive::check_dev_channel(c) => c.clone(),
                Some(_) => {
                    return Err(format!(
                        "drives[{i}].dev_channel must be \"controller:unit\", e.g. \"0:0\""
                    ));
                }
            };
            let device = match o.get("device") {
                None | Some(Value::Null) => DriveDevice::Virtio,
                Some(v) => v
                    .as_str()
                    .and_then(DriveDevice::parse)
                    .ok_or_else(|| format!("drives[{i}].device must be \"virtio\" or \"ide\""))?,
            };
            Ok(DriveAttachment {
                drive,
                boot_order,
                dev_channel,
                device,
                media: backfill_shared::Media::Disk,
            })
        })
        .collect()
}

fn parse_workload(v: Option<&Value>) -> Result<Option<Workload>, String> {
    let v = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let w: Workload = serde_json::from_value(v.clone()).map_err(|e| {
        format!(
            "workload must be {{\"command\": [...]}}, {{\"vm\": {{\"image\": ...}}}} or {{\"container\": {{\"image\": ...}}}}, with optional \"env\" and \"network\": {e}"
        )
    })?;
    if w.vm.as_ref().is_some_and(|vm| !vm.drives.is_empty()) {
        return Err(
            "workload.vm.drives is not taken: attach drives through the server's \"drives\"".into(),
        );
    }
    w.validate().map_err(|e| e.0)?;
    Ok(Some(w))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The body as the handler gets it: through the strict JSON parser.
    fn parse_create(body: &[u8], flavors: &Flavors) -> Result<Vec<NewServer>, ApiError> {
        super::parse_create(&crate::api::json_body::parse(body)?, flavors)
    }

    fn err(body: &str) -> ApiError {
        parse_create(body.as_bytes(), &Flavors::default()).unwrap_err()
    }

    fn parse_create_plain(body: &[u8]) -> Result<Vec<NewServer>, ApiError> {
        parse_create(body, &Flavors::default())
    }

    fn flavors() -> Flavors {
        let f = |name: &str, vcpus, ram| Flavor {
            name: name.into(),
            vcpus,
            cpu: None,
            ram,
            scratch: 0,
            gpus: 0,
            price: 0.1,
            preemptible: None,
        };
        Flavors::new(vec![
            f("c2m4", 2, 4 << 30),
            f("c2m4-preemptible", 2, 4 << 30),
        ])
        .unwrap()
    }

    #[test]
    fn a_flavor_gives_the_size_and_may_make_a_spot_server() {
        let fl = flavors();
        let v = parse_create(br#"{"objects":[{"name":"a","flavor":"c2m4"}]}"#, &fl).unwrap();
        assert_eq!((v[0].cpu, v[0].smp, v[0].mem), (2000, 2, 4 << 30));
        assert_eq!(v[0].flavor.as_deref(), Some("c2m4"));
        assert!(!v[0].preemptible);
        let v = parse_create(
            br#"{"objects":[{"name":"a","flavor":"c2m4-preemptible","mem":1073741824}]}"#,
            &fl,
        )
        .unwrap();
        assert_eq!(v[0].mem, 1 << 30);
        assert!(v[0].preemptible);
        let too_big = parse_create(
            br#"{"objects":[{"name":"a","flavor":"c2m4","smp":3}]}"#,
            &fl,
        )
        .unwrap_err();
        assert_eq!(too_big.point.as_deref(), Some("objects[0].flavor"));
        let unknown =
            parse_create(br#"{"objects":[{"name":"a","flavor":"zzz"}]}"#, &fl).unwrap_err();
        assert!(
            unknown
                .message
                .contains("configured: c2m4, c2m4-preemptible")
        );
        let none = err(r#"{"objects":[{"name":"a","flavor":"zzz"}]}"#);
        assert!(none.message.contains("no flavors are configured"));
    }

    #[test]
    fn minimal_create_gets_defaults() {
        let v = parse_create_plain(
            br#"{"objects":[{"cpu":1000,"mem":536870912,"name":"a","vnc_password":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].cpu, v[0].smp, v[0].mem), (1000, 1, 536_870_912));
    }

    #[test]
    fn bad_inputs_name_the_field() {
        assert_eq!(err("{").point.as_deref(), Some("body"));
        assert_eq!(err(r#"{"objects":[]}"#).point.as_deref(), Some("objects"));
        assert_eq!(
            err(r#"{"objects":[{"mem":536870912,"name":"a"}]}"#)
                .point
                .as_deref(),
            Some("objects[0].cpu")
        );
        assert_eq!(
            err(r#"{"objects":[{"cpu":-1,"mem":536870912,"name":"a"}]}"#)
                .point
                .as_deref(),
            Some("objects[0].cpu")
        );
        assert_eq!(
            err(r#"{"objects":[{"cpu":1,"mem":536870912,"name":"a","drives":[{"drive":"x"}]}]}"#)
                .point
                .as_deref(),
            Some("objects[0].drives")
        );
        assert_eq!(
            err(r#"{"objects":[{"cpu":1,"mem":536870912,"name":"a","priority":5000}]}"#)
                .point
                .as_deref(),
            Some("objects[0].priority")
        );
        assert_eq!(
            err(r#"{"objects":[{"cpu":1,"mem":536870912,"name":"a","workload":{"command":[]}}]}"#)
                .point
                .as_deref(),
            Some("objects[0].workload")
        );
    }
}
