//! Where the API is and which certificate to present: flags, then `BACKFILL_*` environment
//! variables (clap reads both), then the configuration file. Also the rustls client
//! configuration built from them.

use crate::cli::Global;
use crate::error::CtlError;
use backfill_shared::tls::{TlsFiles, load_certs, load_key};
use reqwest::Url;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// What dev mode writes into `backfill-dev/dev.env`.
const ENV_HINT: &str = "`. backfill-dev/dev.env` sets all four for `backfill-coordinator dev`";

/// `ctl.toml`: any of the four settings.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    api: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// Everything needed to talk to the API.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api: Url,
    pub tls: TlsFiles,
}

/// `$XDG_CONFIG_HOME/backfill/ctl.toml`, else `$HOME/.config/backfill/ctl.toml`.
pub fn default_path(xdg: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let xdg = xdg.map(PathBuf::from).filter(|p| p.is_absolute());
    let base = xdg.or_else(|| home.map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("backfill").join("ctl.toml"))
}

fn read_file(path: &Path) -> Result<FileConfig, CtlError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CtlError::config(
            format!("cannot read the configuration file {}: {e}", path.display()),
            Some("check --config / BACKFILL_CONFIG"),
        )
    })?;
    let mut cfg: FileConfig = toml::from_str(&text).map_err(|e| {
        CtlError::config(
            format!("{}: {e}", path.display()),
            Some("the file holds api, ca, cert and key, e.g. api = \"https://host:8443/api/2.0/\""),
        )
    })?;
    // Relative paths are relative to the file.
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in [&mut cfg.ca, &mut cfg.cert, &mut cfg.key]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(cfg)
}

/// Flags and environment first, then the file: `--config`, or the default file if it exists
/// and something is still missing.
pub fn resolve(g: &Global) -> Result<Settings, CtlError> {
    let complete = g.api.is_some() && g.ca.is_some() && g.cert.is_some() && g.key.is_some();
    let (file, file_path) = match &g.config {
        Some(p) => (read_file(p)?, Some(p.clone())),
        None if complete => (FileConfig::default(), None),
        None => match default_path(
            std::env::var_os("XDG_CONFIG_HOME"),
            std::env::var_os("HOME"),
        ) {
            Some(p) if p.is_file() => (read_file(&p)?, Some(p)),
            _ => (FileConfig::default(), None),
        },
    };
    let where_from = |key: &str| match &file_path {
        Some(p) => format!("set by `{key}` in {}", p.display()),
        None => String::new(),
    };
    let api = match (&g.api, &file.api) {
        (Some(a), _) => parse_api(a, "--api / BACKFILL_API")?,
        (None, Some(a)) => parse_api(a, &where_from("api"))?,
        (None, None) => return Err(missing("API address", "--api URL", "BACKFILL_API", "api")),
    };
    let pick = |flag: &Option<PathBuf>, file: &Option<PathBuf>, what, arg, env, key| {
        flag.clone()
            .or_else(|| file.clone())
            .ok_or_else(|| missing(what, arg, env, key))
    };
    let tls = TlsFiles {
        ca: pick(
            &g.ca,
            &file.ca,
            "CA certificate",
            "--ca FILE",
            "BACKFILL_CA",
            "ca",
        )?,
        cert: pick(
            &g.cert,
            &file.cert,
            "client certificate",
            "--cert FILE",
            "BACKFILL_CERT",
            "cert",
        )?,
        key: pick(
            &g.key,
            &file.key,
            "client key",
            "--key FILE",
            "BACKFILL_KEY",
            "key",
        )?,
    };
    Ok(Settings { api, tls })
}

fn missing(what: &str, arg: &str, env: &str, key: &str) -> CtlError {
    CtlError::Config {
        message: format!(
            "no {what}: pass {arg}, set {env}, or put `{key} = ...` in ~/.config/backfill/ctl.toml"
        ),
        hint: Some(ENV_HINT.into()),
    }
}

/// The API base: an `https://` URL; a bare `https://host:port/` means `.../api/2.0/`.
pub fn parse_api(raw: &str, from: &str) -> Result<Url, CtlError> {
    let bad = |why: String| {
        CtlError::config(
            format!("invalid API address {raw:?} ({from}): {why}"),
            Some("it looks like https://127.0.0.1:8443/api/2.0/"),
        )
    };
    let mut url = Url::parse(raw.trim()).map_err(|e| bad(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("the API is served over https only".into()));
    }
    if url.host_str().is_none() {
        return Err(bad("no host".into()));
    }
    url.set_query(None);
    url.set_fragment(None);
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/api/2.0/");
    } else if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

/// rustls with the ring provider, trusting only `files.ca` and presenting `files.cert`.
pub fn client_tls(files: &TlsFiles) -> Result<rustls::ClientConfig, CtlError> {
    let unreadable = |what: &str, arg: &str, e: &dyn std::fmt::Display| {
        CtlError::config(
            format!("cannot load the {what}: {e}"),
            Some(&format!("check {arg}")),
        )
    };
    let ca = load_certs(&files.ca)
        .map_err(|e| unreadable("CA certificate", "--ca / BACKFILL_CA", &e))?;
    let cert = load_certs(&files.cert)
        .map_err(|e| unreadable("client certificate", "--cert / BACKFILL_CERT", &e))?;
    let key =
        load_key(&files.key).map_err(|e| unreadable("client key", "--key / BACKFILL_KEY", &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c).map_err(|e| {
            unreadable(
                "CA certificate",
                "--ca / BACKFILL_CA",
                &format!("{}: {e}", files.ca.display()),
            )
        })?;
    }
    let tls_err = |e: rustls::Error| {
        CtlError::config(
            format!("TLS configuration: {e}"),
            Some("--key / BACKFILL_KEY must be the key of --cert / BACKFILL_CERT"),
        )
    };
    rustls::ClientConfig::builder_with_provider(backfill_shared::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(cert, key)
        .map_err(tls_err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_follows_xdg() {
        assert_eq!(
            default_path(Some("/x".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/backfill/ctl.toml"))
        );
        assert_eq!(
            default_path(Some("relative".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/backfill/ctl.toml"))
        );
        assert_eq!(
            default_path(None, Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/backfill/ctl.toml"))
        );
        assert_eq!(default_path(None, None), None);
    }

    #[test]
    fn api_bases_end_in_a_slash() {
        let p = |s| parse_api(s, "test").map(|u| u.to_string());
        assert_eq!(
            p("https://127.0.0.1:8443/api/2.0/").unwrap(),
            "https://127.0.0.1:8443/api/2.0/"
        );
        assert_eq!(
            p("https://127.0.0.1:8443/api/2.0").unwrap(),
            "https://127.0.0.1:8443/api/2.0/"
        );
        assert_eq!(p("https://h:8443").unwrap(), "https://h:8443/api/2.0/");
        assert_eq!(p("http://h/api/2.0/").unwrap_err().exit_code(), 78);
        assert_eq!(p("not a url").unwrap_err().exit_code(), 78);
    }

    #[test]
    fn the_file_fills_what_flags_leave_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.toml");
        std::fs::write(
            &path,
            "api = \"https://h:1/api/2.0/\"\nca = \"ca.pem\"\ncert = \"/abs/c.pem\"\nkey = \"k.key\"\n",
        )
        .unwrap();
        let g = Global {
            api: None,
            ca: None,
            cert: Some("/flag/cert.pem".into()),
            key: None,
            config: Some(path.clone()),
            output: crate::cli::Output::Table,
            timeout: 1,
        };
        let s = resolve(&g).unwrap();
        assert_eq!(s.api.as_str(), "https://h:1/api/2.0/");
        assert_eq!(s.tls.ca, dir.path().join("ca.pem"));
        assert_eq!(s.tls.cert, PathBuf::from("/flag/cert.pem"));
        assert_eq!(s.tls.key, dir.path().join("k.key"));

        std::fs::write(&path, "apii = \"x\"\n").unwrap();
        assert_eq!(resolve(&g).unwrap_err().exit_code(), 78);
        let g = Global {
            config: Some(dir.path().join("missing.toml")),
            ..g
        };
        assert_eq!(resolve(&g).unwrap_err().exit_code(), 78);
    }

    #[test]
    fn unreadable_certificates_are_configuration_errors() {
        let files = TlsFiles {
            ca: "/nonexistent/ca.pem".into(),
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/c.key".into(),
        };
        let e = client_tls(&files).unwrap_err();
        assert_eq!(e.exit_code(), 78);
        assert!(e.report().contains("--ca"), "{}", e.report());
    }
}
