//! `GET /{servers,bservers}/schema/`: CloudSigma's schema document, describing every field.

use crate::api::cloudsigma::listing::{DEFAULT_LIMIT, SERVER_FILTERS, SERVER_ORDERING};
use serde_json::{Map, Value, json};

fn field(kind: &str, required: bool, readonly: bool, default: Value, help: &str) -> Value {
    json!({
        "type": kind,
        "required": required,
        "readonly": readonly,
        "default": default,
        "help_text": help,
        "nullable": !required,
        "blank": !required,
        "unique": false,
    })
}

pub fn servers(collection: &str) -> Value {
    let mut fields = Map::new();
    let mut add = |name: &str, v: Value| {
        fields.insert(name.to_owned(), v);
    };
    add(
        "name",
        field(
            "string",
            true,
            false,
            Value::Null,
            "Human readable name of the server (at most 200 characters)",
        ),
    );
    add(
        "cpu",
        field(
            "integer",
            true,
            false,
            Value::Null,
            "Server's CPU clock in MHz",
        ),
    );
    add(
        "mem",
        field(
            "integer",
            true,
            false,
            Value::Null,
            "Server's memory in bytes (at least 64 MiB)",
        ),
    );
    add(
        "smp",
        field("integer", false, false, json!(1), "Number of virtual cores"),
    );
    add(
        "meta",
        field(
            "dict",
            false,
            false,
            json!({}),
            "User-defined string key/values; cloudinit-user-data is the guest's user data",
        ),
    );
    add(
        "tags",
        field("list", false, false, json!([]), "Tags (strings)"),
    );
    add(
        "vnc_password",
        field(
            "string",
            false,
            false,
            Value::Null,
            "VNC password (at most 64 characters)",
        ),
    );
    add(
        "priority",
        field(
            "integer",
            false,
            false,
            json!(0),
            "-1000 to 1000: higher starts first from the queue and is preempted last",
        ),
    );
    add(
        "flavor",
        field(
            "string",
            false,
            false,
            Value::Null,
            "A configured flavor: gives cpu, smp and mem; a preemptible flavor makes a spot server",
        ),
    );
    add(
        "device_profile",
        field(
            "string",
            false,
            false,
            Value::Null,
            "A device profile's name: the GPUs the server gets while placed",
        ),
    );
    add(
        "workload",
        field(
            "dict",
            false,
            false,
            Value::Null,
            "One of {\"command\": [prog, args...]}, {\"vm\": {\"image\": name}} or {\"vm\": {\"kernel\": name, \"initrd\": name, \"cmdline\": ...}}, {\"container\": {\"image\": reference}}; optional \"env\": {...} and \"network\": \"host\"|\"isolated\"; null runs the host's default command",
        ),
    );
    for (name, kind, help) in [
        ("uuid", "string", "Server UUID"),
        ("owner", "related", "Owner of the server"),
        ("resource_uri", "string", "Resource URI"),
        (
            "status",
            "string",
            "stopped, starting, running, stopping, paused or unavailable",
        ),
        (
            "runtime",
            "dict",
            "active_since, nics, perf_factor {cpu, mem}, host, netns, termination, cpu_cores (the quota in force: cpu MHz / the host's MHz per core, at most smp, times perf_factor.cpu) and mem_limit while running; null otherwise",
        ),
        (
            "pending_reason",
            "string",
            "Why a started server is still waiting for capacity",
        ),
        (
            "stop_reason",
            "string",
            "Why its last run ended (exit code, a start that failed, the OOM killer, a lost host), until it starts again",
        ),
        ("class", "string", "normal, backfill or spot"),
        (
            "is_grey",
            "boolean",
            "Whether the server fills free capacity (a backfill server)",
        ),
    ] {
        add(name, field(kind, false, true, Value::Null, help));
    }
    let filtering: Map<String, Value> = SERVER_FILTERS
        .iter()
        .map(|f| ((*f).to_owned(), json!("exact")))
        .collect();
    json!({
        "allowed_detail_http_methods": ["get", "put", "delete"],
        "allowed_list_http_methods": ["get", "post"],
        "default_format": "application/json",
        "default_limit": DEFAULT_LIMIT,
        "fields": fields,
        "filtering": filtering,
        "ordering": SERVER_ORDERING,
        "resource": collection,
    })
}
