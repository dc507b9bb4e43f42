//! `account ...`: accounts, their backfill permission and quotas (admin certificate).

use crate::api::Api;
use crate::cli::{AccountCmd, Quota};
use crate::error::CtlError;
use crate::output::Out;
use crate::table::{Table, cell, key_values};
use crate::units::format_bytes;
use reqwest::Method;
use serde_json::{Map, Value, json};

const COLL: &str = "accounts";
const FIRST: &[&str] = &["name", "uuid", "backfill", "quota", "in_use"];

pub async fn run(api: &Api, out: Out, cmd: AccountCmd) -> Result<(), CtlError> {
    match cmd {
        AccountCmd::List => {
            let v = api.get(&[COLL], &[("limit", "0")]).await?;
            out.show(&v, list_table)
        }
        AccountCmd::Show { name } => {
            let v = api.get(&[COLL, &name], &[]).await?;
            out.show(&v, show_table)
        }
        AccountCmd::Create(c) => {
            let mut o = json!({"name": c.name, "backfill": c.backfill});
            if !c.quota.is_empty() {
                o["quota"] = quota_body(&c.quota);
            }
            let body = json!({ "objects": [o] });
            let v = api.call(Method::POST, &[COLL], &[], Some(&body)).await?;
            out.show(&v, |v| show_table(&v["objects"][0]))
        }
        AccountCmd::Update(u) => {
            if u.backfill.is_none() && u.quota.is_empty() {
                return Err(CtlError::Usage(
                    "nothing to update: give --backfill true|false and/or --cpu, --mem, --gpus, --servers, --storage"
                        .into(),
                ));
            }
            let mut body = Map::new();
            if let Some(b) = u.backfill {
                body.insert("backfill".into(), b.into());
            }
            if !u.quota.is_empty() {
                body.insert("quota".into(), quota_body(&u.quota));
            }
            let v = api
                .call(
                    Method::PUT,
                    &[COLL, &u.name],
                    &[],
                    Some(&Value::Object(body)),
                )
                .await?;
            if v.is_null() {
                out.say(&format!("updated {}", u.name))
            } else {
                out.show(&v, show_table)
            }
        }
        AccountCmd::Delete { name } => {
            api.call(Method::DELETE, &[COLL, &name], &[], None).await?;
            out.say(&format!("deleted {name}"))
        }
    }
}

/// The quota fields given; `unlimited` (and storage's `default`) is null.
pub fn quota_body(q: &Quota) -> Value {
    let mut o = Map::new();
    let fields = [
        ("cpu", q.cpu),
        ("mem", q.mem),
        ("gpus", q.gpus),
        ("servers", q.servers),
        ("storage", q.storage),
    ];
    for (k, v) in fields {
        if let Some(limit) = v {
            o.insert(k.into(), limit.to_json());
        }
    }
    Value::Object(o)
}

/// `in use / quota`, the quota `unlimited` when absent or null.
fn use_of(a: &Value, k: &str, fmt: fn(u64) -> String) -> String {
    let used = a["in_use"][k].as_u64().map_or_else(|| "-".into(), fmt);
    let quota = match a["quota"][k].as_u64() {
        Some(q) => fmt(q),
        None => "unlimited".into(),
    };
    format!("{used} / {quota}")
}

pub fn account_row(a: &Value) -> Vec<String> {
    let plain = |n: u64| n.to_string();
    vec![
        cell(&a["name"]),
        cell(&a["backfill"]),
        use_of(a, "cpu", plain),
        use_of(a, "mem", format_bytes),
        use_of(a, "gpus", plain),
        use_of(a, "servers", plain),
        cell(&a["created_at"]),
    ]
}

fn list_table(v: &Value) -> String {
    let mut t = Table::new(&[
        "NAME",
        "BACKFILL",
        "CPU (MHz)",
        "MEM",
        "GPUS",
        "SERVERS",
        "CREATED",
    ]);
    for a in v["objects"].as_array().into_iter().flatten() {
        t.row(account_row(a));
    }
    t.render()
}

fn show_table(v: &Value) -> String {
    let mut v = v.clone();
    for k in ["cpu", "mem", "gpus", "servers"] {
        if v["quota"].is_object() && v["quota"][k].is_null() {
            v["quota"][k] = "unlimited".into();
        }
    }
    if v["quota"].is_object() && v["quota"]["storage"].is_null() {
        v["quota"]["storage"] = "default (the coordinator's [drives] storage_quota_bytes)".into();
    }
    for part in ["quota", "in_use"] {
        for k in ["mem", "storage"] {
            if let Some(n) = v[part][k].as_u64() {
                v[part][k] = format!("{n} ({})", format_bytes(n)).into();
            }
        }
    }
    key_values(&v, FIRST).render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{Limit, parse_size_or_default};

    #[test]
    fn quota_bodies_send_only_what_was_given() {
        let q = Quota {
            cpu: Some(Limit::Value(100_000)),
            mem: Some(Limit::Unlimited),
            gpus: None,
            servers: Some(Limit::Value(50)),
            storage: None,
        };
        assert_eq!(
            quota_body(&q),
            json!({"cpu": 100_000, "mem": null, "servers": 50})
        );
        let q = Quota {
            cpu: None,
            mem: None,
            gpus: None,
            servers: None,
            storage: Some(Limit::Value(10 << 30)),
        };
        assert_eq!(quota_body(&q), json!({"storage": 10_u64 << 30}));
        let q = Quota {
            storage: parse_size_or_default("default").ok(),
            ..q
        };
        assert_eq!(quota_body(&q), json!({"storage": null}));
        let q = Quota {
            storage: parse_size_or_default("unlimited").ok(),
            ..q
        };
        assert_eq!(quota_body(&q), json!({"storage": "unlimited"}));
    }

    #[test]
    fn rows_show_use_against_quota() {
        let a = json!({
            "name": "acme", "backfill": true,
            "quota": {"cpu": 100_000, "mem": 1_099_511_627_776_u64, "gpus": null},
            "in_use": {"cpu": 500, "mem": 268_435_456, "gpus": 0, "servers": 1},
            "created_at": "2025-01-01T00:00:00Z",
        });
        assert_eq!(
            account_row(&a),
            [
                "acme",
                "true",
                "500 / 100000",
                "256 MiB / 1 TiB",
                "0 / unlimited",
                "1 / unlimited",
                "2025-01-01T00:00:00Z"
            ]
        );
    }
}
