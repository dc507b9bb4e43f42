//! The HTTPS client: requests relative to the API base, answers as JSON, errors as
//! [`CtlError`]s with hints.

use crate::config::{Settings, client_tls};
use crate::error::{CtlError, api_hint, connect_hint};
use backfill_api::common::ErrorBody;
use reqwest::{Method, Url};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Api {
    http: reqwest::Client,
    base: Url,
}

impl Api {
    pub fn new(settings: &Settings) -> Result<Api, CtlError> {
        let tls = client_tls(&settings.tls)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("backfillctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CtlError::config(format!("cannot build the HTTPS client: {e}"), None))?;
        Ok(Api {
            http,
            base: settings.api.clone(),
        })
    }

    /// The base joined with `segments` (each percent-encoded, so a `/` in a name stays in its
    /// segment) and a trailing `/`, CloudSigma-style.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments).push("");
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value, CtlError> {
        self.call(Method::GET, segments, query, None).await
    }

    /// Sends one request without a body, or with a JSON one; a 2xx answer's JSON body (null
    /// when empty), or the API's error.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, CtlError> {
        self.request(method, segments, query, body).await
    }

    /// As [`Api::call`] with a body of the API's types (`backfill_api`).
    pub async fn send<B: Serialize>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: &B,
    ) -> Result<Value, CtlError> {
        self.request(method, segments, query, Some(body)).await
    }

    async fn request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<Value, CtlError> {
        let url = self.url(segments, query);
        let mut req = self.http.request(method, url.clone());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.connect_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.connect_error(&e))?;
        let rel = url
            .path()
            .strip_prefix(self.base.path())
            .unwrap_or(url.path())
            .to_owned();
        if !status.is_success() {
            return Err(api_error(status, &bytes, &rel));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| CtlError::BadResponse {
            url: url.to_string(),
            detail: format!("{status} with a body that is not JSON ({e})"),
        })
    }

    fn connect_error(&self, e: &reqwest::Error) -> CtlError {
        let api = self.base.to_string();
        let detail = describe(e);
        CtlError::Connect {
            hint: connect_hint(&api, &detail),
            api,
            detail,
        }
    }
}

/// The innermost causes of a transport error, which say what happened ("Connection refused",
/// "invalid peer certificate: UnknownIssuer"); reqwest's own top line only names the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        parts.push("timed out".into());
    }
    match parts.last() {
        Some(last) => last.clone(),
        None => e.to_string(),
    }
}

/// The CloudSigma error list `[{"error_type","error_point","error_message"}]` as a [`CtlError`].
pub fn api_error(status: reqwest::StatusCode, body: &[u8], rel_path: &str) -> CtlError {
    // Not every error comes from the API (a proxy's HTML page): then the body is the message.
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let first = parsed.as_ref().and_then(ErrorBody::first);
    let message = first
        .map(|e| e.error_message.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            let raw = String::from_utf8_lossy(body);
            let raw = raw.trim();
            if raw.is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                raw.chars().take(300).collect()
            }
        });
    let code = status.as_u16();
    CtlError::Api {
        status: status.to_string(),
        code,
        hint: api_hint(code, rel_path, &message),
        point: first.and_then(|e| e.error_point.clone()),
        message,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn cloudsigma_errors_are_decoded() {
        let body = br#"[{"error_type":"notexist","error_point":null,"error_message":"server x does not exist"}]"#;
        let e = api_error(StatusCode::NOT_FOUND, body, "bservers/x/");
        assert_eq!(e.exit_code(), 66);
        assert_eq!(
            e.report(),
            "backfillctl: 404 Not Found: server x does not exist\n"
        );
        let body = br#"[{"error_type":"validation","error_point":"objects[0].mem","error_message":"too small"}]"#;
        let e = api_error(StatusCode::BAD_REQUEST, body, "bservers/");
        assert_eq!(
            e.report(),
            "backfillctl: 400 Bad Request: too small (at objects[0].mem)\n"
        );
        let e = api_error(StatusCode::BAD_GATEWAY, b"", "x/");
        assert_eq!(e.exit_code(), 69);
        assert!(e.report().contains("Bad Gateway"));
    }

    #[test]
    fn urls_are_built_segment_by_segment() {
        backfill_shared::tls::install_default_provider();
        let settings_api = crate::config::parse_api("https://h:1/api/2.0/", "t").unwrap();
        let api = Api {
            http: reqwest::Client::builder().build().unwrap(),
            base: settings_api,
        };
        assert_eq!(
            api.url(&["bservers", "detail"], &[("limit", "0")]).as_str(),
            "https://h:1/api/2.0/bservers/detail/?limit=0"
        );
        assert_eq!(
            api.url(&["accounts", "a/b"], &[]).as_str(),
            "https://h:1/api/2.0/accounts/a%2Fb/"
        );
        assert_eq!(
            api.url(&["usage"], &[("start", "2025-01-01T00:00:00+01:00")])
                .as_str(),
            "https://h:1/api/2.0/usage/?start=2025-01-01T00%3A00%3A00%2B01%3A00"
        );
    }
}
