//! A bounded HTTP/1.1 request parser for the agent's listeners (the metadata service, the
//! admin listener), and the response type their handlers return. Guests are untrusted: sizes are bounded and nothing here can panic.

use std::collections::BTreeMap;

pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// Lower-cased names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub http11: bool,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse::new(status, "text/plain", body)
    }
    pub fn json(status: u16, v: &serde_json::Value) -> HttpResponse {
        HttpResponse::new(status, "application/json", v.to_string())
    }
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> HttpResponse {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one complete request from raw bytes. `None`: malformed or too large (answer 400).
pub fn parse_request(raw: &[u8]) -> Option<HttpRequest> {
    if raw.len() > MAX_REQUEST_BYTES {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(raw).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let method = req.method?.to_owned();
    let target = req.path?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect();
    let headers = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let http11 = req.version == Some(1);
    Some(HttpRequest {
        http11,
        method,
        path: path.to_owned(),
        query,
        headers,
        body: raw.get(head_len..).unwrap_or_default().to_vec(),
    })
}

/// A request the listener will not read: malformed, chunked, or larger than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed, chunked or oversized request")]
pub struct BadRequest;

/// How much of a request `raw` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The head (request line and headers) is not complete yet.
    Head,
    /// The head is complete, the `Content-Length` body is not.
    Body,
    /// A complete request of this many bytes.
    Complete(usize),
}

/// How much of the first request `raw` holds (head plus `Content-Length` body).
pub fn framing(raw: &[u8]) -> Result<Framing, BadRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if raw.len() < MAX_REQUEST_BYTES => return Ok(Framing::Head),
        _ => return Err(BadRequest),
    };
    let mut body = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(BadRequest);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(BadRequest)?;
        }
    }
    let total = head_len.checked_add(body).ok_or(BadRequest)?;
    if total > MAX_REQUEST_BYTES {
        return Err(BadRequest);
    }
    Ok(if raw.len() >= total {
        Framing::Complete(total)
    } else {
        Framing::Body
    })
}

/// The length of the first complete request in `raw` (head plus `Content-Length` body).
/// `Ok(None)`: more bytes are needed.
pub fn request_len(raw: &[u8]) -> Result<Option<usize>, BadRequest> {
    framing(raw).map(|f| match f {
        Framing::Complete(n) => Some(n),
        Framing::Head | Framing::Body => None,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

impl HttpResponse {
    /// The response on the wire, HTTP/1.1.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        use std::fmt::Write;
        let mut head = String::with_capacity(160);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (n, v) in &self.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        let _ = write!(
            head,
            "Server: backfill-metadata\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

impl HttpRequest {
    /// HTTP/1.1 keeps the connection unless told otherwise; so does a 1.0 client that asks.
    pub fn keep_alive(&self) -> bool {
        match self.header("Connection").map(str::to_ascii_lowercase) {
            Some(c) if c.contains("close") => false,
            Some(c) if c.contains("keep-alive") => true,
            _ => self.http11,
        }
    }
}
