//! The API in front of the coordinators' roles (docs/ha.md, "Clients").
//!
//! The leader answers every request itself. A follower answers reads (`GET`/`HEAD`, except
//! those that need live hosts: capabilities with free_resources, the operator APIs) from its
//! model, reloaded from the store every half second, and marks them with
//! `x-backfill-served-by: follower` and `x-backfill-data-age-ms`. Every other request it
//! forwards to the leader over mutual TLS with its own coordinator certificate, saying whose
//! request it is in `x-backfill-forwarded-identity`; the leader believes that header only from a
//! coordinator certificate. While no leader is known, or the leader it knew refuses
//! connections, a follower waits (up to `FORWARD_WAIT`) for the next one, so a client sees a
//! failover as a slower answer, not an error. A request that reached a leader that died before
//! answering is not sent again (it may have been applied): the client gets a 502 saying so.

use super::serve::Ha;
use crate::api::ApiError;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use backfill_shared::pki::{PeerIdentity, Role};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;

/// Whose request a forwarded one is: `role/name` of the original caller's certificate.
pub const FORWARDED_IDENTITY: &str = "x-backfill-forwarded-identity";
/// The follower that forwarded a request (a request is forwarded at most once).
pub const FORWARDED_BY: &str = "x-backfill-forwarded-by";
/// `leader` or `follower`: who answered.
pub const SERVED_BY: &str = "x-backfill-served-by";
/// How old a follower's model was when it answered, in milliseconds.
pub const DATA_AGE: &str = "x-backfill-data-age-ms";
/// The longest a follower holds a write while waiting for a leader.
pub const FORWARD_WAIT: Duration = Duration::from_secs(10);

/// The public API's router in front of the roles.
pub fn api_router(ha: Arc<Ha>) -> Router {
    Router::new()
        .route(
            "/api/2.0/coordinators/",
            axum::routing::get(super::serve::coordinators),
        )
        .fallback(api)
        .with_state(ha)
}

/// The management listener's router (operator APIs) in front of the roles.
pub fn management_router(ha: Arc<Ha>) -> Router {
    Router::new().fallback(management).with_state(ha)
}

async fn api(State(ha): State<Arc<Ha>>, req: Request) -> Response {
    dispatch(&ha, req, |v| v.api.clone()).await
}

async fn management(State(ha): State<Arc<Ha>>, req: Request) -> Response {
    dispatch(&ha, req, |v| v.management.clone()).await
}

async fn dispatch(
    ha: &Ha,
    req: Request,
    pick: impl Fn(&super::serve::Views) -> Router,
) -> Response {
    let forwarded = req.headers().contains_key(FORWARDED_BY);
    let req = trust_forwarded(req);
    if let Some(v) = ha.leading() {
        return served(pick(&v).oneshot(req).await, "leader");
    }
    if is_read(&req)
        && let Some((v, age)) = ha.snapshot()
    {
        let mut resp = served(pick(&v).oneshot(req).await, "follower");
        let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        resp.headers_mut().insert(DATA_AGE, HeaderValue::from(age));
        return resp;
    }
    if forwarded {
        // Forwarded to us as the leader, but we no longer are: the caller retries.
        return unavailable("this coordinator does not lead (any more); retry");
    }
    forward(ha, req, pick).await
}

fn served(r: Result<Response, std::convert::Infallible>, by: &'static str) -> Response {
    let mut resp = match r {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    resp.headers_mut()
        .insert(SERVED_BY, HeaderValue::from_static(by));
    resp
}

/// A read a follower may answer from its reloaded model.
fn is_read(req: &Request) -> bool {
    let live = [
        "/api/2.0/capabilities",
        "/arvados/",
        "/dynamiccluster/",
        "/dashboard",
    ];
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && !live.iter().any(|p| req.uri().path().starts_with(p))
}

/// The caller as the handlers should see it: a coordinator's certificate speaks for the
/// identity it forwards (or for nobody); anyone else's forwarded header is dropped.
fn trust_forwarded(mut req: Request) -> Request {
    let header = req.headers_mut().remove(FORWARDED_IDENTITY);
    req.headers_mut().remove(FORWARDED_BY);
    let from_coordinator = req
        .extensions()
        .get::<PeerIdentity>()
        .is_some_and(|id| id.role == Role::Coordinator);
    if from_coordinator {
        match header
            .as_ref()
            .and_then(|h| parse_identity(h.to_str().ok()?))
        {
            Some(id) => {
                req.extensions_mut().insert(id);
            }
            None => {
                req.extensions_mut().remove::<PeerIdentity>();
            }
        }
    }
    req
}

fn parse_identity(s: &str) -> Option<PeerIdentity> {
    let (role, name) = s.split_once('/')?;
    let role: Role = role.parse().ok()?;
    if role == Role::Coordinator || backfill_shared::pki::validate_name(name).is_err() {
        return None;
    }
    Some(PeerIdentity {
        role,
        name: name.to_owned(),
    })
}

fn unavailable(message: &str) -> Response {
    let mut resp = ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        error_type: "backend",
        point: None,
        message: message.into(),
    }
    .into_response();
    resp.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    );
    resp
}

/// Hop-by-hop headers (and those the client library recomputes) are not copied.
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    const SKIP: [&str; 7] = [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "host",
        "upgrade",
        "te",
    ];
    for (k, v) in from {
        if !SKIP.contains(&k.as_str()) {
            to.append(k.clone(), v.clone());
        }
    }
}

async fn forward(ha: &Ha, req: Request, pick: impl Fn(&super::serve::Views) -> Router) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, crate::api::MAX_BODY_BYTES).await else {
        return ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error_type: "validation",
            point: None,
            message: format!(
                "request body over {} bytes, or cut short",
                crate::api::MAX_BODY_BYTES
            ),
        }
        .into_response();
    };
    let identity = parts
        .extensions
        .get::<PeerIdentity>()
        .map(|id| format!("{}/{}", id.role, id.name));
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let deadline = Instant::now() + FORWARD_WAIT;
    let mut role = ha.role.clone();
    loop {
        if let Some(v) = ha.leading() {
            // We took over while the request waited.
            let req = Request::from_parts(parts, Body::from(body));
            return served(pick(&v).oneshot(req).await, "leader");
        }
        let leader = role.borrow_and_update().leader().cloned();
        if let Some(leader) = leader {
            let mut headers = HeaderMap::new();
            copy_headers(&parts.headers, &mut headers);
            if let Some(id) = identity
                .as_deref()
                .and_then(|i| HeaderValue::from_str(i).ok())
            {
                headers.insert(FORWARDED_IDENTITY, id);
            }
            if let Ok(me) = HeaderValue::from_str(&ha.name) {
                headers.insert(FORWARDED_BY, me);
            }
            let url = format!("{}{path}", leader.api_url.trim_end_matches('/'));
            let sent = ha
                .forward
                .request(parts.method.clone(), &url)
                .headers(headers)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) => return relay(resp, &leader.holder).await,
                Err(e) if e.is_connect() && Instant::now() < deadline => {
                    tracing::debug!(leader = %leader.holder, error = %e, "forward: leader unreachable; waiting for the next");
                }
                Err(e) => {
                    tracing::warn!(leader = %leader.holder, error = %e, "forward: the leader did not answer");
                    return ApiError {
                        status: StatusCode::BAD_GATEWAY,
                        error_type: "backend",
                        point: None,
                        message: format!(
                            "the leading coordinator ({}) did not answer: {e}; the change may or \
                             may not have been made: read before retrying",
                            leader.holder
                        ),
                    }
                    .into_response();
                }
            }
        }
        if Instant::now() >= deadline {
            return unavailable("no coordinator leads at the moment (failover in progress); retry");
        }
        // A new leader (or our own takeover) changes the role; poll as well, for a leader
        // that is about to be replaced but has not been yet.
        let _ = tokio::time::timeout(Duration::from_millis(200), role.changed()).await;
    }
}

async fn relay(resp: reqwest::Response, leader: &str) -> Response {
    let status = resp.status();
    let mut headers = HeaderMap::new();
    copy_headers(resp.headers(), &mut headers);
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return ApiError {
                status: StatusCode::BAD_GATEWAY,
                error_type: "backend",
                point: None,
                message: format!(
                    "the leading coordinator ({leader}) broke off its answer: {e}; the change \
                     may or may not have been made: read before retrying"
                ),
            }
            .into_response();
        }
    };
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out.headers_mut()
        .insert(SERVED_BY, HeaderValue::from_static("leader (forwarded)"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_identity_is_parsed_strictly() {
        let id = parse_identity("account/alice").unwrap();
        assert_eq!((id.role, id.name.as_str()), (Role::Account, "alice"));
        assert_eq!(parse_identity("admin/ops").unwrap().role, Role::Admin);
        for bad in [
            "coordinator/c2",
            "account/",
            "nobody/x",
            "account",
            "account/../x",
        ] {
            assert!(parse_identity(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn only_a_coordinator_may_speak_for_another() {
        let mk = |peer: Role| {
            let mut req = Request::new(Body::empty());
            req.headers_mut()
                .insert(FORWARDED_IDENTITY, HeaderValue::from_static("admin/root"));
            req.extensions_mut().insert(PeerIdentity {
                role: peer,
                name: "x".into(),
            });
            trust_forwarded(req)
        };
        let tenant = mk(Role::Account);
        let id = tenant.extensions().get::<PeerIdentity>().unwrap();
        assert_eq!((id.role, id.name.as_str()), (Role::Account, "x"));
        assert!(!tenant.headers().contains_key(FORWARDED_IDENTITY));
        let fwd = mk(Role::Coordinator);
        let id = fwd.extensions().get::<PeerIdentity>().unwrap();
        assert_eq!((id.role, id.name.as_str()), (Role::Admin, "root"));
    }

    #[test]
    fn reads_that_need_live_hosts_go_to_the_leader() {
        let req = |m: Method, p: &str| {
            let mut r = Request::new(Body::empty());
            *r.method_mut() = m;
            *r.uri_mut() = p.parse().unwrap();
            r
        };
        assert!(is_read(&req(Method::GET, "/api/2.0/servers/")));
        assert!(!is_read(&req(Method::POST, "/api/2.0/servers/")));
        assert!(!is_read(&req(Method::GET, "/api/2.0/capabilities/")));
        assert!(!is_read(&req(
            Method::GET,
            "/arvados/v1/dispatch/instances"
        )));
    }
}
