//! `backfill-coordinator pki`: the real binary, as an operator runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn coordinator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_backfill-coordinator"))
}

#[test]
fn init_and_issue_write_certificates_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = coordinator()
        .args(["pki", "init", "--dir", d])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let again = coordinator()
        .args(["pki", "init", "--dir", d])
        .output()
        .unwrap();
    assert!(!again.status.success(), "init must not overwrite a CA");
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    let out = coordinator()
        .args([
            "pki", "issue", "--dir", d, "--role", "account", "--name", "acme",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let key = dir.path().join("acme.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pem = std::fs::read(dir.path().join("acme.pem")).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls_pki_types::CertificateDer<'_>| c.to_vec())
        .unwrap();
    let id = backfill_shared::pki::identity_from_der(&der).unwrap();
    assert_eq!(id.name, "acme");
    assert_eq!(id.role, backfill_shared::pki::Role::Account);

    let out = coordinator()
        .args(["pki", "issue", "--dir", d, "--role", "root", "--name", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
}

#[test]
fn a_bad_config_exits_64_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "api_addr = \"127.0.0.1:0\"\nbogus = 1\n").unwrap();
    let out = coordinator()
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("c.toml") && err.contains("bogus"), "{err}");
}

#[test]
fn check_config_accepts_the_example_shape_and_env_overrides_name_their_variable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["pki", "init", "--dir", d],
        vec![
            "pki",
            "issue",
            "--dir",
            d,
            "--role",
            "coordinator",
            "--name",
            "c",
            "--san",
            "localhost",
        ],
    ] {
        assert!(coordinator().args(&args).output().unwrap().status.success());
    }
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "api_addr = \"127.0.0.1:0\"\nlink_addr = \"127.0.0.1:0\"\ndatabase = \"{d}/db\"\n[tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/c.pem\"\nkey = \"{d}/c.key\"\n"
        ),
    )
    .unwrap();
    let check = |env: &[(&str, &str)]| {
        coordinator()
            .args(["run", "--check-config", "--config", path.to_str().unwrap()])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let ok = check(&[]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains(": ok"));
    assert!(
        check(&[("BACKFILL_API_ADDR", "127.0.0.1:9999")])
            .status
            .success()
    );
    let bad = check(&[("BACKFILL_API_ADDR", "nowhere")]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("BACKFILL_API_ADDR"),
        "{bad:?}"
    );
    let relative = check(&[("BACKFILL_DATABASE", "relative/db")]);
    assert_eq!(relative.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&relative.stderr).contains("database"),
        "{relative:?}"
    );
}
