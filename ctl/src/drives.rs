//! `drive ...` and `libdrive ...`: an account's drives (`/drives/`) and the fleet's library
//! drives (`/libdrives/`).

use crate::api::Api;
use crate::drive_cli::{DriveClone, DriveCmd, LibdriveCmd};
use crate::error::CtlError;
use crate::output::{Out, typed};
use crate::table::{Table, key_values};
use backfill_api::drives::{
    CloneFields, CreatedDrives, Drive, DriveCreate, DriveFields, DriveList, DriveMove,
    LibraryDriveList,
};
use reqwest::Method;

const FIRST: &[&str] = &["uuid", "name", "size", "media", "status", "mounted_on"];

pub async fn run(api: &Api, out: Out, cmd: DriveCmd) -> Result<(), CtlError> {
    match cmd {
        DriveCmd::List => {
            let v = api.get(&["drives", "detail"], &[("limit", "0")]).await?;
            out.show_as(&v, drives_table)
        }
        DriveCmd::Show { uuid } => {
            let v = api.get(&["drives", &uuid], &[]).await?;
            out.show(&v, |v| key_values(v, FIRST).render())
        }
        DriveCmd::Create(c) => {
            let body = DriveCreate {
                objects: vec![DriveFields {
                    name: c.name,
                    size: c.size,
                    media: c.media,
                    ..DriveFields::default()
                }],
            };
            let v = api.send(Method::POST, &["drives"], &[], &body).await?;
            out.show(&v, |v| key_values(&v["objects"][0], FIRST).render())
        }
        DriveCmd::Clone(c) => clone(api, out, "drives", &c).await,
        DriveCmd::Resize { uuid, size } => {
            let current: Drive = typed(&api.get(&["drives", &uuid], &[]).await?)?;
            let body = DriveFields {
                name: current.name,
                media: current.media,
                size,
                ..DriveFields::default()
            };
            let v = api
                .send(
                    Method::POST,
                    &["drives", &uuid, "action"],
                    &[("do", "resize")],
                    &body,
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
            let body = DriveMove { host: host.clone() };
            let v = api
                .send(
                    Method::POST,
                    &["operator", "drives", &uuid, "move"],
                    &[],
                    &body,
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
            out.show_as(&v, libdrives_table)
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
pub fn clone_body(c: &DriveClone) -> CloneFields {
    CloneFields {
        name: c.name.clone(),
        size: c.size,
        media: None,
    }
}

async fn clone(api: &Api, out: Out, coll: &str, c: &DriveClone) -> Result<(), CtlError> {
    let v = api
        .send(
            Method::POST,
            &[coll, &c.uuid, "action"],
            &[("do", "clone")],
            &clone_body(c),
        )
        .await?;
    let uuid = typed::<CreatedDrives>(&v)?
        .objects
        .first()
        .map_or_else(|| "-".to_owned(), |d| d.uuid.clone());
    out.show(&v, |v| {
        format!(
            "{}\nThe host makes it now: backfillctl drive show {uuid} (status unmounted when ready)\n",
            key_values(&v["objects"][0], FIRST).render(),
        )
    })
}

fn mounted(d: &Drive) -> String {
    if d.mounted_on.is_empty() {
        "-".into()
    } else {
        let on: Vec<&str> = d.mounted_on.iter().map(|m| m.uuid.as_str()).collect();
        on.join(",")
    }
}

fn drives_table(v: &DriveList) -> String {
    let mut t = Table::new(&["UUID", "NAME", "SIZE", "MEDIA", "STATUS", "MOUNTED ON"]);
    for d in &v.objects {
        t.row(vec![
            d.uuid.clone(),
            d.name.clone(),
            d.size.to_string(),
            d.media.clone(),
            d.status.clone(),
            mounted(d),
        ]);
    }
    t.render()
}

fn libdrives_table(v: &LibraryDriveList) -> String {
    let mut t = Table::new(&["UUID", "NAME", "OS", "SIZE", "STATUS"]);
    for d in &v.objects {
        t.row(vec![
            d.uuid.clone(),
            d.name.clone(),
            d.os.clone(),
            d.size.to_string(),
            d.status.clone(),
        ]);
    }
    t.render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_and_tables() {
        let c = DriveClone {
            uuid: "u".into(),
            name: Some("n".into()),
            size: None,
        };
        assert_eq!(
            serde_json::to_value(clone_body(&c)).unwrap(),
            json!({"name": "n"})
        );
        let v = json!({"objects": [{"uuid": "d", "name": "n", "size": 1, "media": "disk",
            "status": "mounted", "mounted_on": [{"uuid": "s1"}]}]});
        let t = drives_table(&serde_json::from_value(v).unwrap());
        assert!(t.contains("MOUNTED ON") && t.contains("s1"), "{t}");
    }
}
