//! `backfill-agent --check-config`: the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::{Ca, IssueRequest, Role};
use std::process::Command;

fn check_with(config: &str, dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_backfill-agent"))
        .args(["--check-config", "--config", path.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

fn check(config: &str, dir: &std::path::Path) -> std::process::Output {
    check_with(config, dir, &[])
}

#[test]
fn check_config_accepts_a_good_file_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(dir.path()).unwrap();
    let (cert, key) = ca
        .issue_to_dir(
            dir.path(),
            "a",
            &IssueRequest::new(Role::Agent, "node-1", &[], 1),
        )
        .unwrap();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let run_as = if root { "nobody" } else { "" };
    let good = format!(
        "coordinator = \"127.0.0.1:8444\"\ncoordinator_name = \"localhost\"\nstate_dir = \"/var/lib/backfill\"\nrun_as = {run_as:?}\ndefault_command = [\"sleep\", \"infinity\"]\n[tls]\nca = {:?}\ncert = {cert:?}\nkey = {key:?}\n",
        dir.path().join("ca.pem")
    );
    let out = check(&good, dir.path());
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("host node-1"));

    // A missing QEMU or OCI runtime is a warning that disables that driver, not an error.
    let out = check(
        &format!(
            "{good}[vm]\nqemu = \"/nonexistent/qemu\"\n[container]\nruntime = \"/nonexistent/runc\"\n"
        ),
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("warning: no QEMU at /nonexistent/qemu"),
        "{said}"
    );
    assert!(
        said.contains("warning: no OCI runtime at /nonexistent/runc"),
        "{said}"
    );

    let out = check(
        &good.replace("state_dir = \"/var/lib/backfill\"", "state_dir = \"rel\""),
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("state_dir"));

    let out = check(&format!("typo = 1\n{good}"), dir.path());
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("typo"));

    // --inventory-file declares GPUs; a broken file is a configuration error naming the file.
    let inv = dir.path().join("gpus.json");
    std::fs::write(
        &inv,
        r#"{"gpus": [{"index": 0, "uuid": "GPU-a", "name": "T4", "memory_bytes": 16}]}"#,
    )
    .unwrap();
    let out = check_with(
        &good,
        dir.path(),
        &["--inventory-file", inv.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&inv, r#"{"gpus": [{"index": 0}]}"#).unwrap();
    let out = check_with(
        &good,
        dir.path(),
        &["--inventory-file", inv.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gpus.json"),
        "{out:?}"
    );

    // Workloads never run as root.
    if root {
        let out = check(
            &good.replace("run_as = \"nobody\"", "run_as = \"root\""),
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(64));
        assert!(String::from_utf8_lossy(&out.stderr).contains("as root"));
    }

    // An admin certificate is not an agent's.
    let (admin, admin_key) = ca
        .issue_to_dir(
            dir.path(),
            "adm",
            &IssueRequest::new(Role::Admin, "ops", &[], 1),
        )
        .unwrap();
    let wrong = good
        .replace(&format!("{cert:?}"), &format!("{admin:?}"))
        .replace(&format!("{key:?}"), &format!("{admin_key:?}"));
    let out = check(&wrong, dir.path());
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent certificate"));
}

#[test]
fn a_gpu_rescan_interval_out_of_range_is_a_usage_error() {
    for bad in ["0", "3601", "soon"] {
        let out = Command::new(env!("CARGO_BIN_EXE_backfill-agent"))
            .args(["--gpu-rescan-interval-secs", bad, "--check-config"])
            .args(["--config", "/nonexistent/agent.toml"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--gpu-rescan-interval-secs"), "{bad}: {err}");
    }
}
