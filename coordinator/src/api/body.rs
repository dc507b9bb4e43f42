//! Request bodies are read before the handler runs. A handler that refuses early (403 from the
//! caller's certificate, 404, 400 on the query) would otherwise answer without reading the
//! body; hyper then cannot reuse the connection and closes it after the answer, without telling
//! the client, and a keep-alive client (pycloudsigma's requests session, Schemathesis) sends its
//! next request into the closed connection and gets a TLS EOF instead of an answer. Only bodies
//! whose declared length fits the limit are read here; anything else goes on as it came, to the
//! extractors' own limit.

use crate::api::{ApiError, MAX_BODY_BYTES};
use axum::body::Body;
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

/// The declared body length, when there is one and it fits the limit.
fn declared_fitting(req: &Request) -> Option<usize> {
    let n: usize = req
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (n > 0 && n <= MAX_BODY_BYTES).then_some(n)
}

pub async fn read_whole(req: Request, next: Next) -> Response {
    let Some(len) = declared_fitting(&req) else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(len);
    while let Some(chunk) = stream.next().await {
        match chunk {
            // hyper holds the client to its Content-Length; this only bounds the buffer.
            Ok(data) if buf.len().saturating_add(data.len()) <= MAX_BODY_BYTES => {
                buf.extend_from_slice(&data);
            }
            Ok(_) => {
                return ApiError::too_large(format!(
                    "the body is longer than its Content-Length; at most {MAX_BODY_BYTES} bytes"
                ))
                .into_response();
            }
            Err(e) => {
                return ApiError::validation("body", format!("the body could not be read: {e}"))
                    .into_response();
            }
        }
    }
    next.run(Request::from_parts(parts, Body::from(buf))).await
}
