//! The one error type, its exit codes (sysexits.h values scripts can rely on) and the hints
//! printed with it.

/// Exit codes; `--help` and docs/backfillctl.md list them.
pub mod exit {
    pub const USAGE: u8 = 64;
    pub const REFUSED: u8 = 65;
    pub const NOT_FOUND: u8 = 66;
    pub const UNAVAILABLE: u8 = 69;
    pub const OUTPUT: u8 = 74;
    pub const WAIT_TIMEOUT: u8 = 75;
    pub const PERMISSION: u8 = 77;
    pub const CONFIG: u8 = 78;
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad flags or values that clap could not catch.
    #[error("{0}")]
    Usage(String),
    /// Missing settings, unreadable certificate, key, CA or configuration file.
    #[error("{message}")]
    Config {
        message: String,
        hint: Option<String>,
    },
    /// No HTTP answer: refused, unreachable, TLS handshake failed, timed out.
    #[error("cannot reach the coordinator at {api}: {detail}")]
    Connect {
        api: String,
        detail: String,
        hint: String,
    },
    /// The API answered with an error status.
    #[error("{status}: {message}{}", at(point.as_deref()))]
    Api {
        /// `404 Not Found`.
        status: String,
        code: u16,
        message: String,
        point: Option<String>,
        hint: Option<String>,
    },
    #[error("unexpected answer from {url}: {detail}")]
    BadResponse { url: String, detail: String },
    #[error("gave up after {secs}s waiting for {uuid} to be {want}; it is {last}")]
    WaitTimeout {
        uuid: String,
        want: &'static str,
        last: String,
        secs: u64,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

fn at(point: Option<&str>) -> String {
    point.map(|p| format!(" (at {p})")).unwrap_or_default()
}

impl CtlError {
    pub fn config(message: impl Into<String>, hint: Option<&str>) -> CtlError {
        CtlError::Config {
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => exit::USAGE,
            CtlError::Config { .. } => exit::CONFIG,
            CtlError::Connect { .. } | CtlError::BadResponse { .. } | CtlError::Runtime(_) => {
                exit::UNAVAILABLE
            }
            CtlError::Api { code, .. } => match code {
                401 | 403 => exit::PERMISSION,
                404 => exit::NOT_FOUND,
                400..=499 => exit::REFUSED,
                _ => exit::UNAVAILABLE,
            },
            CtlError::WaitTimeout { .. } => exit::WAIT_TIMEOUT,
            CtlError::Output(_) => exit::OUTPUT,
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            CtlError::Config { hint, .. } | CtlError::Api { hint, .. } => hint.as_deref(),
            CtlError::Connect { hint, .. } => Some(hint),
            CtlError::WaitTimeout { .. } => Some(
                "the request was accepted and may still complete; raise --timeout or check again with `show`",
            ),
            _ => None,
        }
    }

    /// What `main` prints on stderr.
    pub fn report(&self) -> String {
        match self.hint() {
            Some(h) => format!("backfillctl: {self}\nhint: {h}\n"),
            None => format!("backfillctl: {self}\n"),
        }
    }
}

/// A suggestion for an error answer of the API at `path` (relative to the API base).
pub fn api_hint(code: u16, path: &str, message: &str) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    match code {
        404 if lower.contains("no such path") => Some(format!(
            "this coordinator does not serve /api/2.0/{path}: check that --api / BACKFILL_API is the \
             API base ending in /api/2.0/, and that the coordinator is recent enough"
        )),
        401 | 403 if path.starts_with("accounts") => Some(
            "accounts need an admin certificate: check --cert / --key (BACKFILL_CERT / BACKFILL_KEY)"
                .into(),
        ),
        401 | 403 if path.starts_with("usage") => Some(
            "an account certificate sees only its own usage: leave out --account, or use an admin certificate"
                .into(),
        ),
        401 | 403 if path.starts_with("webhooks") && lower.contains("account certificate") => Some(
            "webhooks belong to an account: use its (tenant) certificate, not an admin one: \
             check --cert / --key"
                .into(),
        ),
        400 if path.starts_with("webhooks") && lower.contains("must use https") => Some(
            "give an https:// URL; plain http receivers are accepted only where the operator \
             sets [webhooks] allow_http"
                .into(),
        ),
        400 if path.starts_with("webhooks") && lower.contains("private receivers") => Some(
            "the coordinator must reach the receiver at a public address; loopback and private \
             ones are accepted only where the operator sets [webhooks] allow_private"
                .into(),
        ),
        401 | 403 if lower.contains("backfill") => Some(
            "this account has no backfill permission; an admin can grant it: \
             backfillctl account update NAME --backfill true"
                .into(),
        ),
        401 | 403 if lower.contains("account certificate") => Some(
            "servers and capabilities need an account (tenant) certificate: check --cert / --key"
                .into(),
        ),
        503 => Some("the fleet has no room for this now; try smaller cpu/mem or later".into()),
        _ => None,
    }
}

/// The hint for a failed connection, from the error's description.
pub fn connect_hint(api: &str, detail: &str) -> String {
    let d = detail.to_ascii_lowercase();
    if d.contains("certificate")
        || d.contains("tls")
        || d.contains("alert")
        || d.contains("handshake")
    {
        "the TLS handshake failed: --ca / BACKFILL_CA must be the deployment's CA and --cert / --key \
         a certificate it issued (and not expired)"
            .into()
    } else if d.contains("dns") || d.contains("resolve") || d.contains("lookup") {
        format!("cannot resolve the host of {api}: check --api / BACKFILL_API")
    } else if d.contains("timed out") || d.contains("timeout") {
        format!("no answer in time: is {api} reachable from here? check --api / BACKFILL_API")
    } else {
        format!("is the coordinator running at {api}? check --api / BACKFILL_API")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> CtlError {
        CtlError::Api {
            status: format!("{code}"),
            code,
            message: "m".into(),
            point: None,
            hint: None,
        }
    }

    #[test]
    fn exit_codes_follow_sysexits() {
        assert_eq!(CtlError::Usage("x".into()).exit_code(), 64);
        assert_eq!(api(400).exit_code(), 65);
        assert_eq!(api(409).exit_code(), 65);
        assert_eq!(api(413).exit_code(), 65);
        assert_eq!(api(404).exit_code(), 66);
        assert_eq!(api(500).exit_code(), 69);
        assert_eq!(api(503).exit_code(), 69);
        assert_eq!(api(401).exit_code(), 77);
        assert_eq!(api(403).exit_code(), 77);
        let connect = CtlError::Connect {
            api: "a".into(),
            detail: "d".into(),
            hint: "h".into(),
        };
        assert_eq!(connect.exit_code(), 69);
        let wait = CtlError::WaitTimeout {
            uuid: "u".into(),
            want: "running",
            last: "starting".into(),
            secs: 1,
        };
        assert_eq!(wait.exit_code(), 75);
        assert_eq!(CtlError::config("c", None).exit_code(), 78);
        let broken = std::io::Error::other("x");
        assert_eq!(CtlError::Output(broken).exit_code(), 74);
    }

    #[test]
    fn api_errors_read_like_the_api_said_them() {
        let e = CtlError::Api {
            status: "400 Bad Request".into(),
            code: 400,
            message: "cpu must be an integer".into(),
            point: Some("objects[0].cpu".into()),
            hint: None,
        };
        assert_eq!(
            e.report(),
            "backfillctl: 400 Bad Request: cpu must be an integer (at objects[0].cpu)\n"
        );
        let e = CtlError::config("no API address", Some("set BACKFILL_API"));
        assert_eq!(
            e.report(),
            "backfillctl: no API address\nhint: set BACKFILL_API\n"
        );
    }

    #[test]
    fn hints_fit_the_failure() {
        let grant = api_hint(
            403,
            "bservers/",
            "Backfilling is not enabled for this account",
        );
        assert!(grant.unwrap().contains("--backfill true"));
        let tenant_on_accounts = "this endpoint is for operators (admin certificates); \
                                  \"t\" presented a account certificate";
        let own = api_hint(403, "usage/", "a tenant sees only its own usage").unwrap();
        assert!(own.contains("leave out --account"));
        assert!(
            api_hint(403, "accounts/", tenant_on_accounts)
                .unwrap()
                .contains("admin certificate")
        );
        assert!(
            api_hint(404, "accounts/", "no such path (API paths ...)")
                .unwrap()
                .contains("/api/2.0/accounts/")
        );
        assert_eq!(
            api_hint(404, "bservers/x/", "server x does not exist"),
            None
        );
        let http = api_hint(400, "webhooks/", "receivers must use https").unwrap();
        assert!(http.contains("allow_http"), "{http}");
        let private = "loopback, link-local and private receivers are not allowed";
        assert!(
            api_hint(400, "webhooks/", private)
                .unwrap()
                .contains("allow_private")
        );
        let admin =
            "this endpoint needs an account certificate; \"ops\" presented one of role admin";
        assert!(
            api_hint(403, "webhooks/", admin)
                .unwrap()
                .contains("webhooks belong to an account")
        );
        assert_eq!(api_hint(400, "webhooks/", "not a URL: empty host"), None);
        assert!(
            connect_hint("https://h/api/2.0/", "Connection refused (os error 111)")
                .contains("is the coordinator running at https://h/api/2.0/?")
        );
        assert!(connect_hint("a", "invalid peer certificate: UnknownIssuer").contains("--ca"));
    }
}
