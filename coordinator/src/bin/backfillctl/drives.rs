//! `drive ...` and `libdrive ...`: an account's drives (`/drives/`) and the fleet's library
//! drives (`/libdrives/`).

use crate::api::Api;
use crate::drive_cli::{DriveClone, DriveCmd, LibdriveCmd};
use crate::error::CtlError;
use crate::output::Out;
use crate::table::{Table, cell, key_values};
use reqwest::Method;
use serde_json::{Value, json};

const FIRST: &[&str] = &["uuid", "name", "size", "media", "status", "mounted_on"];

pub async fn run(api: &Api, out: Out, cmd: DriveCmd) -> Result<(), CtlError> {
    match cmd {
        DriveCmd::List => {
            let v = api.get(&["drives", "detail"], &[("limit", "0")]).await?;
            out.show(&v, drives_table)
        }
        DriveCmd::Show { uuid } => {
            let v = api.get(&["drives", &uuid], &[]).await?;
            out.show(&v, |v| key_values(v, FIRST).render())
        }
        DriveCmd::Create(c) => {
            let body = json!({"objects": [{"name": c.name, "size": c.size, "media": c.media}]});
            let v = api
                .call(Method::POST, &["drives"], &[], Some(&body))
                .await?;
            out.show(&v, |v| key_values(&v["objects"][0], FIRST).render())
        }
        DriveCmd::Clone(c) => clone(api, out, "drives", &c).await,
        DriveCmd::Resize { uuid, size } => {
            let current = api.get(&["drives", &uuid], &[]).await?;
            let body = json!({"name": current["name"], "media": current["media"], "size": size});
            let v = api
                .call(
                    Method::POST,
                    &["drives", &uuid, "action"],
                    &[("do", "resize")],
                    Some(&body),
                )
                .await?;
            out.show(&v, |v| key_values(&v["objects"][0], FIRST).render())
        }
        DriveCmd::Delete { uuid } => {
            api.call(Method::DELETE, &["drives", &uuid], &[], None)
                .await?;
            out.say(&format!("deleted {uuid} (its host removes the file)"))
        }
        DriveCmd::Move { uuid, host } => {
            let body = json!({ "host": host });
            let v = api
                .call(
                    Method::POST,
                    &["operator", "drives", &uuid, "move"],
                    &[],
                    Some(&body),
                )
                .await?;
            out.show(&v, |v| {
                format!(
                    "moving {uuid} to host {host} (status {}); `backfillctl drive show {uuid}` \
                     shows unmounted or mounted again when it is there, and an error if it failed\n",
                    v["objects"][0]["status"].as_str().unwrap_or("?")
                )
            })
        }
    }
}

pub async fn run_lib(api: &Api, out: Out, cmd: LibdriveCmd) -> Result<(), CtlError> {
    match cmd {
        LibdriveCmd::List => {
            let v = api.get(&["libdrives"], &[("limit", "0")]).await?;
            out.show(&v, libdrives_table)
        }
        LibdriveCmd::Show { uuid } => {
            let v = api.get(&["libdrives", &uuid], &[]).await?;
            out.show(&v, |v| {
                key_values(v, &["uuid", "name", "os", "size"]).render()
            })
        }
        LibdriveCmd::Clone(c) => clone(api, out, "libdrives", &c).await,
    }
}

/// The body of a clone: only what was given.
pub fn clone_body(c: &DriveClone) -> Value {
    let mut o = json!({});
    if let Some(n) = &c.name {
        o["name"] = n.clone().into();
    }
    if let Some(s) = c.size {
        o["size"] = s.into();
    }
    o
}

async fn clone(api: &Api, out: Out, coll: &str, c: &DriveClone) -> Result<(), CtlError> {
    let v = api
        .call(
            Method::POST,
            &[coll, &c.uuid, "action"],
            &[("do", "clone")],
            Some(&clone_body(c)),
        )
        .await?;
    out.show(&v, |v| {
        format!(
            "{}\nThe host makes it now: backfillctl drive show {} (status unmounted when ready)\n",
            key_values(&v["objects"][0], FIRST).render(),
            cell(&v["objects"][0]["uuid"])
        )
    })
}

fn mounted(d: &Value) -> String {
    let on: Vec<String> = d["mounted_on"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| cell(&m["uuid"]))
        .collect();
    if on.is_empty() {
        "-".into()
    } else {
        on.join(",")
    }
}

fn drives_table(v: &Value) -> String {
    let mut t = Table::new(&["UUID", "NAME", "SIZE", "MEDIA", "STATUS", "MOUNTED ON"]);
    for d in v["objects"].as_array().into_iter().flatten() {
        t.row(vec![
            cell(&d["uuid"]),
            cell(&d["name"]),
            cell(&d["size"]),
            cell(&d["media"]),
            cell(&d["status"]),
            mounted(d),
        ]);
    }
    t.render()
}

fn libdrives_table(v: &Value) -> String {
    let mut t = Table::new(&["UUID", "NAME", "OS", "SIZE", "STATUS"]);
    for d in v["objects"].as_array().into_iter().flatten() {
        t.row(vec![
            cell(&d["uuid"]),
            cell(&d["name"]),
            cell(&d["os"]),
            cell(&d["size"]),
            cell(&d["status"]),
        ]);
    }
    t.render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_tables() {
        let c = DriveClone {
            uuid: "u".into(),
            name: Some("n".into()),
            size: None,
        };
        assert_eq!(clone_body(&c), json!({"name": "n"}));
        let v = json!({"objects": [{"uuid": "d", "name": "n", "size": 1, "media": "disk",
            "status": "mounted", "mounted_on": [{"uuid": "s1"}]}]});
        let t = drives_table(&v);
        assert!(t.contains("MOUNTED ON") && t.contains("s1"), "{t}");
    }
}
