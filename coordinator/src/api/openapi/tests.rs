//! The document matches the committed copy, documents exactly the accepted create fields, and
//! names only paths the router serves.

use super::*;
use crate::state::coordinator::Coordinator;
use backfill_shared::clock::ManualClock;
use std::sync::Arc;
use tower::ServiceExt;

#[test]
fn the_committed_copy_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == document_json(),
        "{} is out of date: run `cargo run -p backfill-coordinator -- openapi > docs/openapi.json`",
        path.display()
    );
}

#[test]
fn server_fields_are_the_accepted_ones() {
    let doc = serde_json::to_value(document()).unwrap();
    let props = doc["components"]["schemas"]["ServerFields"]["properties"]
        .as_object()
        .unwrap();
    let mut documented: Vec<&str> = props.keys().map(String::as_str).collect();
    let mut accepted = crate::api::cloudsigma::server_json::FIELDS.to_vec();
    documented.sort_unstable();
    accepted.sort_unstable();
    assert_eq!(documented, accepted);
}

/// The literal paths of `.route("...")` in the modules nested under `/api/2.0` (the servers'
/// are built from `collection_ops`'s names, with `format!`).
#[test]
fn every_routed_api_path_is_documented() {
    let documented: Vec<String> = operations().into_iter().map(|o| o.0).collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/cloudsigma");
    let mut seen = 0;
    for file in [
        "capabilities.rs",
        "servers.rs",
        "drives.rs",
        "accounts.rs",
        "usage.rs",
        "webhooks.rs",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for chunk in text.split(".route(").skip(1) {
            let Some(rest) = chunk.trim_start().strip_prefix('"') else {
                continue;
            };
            let path = &rest[..rest.find('"').unwrap()];
            seen += 1;
            assert!(
                documented.iter().any(|d| d == path),
                "{file} routes {path}, which the OpenAPI document does not describe"
            );
        }
    }
    assert!(
        seen > 10,
        "found only {seen} routes: has the routing moved?"
    );
}

/// The methods a documented path does not document are not served (405).
#[tokio::test]
async fn undocumented_methods_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::testing::open_in(dir.path()).await;
    let c = Coordinator::load(
        store,
        Arc::new(ManualClock::new(1)),
        &[],
        Default::default(),
    )
    .await
    .unwrap();
    let router = crate::api::router(Arc::new(c));
    let ops = operations();
    let mut paths: Vec<&String> = ops.iter().map(|o| &o.0).collect();
    paths.dedup();
    for path in paths {
        for (method, name) in [
            (HttpMethod::Get, "GET"),
            (HttpMethod::Post, "POST"),
            (HttpMethod::Put, "PUT"),
            (HttpMethod::Delete, "DELETE"),
        ] {
            if ops.iter().any(|o| &o.0 == path && o.1 == method) {
                continue;
            }
            let uri = format!(
                "/api/2.0{}",
                path.replace("{uuid}", "00000000-0000-0000-0000-000000000001")
                    .replace("{name}", "acme")
                    .replace("{sub}", "00000000-0000-0000-0000-000000000002")
                    .replace("{id}", "1")
            );
            let req = axum::http::Request::builder()
                .method(name)
                .uri(&uri)
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = router.clone().oneshot(req).await.unwrap();
            assert_eq!(
                resp.status().as_u16(),
                405,
                "{name} {uri} is served but not documented"
            );
        }
    }
}

#[tokio::test]
async fn every_documented_path_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::testing::open_in(dir.path()).await;
    let c = Coordinator::load(
        store,
        Arc::new(ManualClock::new(1)),
        &[],
        Default::default(),
    )
    .await
    .unwrap()
    .with_driver_access(crate::state::access::DriverAccess::dev());
    let router = crate::api::router(Arc::new(c));
    for (path, method) in operations() {
        let uri = format!(
            "/api/2.0{}",
            path.replace("{uuid}", "00000000-0000-0000-0000-000000000001")
                .replace("{name}", "acme")
        );
        let method = match method {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            _ => "OPTIONS",
        };
        let req = axum::http::Request::builder()
            .method(method)
            .uri(&uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            status != 405 && !text.contains("no such path"),
            "{method} {uri} is documented but not served: {status} {text}"
        );
    }
}

#[test]
fn drive_fields_are_the_accepted_ones() {
    let doc = serde_json::to_value(document()).unwrap();
    let props = doc["components"]["schemas"]["DriveFields"]["properties"]
        .as_object()
        .unwrap();
    let mut documented: Vec<&str> = props.keys().map(String::as_str).collect();
    let mut accepted = crate::api::cloudsigma::drives::FIELDS.to_vec();
    documented.sort_unstable();
    accepted.sort_unstable();
    assert_eq!(documented, accepted);
    for schema in ["DriveFields", "CloneFields"] {
        let size = &doc["components"]["schemas"][schema]["properties"]["size"];
        assert_eq!(
            size["minimum"].as_u64(),
            Some(backfill_shared::drive::MIN_DRIVE_BYTES),
            "{schema}"
        );
        assert_eq!(
            size["maximum"].as_u64(),
            Some(backfill_shared::drive::MAX_DRIVE_BYTES),
            "{schema}"
        );
    }
}

/// The drive and library drive objects the handlers answer have exactly the documented fields.
#[tokio::test]
async fn drive_answers_have_the_documented_fields() {
    use backfill_shared::pki::{PeerIdentity, Role};
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::testing::open_in(dir.path()).await;
    let c = Coordinator::load(
        store,
        Arc::new(ManualClock::new(1_000)),
        &["t".into()],
        Default::default(),
    )
    .await
    .unwrap()
    .with_driver_access(crate::state::access::DriverAccess::dev());
    let mut hello = crate::link::session_tests::hello("h1");
    hello.inventory.drivers.vm = Some(backfill_shared::VmDriver {
        accel: "tcg".into(),
        images: vec![backfill_shared::VmImage {
            name: "lib.qcow2".into(),
            format: "qcow2".into(),
            virtual_size: 1 << 30,
        }],
    });
    let (_conn, _rx) = c.register_agent(&hello).await.unwrap();
    let router = crate::api::router(Arc::new(c));
    let send = |method: &'static str, uri: String, body: &'static str| {
        let router = router.clone();
        async move {
            let mut req = axum::http::Request::builder()
                .method(method)
                .uri(format!("/api/2.0{uri}"))
                .body(axum::body::Body::from(body))
                .unwrap();
            req.extensions_mut().insert(PeerIdentity {
                role: Role::Account,
                name: "t".into(),
            });
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (status, v)
        }
    };
    let doc = serde_json::to_value(document()).unwrap();
    let check = |what: &str, v: &serde_json::Value, schema: &str| {
        let mut got: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut documented: Vec<&str> = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        got.sort_unstable();
        documented.sort_unstable();
        assert_eq!(got, documented, "{what} against {schema}");
    };

    let (status, libs) = send("GET", "/libdrives/".into(), "").await;
    assert_eq!(status, 200, "{libs}");
    check("the library list", &libs, "LibraryDriveList");
    check("meta", &libs["meta"], "ListMeta");
    check("a library drive", &libs["objects"][0], "LibraryDrive");
    let lib = libs["objects"][0]["uuid"].as_str().unwrap().to_owned();
    let (status, one) = send("GET", format!("/libdrives/{lib}/"), "").await;
    assert_eq!(status, 200, "{one}");
    check("a library drive", &one, "LibraryDrive");

    let (status, cloned) = send(
        "POST",
        format!("/libdrives/{lib}/action/?do=clone"),
        r#"{"name": "mine"}"#,
    )
    .await;
    assert_eq!(status, 202, "{cloned}");
    check("a clone's answer", &cloned, "CreatedDrives");
    check("a cloned drive", &cloned["objects"][0], "Drive");
    check(
        "a drive's runtime",
        &cloned["objects"][0]["runtime"],
        "DriveRuntime",
    );
    let (status, made) = send(
        "POST",
        "/drives/".into(),
        r#"{"objects": [{"name": "blank", "size": 1048576, "media": "disk"}]}"#,
    )
    .await;
    assert_eq!(status, 201, "{made}");
    check("a create's answer", &made, "CreatedDrives");
    check("a created drive", &made["objects"][0], "Drive");
    let (status, list) = send("GET", "/drives/".into(), "").await;
    assert_eq!(status, 200, "{list}");
    check("the drive list", &list, "DriveSummaryList");
    check("a listed drive", &list["objects"][0], "DriveSummary");
    let (status, detail) = send("GET", "/drives/detail/".into(), "").await;
    assert_eq!(status, 200, "{detail}");
    check("the detailed list", &detail, "DriveList");
    check("a detailed drive", &detail["objects"][1], "Drive");
}

/// backfill-api's answer types are tolerant (`#[serde(default)]`), the document is exact:
/// every property an answer always carries is required, none has a default, and only the
/// request's own optional parts stay optional.
#[test]
fn answers_require_every_field_the_coordinator_always_sends() {
    let doc = serde_json::to_value(document()).unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let required = |name: &str| -> Vec<String> {
        let mut r: Vec<String> = schemas[name]["required"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        r.sort_unstable();
        r
    };
    for (name, schema) in schemas {
        for (field, p) in schema["properties"].as_object().into_iter().flatten() {
            assert!(p.get("default").is_none(), "{name}.{field} has a default");
        }
    }
    assert_eq!(
        required("Runtime"),
        ["active_since", "host", "nics", "perf_factor"]
    );
    assert_eq!(required("ServerList"), ["meta", "objects"]);
    assert_eq!(required("Capabilities"), ["backfilling"]);
    assert!(required("Server").contains(&"uuid".to_owned()));
    assert!(!required("Server").contains(&"runtime".to_owned()));
    // The coordinator's request types keep utoipa's reading: a subscription's filters may
    // each be left out, a webhook's description too.
    assert_eq!(required("Filters"), Vec::<String>::new());
    assert_eq!(required("WebhookFields"), ["url"]);
    assert_eq!(required("DriveFields"), ["media", "name", "size"]);
}
