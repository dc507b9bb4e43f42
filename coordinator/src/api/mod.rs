//! The public API: axum routers served by hyper-util over tokio-rustls. The caller's identity
//! comes from its verified client certificate and travels in the request's extensions.

mod accounts;
mod arvados;
mod capabilities;
mod cyborg;
mod cyborg_arqs;
#[cfg(test)]
mod cyborg_tests;
mod dashboard;
mod dynamic_cluster;
mod error;
mod listing;
pub mod openapi;
mod operator_auth;
#[cfg(test)]
mod operator_tests;
pub mod receiver_openapi;
mod schema;
mod server_json;
mod servers;
mod tenant;
mod usage;
pub mod views;
mod webhooks;

pub use error::ApiError;
/// The create and edit bodies' parsers: pure, so the fuzz targets (`fuzz/`) call them directly.
pub use server_json::{parse_create, parse_edit};

use crate::coordinator::Coordinator;
use crate::tls_accept;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use backfill_shared::pki::{PeerIdentity, Role};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

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
                .merge(accounts::routes())
                .merge(usage::routes())
                .merge(webhooks::routes())
                .route("/openapi.json", axum::routing::get(openapi_json)),
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

/// The layers every router gets: 405s, the body limit, request ids and request counts.
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

/// Serves `router` on `listener`: TLS with a client certificate of role account or admin. On
/// `shutdown` it stops accepting, lets requests in flight finish (connections close after
/// their current request) and returns once they have, or after `drain`.
pub async fn serve_api(
    listener: TcpListener,
    acceptor: tls_accept::Acceptors,
    router: Router,
    shutdown: CancellationToken,
    drain: std::time::Duration,
) {
    let allowed: &'static [Role] = &[Role::Account, Role::Admin];
    serve_http(
        listener,
        acceptor,
        router,
        (shutdown, drain),
        tls_accept::ClientAuth::Required(allowed),
        "API",
    )
    .await;
}

/// The management listener: TLS whose client certificate is optional (the management token
/// authenticates instead); the operator APIs only.
pub async fn serve_management(
    listener: TcpListener,
    acceptor: tls_accept::Acceptors,
    router: Router,
    shutdown: CancellationToken,
    drain: std::time::Duration,
) {
    serve_http(
        listener,
        acceptor,
        router,
        (shutdown, drain),
        tls_accept::ClientAuth::Optional,
        "management",
    )
    .await;
}

async fn serve_http(
    listener: TcpListener,
    acceptor: tls_accept::Acceptors,
    router: Router,
    (shutdown, drain): (CancellationToken, std::time::Duration),
    auth: tls_accept::ClientAuth,
    name: &'static str,
) {
    let conn_shutdown = shutdown.clone();
    let tracker = tokio_util::task::TaskTracker::new();
    let conns = tracker.clone();
    let handle = move |tls, identity: Option<PeerIdentity>, peer| {
        let router = router.clone();
        let shutdown = conn_shutdown.clone();
        let token = conns.token();
        async move {
            let _in_flight = token;
            let svc = tower::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                if let Some(id) = &identity {
                    req.extensions_mut().insert(id.clone());
                }
                router.clone().oneshot(req)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "API connection ended");
                    }
                }
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    };
    tls_accept::serve_auth(listener, acceptor, name, auth, shutdown, handle).await;
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            connections = tracker.len(),
            "requests still in flight after the drain timeout; closing them"
        );
    } else {
        tracing::info!(listener = name, "API drained");
    }
}
