//! The `backfill-api` types against a real coordinator over mutual TLS: every endpoint
//! `backfillctl` uses is driven with requests made from the crate's request types, and each
//! answer is held to its response type strictly: it must deserialize, and the fields the
//! coordinator sent must be exactly the fields the type has (a field the coordinator adds,
//! renames or drops fails here, naming the path). The types themselves tolerate unknown
//! fields (clients must); this test is what keeps them from drifting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_api::accounts::{
    AccountCreate, AccountEdit, AccountFields, AccountList, AccountView, CreatedAccounts,
    LedgerList, QuotaFields, UsageReport,
};
use backfill_api::common::{ActionResult, ErrorBody};
use backfill_api::drives::{
    CloneFields, CreatedDrives, Drive, DriveCreate, DriveFields, DriveList, DriveSummaryList,
    LibraryDrive, LibraryDriveList,
};
use backfill_api::servers::{
    CommandWorkload, CreatedServers, Runtime, Server, ServerCreate, ServerFields, ServerList,
    ServerSummaryList,
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
