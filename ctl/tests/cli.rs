//! The `backfillctl` binary on its own, no coordinator: its help, version and the errors it
//! gives before any request. (Having an integration test also makes `cargo test --workspace`
//! build `target/debug/backfillctl`, which the end-to-end tests in `tests/` run.)
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn ctl(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_backfillctl"))
        .args(args)
        .env_clear()
        .env("HOME", home.path())
        .output()
        .unwrap()
}

#[test]
fn help_and_version() {
    let out = ctl(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{out:?}"
    );
    let out = ctl(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["bserver", "account", "webhook", "drive", "capabilities"] {
        assert!(help.contains(command), "{help}");
    }
}

#[test]
fn settings_and_secrets_are_asked_for_before_anything_is_sent() {
    // No API address or certificate anywhere: a configuration error (78), naming what to set.
    let out = ctl(&["capabilities"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("backfillctl: "),
        "{out:?}"
    );
    // The receiver needs the webhook's secret.
    let out = ctl(&["webhook", "listen", "--port", "0"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--secret"),
        "{out:?}"
    );
    // An unknown command is a usage error (64).
    assert_eq!(ctl(&["frobnicate"]).status.code(), Some(64));
}
