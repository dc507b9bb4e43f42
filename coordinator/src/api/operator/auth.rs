//! Who may use the operator APIs (Arvados dispatch, Dynamic Cluster, the dashboard): an admin
//! certificate, or the management token as Arvados accepts it: `Authorization: Bearer <t>` (or
//! `OAuth2 <t>`), the password of HTTP Basic, or `?api_token=<t>`. With no token configured
//! every token request gets 403; a request with no credential at all gets 401; a wrong token
//! or another role's certificate gets 403.

use crate::api::AppState;
use axum::http::StatusCode;
use axum::http::request::Parts;
use backfill_shared::pki::{PeerIdentity, Role};

/// The actor recorded for token holders.
pub const TOKEN_ACTOR: &str = "management-token";

/// A refusal, before it is put in an API family's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

fn refused(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

/// The token a request carries, if any.
fn presented_token(parts: &Parts) -> Option<String> {
    if let Some(v) = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth2") {
            return Some(rest.to_owned());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64_decode(rest)?;
            let (_, password) = decoded.split_once(':')?;
            return Some(password.to_owned());
        }
    }
    let query = parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "api_token")
        .map(|(_, v)| v.into_owned())
}

/// Standard base64 (HTTP Basic), without padding checks beyond what decoding needs.
fn base64_decode(s: &str) -> Option<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits: u32 = 0;
    let mut n = 0;
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)?;
        bits = (bits << 6) | u32::try_from(v).ok()?;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push(u8::try_from((bits >> n) & 0xff).ok()?);
        }
    }
    String::from_utf8(out).ok()
}

/// Compares without an early exit, so timing does not tell how much of a token was right.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The operator making the request: the admin certificate's name, or [`TOKEN_ACTOR`].
pub fn authorize(parts: &Parts, state: &AppState) -> Result<String, Refused> {
    let identity = parts.extensions.get::<PeerIdentity>();
    if let Some(id) = identity
        && id.role == Role::Admin
    {
        return Ok(id.name.clone());
    }
    match (
        presented_token(parts),
        &state.coordinator.operator.management_token,
    ) {
        (Some(_), None) => Err(refused(
            StatusCode::FORBIDDEN,
            "Management API authentication is not configured",
        )),
        (Some(t), Some(want)) if same(&t, want) => Ok(TOKEN_ACTOR.to_owned()),
        (Some(_), Some(_)) => Err(refused(StatusCode::FORBIDDEN, "Forbidden")),
        (None, _) => match identity {
            Some(id) => Err(refused(
                StatusCode::FORBIDDEN,
                format!(
                    "this endpoint is for operators (an admin certificate or the management token); {:?} presented one of role {}",
                    id.name, id.role
                ),
            )),
            None => Err(refused(StatusCode::UNAUTHORIZED, "Unauthorized")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_passwords_decode() {
        assert_eq!(base64_decode("dTpzZWNyZXQ=").as_deref(), Some("u:secret"));
        assert_eq!(base64_decode("Og==").as_deref(), Some(":"));
        assert_eq!(base64_decode("!!"), None);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert!(!same("", "a"));
        assert!(same("", ""));
    }
}
