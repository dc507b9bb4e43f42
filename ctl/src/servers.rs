//! `server ...` and `bserver ...`: the same commands on `/servers/` and `/bservers/`.

use crate::api::Api;
use crate::cli::{ActionArgs, CreateArgs, EditFields, ServerCmd};
use crate::error::CtlError;
use crate::output::{Out, Spinner, note, typed};
use crate::table::{Table, key_values};
use crate::units::format_bytes;
use backfill_api::ActionResult;
use backfill_api::servers::{
    CommandWorkload, CreatedServers, Server, ServerCreate, ServerDrive, ServerFields, ServerList,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(500);
/// The fields `show` and `create` print first.
const FIRST: &[&str] = &[
    "uuid", "name", "status", "class", "cpu", "mem", "smp", "priority", "runtime",
];

pub async fn run(
    api: &Api,
    out: Out,
    coll: &'static str,
    cmd: ServerCmd,
    timeout: Duration,
) -> Result<(), CtlError> {
    match cmd {
        ServerCmd::List => {
            let v = api.get(&[coll, "detail"], &[("limit", "0")]).await?;
            out.show_as(&v, list_table)
        }
        ServerCmd::Show { uuid } => {
            let v = api.get(&[coll, &uuid], &[]).await?;
            out.show(&v, show_table)
        }
        ServerCmd::Create(c) => create(api, out, coll, c, timeout).await,
        ServerCmd::Start(a) => action(api, out, coll, a, "start", Some("running"), timeout).await,
        ServerCmd::Stop(a) => action(api, out, coll, a, "stop", Some("stopped"), timeout).await,
        ServerCmd::Shutdown(a) => {
            action(api, out, coll, a, "shutdown", Some("stopped"), timeout).await
        }
        ServerCmd::Restart { uuid } => {
            let a = ActionArgs { uuid, wait: false };
            action(api, out, coll, a, "restart", None, timeout).await
        }
        ServerCmd::Delete { uuid } => {
            api.call(Method::DELETE, &[coll, &uuid], &[], None).await?;
            out.say(&format!("deleted {uuid}"))
        }
        ServerCmd::Edit(e) => {
            let body = edit_body(&e.fields);
            let v = api.send(Method::PUT, &[coll, &e.uuid], &[], &body).await?;
            if v.is_null() {
                out.say(&format!("updated {}", e.uuid))
            } else {
                out.show(&v, show_table)
            }
        }
    }
}

/// The `{"objects": [...]}` a create sends.
pub fn create_body(c: &CreateArgs) -> ServerCreate {
    let workload = (!c.command.is_empty()).then(|| CommandWorkload {
        command: c.command.clone(),
        env: c.env.iter().cloned().collect(),
        network: Some(if c.isolated { "isolated" } else { "host" }.into()),
    });
    let drives = c
        .drives
        .iter()
        .enumerate()
        .map(|(i, d)| ServerDrive {
            boot_order: u32::try_from(i + 1).unwrap_or(u32::MAX),
            dev_channel: format!("0:{i}"),
            device: "virtio".into(),
            drive: d.clone(),
        })
        .collect::<Vec<_>>();
    ServerCreate {
        objects: vec![ServerFields {
            name: Some(c.name.clone()),
            cpu: Some(c.cpu),
            mem: Some(c.mem),
            smp: Some(c.smp.unwrap_or(1)),
            meta: Some(c.meta.iter().cloned().collect()),
            tags: Some(c.tags.clone()),
            priority: c.priority,
            drives: (!drives.is_empty()).then_some(drives),
            workload: workload.as_ref().and_then(|w| serde_json::to_value(w).ok()),
            ..ServerFields::default()
        }],
    }
}

/// The PUT body: only the fields given.
pub fn edit_body(f: &EditFields) -> ServerFields {
    ServerFields {
        name: f.name.clone(),
        meta: (!f.meta.is_empty()).then(|| f.meta.iter().cloned().collect()),
        tags: (!f.tags.is_empty()).then(|| f.tags.clone()),
        ..ServerFields::default()
    }
}

async fn create(
    api: &Api,
    out: Out,
    coll: &'static str,
    c: CreateArgs,
    timeout: Duration,
) -> Result<(), CtlError> {
    let created = api
        .send(Method::POST, &[coll], &[], &create_body(&c))
        .await?;
    let answer: CreatedServers = typed(&created)?;
    let Some(uuid) = answer
        .objects
        .first()
        .map(|s| s.uuid.clone())
        .filter(|u| !u.is_empty())
    else {
        return Err(CtlError::BadResponse {
            url: api.url(&[coll], &[]).to_string(),
            detail: "the create answer holds no objects[0].uuid".into(),
        });
    };
    let result = if c.start || c.wait {
        let started = api
            .call(
                Method::POST,
                &[coll, &uuid, "action"],
                &[("do", "start")],
                Some(&json!({})),
            )
            .await;
        if let Err(e) = started {
            note(&format!("created {uuid}, but it could not be started"));
            return Err(e);
        }
        let now = if c.wait {
            wait_for(api, coll, &uuid, "running", timeout).await?
        } else {
            api.get(&[coll, &uuid], &[]).await?
        };
        json!({ "objects": [now] })
    } else {
        created
    };
    out.show(&result, |v| show_table(&v["objects"][0]))
}

async fn action(
    api: &Api,
    out: Out,
    coll: &'static str,
    a: ActionArgs,
    what: &str,
    target: Option<&'static str>,
    timeout: Duration,
) -> Result<(), CtlError> {
    let answer = api
        .call(
            Method::POST,
            &[coll, &a.uuid, "action"],
            &[("do", what)],
            Some(&json!({})),
        )
        .await?;
    let uuid = &a.uuid;
    match target {
        Some(want) if a.wait => {
            wait_for(api, coll, uuid, want, timeout).await?;
            out.show(&answer, |_| format!("{uuid}: {want}\n"))
        }
        _ => out.show_as(&answer, |r: &ActionResult| {
            let result = if r.result.is_empty() {
                "accepted"
            } else {
                &r.result
            };
            format!("{uuid}: {what} {result}\n")
        }),
    }
}

/// Polls the server every [`POLL`] until its status is `want`, or `timeout` passed.
async fn wait_for(
    api: &Api,
    coll: &'static str,
    uuid: &str,
    want: &'static str,
    timeout: Duration,
) -> Result<Value, CtlError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut spinner = Spinner::new();
    loop {
        let v = api.get(&[coll, uuid], &[]).await?;
        let server: Server = typed(&v)?;
        let status = if server.status.is_empty() {
            "?".to_owned()
        } else {
            server.status
        };
        if status == want {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(CtlError::WaitTimeout {
                uuid: uuid.to_owned(),
                want,
                last: status,
                secs: timeout.as_secs(),
            });
        }
        let pending = server
            .pending_reason
            .or(server.stop_reason)
            .map(|r| format!(", {r}"))
            .unwrap_or_default();
        spinner.tick(&format!(
            "{uuid}: {status}{pending} (waiting for {want}, {}s)",
            (now - start).as_secs()
        ));
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

fn list_table(v: &ServerList) -> String {
    let mut t = Table::new(&[
        "UUID",
        "NAME",
        "STATUS",
        "CPU (MHz)",
        "MEM",
        "PERF",
        "HOST",
        "TERMINATES",
    ]);
    for s in &v.objects {
        t.row(server_row(s));
    }
    t.render()
}

pub fn server_row(s: &Server) -> Vec<String> {
    let rt = s.runtime.as_ref();
    let dash = || "-".to_owned();
    vec![
        s.uuid.clone(),
        s.name.clone(),
        s.status.clone(),
        s.cpu.to_string(),
        format_bytes(s.mem),
        rt.map_or_else(dash, |r| {
            format!("{:.2}/{:.2}", r.perf_factor.cpu, r.perf_factor.mem)
        }),
        rt.map_or_else(dash, |r| r.host.clone()),
        rt.and_then(|r| r.termination.as_ref())
            .map_or_else(dash, |t| t.terminate_at.clone()),
    ]
}

/// A server's every field as the API sent it (fields newer than this client included).
fn show_table(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(mem) = v["mem"].as_u64() {
        v["mem"] = format!("{mem} ({})", format_bytes(mem)).into();
    }
    key_values(&v, FIRST).render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(command: &[&str]) -> CreateArgs {
        CreateArgs {
            name: "x".into(),
            cpu: 500,
            mem: 256 << 20,
            smp: None,
            meta: vec![("k".into(), "v".into())],
            tags: vec!["t".into()],
            priority: None,
            drives: Vec::new(),
            isolated: true,
            env: vec![("A".into(), "1".into())],
            start: false,
            wait: false,
            command: command.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn create_bodies_carry_a_workload_only_with_a_command() {
        let create_body = |a: &CreateArgs| serde_json::to_value(create_body(a)).unwrap();
        assert_eq!(
            create_body(&args(&["sleep", "300"])),
            json!({"objects": [{
                "name": "x", "cpu": 500, "mem": 268_435_456, "smp": 1,
                "meta": {"k": "v"}, "tags": ["t"],
                "workload": {"command": ["sleep", "300"], "env": {"A": "1"}, "network": "isolated"},
            }]})
        );
        let mut a = args(&[]);
        a.priority = Some(-3);
        let body = create_body(&a);
        assert_eq!(body["objects"][0]["priority"], -3);
        assert!(body["objects"][0].get("workload").is_none());
        // Drives boot in the order given.
        a.drives = vec!["d1".into(), "d2".into()];
        let body = create_body(&a);
        assert_eq!(
            body["objects"][0]["drives"],
            json!([{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": "d1"},
                   {"boot_order": 2, "dev_channel": "0:1", "device": "virtio", "drive": "d2"}])
        );
    }

    #[test]
    fn edit_bodies_hold_only_the_given_fields() {
        let f = EditFields {
            name: None,
            meta: vec![],
            tags: vec!["a".into()],
        };
        assert_eq!(
            serde_json::to_value(edit_body(&f)).unwrap(),
            json!({"tags": ["a"]})
        );
    }

    #[test]
    fn rows_show_runtime_or_dashes() {
        let running = json!({
            "uuid": "u", "name": "n", "status": "running", "cpu": 500, "mem": 268_435_456,
            "runtime": {"host": "h", "perf_factor": {"cpu": 0.5, "mem": 1.0},
                        "termination": {"terminate_at": "2025-01-01T00:00:00+00:00"}},
        });
        assert_eq!(
            server_row(&serde_json::from_value(running).unwrap()),
            [
                "u",
                "n",
                "running",
                "500",
                "256 MiB",
                "0.50/1.00",
                "h",
                "2025-01-01T00:00:00+00:00"
            ]
        );
        let stopped = json!({"uuid": "u", "name": "n", "status": "stopped", "cpu": 500,
                             "mem": 268_435_456, "runtime": null});
        assert_eq!(
            server_row(&serde_json::from_value(stopped).unwrap()),
            ["u", "n", "stopped", "500", "256 MiB", "-", "-", "-"]
        );
    }
}
