//! The document matches the committed copy, documents exactly the accepted create fields, and
//! names only paths the router serves.

use super::*;
use crate::coordinator::Coordinator;
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
    let mut accepted = crate::api::server_json::FIELDS.to_vec();
    documented.sort_unstable();
    accepted.sort_unstable();
    assert_eq!(documented, accepted);
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
    .with_driver_access(crate::access::DriverAccess::dev());
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
