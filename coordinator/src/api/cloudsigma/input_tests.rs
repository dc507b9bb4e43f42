//! Strict inputs through the router, per endpoint family: control, bidirectional and invisible
//! characters in names, tags and keys; repeated JSON keys; repeated query parameters; and the
//! one limit/offset/time-range parser. Each refusal is a 400 in the family's error shape that
//! names what was wrong and changes nothing; the good input beside it still works.

use crate::api::operator::tests::{Fx, Who, fx_with, send};
use crate::policy::pools::PoolConfig;
use futures_util::StreamExt;
use serde_json::{Value, json};

async fn fx() -> Fx {
    let pool = PoolConfig {
        name: "edge".into(),
        min: 0,
        max: 3,
        priority: 0,
        flavor: None,
        hosts: vec!["h*".into()],
        reservation_account: None,
        reservation_queue: None,
        provisioner: None,
    };
    fx_with(Some("0123456789abcdef-token"), vec![pool]).await
}

async fn tenant(f: &Fx, method: &str, uri: &str, body: &str) -> (u16, Value) {
    let (code, _, v) = send(f, Who::Tenant, method, uri, &[], body).await;
    (code, v)
}

async fn admin(f: &Fx, method: &str, uri: &str, body: &str) -> (u16, Value) {
    let (code, _, v) = send(f, Who::Admin, method, uri, &[], body).await;
    (code, v)
}

/// A CloudSigma validation error: a one-item list naming `point`; returns the message.
#[track_caller]
fn refused(case: &str, (code, v): (u16, Value), point: &str) -> String {
    assert_eq!(code, 400, "{case}: {v}");
    assert_eq!(v[0]["error_type"], "validation", "{case}: {v}");
    assert_eq!(v[0]["error_point"], point, "{case}: {v}");
    v[0]["error_message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn server(name: &str) -> Value {
    json!({"name": name, "cpu": 1000, "mem": 268_435_456})
}

async fn create_server(f: &Fx, name: &str) -> String {
    let body = json!({ "objects": [server(name)] }).to_string();
    let (code, v) = tenant(f, "POST", "/api/2.0/bservers/", &body).await;
    assert_eq!(code, 201, "{v}");
    v["objects"][0]["uuid"].as_str().unwrap().to_owned()
}

async fn server_count(f: &Fx) -> u64 {
    let (code, v) = tenant(f, "GET", "/api/2.0/bservers/?limit=0", "").await;
    assert_eq!(code, 200, "{v}");
    v["meta"]["total_count"].as_u64().unwrap()
}

#[tokio::test]
async fn server_names_tags_and_meta_keys_refuse_control_and_bidi_characters() {
    let f = fx().await;
    let with = |k: &str, v: Value| {
        let mut s = server("ok");
        s[k] = v;
        json!({ "objects": [s] }).to_string()
    };
    let cases = [
        (
            "NUL in name",
            with("name", json!("a\u{0}b")),
            "objects[0].name",
        ),
        (
            "RLO in name",
            with("name", json!("gpj.\u{202e}exe")),
            "objects[0].name",
        ),
        (
            "isolate in name",
            with("name", json!("a\u{2066}b")),
            "objects[0].name",
        ),
        (
            "escape in name",
            with("name", json!("\u{1b}[2J")),
            "objects[0].name",
        ),
        (
            "C1 in name",
            with("name", json!("a\u{85}")),
            "objects[0].name",
        ),
        (
            "newline in name",
            with("name", json!("a\nb")),
            "objects[0].name",
        ),
        (
            "RLO in tag",
            with("tags", json!(["ok", "x\u{202e}"])),
            "objects[0].tags",
        ),
        (
            "NUL in meta key",
            with("meta", json!({"k\u{0}": "v"})),
            "objects[0].meta",
        ),
        (
            "bidi in meta key",
            with("meta", json!({"\u{202d}k": "v"})),
            "objects[0].meta",
        ),
        (
            "NUL in meta value",
            with("meta", json!({"k": "v\u{0}"})),
            "objects[0].meta",
        ),
        (
            "RLO in meta value",
            with("meta", json!({"k": "\u{202e}v"})),
            "objects[0].meta",
        ),
        (
            "escape in vnc_password",
            with("vnc_password", json!("\u{1b}x")),
            "objects[0].vnc_password",
        ),
    ];
    for (case, body, point) in cases {
        for collection in ["servers", "bservers"] {
            let uri = format!("/api/2.0/{collection}/");
            let msg = refused(case, tenant(&f, "POST", &uri, &body).await, point);
            assert!(msg.contains("U+"), "{case}: {msg}");
        }
    }
    assert_eq!(server_count(&f).await, 0, "a refused create made a server");

    // Good input, Unicode included, still works; meta values may hold line breaks.
    let mut good = server("Zürich サーバー שרת 👩\u{200d}💻");
    good["tags"] = json!(["tag-1", "é"]);
    good["meta"] = json!({"ssh_public_key": "ssh-ed25519 AAAA x\n", "note": "a\tb"});
    let body = json!({ "objects": [good] }).to_string();
    let (code, v) = tenant(&f, "POST", "/api/2.0/bservers/", &body).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["objects"][0]["meta"]["note"], "a\tb");

    // An edit is held to the same rules, and changes nothing when refused.
    let id = create_server(&f, "editable").await;
    let uri = format!("/api/2.0/bservers/{id}/");
    for (case, body, point) in [
        ("RLO in name", json!({"name": "x\u{202e}"}), "name"),
        ("NUL in tag", json!({"tags": ["\u{0}"]}), "tags"),
        (
            "bidi in meta key",
            json!({"meta": {"\u{2067}": "v"}}),
            "meta",
        ),
    ] {
        refused(
            case,
            tenant(&f, "PUT", &uri, &body.to_string()).await,
            point,
        );
    }
    let (code, v) = tenant(&f, "GET", &uri, "").await;
    assert_eq!((code, v["name"].as_str()), (200, Some("editable")));
    let (code, v) = tenant(&f, "PUT", &uri, r#"{"name": "renamed"}"#).await;
    assert_eq!((code, v["name"].as_str()), (200, Some("renamed")), "{v}");
}

#[tokio::test]
async fn repeated_json_keys_are_refused_everywhere() {
    let f = fx().await;
    let cases: [(&str, &str, &str, Who); 6] = [
        (
            "POST",
            "/api/2.0/bservers/",
            r#"{"objects": [{"name": "a", "cpu": 1000, "mem": 268435456, "name": "b"}]}"#,
            Who::Tenant,
        ),
        (
            "POST",
            "/api/2.0/servers/",
            r#"{"objects": [{"name": "a", "cpu": 1000, "mem": 268435456}], "objects": []}"#,
            Who::Tenant,
        ),
        (
            "POST",
            "/api/2.0/accounts/",
            r#"{"objects": [{"name": "acme", "backfill": false, "backfill": true}]}"#,
            Who::Admin,
        ),
        (
            "PUT",
            "/api/2.0/accounts/t/",
            r#"{"quota": {"cpu": 1, "cpu": null}}"#,
            Who::Admin,
        ),
        (
            "POST",
            "/api/2.0/webhooks/",
            r#"{"objects": [{"url": "https://a.example/", "url": "https://b.example/"}]}"#,
            Who::Tenant,
        ),
        (
            "POST",
            "/api/2.0/webhooks/00000000-0000-0000-0000-000000000001/subscriptions/",
            r#"{"objects": [{"events": ["cloud_termination"], "filters": {"tags": ["a"], "tags": []}}]}"#,
            Who::Tenant,
        ),
    ];
    for (method, uri, body, who) in cases {
        let (code, _, v) = send(&f, who, method, uri, &[], body).await;
        let msg = refused(uri, (code, v), "body");
        assert!(msg.contains("duplicate key"), "{uri}: {msg}");
    }
    assert_eq!(server_count(&f).await, 0);
    let (_, v) = admin(&f, "GET", "/api/2.0/accounts/?limit=0", "").await;
    assert_eq!(v["meta"]["total_count"], 1, "{v}");
    let (_, v) = tenant(&f, "GET", "/api/2.0/webhooks/", "").await;
    assert_eq!(v["meta"]["total_count"], 0, "{v}");

    // The same key in two objects is no repeat.
    let body = json!({"objects": [server("a"), server("b")]}).to_string();
    let (code, v) = tenant(&f, "POST", "/api/2.0/bservers/", &body).await;
    assert_eq!(code, 201, "{v}");
}

#[tokio::test]
async fn repeated_query_parameters_are_refused() {
    let f = fx().await;
    let id = create_server(&f, "s").await;
    let action = format!("/api/2.0/bservers/{id}/action/");
    let msg = refused(
        "do twice",
        tenant(&f, "POST", &format!("{action}?do=start&do=stop"), "").await,
        "do",
    );
    assert!(msg.contains("more than once"), "{msg}");
    let (_, v) = tenant(&f, "GET", &format!("/api/2.0/bservers/{id}/"), "").await;
    assert_eq!(v["status"], "stopped", "a refused action acted: {v}");

    for (uri, point) in [
        ("/api/2.0/bservers/?limit=1&limit=2", "limit"),
        ("/api/2.0/servers/detail/?offset=0&offset=0", "offset"),
        ("/api/2.0/bservers/?name=a&name=b", "name"),
        ("/api/2.0/usage/?start=0&start=1", "start"),
        ("/api/2.0/ledger/?end=5&end=6", "end"),
        ("/api/2.0/subscriptions/?limit=0&limit=0", "limit"),
        ("/api/2.0/webhooks/?offset=1&offset=2", "offset"),
    ] {
        refused(uri, tenant(&f, "GET", uri, "").await, point);
    }
    refused(
        "accounts",
        admin(&f, "GET", "/api/2.0/accounts/?limit=1&limit=1", "").await,
        "limit",
    );
    // Where no handler reads the query, too.
    for (uri, point) in [
        ("/api/2.0/capabilities/?limit=0&limit=0", "limit"),
        (
            "/api/2.0/bservers/schema/?format=json&format=json",
            "format",
        ),
    ] {
        refused(uri, tenant(&f, "GET", uri, "").await, point);
    }
    let redeliver = "/api/2.0/webhooks/w/deliveries/d/action/?do=redeliver&do=redeliver";
    refused("redeliver", tenant(&f, "POST", redeliver, "").await, "do");

    // Once is fine: the start is taken (and answered for want of a host, not of a valid
    // query).
    let (code, v) = tenant(&f, "POST", &format!("{action}?do=start"), "").await;
    assert_eq!(
        (code, v[0]["error_type"].as_str()),
        (503, Some("backend")),
        "{v}"
    );
    let (code, v) = tenant(&f, "GET", "/api/2.0/bservers/?limit=1&name=s", "").await;
    assert_eq!((code, v["meta"]["total_count"].as_u64()), (200, Some(1)));
}

#[tokio::test]
async fn every_list_pages_through_one_parser() {
    let f = fx().await;
    let lists = [
        "/api/2.0/servers/",
        "/api/2.0/bservers/detail/",
        "/api/2.0/usage/",
        "/api/2.0/ledger/",
        "/api/2.0/subscriptions/",
        "/api/2.0/webhooks/",
    ];
    let bad = [
        ("limit=-1", "limit"),
        ("limit=1000000000000", "limit"),
        ("limit=10%5E12", "limit"),
        ("limit=1001", "limit"),
        ("limit=", "limit"),
        ("offset=abc", "offset"),
        ("offset=-1", "offset"),
        ("offset=99999999999999999999", "offset"),
    ];
    for list in lists {
        for (q, point) in bad {
            let uri = format!("{list}?{q}");
            let msg = refused(&uri, tenant(&f, "GET", &uri, "").await, point);
            assert!(msg.contains(point), "{uri}: {msg}");
        }
        let (code, v) = tenant(&f, "GET", &format!("{list}?limit=5&offset=0"), "").await;
        assert_eq!(code, 200, "{list}: {v}");
        assert_eq!(v["meta"]["limit"], 5, "{list}: {v}");
    }
    for (q, point) in bad {
        let uri = format!("/api/2.0/accounts/?{q}");
        refused(&uri, admin(&f, "GET", &uri, "").await, point);
    }
}

#[tokio::test]
async fn usage_and_ledger_take_one_time_range_parser() {
    let f = fx().await;
    for list in ["/api/2.0/usage/", "/api/2.0/ledger/"] {
        for (q, point) in [
            ("start=abc", "start"),
            ("end=abc", "end"),
            ("start=", "start"),
            ("start=-1", "start"),
            ("end=9223372036854775807", "end"),
            ("start=-9223372036854775808", "start"),
            ("start=2026-02-30T00:00:00Z", "start"),
            ("start=500&end=100", "start"),
            ("start=0&end=999999999", "start"),
        ] {
            let uri = format!("{list}?{q}");
            let msg = refused(&uri, tenant(&f, "GET", &uri, "").await, point);
            assert!(msg.contains(point), "{uri}: {msg}");
        }
        let uri = format!("{list}?start=1970-01-01T00:00:00Z&end=1000");
        let (code, v) = tenant(&f, "GET", &uri, "").await;
        assert_eq!(code, 200, "{uri}: {v}");
        let (code, v) = tenant(&f, "GET", list, "").await;
        assert_eq!(code, 200, "{list}: {v}");
    }
    // The usage report's lines page; its totals cover the period.
    let (_, v) = tenant(&f, "GET", "/api/2.0/usage/", "").await;
    assert_eq!(
        v["meta"],
        json!({"limit": 0, "offset": 0, "total_count": 0})
    );
}

#[tokio::test]
async fn webhook_urls_descriptions_and_filter_tags_refuse_control_characters() {
    let f = fx().await;
    let hook = |url: &str, description: &str| {
        json!({"objects": [{"url": url, "description": description}]}).to_string()
    };
    for (case, body, point) in [
        (
            "newline in url",
            hook("https://a.exa\nmple/", ""),
            "objects[0].url",
        ),
        (
            "NUL in url",
            hook("https://a.example/\u{0}", ""),
            "objects[0].url",
        ),
        (
            "RLO in description",
            hook("https://a.example/", "x\u{202e}"),
            "objects[0].description",
        ),
        (
            "NUL in description",
            hook("https://a.example/", "\u{0}"),
            "objects[0].description",
        ),
    ] {
        refused(
            case,
            tenant(&f, "POST", "/api/2.0/webhooks/", &body).await,
            point,
        );
    }
    let (code, v) = tenant(
        &f,
        "POST",
        "/api/2.0/webhooks/",
        &hook("https://a.example/", "line 1\nline 2"),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let w = v["objects"][0]["uuid"].as_str().unwrap().to_owned();
    let subs = format!("/api/2.0/webhooks/{w}/subscriptions/");
    let sub = |tag: &str| {
        json!({"objects": [{"events": ["cloud_termination"], "filters": {"tags": [tag]}}]})
            .to_string()
    };
    refused(
        "RLO in filter tag",
        tenant(&f, "POST", &subs, &sub("a\u{202e}")).await,
        "objects[0].filters.tags",
    );
    let (code, v) = tenant(&f, "POST", &subs, &sub("batch")).await;
    assert_eq!(code, 201, "{v}");
    let (_, v) = tenant(&f, "GET", &subs, "").await;
    assert_eq!(v["meta"]["total_count"], 1, "{v}");
}

#[tokio::test]
async fn operator_and_cyborg_apis_refuse_the_same() {
    let f = fx().await;
    // Cyborg: its own error shape, the same rules.
    let profile = |name: &str, description: &str, value: &str| {
        json!([{"name": name, "description": description,
                "groups": [{"resources:PGPU": "1", "accel:model": value}]}])
        .to_string()
    };
    let uri = "/accelerator/v2/device_profiles";
    for (case, body) in [
        ("RLO in description", profile("p", "\u{202e}", "x")),
        ("NUL in group value", profile("p", "", "a\u{0}")),
        ("NUL in name", profile("p\u{0}", "", "x")),
        (
            "repeated key",
            r#"[{"name": "p", "name": "q", "groups": [{"resources:PGPU": "1"}]}]"#.to_owned(),
        ),
    ] {
        let (code, v) = admin(&f, "POST", uri, &body).await;
        assert_eq!(code, 400, "{case}: {v}");
        assert!(v["error_message"].is_string(), "{case}: {v}");
    }
    let (code, v) = admin(&f, "GET", &format!("{uri}?name=a&name=b"), "").await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error_message"]
            .as_str()
            .unwrap()
            .contains("more than once")
    );
    // ARQ bindings are identifiers too.
    let patch = json!({"00000000-0000-0000-0000-000000000001": [
        {"op": "add", "path": "/hostname", "value": "h1\u{202e}"},
        {"op": "add", "path": "/device_rp_uuid", "value": "GPU-A"},
        {"op": "add", "path": "/instance_uuid", "value": "00000000-0000-0000-0000-000000000002"},
    ]});
    let (code, v) = admin(
        &f,
        "PATCH",
        "/accelerator/v2/accelerator_requests",
        &patch.to_string(),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error_message"].as_str().unwrap().contains("U+202E"),
        "{v}"
    );
    let (code, v) = admin(&f, "POST", uri, &profile("p", "Zürich\nGPUs", "A100")).await;
    assert_eq!(code, 201, "{v}");
    let (code, v) = admin(&f, "GET", &format!("{uri}?name=p"), "").await;
    assert_eq!(
        (code, v["device_profiles"][0]["name"].as_str()),
        (200, Some("p"))
    );

    // Dynamic Cluster and Arvados: repeated parameters are refused before anything happens.
    for uri in [
        "/dynamiccluster/workernode?state=1&state=2",
        "/dynamiccluster/resource/edge?num=1&num=3",
    ] {
        let method = if uri.contains("resource") {
            "PUT"
        } else {
            "GET"
        };
        let (code, v) = admin(&f, method, uri, "").await;
        assert_eq!(
            (code, v["success"].as_bool()),
            (400, Some(false)),
            "{uri}: {v}"
        );
    }
    let (code, _, v) = send(
        &f,
        Who::Admin,
        "POST",
        "/arvados/v1/dispatch/instances/kill?instance_id=h1",
        &[("content-type", "application/x-www-form-urlencoded")],
        "instance_id=h2",
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("more than once"),
        "{v}"
    );
    let (code, v) = admin(
        &f,
        "POST",
        "/arvados/v1/dispatch/instances/hold?instance_id=h1&reason=%E2%80%AE",
        "",
    )
    .await;
    assert_eq!(code, 400, "{v}");
}

/// Quotas are stored as signed 64-bit integers: a larger one is refused, not clamped.
#[tokio::test]
async fn quotas_beyond_the_store_are_refused_not_clamped() {
    let f = fx().await;
    let big = "9223372036854775808";
    let body = format!(r#"{{"objects": [{{"name": "acme", "quota": {{"servers": {big}}}}}]}}"#);
    refused(
        "create",
        admin(&f, "POST", "/api/2.0/accounts/", &body).await,
        "objects[0].quota.servers",
    );
    let body = format!(r#"{{"quota": {{"cpu": {big}}}}}"#);
    refused(
        "edit",
        admin(&f, "PUT", "/api/2.0/accounts/t/", &body).await,
        "quota.cpu",
    );
    let (_, v) = admin(&f, "GET", "/api/2.0/accounts/t/", "").await;
    assert_eq!(v["quota"]["cpu"], Value::Null, "{v}");
    let body = r#"{"quota": {"cpu": 9223372036854775807}}"#;
    let (code, v) = admin(&f, "PUT", "/api/2.0/accounts/t/", body).await;
    assert_eq!(
        (code, v["quota"]["cpu"].as_u64()),
        (200, Some(i64::MAX as u64)),
        "{v}"
    );
}

/// The storage quota is set on create and edit, shown, refused when not bytes, and reset to the
/// configured default with null.
#[tokio::test]
async fn storage_quota_is_set_shown_and_reset() {
    let f = fx().await;
    let body = r#"{"objects": [{"name": "acme", "quota": {"storage": 1073741824}}]}"#;
    let (code, v) = admin(&f, "POST", "/api/2.0/accounts/", body).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        v["objects"][0]["quota"]["storage"], 1_073_741_824_u64,
        "{v}"
    );
    let (_, v) = admin(&f, "GET", "/api/2.0/accounts/t/", "").await;
    assert_eq!(v["quota"]["storage"], Value::Null, "{v}");
    assert_eq!(v["in_use"]["storage"], 0, "{v}");
    let body = r#"{"quota": {"storage": 2147483648}}"#;
    let (code, v) = admin(&f, "PUT", "/api/2.0/accounts/t/", body).await;
    assert_eq!(
        (code, v["quota"]["storage"].as_u64()),
        (200, Some(2 << 30)),
        "{v}"
    );
    // Other quotas are left as they were.
    assert_eq!(v["quota"]["cpu"], Value::Null, "{v}");
    refused(
        "a negative storage quota",
        admin(
            &f,
            "PUT",
            "/api/2.0/accounts/t/",
            r#"{"quota": {"storage": -1}}"#,
        )
        .await,
        "quota.storage",
    );
    let (_, v) = admin(&f, "GET", "/api/2.0/accounts/t/", "").await;
    assert_eq!(v["quota"]["storage"].as_u64(), Some(2 << 30), "{v}");
    let (code, v) = admin(
        &f,
        "PUT",
        "/api/2.0/accounts/t/",
        r#"{"quota": {"storage": null}}"#,
    )
    .await;
    assert_eq!((code, &v["quota"]["storage"]), (200, &Value::Null), "{v}");
    // Unlimited explicitly (whatever `[drives] storage_quota_bytes` says), and back.
    let (code, v) = admin(
        &f,
        "PUT",
        "/api/2.0/accounts/t/",
        r#"{"quota": {"storage": "unlimited"}}"#,
    )
    .await;
    assert_eq!(
        (code, &v["quota"]["storage"]),
        (200, &json!("unlimited")),
        "{v}"
    );
    let (_, v) = admin(&f, "GET", "/api/2.0/accounts/t/", "").await;
    assert_eq!(v["quota"]["storage"], "unlimited", "{v}");
    let body = r#"{"objects": [{"name": "big", "quota": {"storage": "unlimited"}}]}"#;
    let (code, v) = admin(&f, "POST", "/api/2.0/accounts/", body).await;
    assert_eq!(
        (code, &v["objects"][0]["quota"]["storage"]),
        (201, &json!("unlimited")),
        "{v}"
    );
    refused(
        "a word other than unlimited",
        admin(
            &f,
            "PUT",
            "/api/2.0/accounts/t/",
            r#"{"quota": {"storage": "lots"}}"#,
        )
        .await,
        "quota.storage",
    );
    refused(
        "unlimited is storage's word only",
        admin(
            &f,
            "PUT",
            "/api/2.0/accounts/t/",
            r#"{"quota": {"cpu": "unlimited"}}"#,
        )
        .await,
        "quota.cpu",
    );
    let (code, v) = admin(
        &f,
        "PUT",
        "/api/2.0/accounts/t/",
        r#"{"quota": {"storage": null}}"#,
    )
    .await;
    assert_eq!((code, &v["quota"]["storage"]), (200, &Value::Null), "{v}");
}

/// A refusal that does not need the body still reads it, so the client's keep-alive connection
/// stays usable (hyper closes a connection whose request body was left unread).
#[tokio::test]
async fn early_refusals_still_read_the_body() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;
    let f = fx().await;
    for (uri, who_is_admin) in [
        ("/api/2.0/bservers/", true),
        ("/api/2.0/accounts/", false),
        (
            "/api/2.0/bservers/not-a-uuid/action/?do=start&do=stop",
            false,
        ),
        ("/no/such/path", false),
    ] {
        let body = r#"{"objects": []}"#;
        let read = Arc::new(AtomicBool::new(false));
        let flag = read.clone();
        let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(
            body.as_bytes().to_vec(),
        )])
        .chain(futures_util::stream::poll_fn(move |_| {
            flag.store(true, Ordering::SeqCst);
            std::task::Poll::Ready(None)
        }));
        let identity = if who_is_admin {
            backfill_shared::pki::PeerIdentity {
                role: backfill_shared::pki::Role::Admin,
                name: "ops".into(),
            }
        } else {
            backfill_shared::pki::PeerIdentity {
                role: backfill_shared::pki::Role::Account,
                name: "t".into(),
            }
        };
        let mut req = axum::http::Request::builder()
            .method("POST")
            .uri(uri)
            .header("content-length", body.len())
            .body(axum::body::Body::from_stream(chunks))
            .unwrap();
        req.extensions_mut().insert(identity);
        let resp = f.router.clone().oneshot(req).await.unwrap();
        assert!(resp.status().is_client_error(), "{uri}: {}", resp.status());
        assert!(
            read.load(Ordering::SeqCst),
            "{uri}: the body was left unread"
        );
    }
}
