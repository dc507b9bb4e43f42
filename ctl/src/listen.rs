//! `backfillctl webhook listen`: a webhook receiver on this machine for trying webhooks out
//! (dev mode allows http receivers on loopback). Each delivery's signature is checked with the
//! webhook's secret and the event printed, one line each; a delivery whose signature does not
//! match is answered 401 and printed as refused.

use crate::cli::ListenArgs;
use crate::error::CtlError;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::sync::Arc;

/// The largest delivery taken (the coordinator's payloads are a few KiB).
const MAX_BODY: usize = 1 << 20;
/// A delivery older or newer than this is refused as a replay.
const MAX_SKEW_S: i64 = 300;

/// What one delivery was: its event, whether it verified, and why not.
#[derive(Debug, PartialEq, Eq)]
pub struct Received {
    pub event: String,
    pub event_id: String,
    pub verified: Result<(), String>,
}

/// Checks a delivery's headers and body against `secret` at time `now` (Unix seconds).
pub fn check(secret: &str, headers: &HeaderMap, body: &[u8], now: i64) -> Received {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let event = header("x-backfill-event");
    let event_id = header("x-backfill-event-id");
    let verified = (|| {
        let ts: i64 = header("x-backfill-timestamp")
            .parse()
            .map_err(|_| "no X-Backfill-Timestamp".to_owned())?;
        if (now - ts).abs() > MAX_SKEW_S {
            return Err(format!("timestamp {ts} is {} s from now", now - ts));
        }
        let got = header("x-backfill-signature");
        // Constant time: the comparison does not tell an attacker how much matched.
        let same = backfill_api::webhooks::verify(secret, ts, body, &got);
        if same {
            Ok(())
        } else {
            Err("the signature does not match this secret".to_owned())
        }
    })();
    Received {
        event,
        event_id,
        verified,
    }
}

pub async fn run(args: ListenArgs) -> Result<(), CtlError> {
    let secret = match (&args.secret, std::env::var("BACKFILL_WEBHOOK_SECRET")) {
        (Some(s), _) => s.clone(),
        (None, Ok(s)) if !s.is_empty() => s,
        _ => {
            return Err(CtlError::config(
                "no webhook secret to verify deliveries with",
                Some(
                    "pass --secret (printed by `backfillctl webhook create`) or set BACKFILL_WEBHOOK_SECRET",
                ),
            ));
        }
    };
    let addr = std::net::SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CtlError::config(format!("cannot listen on {addr}: {e}"), None))?;
    let local = listener.local_addr().map_err(CtlError::Output)?;
    println!("listening on http://{local}/ (create the webhook with this URL; Ctrl-C stops)");
    let _ = std::io::stdout().flush();
    let secret = Arc::new(secret);
    let stop = backfill_shared::daemon::wait_for_signal();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // A connection that failed before it was accepted (reset, out of descriptors
                // for a moment) is the sender's to retry.
                Err(_) => continue,
            },
        };
        let secret = secret.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let secret = secret.clone();
                async move { Ok::<_, std::convert::Infallible>(delivery(&secret, req).await) }
            });
            // A sender that goes away mid-delivery retries; nothing to report here.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One request: its body (at most [`MAX_BODY`], else 413) checked and printed.
async fn delivery(secret: &str, req: Request<Incoming>) -> Response<Empty<Bytes>> {
    let (parts, body) = req.into_parts();
    let code = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => receive(secret, &parts.headers, &b.to_bytes()),
        Err(_) => StatusCode::PAYLOAD_TOO_LARGE,
    };
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = code;
    resp
}

fn receive(secret: &str, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let r = check(secret, headers, body, now);
    let text = String::from_utf8_lossy(body);
    let mut out = std::io::stdout().lock();
    let (code, line) = match &r.verified {
        Ok(()) => (
            StatusCode::NO_CONTENT,
            format!("{} {} verified {text}\n", r.event, r.event_id),
        ),
        Err(why) => (
            StatusCode::UNAUTHORIZED,
            format!("{} {} REFUSED ({why})\n", r.event, r.event_id),
        ),
    };
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    code
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-backfill-event", "server.terminating".parse().unwrap());
        h.insert("x-backfill-event-id", "e1".parse().unwrap());
        h.insert("x-backfill-timestamp", ts.to_string().parse().unwrap());
        h.insert("x-backfill-signature", sig.parse().unwrap());
        h
    }

    #[test]
    fn good_deliveries_verify_and_forged_or_stale_ones_do_not() {
        let body = br#"{"server":"s"}"#;
        let sig = backfill_api::webhooks::signature("k", 1_000, body);
        let ok = check("k", &headers(1_000, &sig), body, 1_010);
        assert_eq!(ok.verified, Ok(()));
        assert_eq!(ok.event, "server.terminating");
        assert!(
            check("other", &headers(1_000, &sig), body, 1_010)
                .verified
                .is_err()
        );
        assert!(
            check("k", &headers(1_000, &sig), b"{}", 1_010)
                .verified
                .is_err()
        );
        let stale = check("k", &headers(1_000, &sig), body, 2_000);
        assert!(stale.verified.unwrap_err().contains("from now"));
        assert!(check("k", &HeaderMap::new(), body, 0).verified.is_err());
    }
}
