//! The public API: axum routers served by hyper-util over tokio-rustls. The caller's identity
//! comes from its verified client certificate and travels in the request's extensions.

mod accounts;
mod arvados;
mod body;
mod capabilities;
mod conn;
mod cyborg;
mod cyborg_arqs;
#[cfg(test)]
mod cyborg_tests;
mod dashboard;
mod drive_move;
mod drives;
mod dynamic_cluster;
mod error;
#[cfg(test)]
mod input_tests;
mod json_body;
mod listing;
pub mod openapi;
mod openapi_drives;
mod openapi_params;
mod operator_auth;
#[cfg(test)]
mod operator_tests;
mod params;
pub mod receiver_openapi;
mod schema;
pub mod serve;
mod server_json;
mod servers;
mod tenant;
mod text;
mod usage;
pub mod views;
mod webhooks;
#[cfg(test)]
mod workload_tests;

pub use error::ApiError;
pub use serve::{Listening, serve_api, serve_management};

/// A server create body as the handler reads it: strict JSON (no repeated keys), then the
/// fields. Pure, so the fuzz targets (`fuzz/`) call it directly.
pub fn parse_create_body(
    body: &[u8],
    flavors: &crate::flavors::Flavors,
) -> Result<Vec<crate::coordinator::NewServer>, ApiError> {
    server_json::parse_create(&json_body::parse(body)?, flavors)
}

/// A server edit body as the handler reads it (see [`parse_create_body`]).
pub fn parse_edit_body(
    current: &crate::store::ServerRecord,
    body: &[u8],
    flavors: &crate::flavors::Flavors,
) -> Result<crate::coordinator::NewServer, ApiError> {
    server_json::parse_edit(current, &json_body::parse(body)?, flavors)
}

use crate::coordinator::Coordinator;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use std::sync::Arc;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct AppState {
    pub coordinator: Arc<Coordinator>,
}

pub fn router(coordinator: Arc<Coordinator>) -> Router {
    let state = AppState { coordinator };
    let routes = Router::new()
        .nest(
            "/api/2.0",
            capabilities::routes()
                .merge(servers::routes())
                .merge(drives::routes())
                .merge(accounts::routes())
                .merge(usage::routes())
                .merge(webhooks::routes())
                .route("/openapi.json", axum::routing::get(openapi_json))
                // Also where a handler reads no parameter (capabilities, schema, one object).
                .layer(axum::middleware::from_fn(params::refuse_repeated)),
        )
        .merge(operator_routes())
        .merge(cyborg::routes())
        .fallback(|| async {
            ApiError::not_found("no such path (API paths start with /api/2.0/ and end with '/')")
        });
    finish(routes, state)
}

/// The operator APIs: Arvados dispatch and Dynamic Cluster.
fn operator_routes() -> Router<AppState> {
    Router::new()
        .nest("/arvados/v1/dispatch", arvados::routes())
        .nest("/dynamiccluster", dynamic_cluster::routes())
        .merge(dashboard::routes())
}

/// The management listener's router: the operator APIs only.
pub fn management_router(coordinator: Arc<Coordinator>) -> Router {
    let state = AppState { coordinator };
    let routes = operator_routes().fallback(|| async {
        ApiError::not_found(
            "no such path: this listener serves /arvados/v1/dispatch/, /dynamiccluster/ and /dashboard only",
        )
    });
    finish(routes, state)
}

/// The layers every router gets: 405s, bodies read whole, the body limit, request ids and
/// request counts.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
                error_type: "validation",
                point: None,
                message: "method not allowed on this path".into(),
            }
        })
        .layer(axum::middleware::from_fn(body::read_whole))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(request_id))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Counts each request by its route pattern (not the raw path: ids would explode the
/// label set) and status code.
async fn count(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let labels = crate::metrics::RouteCode {
        route,
        code: resp.status().as_u16(),
    };
    state
        .coordinator
        .metrics
        .api_requests
        .get_or_create(&labels)
        .inc();
    resp
}

/// The OpenAPI document (public: it describes, it grants nothing).
async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi::document_json(),
    )
        .into_response()
}

/// Every response carries `X-REQUEST-ID` (pycloudsigma reads it), for support and logs.
async fn request_id(mut resp: axum::response::Response) -> axum::response::Response {
    if let Ok(v) = axum::http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
