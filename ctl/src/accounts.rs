//! `account ...`: accounts, their backfill permission and quotas (admin certificate).

use crate::api::Api;
use crate::cli::{AccountCmd, Quota};
use crate::error::CtlError;
use crate::output::Out;
use crate::table::{Table, key_values};
use crate::units::Limit;
use crate::units::format_bytes;
use backfill_api::accounts::{
    AccountCreate, AccountEdit, AccountFields, AccountList, AccountView, QuotaFields,
};
use reqwest::Method;
use serde_json::Value;

const COLL: &str = "accounts";
const FIRST: &[&str] = &["name", "uuid", "backfill", "quota", "in_use"];

pub async fn run(api: &Api, out: Out, cmd: AccountCmd) -> Result<(), CtlError> {
    match cmd {
        AccountCmd::List => {
            let v = api.get(&[COLL], &[("limit", "0")]).await?;
            out.show_as(&v, list_table)
        }
        AccountCmd::Show { name } => {
            let v = api.get(&[COLL, &name], &[]).await?;
            out.show(&v, show_table)
        }
        AccountCmd::Create(c) => {
            let body = AccountCreate {
                objects: vec![AccountFields {
                    name: c.name.clone(),
                    backfill: Some(c.backfill),
                    quota: (!c.quota.is_empty()).then(|| quota_body(&c.quota)),
                }],
            };
            let v = api.send(Method::POST, &[COLL], &[], &body).await?;
            out.show(&v, |v| show_table(&v["objects"][0]))
        }
        AccountCmd::Update(u) => {
            if u.backfill.is_none() && u.quota.is_empty() {
                return Err(CtlError::Usage(
                    "nothing to update: give --backfill true|false and/or --cpu, --mem, --gpus, --servers, --storage"
                        .into(),
                ));
            }
            let body = AccountEdit {
                backfill: u.backfill,
                quota: (!u.quota.is_empty()).then(|| quota_body(&u.quota)),
            };
            let v = api.send(Method::PUT, &[COLL, &u.name], &[], &body).await?;
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
pub fn quota_body(q: &Quota) -> QuotaFields {
    let given = |l: Option<Limit>| l.map(Limit::value);
    QuotaFields {
        cpu: given(q.cpu),
        mem: given(q.mem),
        gpus: given(q.gpus),
        servers: given(q.servers),
        storage: q.storage.map(Limit::storage),
    }
}

/// `in use / quota`, the quota `unlimited` when null.
fn use_of(used: u64, quota: Option<u64>, fmt: fn(u64) -> String) -> String {
    let quota = quota.map_or_else(|| "unlimited".into(), fmt);
    format!("{} / {quota}", fmt(used))
}

pub fn account_row(a: &AccountView) -> Vec<String> {
    let plain = |n: u64| n.to_string();
    let (q, u) = (&a.quota, &a.in_use);
    vec![
        a.name.clone(),
        a.backfill.to_string(),
        use_of(u.cpu, q.cpu, plain),
        use_of(u.mem, q.mem, format_bytes),
        use_of(u.gpus, q.gpus, plain),
        use_of(u.servers, q.servers, plain),
        if a.created_at.is_empty() {
            "-".into()
        } else {
            a.created_at.clone()
        },
    ]
}

fn list_table(v: &AccountList) -> String {
    let mut t = Table::new(&[
        "NAME",
        "BACKFILL",
        "CPU (MHz)",
        "MEM",
        "GPUS",
        "SERVERS",
        "CREATED",
    ]);
    for a in &v.objects {
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::units::parse_size_or_default;
    use serde_json::json;

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
            serde_json::to_value(quota_body(&q)).unwrap(),
            json!({"cpu": 100_000, "mem": null, "servers": 50})
        );
        let q = Quota {
            cpu: None,
            mem: None,
            gpus: None,
            servers: None,
            storage: Some(Limit::Value(10 << 30)),
        };
        assert_eq!(
            serde_json::to_value(quota_body(&q)).unwrap(),
            json!({"storage": 10_u64 << 30})
        );
        let q = Quota {
            storage: parse_size_or_default("default").ok(),
            ..q
        };
        assert_eq!(
            serde_json::to_value(quota_body(&q)).unwrap(),
            json!({"storage": null})
        );
        let q = Quota {
            storage: parse_size_or_default("unlimited").ok(),
            ..q
        };
        assert_eq!(
            serde_json::to_value(quota_body(&q)).unwrap(),
            json!({"storage": "unlimited"})
        );
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
            account_row(&serde_json::from_value(a).unwrap()),
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
