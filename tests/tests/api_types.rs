//! The `backfill-api` types against a real coordinator over mutual TLS: every endpoint
//! `backfillctl` uses is driven with requests made from the crate's request types, and each
//! answer is held to its response type strictly: it must deserialize, and the fields the
//! coordinator sent must be exactly the fields the type has (a field the coordinator adds,
//! renames or drops fails here, naming the path). The types themselves tolerate unknown
//! fields (clients must); this test is what keeps them from drifting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_api::accounts::{
    AccountCreate, AccountEdit, AccountFields, AccountList, AccountView, BillingSubscriptionList,
    CreatedAccounts, LedgerList, QuotaFields, UsageReport,
};
use backfill_api::common::{ActionResult, ErrorBody};
use backfill_api::drives::{
    CloneFields, CreatedDrives, Drive, DriveCreate, DriveFields, DriveList, DriveSummaryList,
    LibraryDrive, LibraryDriveList,
};
use backfill_api::servers::{
    CommandWorkload, CreatedServers, Runtime, Server, ServerCreate, ServerDrive, ServerFields,
    ServerList, ServerSummaryList,
};
use backfill_api::status::Capabilities;
use backfill_api::webhooks::{
    CreatedSubscriptions, CreatedWebhooks, DeliveryList, Filters, SubscriptionCreate,
    SubscriptionFields, SubscriptionList, WebhookCreate, WebhookFields, WebhookList, WebhookView,
};
use backfill_shared::pki::Role;
use backfill_tests::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

const CONFIG: &str = "\n[scheduler]\nshutdown_grace_s = 2\n[billing]\ninterval_s = 1\n\
    [webhooks]\nallow_http = true\nallow_private = true\nbackoff_base_s = 1\nbackoff_max_s = 1\ntimeout_s = 5\n";

/// Every key path of `v` (`objects[].runtime.host`), array items merged.
fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{prefix}.{k}");
                out.insert(p.clone());
                paths(x, &p, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                paths(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// `answer` as a `T`, checked strictly: it deserializes, and serializing it back gives the
/// same key paths (so no field is unknown to `T`, and `T` has no field the answer lacks).
fn strict<T: DeserializeOwned + Serialize>(what: &str, answer: &Value) -> T {
    let typed: T = serde_json::from_value(answer.clone()).unwrap_or_else(|e| {
        panic!(
            "{what}: does not deserialize into {}: {e}\n{answer:#}",
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&typed).unwrap();
    let (mut sent, mut typed_keys) = (BTreeSet::new(), BTreeSet::new());
    paths(answer, "", &mut sent);
    paths(&back, "", &mut typed_keys);
    let unknown: Vec<_> = sent.difference(&typed_keys).collect();
    let missing: Vec<_> = typed_keys.difference(&sent).collect();
    assert!(
        unknown.is_empty() && missing.is_empty(),
        "{what} ({}): fields the coordinator sends that the type lacks: {unknown:?}; \
         fields of the type the coordinator did not send: {missing:?}\n{answer:#}",
        std::any::type_name::<T>()
    );
    typed
}

fn body<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

async fn ok(c: &reqwest::Client, method: reqwest::Method, url: &str, b: Option<Value>) -> Value {
    let mut req = c.request(method.clone(), url);
    if let Some(b) = b {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{method} {url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn get_ok(c: &reqwest::Client, url: &str) -> Value {
    ok(c, reqwest::Method::GET, url, None).await
}

async fn post_ok(c: &reqwest::Client, url: &str, b: Value) -> Value {
    ok(c, reqwest::Method::POST, url, Some(b)).await
}

/// A receiver on loopback that answers 200 to every request.
fn receiver() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut b = vec![0u8; len];
            if reader.read_exact(&mut b).is_ok() {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_backfillctl_reads_matches_the_api_types() {
    let pki = Pki::new();
    let coord = Coordinator::start_with(&pki, &["tenant"], CONFIG);
    let mut setup = AgentSetup::new(&pki, &coord, "types-host");
    let drives = std::path::Path::new("/usr/bin/qemu-img").is_file();
    if drives {
        let images = setup.dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::File::create(images.join("lib.raw"))
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        setup
            .extra_toml
            .push_str(&format!("[vm]\nimages_dir = {images:?}\naccel = \"tcg\"\n"));
    }
    let _agent = setup.start(true, "1");
    let t = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let admin = client(&pki.ca(), Some(&pki.issue(Role::Admin, "ops")));

    // Webhooks first, so that the server's state changes below are delivered.
    let hook_url = receiver();
    let created = post_ok(
        &t,
        &coord.url("webhooks/"),
        body(&WebhookCreate {
            objects: vec![WebhookFields {
                url: hook_url,
                description: Some("types".into()),
            }],
        }),
    )
    .await;
    let hook = strict::<CreatedWebhooks>("POST webhooks/", &created).objects[0].clone();
    assert!(hook.secret.is_some());
    let subscribed = post_ok(
        &t,
        &coord.url(&format!("webhooks/{}/subscriptions/", hook.uuid)),
        body(&SubscriptionCreate {
            objects: vec![SubscriptionFields {
                events: vec!["server_state_changed".into()],
                filters: Some(Filters {
                    classes: vec!["backfill".into()],
                    ..Filters::default()
                }),
            }],
        }),
    )
    .await;
    strict::<CreatedSubscriptions>("POST subscriptions/", &subscribed);

    // Capabilities.
    let caps = get_ok(&t, &coord.url("capabilities/")).await;
    let caps = strict::<Capabilities>("GET capabilities/", &caps);
    assert!(caps.backfilling && caps.free_resources.is_some());

    // Servers: create, start, running (with a runtime), lists and detail, in both
    // collections.
    let fields = ServerFields {
        name: Some("typed".into()),
        cpu: Some(500),
        mem: Some(128 << 20),
        smp: Some(1),
        meta: Some([("k".to_owned(), "v".to_owned())].into()),
        tags: Some(vec!["blue".into()]),
        workload: Some(body(&CommandWorkload {
            command: vec!["sleep".into(), "300".into()],
            env: [("A".to_owned(), "1".to_owned())].into(),
            network: Some("host".into()),
        })),
        priority: Some(5),
        ..ServerFields::default()
    };
    let created = post_ok(
        &t,
        &coord.url("bservers/"),
        body(&ServerCreate {
            objects: vec![fields.clone()],
        }),
    )
    .await;
    let server = strict::<CreatedServers>("POST bservers/", &created).objects[0].clone();
    let started = post_ok(
        &t,
        &coord.url(&format!("bservers/{}/action/?do=start", server.uuid)),
        json!({}),
    )
    .await;
    strict::<ActionResult>("POST bservers/{uuid}/action/?do=start", &started);
    let running = eventually("the bserver runs", || async {
        let v = get_ok(&t, &coord.url(&format!("bservers/{}/", server.uuid))).await;
        (v["status"] == "running" && !v["runtime"].is_null()).then_some(v)
    })
    .await;
    let running = strict::<Server>("GET bservers/{uuid}/ (running)", &running);
    assert_eq!(running.runtime.map(|r| r.host), Some("types-host".into()));
    let runtime = get_ok(
        &t,
        &coord.url(&format!("bservers/{}/runtime/", server.uuid)),
    )
    .await;
    strict::<Runtime>("GET bservers/{uuid}/runtime/", &runtime);
    let detail = get_ok(&t, &coord.url("bservers/detail/?limit=0")).await;
    assert_eq!(
        strict::<ServerList>("GET bservers/detail/", &detail)
            .meta
            .total_count,
        1
    );
    let summary = get_ok(&t, &coord.url("bservers/?limit=0")).await;
    strict::<ServerSummaryList>("GET bservers/", &summary);
    let normal = post_ok(
        &t,
        &coord.url("servers/"),
        body(&ServerCreate {
            objects: vec![ServerFields {
                name: Some("stopped".into()),
                ..fields.clone()
            }],
        }),
    )
    .await;
    strict::<CreatedServers>("POST servers/", &normal);
    let detail = get_ok(&t, &coord.url("servers/detail/?limit=0")).await;
    strict::<ServerList>("GET servers/detail/ (stopped)", &detail);
    let edited = ok(
        &t,
        reqwest::Method::PUT,
        &coord.url(&format!("bservers/{}/", server.uuid)),
        Some(body(&ServerFields {
            name: Some("renamed".into()),
            ..ServerFields::default()
        })),
    )
    .await;
    if !edited.is_null() {
        strict::<Server>("PUT bservers/{uuid}/", &edited);
    }

    // The server's state change reached the webhook: deliveries, redeliver.
    let deliveries = eventually("a delivery", || async {
        let v = get_ok(
            &t,
            &coord.url(&format!("webhooks/{}/deliveries/?limit=0", hook.uuid)),
        )
        .await;
        (v["objects"].as_array().is_some_and(|a| !a.is_empty())
            && v["objects"][0]["status"] == "delivered")
            .then_some(v)
    })
    .await;
    let deliveries = strict::<DeliveryList>("GET webhooks/{uuid}/deliveries/", &deliveries);
    let redelivered = post_ok(
        &t,
        &coord.url(&format!(
            "webhooks/{}/deliveries/{}/action/?do=redeliver",
            hook.uuid, deliveries.objects[0].uuid
        )),
        json!({}),
    )
    .await;
    strict::<ActionResult>("POST deliveries/{uuid}/action/?do=redeliver", &redelivered);
    let hooks = get_ok(&t, &coord.url("webhooks/?limit=0")).await;
    strict::<WebhookList>("GET webhooks/", &hooks);
    let shown = get_ok(&t, &coord.url(&format!("webhooks/{}/", hook.uuid))).await;
    assert!(
        strict::<WebhookView>("GET webhooks/{uuid}/", &shown)
            .secret
            .is_none()
    );
    let subs = get_ok(
        &t,
        &coord.url(&format!("webhooks/{}/subscriptions/?limit=0", hook.uuid)),
    )
    .await;
    strict::<SubscriptionList>("GET webhooks/{uuid}/subscriptions/", &subs);

    // Accounts (operator) and usage.
    let made = post_ok(
        &admin,
        &coord.url("accounts/"),
        body(&AccountCreate {
            objects: vec![AccountFields {
                name: "typed-acme".into(),
                backfill: Some(true),
                quota: Some(QuotaFields {
                    cpu: Some(Some(10_000)),
                    servers: Some(None),
                    ..QuotaFields::default()
                }),
            }],
        }),
    )
    .await;
    let acme = strict::<CreatedAccounts>("POST accounts/", &made).objects[0].clone();
    assert_eq!(acme.quota.cpu, Some(10_000));
    let edited = ok(
        &admin,
        reqwest::Method::PUT,
        &coord.url("accounts/typed-acme/"),
        Some(body(&AccountEdit {
            backfill: Some(false),
            quota: Some(QuotaFields {
                cpu: Some(None),
                storage: Some(Some(backfill_api::accounts::StorageQuota::Bytes(1 << 30))),
                ..QuotaFields::default()
            }),
        })),
    )
    .await;
    let edited = strict::<AccountView>("PUT accounts/{name}/", &edited);
    assert_eq!((edited.backfill, edited.quota.cpu), (false, None));
    let shown = get_ok(&admin, &coord.url("accounts/tenant/")).await;
    assert!(
        strict::<AccountView>("GET accounts/{name}/", &shown)
            .in_use
            .servers
            >= 1
    );
    let list = get_ok(&admin, &coord.url("accounts/?limit=0")).await;
    strict::<AccountList>("GET accounts/", &list);
    let usage = eventually("usage billed", || async {
        let v = get_ok(&admin, &coord.url("usage/")).await;
        v["objects"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(v)
    })
    .await;
    strict::<UsageReport>("GET usage/ (admin)", &usage);
    let own = get_ok(&t, &coord.url("usage/")).await;
    strict::<UsageReport>("GET usage/ (tenant)", &own);
    let ledger = get_ok(&admin, &coord.url("ledger/")).await;
    let ledger = strict::<LedgerList>("GET ledger/ (admin)", &ledger);
    let subs = get_ok(&t, &coord.url("subscriptions/")).await;
    strict::<BillingSubscriptionList>("GET subscriptions/", &subs);
    assert!(!ledger.objects.is_empty(), "billed usage is in the ledger");

    // Errors.
    let r = t
        .get(coord.url("bservers/00000000-0000-4000-8000-000000000000/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let e: Value = r.json().await.unwrap();
    let Value::Array(items) = &e else {
        panic!("an error list: {e}")
    };
    strict::<backfill_api::ErrorItem>("an error item", &items[0]);
    let parsed: ErrorBody = serde_json::from_value(e.clone()).unwrap();
    assert_eq!(
        parsed.first().map(|i| i.error_type.as_str()),
        Some("notexist")
    );

    // `GET coordinators/` exists only among several coordinators (PostgreSQL: ha.rs).
    let (status, _) = get(&admin, &coord.url("coordinators/")).await;
    assert_eq!(status, 404);

    if !drives {
        eprintln!("SKIP drives: no /usr/bin/qemu-img (install qemu-utils)");
        return;
    }
    let libs = eventually("a library drive", || async {
        let v = get_ok(&t, &coord.url("libdrives/?limit=0")).await;
        v["objects"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(v)
    })
    .await;
    let lib = strict::<LibraryDriveList>("GET libdrives/", &libs).objects[0].clone();
    let one = get_ok(&t, &coord.url(&format!("libdrives/{}/", lib.uuid))).await;
    strict::<LibraryDrive>("GET libdrives/{uuid}/", &one);
    let cloned = post_ok(
        &t,
        &coord.url(&format!("libdrives/{}/action/?do=clone", lib.uuid)),
        body(&CloneFields {
            name: Some("root".into()),
            ..CloneFields::default()
        }),
    )
    .await;
    strict::<CreatedDrives>("POST libdrives/{uuid}/action/?do=clone", &cloned);
    let made = post_ok(
        &t,
        &coord.url("drives/"),
        body(&DriveCreate {
            objects: vec![DriveFields {
                name: "data".into(),
                size: 8 << 20,
                media: "disk".into(),
                ..DriveFields::default()
            }],
        }),
    )
    .await;
    let data = strict::<CreatedDrives>("POST drives/", &made).objects[0].clone();
    eventually("the drives are made", || async {
        let v = get_ok(&t, &coord.url("drives/detail/?limit=0")).await;
        v["objects"]
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|d| d["status"] == "unmounted"))
            .then_some(())
    })
    .await;
    let resized = post_ok(
        &t,
        &coord.url(&format!("drives/{}/action/?do=resize", data.uuid)),
        body(&DriveFields {
            size: 16 << 20,
            ..data_fields(&data)
        }),
    )
    .await;
    strict::<CreatedDrives>("POST drives/{uuid}/action/?do=resize", &resized);
    let copy = post_ok(
        &t,
        &coord.url(&format!("drives/{}/action/?do=clone", data.uuid)),
        body(&CloneFields {
            name: Some("copy".into()),
            ..CloneFields::default()
        }),
    )
    .await;
    strict::<CreatedDrives>("POST drives/{uuid}/action/?do=clone", &copy);
    let list = get_ok(&t, &coord.url("drives/detail/?limit=0")).await;
    strict::<DriveList>("GET drives/detail/", &list);
    let list = get_ok(&t, &coord.url("drives/?limit=0")).await;
    strict::<DriveSummaryList>("GET drives/", &list);
    let one = get_ok(&t, &coord.url(&format!("drives/{}/", data.uuid))).await;
    strict::<Drive>("GET drives/{uuid}/", &one);

    // A server made with the drive (a VM that boots from it): its `drives` as a GET shows them.
    let made = post_ok(
        &t,
        &coord.url("servers/"),
        body(&ServerCreate {
            objects: vec![ServerFields {
                name: Some("with-a-drive".into()),
                cpu: Some(500),
                mem: Some(128 << 20),
                drives: Some(vec![ServerDrive {
                    boot_order: 1,
                    dev_channel: "0:0".into(),
                    device: "virtio".into(),
                    drive: data.uuid.clone(),
                }]),
                ..ServerFields::default()
            }],
        }),
    )
    .await;
    let vm = strict::<CreatedServers>("POST servers/ (a drive)", &made).objects[0].clone();
    assert_eq!(vm.drives[0].drive.uuid, data.uuid);
    let shown = get_ok(&t, &coord.url(&format!("servers/{}/", vm.uuid))).await;
    strict::<Server>("GET servers/{uuid}/ (a drive)", &shown);
}

/// A resize sends the drive's name and media with the new size.
fn data_fields(d: &Drive) -> DriveFields {
    DriveFields {
        name: d.name.clone(),
        size: d.size,
        media: d.media.clone(),
        ..DriveFields::default()
    }
}

const INVENTORY: &str = r#"{"gpus": [
  {"index": 0, "uuid": "GPU-11111111-aaaa-bbbb-cccc-000000000000", "name": "NVIDIA H100 80GB HBM3",
   "memory_bytes": 85899345920, "pci_bus_id": "00000000:0C:00.0"}
]}"#;

/// `url`'s answer with its status, the body as JSON (`Null` when there is none). The body is
/// held to the bytes the handlers wrote before they had types (`json!` objects: keys sorted at
/// every level, compact): each type lists its fields in that order.
async fn answer(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    b: Option<Value>,
) -> (u16, Value) {
    let mut req = c.request(method.clone(), url);
    if let Some(b) = b {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !text.is_empty() {
        assert_eq!(
            numbers_blanked(&text),
            numbers_blanked(&v.to_string()),
            "{method} {url}: keys out of order"
        );
    }
    (status, v)
}

/// `json` with every run of number characters as `#`: serde_json's float parsing may differ
/// from the text in the last digit, and only the keys' order is compared here.
fn numbers_blanked(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii_digit() || ".eE+-".contains(c) {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn op_ok(c: &reqwest::Client, method: reqwest::Method, url: &str, b: Option<Value>) -> Value {
    let (status, v) = answer(c, method.clone(), url, b).await;
    assert!((200..300).contains(&status), "{method} {url}: {status} {v}");
    v
}

async fn op_get(c: &reqwest::Client, url: &str) -> Value {
    op_ok(c, reqwest::Method::GET, url, None).await
}

async fn op_post(c: &reqwest::Client, url: &str, b: Value) -> Value {
    op_ok(c, reqwest::Method::POST, url, Some(b)).await
}

/// The operator APIs (Arvados' dispatch, Dynamic Cluster, the dashboard's data) and Cyborg's
/// accelerator API, each answer held to its `backfill-api` type as strictly as above: a pool,
/// a host with a (fake) GPU, a server queued behind a hold and then running, a device profile
/// and an ARQ bound to the GPU and unbound again, and each API's error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_and_cyborg_answer_matches_the_api_types() {
    use backfill_api::arvados::{ArvErrors, ArvInstances, ArvQueue, ArvQueueEntry};
    use backfill_api::cyborg::{
        ApiVersion, Arq, ArqCreate, ArqList, ArqPatches, CyborgErrorBody, DeviceProfile,
        DeviceProfileCreate, DeviceProfileList, DeviceProfileOne, PatchOp, RootDocument,
    };
    use backfill_api::dashboard::{DashError, DashboardData};
    use backfill_api::dynamic_cluster::{DcResult, DcStatus, Job, Resource, WorkerNode};
    use reqwest::Method as M;

    let pki = Pki::new();
    let extra = format!(
        "{CONFIG}[[pools]]\nname = \"edge\"\nmax = 4\nhosts = [\"op-*\"]\nreservation_queue = \"backfill\"\n"
    );
    let coord = Coordinator::start_with(&pki, &["tenant"], &extra);
    let mut setup = AgentSetup::new(&pki, &coord, "op-types");
    let inventory = setup.dir.path().join("gpus.json");
    std::fs::write(&inventory, INVENTORY).unwrap();
    setup.top_toml = format!("inventory_file = {inventory:?}\n");
    let _agent = setup.start(true, "1");
    let t = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let admin = client(&pki.ca(), Some(&pki.issue(Role::Admin, "ops")));
    let root = |p: &str| format!("https://{}/{p}", coord.api);
    let arv = |p: &str| root(&format!("arvados/v1/dispatch/{p}"));
    let dc = |p: &str| root(&format!("dynamiccluster/{p}"));
    let acc = |p: &str| root(&format!("accelerator/v2/{p}"));

    // Arvados: the host idle, then held, so that a server waits in the queue.
    let instances = eventually("the host idle in Arvados' instances", || async {
        let v = op_get(&admin, &arv("instances")).await;
        (v["items"][0]["worker_state"] == "idle").then_some(v)
    })
    .await;
    strict::<ArvInstances>("GET instances", &instances);
    let held = op_ok(
        &admin,
        M::POST,
        &arv("instances/hold?instance_id=op-types&reason=types"),
        None,
    )
    .await;
    assert!(held.is_null(), "an action's body is empty: {held}");
    let created = post_ok(
        &t,
        &coord.url("bservers/"),
        body(&ServerCreate {
            objects: vec![ServerFields {
                name: Some("queued".into()),
                cpu: Some(200),
                mem: Some(64 << 20),
                workload: Some(body(&CommandWorkload {
                    command: vec!["sleep".into(), "300".into()],
                    ..CommandWorkload::default()
                })),
                ..ServerFields::default()
            }],
        }),
    )
    .await;
    let server = strict::<CreatedServers>("POST bservers/", &created).objects[0].clone();
    post_ok(
        &t,
        &coord.url(&format!("bservers/{}/action/?do=start", server.uuid)),
        json!({}),
    )
    .await;
    let queue = eventually("the server queued", || async {
        let v = op_get(&admin, &arv("containers")).await;
        (v["items"][0]["container"]["state"] == "Queued").then_some(v)
    })
    .await;
    strict::<ArvQueue>("GET containers (queued)", &queue);
    let one = op_get(
        &admin,
        &arv(&format!("container?container_uuid={}", server.uuid)),
    )
    .await;
    strict::<ArvQueueEntry>("GET container", &one);
    let (code, e) = answer(&admin, M::GET, &arv("container"), None).await;
    assert_eq!(code, 400);
    strict::<ArvErrors>("GET container (no uuid)", &e);

    // Dynamic Cluster while the server waits.
    let jobs = op_get(&admin, &dc("job")).await;
    assert_eq!(strict::<Vec<Job>>("GET job", &jobs).len(), 1);
    let job = op_get(&admin, &dc(&format!("job/{}", server.uuid))).await;
    strict::<Job>("GET job/{id}", &job);
    let nodes = op_get(&admin, &dc("workernode")).await;
    strict::<Vec<WorkerNode>>("GET workernode (held)", &nodes);
    let node = op_get(&admin, &dc("workernode/op-types")).await;
    let node = strict::<WorkerNode>("GET workernode/{host}", &node);
    assert!(node.admin_actions.is_some_and(|a| !a.is_empty()));
    let status = op_get(&admin, &dc("server/status")).await;
    strict::<DcStatus>("GET server/status", &status);
    let done = op_ok(&admin, M::PUT, &dc("workernode/op-types/unhold"), None).await;
    assert!(strict::<DcResult>("PUT workernode/{host}/unhold", &done).success);
    let (code, e) = answer(&admin, M::PUT, &dc("workernode/op-types/nope"), None).await;
    assert_eq!(code, 404);
    assert!(!strict::<DcResult>("PUT workernode/{host}/nope", &e).success);

    // Running: the queue entry as Arvados shows it, the node busy, the pool.
    let queue = eventually("the server running", || async {
        let v = op_get(&admin, &arv("containers")).await;
        (v["items"][0]["container"]["state"] == "Running").then_some(v)
    })
    .await;
    strict::<ArvQueue>("GET containers (running)", &queue);
    let instances = op_get(&admin, &arv("instances")).await;
    strict::<ArvInstances>("GET instances (busy)", &instances);
    let nodes = op_get(&admin, &dc("workernode")).await;
    strict::<Vec<WorkerNode>>("GET workernode (busy)", &nodes);
    let pools = op_get(&admin, &dc("resource")).await;
    let pools = strict::<Vec<Resource>>("GET resource", &pools);
    assert_eq!(pools[0].worker_nodes.len(), 1);
    let pool = op_get(&admin, &dc("resource/edge")).await;
    strict::<Resource>("GET resource/{name}", &pool);

    // The dashboard's data, with one server's view.
    let data = op_get(
        &admin,
        &root(&format!("dashboard/data.json?server={}", server.uuid)),
    )
    .await;
    let data = strict::<DashboardData>("GET dashboard/data.json", &data);
    assert!(!data.servers.is_empty() && !data.hosts.is_empty());
    let (code, e) = answer(&t, M::GET, &root("dashboard/data.json"), None).await;
    assert_eq!(code, 403);
    strict::<DashError>("GET dashboard/data.json (tenant)", &e);

    // Cyborg: versions, a device profile, an ARQ bound and unbound.
    let doc = op_get(&t, &root("accelerator/")).await;
    strict::<RootDocument>("GET accelerator/", &doc);
    let v2 = op_get(&t, &acc("")).await;
    strict::<ApiVersion>("GET accelerator/v2/", &v2);
    let made = op_post(
        &admin,
        &acc("device_profiles"),
        body(&[DeviceProfileCreate {
            name: "one-gpu".into(),
            description: Some("types".into()),
            groups: vec![[("resources:PGPU".to_owned(), "1".to_owned())].into()],
            uuid: None,
        }]),
    )
    .await;
    let profile = strict::<DeviceProfile>("POST device_profiles", &made);
    let list = op_get(&t, &acc("device_profiles")).await;
    strict::<DeviceProfileList>("GET device_profiles", &list);
    let one = op_get(&t, &acc(&format!("device_profiles/{}", profile.uuid))).await;
    strict::<DeviceProfileOne>("GET device_profiles/{uuid}", &one);
    let arqs = op_post(
        &t,
        &acc("accelerator_requests"),
        body(&ArqCreate {
            device_profile_name: "one-gpu".into(),
        }),
    )
    .await;
    let arq = strict::<ArqList>("POST accelerator_requests", &arqs).arqs[0].clone();
    let instance = "6d0b6bd6-8d8c-4bd6-9d2e-6f7e7f3c0001";
    let bind: ArqPatches = [(
        arq.uuid.clone(),
        vec![
            PatchOp::add("/hostname", "op-types"),
            PatchOp::add(
                "/device_rp_uuid",
                "GPU-11111111-aaaa-bbbb-cccc-000000000000",
            ),
            PatchOp::add("/instance_uuid", instance),
        ],
    )]
    .into();
    let (code, v) = answer(
        &admin,
        M::PATCH,
        &acc("accelerator_requests"),
        Some(body(&bind)),
    )
    .await;
    assert_eq!(code, 202, "{v}");
    let bound = eventually("the ARQ bound", || async {
        let v = op_get(&t, &acc(&format!("accelerator_requests/{}", arq.uuid))).await;
        (v["state"] == "Bound").then_some(v)
    })
    .await;
    let bound = strict::<Arq>("GET accelerator_requests/{uuid} (bound)", &bound);
    assert!(!bound.attach_handle_info.is_empty());
    let list = op_get(
        &admin,
        &acc(&format!(
            "accelerator_requests?instance={instance}&bind_state=resolved"
        )),
    )
    .await;
    strict::<ArqList>("GET accelerator_requests?instance", &list);
    let unbind: ArqPatches = [(
        arq.uuid.clone(),
        vec![
            PatchOp::remove("/hostname"),
            PatchOp::remove("/device_rp_uuid"),
            PatchOp::remove("/instance_uuid"),
        ],
    )]
    .into();
    let (code, v) = answer(
        &admin,
        M::PATCH,
        &acc("accelerator_requests"),
        Some(body(&unbind)),
    )
    .await;
    assert_eq!(code, 202, "{v}");
    let list = op_get(&t, &acc("accelerator_requests")).await;
    let list = strict::<ArqList>("GET accelerator_requests (unbound)", &list);
    assert_eq!(list.arqs[0].state, "Unbound");
    let (code, e) = answer(
        &t,
        M::GET,
        &acc("device_profiles/00000000-0000-4000-8000-000000000000"),
        None,
    )
    .await;
    assert_eq!(code, 404);
    let e = strict::<CyborgErrorBody>("GET device_profiles/{unknown}", &e);
    let fault = e.fault().expect("a fault in error_message");
    strict::<backfill_api::cyborg::Fault>(
        "the fault",
        &serde_json::from_str(&e.error_message).unwrap(),
    );
    assert_eq!(fault.faultcode, "Client");
}
