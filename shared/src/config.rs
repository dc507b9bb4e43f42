//! Loading the daemons' TOML configuration files: unknown keys refused (each config struct has
//! `deny_unknown_fields`), and every problem named with its file and key.

use crate::tls::TlsFiles;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("environment variable {var}: {reason}")]
    Env { var: &'static str, reason: String },
}

/// Overrides a setting from the environment (containers), when `var` is set; a value that
/// does not parse names the variable.
pub fn env_override<T>(var: &'static str, target: &mut T) -> Result<(), ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let Ok(v) = std::env::var(var) else {
        return Ok(());
    };
    *target = v.parse().map_err(|e: T::Err| ConfigError::Env {
        var,
        reason: format!("{v:?}: {e}"),
    })?;
    Ok(())
}

impl ConfigError {
    pub fn invalid(path: &Path, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Reads and parses a TOML file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// An absolute path (`key` names it in the error).
pub fn require_absolute(path: &Path, key: &'static str, value: &Path) -> Result<(), ConfigError> {
    if value.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            path,
            key,
            format!("{} must be an absolute path", value.display()),
        ))
    }
}

/// The CA, certificate and key exist and are given as absolute paths: caught at load, before
/// any port is bound.
pub fn validate_tls_files(path: &Path, tls: &TlsFiles) -> Result<(), ConfigError> {
    for (key, p) in [
        ("tls.ca", &tls.ca),
        ("tls.cert", &tls.cert),
        ("tls.key", &tls.key),
    ] {
        require_absolute(path, key, p)?;
        if !p.is_file() {
            return Err(ConfigError::invalid(
                path,
                key,
                format!("{} does not exist", p.display()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        a: u32,
    }

    #[test]
    fn errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.toml");
        std::fs::write(&f, "a = 1\nb = 2\n").unwrap();
        let e = load_toml::<Sample>(&f).unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains('b'), "{e}");
        let e = load_toml::<Sample>(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");
        let tls = TlsFiles {
            ca: "rel.pem".into(),
            cert: "/nonexistent".into(),
            key: "/nonexistent".into(),
        };
        let e = validate_tls_files(&f, &tls).unwrap_err().to_string();
        assert!(e.contains("tls.ca") && e.contains("absolute"), "{e}");
    }
}
