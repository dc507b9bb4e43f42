//! The dashboard in headless Chromium, with live data after a create/preempt cycle: the page
//! is loaded from the management listener with the token, rendered (its script fetches the
//! data), and the DOMs of its three views (the fleet, a host, a server) are checked; a
//! screenshot of each is kept for people under target/artifacts/ (.ci/run says where).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backfill_shared::pki::Role;
use backfill_tests::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOKEN: &str = "dashboard-token-0123456789abcdef";

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .filter_map(|c| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(c))
                    .find(|f| f.is_file())
            })
        })
        .next()
}

/// Runs headless Chromium on `url` with `args`; returns stdout.
fn browse(chrome: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let out = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--ignore-certificate-errors",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// The page's DOM once its script has run.
async fn dump(chrome: &Path, profile: &Path, url: &str) -> String {
    let (c, p, u) = (chrome.to_owned(), profile.to_owned(), url.to_owned());
    let dom = tokio::task::spawn_blocking(move || browse(&c, &p, &["--dump-dom".into()], &u))
        .await
        .unwrap();
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the script did not render {url}:\n{dom}"
    );
    dom
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_live_data_in_headless_chromium() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; .ci/run installs it"
        );
        eprintln!("SKIP: chromium is not installed (apt-get install chromium)");
        return;
    };
    let pki = Pki::new();
    // Backfill servers get ten minutes of notice, so that a termination stays on show.
    let extra = format!(
        "\n[operator]\nmanagement_token = \"{TOKEN}\"\nmanagement_addr = \"127.0.0.1:0\"\n[classes.backfill]\ndownsizable = true\nfloor = 0.1\nmin_uptime_s = 0\nnotice_s = 600\n"
    );
    let mut coord = Coordinator::start_with(&pki, &["tenant"], &extra);
    let mgmt = coord
        .daemon
        .wait_log_value("management listening", "management_addr");
    let setup = AgentSetup::new(&pki, &coord, "dash-host");
    let _agent = setup.start(true, "1");
    let tenant = client(&pki.ca(), Some(&pki.issue(Role::Account, "tenant")));
    let admin = client(&pki.ca(), Some(&pki.issue(Role::Admin, "ops")));

    // A backfill server takes most of the host; a normal server downsizes it.
    let caps = eventually("the host's capacity", || async {
        let (_, caps) = get(&tenant, &coord.url("capabilities/")).await;
        (caps["free_resources"]["total"]["cpu"].as_u64() > Some(0)).then_some(caps)
    })
    .await;
    let host_cpu = caps["free_resources"]["total"]["cpu"].as_u64().unwrap();
    let bf = create(
        &tenant,
        &coord.url("bservers/"),
        json!({"name": "bf", "cpu": host_cpu - 500, "mem": 128u64 << 20,
               "workload": {"command": ["sleep", "300"]}}),
    )
    .await;
    post(
        &tenant,
        &coord.url(&format!("bservers/{bf}/action/?do=start")),
        json!({}),
    )
    .await;
    eventually("the backfill server running", || async {
        let (_, s) = get(&tenant, &coord.url(&format!("bservers/{bf}/"))).await;
        (s["status"] == "running").then_some(())
    })
    .await;
    let normal = create(
        &tenant,
        &coord.url("servers/"),
        json!({"name": "web", "cpu": 1000, "mem": 128u64 << 20,
               "workload": {"command": ["sleep", "300"]}}),
    )
    .await;
    post(
        &tenant,
        &coord.url(&format!("servers/{normal}/action/?do=start")),
        json!({}),
    )
    .await;
    eventually("the backfill server downsized", || async {
        let (_, s) = get(&tenant, &coord.url(&format!("bservers/{bf}/"))).await;
        (s["runtime"]["perf_factor"]["cpu"].as_f64() < Some(1.0)).then_some(())
    })
    .await;
    // A bigger normal server than downsizing to the floor makes room for: the backfill
    // server gets its termination notice, and the big one waits for it.
    let big_cpu = (host_cpu - 1000 - (host_cpu - 500) / 10) + 200;
    let big = create(
        &tenant,
        &coord.url("servers/"),
        json!({"name": "big", "cpu": big_cpu, "mem": 128u64 << 20,
               "workload": {"command": ["sleep", "300"]}}),
    )
    .await;
    post(
        &tenant,
        &coord.url(&format!("servers/{big}/action/?do=start")),
        json!({}),
    )
    .await;
    eventually("the backfill server's termination notice", || async {
        let (_, s) = get(&tenant, &coord.url(&format!("bservers/{bf}/"))).await;
        (!s["runtime"]["termination"].is_null()).then_some(())
    })
    .await;
    // The host on hold: a third server waits in the queue.
    let hold = format!(
        "https://{}/arvados/v1/dispatch/instances/hold?instance_id=dash-host",
        coord.api
    );
    assert_eq!(admin.post(&hold).send().await.unwrap().status(), 200);
    let waiting = create(
        &tenant,
        &coord.url("bservers/"),
        json!({"name": "waiting-job", "cpu": 200, "mem": 64u64 << 20}),
    )
    .await;
    post(
        &tenant,
        &coord.url(&format!("bservers/{waiting}/action/?do=start")),
        json!({}),
    )
    .await;

    let url = format!("https://{mgmt}/dashboard?api_token={TOKEN}");
    let profile = tempfile::tempdir().unwrap();
    let dom = dump(&chrome, profile.path(), &url).await;
    assert!(dom.contains("data-host=\"dash-host\""), "{dom}");
    assert!(dom.contains("data-kind=\"downsized\""), "{dom}");
    assert!(dom.contains(&format!("data-server=\"{bf}\"")), "{dom}");
    assert!(dom.contains(&format!("data-server=\"{waiting}\"")), "{dom}");
    assert!(dom.contains("waiting-job"), "{dom}");
    assert!(dom.contains("data-class=\"backfill\""), "{dom}");
    assert!(dom.contains("data-series=\"free\""), "{dom}");
    assert!(dom.contains(">hold<"), "the held host's behavior: {dom}");

    // Charts with axes, units and a hover read-out.
    assert!(dom.contains("data-axis=\"x\""), "{dom}");
    assert!(dom.contains("data-axis=\"y\""), "{dom}");
    assert!(dom.contains("data-unit=\"GHz\""), "{dom}");
    assert!(dom.contains("time (UTC)"), "{dom}");
    assert!(
        dom.contains("data-hover=\"") && dom.contains(" UTC: total "),
        "no hover values: {dom}"
    );
    assert!(dom.contains("href=\"#host/dash-host\""), "{dom}");

    // The host's page: its servers with the limits in force, its preemptions.
    let host_url = format!("{url}#host/dash-host");
    let dom = dump(&chrome, profile.path(), &host_url).await;
    assert!(dom.contains("data-view=\"host\""), "{dom}");
    assert!(dom.contains(&format!("data-server=\"{bf}\"")), "{dom}");
    assert!(dom.contains(&format!("data-server=\"{normal}\"")), "{dom}");
    assert!(dom.contains("data-limit=\"cpu\""), "{dom}");
    assert!(dom.contains("data-kind=\"downsized\""), "{dom}");
    assert!(
        !dom.contains("waiting-job"),
        "a queued server is on no host: {dom}"
    );

    // The downsized server's page: state changes, perf_factor over time, usage.
    let server_url = format!("{url}#server/{bf}");
    let dom = dump(&chrome, profile.path(), &server_url).await;
    assert!(dom.contains("data-view=\"server\""), "{dom}");
    assert!(dom.contains("data-series=\"perf-cpu\""), "{dom}");
    assert!(dom.contains("data-unit=\"% of sold\""), "{dom}");
    assert!(dom.contains("data-change=\"created\""), "{dom}");
    assert!(dom.contains("data-change=\"running\""), "{dom}");
    assert!(dom.contains("data-change=\"downsized\""), "{dom}");
    assert!(dom.contains("data-change=\"noticed\""), "{dom}");
    assert!(dom.contains("data-change=\"terminating\""), "{dom}");
    assert!(dom.contains("data-termination=\""), "{dom}");
    assert!(dom.contains("data-fact=\"amount\""), "{dom}");
    assert!(dom.contains("href=\"#host/dash-host\""), "{dom}");

    // Screenshots of the three pages, kept for people: target/artifacts/dashboard-*.png
    // (.ci/run says where).
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, u) in [
        ("fleet", &url),
        ("host", &host_url),
        ("server", &server_url),
    ] {
        let shot = dir.join(format!("dashboard-{name}.png"));
        let _ = std::fs::remove_file(&shot);
        let (p, u, s) = (profile.path().to_owned(), u.clone(), shot.clone());
        let c = chrome.clone();
        tokio::task::spawn_blocking(move || {
            browse(
                &c,
                &p,
                &[
                    format!("--screenshot={}", s.display()),
                    "--window-size=1280,1000".into(),
                ],
                &u,
            )
        })
        .await
        .unwrap();
        let png = std::fs::read(&shot).unwrap();
        assert_eq!(png_size(&png), (1280, 1000));
        assert!(
            png.len() > 20_000,
            "a near-empty screenshot of the {name} page: {} bytes",
            png.len()
        );
        eprintln!("dashboard screenshot: {}", shot.display());
    }

    // Without the token the page is refused.
    let anonymous = client(&pki.ca(), None);
    let r = anonymous
        .get(format!("https://{mgmt}/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}
