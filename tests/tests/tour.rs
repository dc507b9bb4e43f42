//! The README's tour, run: every `sh tour` step of README.md (and of the docs that have tour
//! steps) in one bash, against a real `backfill-coordinator dev`, checking what each step says
//! it prints (`tests/src/tour.rs` has the format). A failing step names its file and line.
//!
//! The steps run as written, but for two addresses a reader uses and a shared machine may
//! have taken: the metadata address (169.254.169.254, given to dev with `--metadata-addr`)
//! and the webhook receiver's port (8090) become this run's own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_tests::tour::{Expect, Shell, Step, steps};
use backfill_tests::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The files with tours, README first; each runs in a shell of its own.
fn tours() -> Vec<(String, Vec<Step>)> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let name = f.strip_prefix(root()).unwrap().display().to_string();
            (name, steps(&text))
        })
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

fn all_text(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| s.command.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the tour must show: each capability, by a command that shows it.
#[test]
fn the_readme_tour_shows_every_capability() {
    let tours = tours();
    let (name, readme) = &tours[0];
    assert_eq!(name, "README.md", "the README has no tour steps");
    let text = all_text(readme);
    for (what, needle) in [
        ("capacity", "capabilities/"),
        ("a backfill server", "bservers/"),
        ("downsizing", "perf_factor"),
        ("a spot server", "dev-preemptible"),
        ("the OpenStack notice", "openstack/latest/meta_data.json"),
        ("the EC2 notice", "spot/instance-action"),
        ("the GCE notice", "computeMetadata/v1/instance/preempted"),
        ("the Azure notice", "metadata/scheduledevents"),
        ("a webhook received", "webhook listen"),
        ("the guest's acknowledgement", "backfill/v1/acknowledge"),
        ("usage at the burst rate", "ledger/"),
        ("the Arvados API", "arvados/v1/dispatch/instances"),
        ("the Dynamic Cluster API", "dynamiccluster/"),
        ("the dashboard", "dashboard"),
    ] {
        assert!(
            text.contains(needle),
            "the README's tour lacks {what} ({needle})"
        );
    }
    let polled = readme
        .iter()
        .filter(|s| matches!(s.expect, Expect::Eventually(_)))
        .count();
    assert!(polled > 5, "the tour's waits are polls: {polled}");
    assert!(
        !readme
            .iter()
            .any(|s| s.command.trim_start().starts_with("sleep")),
        "a tour waits by polling (# eventually →), not by sleeping"
    );
}

/// Starts dev in `work/backfill-dev` on free loopback ports; its log.
fn start_dev(work: &Path, metadata: &str) -> Daemon {
    let data = work.join("backfill-dev");
    let mut d = Daemon::spawn_env(
        &bin("backfill-coordinator"),
        &[
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--api-addr",
            "127.0.0.1:0",
            "--link-addr",
            "127.0.0.1:0",
            "--management-addr",
            "127.0.0.1:0",
            "--metadata-addr",
            metadata,
        ],
        work.join("dev.log"),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = d.log_text();
        if text.lines().any(|l| l.starts_with("drivers: ")) {
            return d;
        }
        if let Ok(Some(status)) = d.child.try_wait() {
            panic!("dev exited ({status}):\n{text}");
        }
        assert!(Instant::now() < deadline, "dev is not ready:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn the_readme_tour_runs_against_dev() {
    if !is_root() {
        eprintln!("skipped: the tour's guests need root (cgroups, network namespaces)");
        return;
    }
    for p in ["curl", "jq", "ip"] {
        if !have(p) {
            assert!(
                std::env::var_os("CI").is_none(),
                "{p} is not installed; .ci/run installs it"
            );
            eprintln!("skipped: the tour needs {p}");
            return;
        }
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    // This run's own metadata address and webhook port (other checkouts' tests may hold
    // 169.254.169.254:80 and 8090 on a shared machine).
    let md_ip = format!("169.254.173.{}", std::process::id() % 250 + 1);
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dev = start_dev(work.path(), &format!("{md_ip}:80"));
    let bins = bin("backfill-coordinator").parent().unwrap().to_owned();
    let steps_dir = tempfile::tempdir().unwrap();
    for (file, steps) in tours() {
        let mut shell = Shell::start(work.path(), &bins, steps_dir.path());
        shell.rewrites = vec![
            ("169.254.169.254".into(), md_ip.clone()),
            (":8090".into(), format!(":{hook_port}")),
            ("--port 8090".into(), format!("--port {hook_port}")),
        ];
        for step in &steps {
            match shell.step(&file, step) {
                Ok(took) => eprintln!("{file}:{} ok ({took:.1?})", step.line),
                Err(why) => panic!(
                    "tour step failed: {why}\n--- dev's log (tail):\n{}",
                    tail(&dev.log_text(), 40)
                ),
            }
        }
    }
    eprintln!("the tour ran in {:.1?}", started.elapsed());
    // Ctrl-C, as the reader ends it.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(dev.child.id() as i32, libc::SIGINT);
    }
    wait_until("dev exits on Ctrl-C", || {
        matches!(dev.child.try_wait(), Ok(Some(_)))
    });
    let log = dev.log_text();
    assert!(
        log.contains("dev mode stops its workloads on exit"),
        "{log}"
    );
}
