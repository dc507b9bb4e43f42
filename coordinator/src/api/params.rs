//! Query strings, strictly. Every parameter this API takes has one value (alternatives are
//! comma-separated within it, as CloudSigma's filters are), so a repeated parameter is an
//! ambiguity — `?do=start&do=stop` — and is refused rather than resolved by taking the first
//! or the last.

use crate::api::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::collections::BTreeMap;

/// More parameters than any endpoint takes, with room for clients' extras.
pub const MAX_PARAMS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error(
        "parameter {0:?} is given more than once; give it once (separate alternatives with commas)"
    )]
    Repeated(String),
    #[error("at most {MAX_PARAMS} query parameters")]
    TooMany,
}

impl QueryError {
    /// The parameter to blame, for an error's `error_point`.
    pub fn point(&self) -> String {
        match self {
            QueryError::Repeated(k) => k.clone(),
            QueryError::TooMany => "query".into(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        ApiError::validation(e.point(), e.to_string())
    }
}

/// `a=1&b=2` → `{a: 1, b: 2}`; a repeated name (however encoded) is refused.
pub fn parse(raw: Option<&str>) -> Result<BTreeMap<String, String>, QueryError> {
    let mut out = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if out.len() >= MAX_PARAMS {
            return Err(QueryError::TooMany);
        }
        let k = k.into_owned();
        if out.contains_key(&k) {
            return Err(QueryError::Repeated(k));
        }
        out.insert(k, v.into_owned());
    }
    Ok(out)
}

/// The query string as key/values; a repeated parameter is a CloudSigma-style 400.
pub struct Params(pub BTreeMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Params(parse(parts.uri.query())?))
    }
}

/// Middleware: a repeated query parameter is refused on every path of the CloudSigma API, not
/// only where a handler reads the query.
pub async fn refuse_repeated(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match parse(req.uri().query()) {
        Ok(_) => next.run(req).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_parameter() {
        let q = parse(Some("limit=5&name=a%2Cb&do=start")).unwrap();
        assert_eq!(q["limit"], "5");
        assert_eq!(q["name"], "a,b");
        assert_eq!(parse(None).unwrap(), BTreeMap::new());
        assert_eq!(
            parse(Some("do=start&do=stop")),
            Err(QueryError::Repeated("do".into()))
        );
        // The same name spelled differently is still the same name.
        assert_eq!(
            parse(Some("limit=1&l%69mit=2")),
            Err(QueryError::Repeated("limit".into()))
        );
        assert_eq!(parse(Some("a=1&a")), Err(QueryError::Repeated("a".into())));
        let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert_eq!(parse(Some(&many.join("&"))), Err(QueryError::TooMany));
    }
}
