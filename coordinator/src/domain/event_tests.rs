//! Which changes make which events, filters, signatures and the retry schedule.

use super::*;
use crate::policy::scheduler::Termination;
use backfill_shared::{PerfFactor, ServerId, ServerStatus};
use std::collections::BTreeMap;

fn server() -> ServerRecord {
    ServerRecord {
        uuid: ServerId::from_u128(7),
        owner: "acme".into(),
        name: "job".into(),
        class: ServerClass::Backfill,
        cpu: 1000,
        smp: 1,
        mem: 1 << 30,
        meta: BTreeMap::new(),
        tags: vec!["batch".into()],
        vnc_password: None,
        workload: None,
        status: ServerStatus::Running,
        host: Some("h1".parse().unwrap()),
        perf_factor: PerfFactor::FULL,
        active_since: Some(10),
        incarnation: 1,
        termination: None,
        queued_reason: None,
        priority: 0,
        created_at: 1,
        metered_until: None,
        metered_perf: PerfFactor::FULL,
        shutdown_until: None,
        flavor: None,
        gpu_request: None,
        gpus: Vec::new(),
        instance_type: String::new(),
        last_host: None,
        stop_reason: None,
        drives: Vec::new(),
        network: None,
        limits: None,
    }
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind).collect()
}

#[test]
fn changes_make_the_events_tenants_subscribe_to() {
    let old = server();
    assert!(derive(None, &old, 5).is_empty(), "a new server makes none");
    assert!(
        derive(Some(&old), &old, 5).is_empty(),
        "no change, no event"
    );

    let mut noticed = old.clone();
    noticed.termination = Some(Termination {
        scheduled_at: 100,
        terminate_at: 1000,
    });
    let e = derive(Some(&old), &noticed, 100);
    assert_eq!(kinds(&e), ["cloud_termination"]);
    let p = &e[0].payload;
    assert_eq!(p["cloud_termination_scheduled_event_time"], "100");
    assert_eq!(p["cloud_termination_time"], "1000");
    assert_eq!(p["id"], e[0].id.as_str());
    assert_eq!(p["type"], "cloud_termination");
    assert_eq!(p["account"], "acme");
    assert_eq!(p["server"]["uuid"], old.uuid.to_string());
    assert_eq!(p["server"]["tags"][0], "batch");

    let mut squeezed = old.clone();
    squeezed.perf_factor = PerfFactor { cpu: 0.5, mem: 1.0 };
    let e = derive(Some(&old), &squeezed, 5);
    assert_eq!(kinds(&e), ["server_downsized"]);
    assert_eq!(e[0].payload["data"]["perf_factor"]["cpu"], 0.5);
    let e = derive(Some(&squeezed), &old, 6);
    assert_eq!(kinds(&e), ["perf_factor_restored"]);
    assert_eq!(e[0].payload["data"]["full"], true);

    let mut stopping = old.clone();
    stopping.status = ServerStatus::Stopping;
    let e = derive(Some(&old), &stopping, 7);
    assert_eq!(kinds(&e), ["server_state_changed"]);
    assert_eq!(
        e[0].payload["data"],
        serde_json::json!({"from": "running", "to": "stopping"})
    );
    // Stopped and back to full size at once: the state change only (it holds nothing now).
    let mut stopped = squeezed.clone();
    stopped.status = ServerStatus::Stopped;
    stopped.host = None;
    stopped.perf_factor = PerfFactor::FULL;
    assert_eq!(
        kinds(&derive(Some(&squeezed), &stopped, 8)),
        ["server_state_changed"]
    );
}

#[test]
fn subscriptions_match_their_account_types_and_filters() {
    let mut noticed = server();
    noticed.termination = Some(Termination {
        scheduled_at: 1,
        terminate_at: 2,
    });
    let e = derive(Some(&server()), &noticed, 1).remove(0);
    let sub = |owner: &str, events: &[&str], filters: Filters| Subscription {
        uuid: "s".into(),
        webhook: "w".into(),
        owner: owner.into(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        filters,
        created_at: 0,
    };
    assert!(sub("acme", &["cloud_termination"], Filters::default()).matches(&e));
    assert!(!sub("other", &["cloud_termination"], Filters::default()).matches(&e));
    assert!(!sub("acme", &["server_downsized"], Filters::default()).matches(&e));
    let only = |f: Filters| sub("acme", &["cloud_termination"], f).matches(&e);
    assert!(only(Filters {
        tags: vec!["batch".into(), "x".into()],
        ..Filters::default()
    }));
    assert!(!only(Filters {
        tags: vec!["web".into()],
        ..Filters::default()
    }));
    assert!(only(Filters {
        classes: vec!["backfill".into()],
        ..Filters::default()
    }));
    assert!(!only(Filters {
        classes: vec!["spot".into()],
        ..Filters::default()
    }));
    assert!(only(Filters {
        servers: vec![ServerId::from_u128(7).to_string()],
        ..Filters::default()
    }));
    assert!(!only(Filters {
        servers: vec![ServerId::from_u128(8).to_string()],
        ..Filters::default()
    }));
    assert!(
        Filters {
            classes: vec!["gold".into()],
            ..Filters::default()
        }
        .validate()
        .is_err()
    );
    assert!(
        Filters {
            servers: vec!["nope".into()],
            ..Filters::default()
        }
        .validate()
        .is_err()
    );
}

#[test]
fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
    // python3: hmac.new(b"whsec_test", b'1700000000.{"id":"e1"}', sha256).hexdigest()
    assert_eq!(
        signature("whsec_test", 1_700_000_000, br#"{"id":"e1"}"#),
        "sha256=6a85cb117c993612a34c72b4cfb5a16baed25a80d26e298ce0e6671320fd07c8"
    );
    assert!(new_secret().starts_with("whsec_"));
    assert_ne!(new_secret(), new_secret());
}

#[test]
fn backoff_doubles_with_jitter_up_to_its_cap() {
    assert_eq!(backoff(1, 5, 600, 0), 5);
    assert_eq!(backoff(2, 5, 600, 0), 10);
    assert_eq!(backoff(3, 5, 600, 0), 20);
    assert_eq!(backoff(30, 5, 600, 0), 600);
    // Jitter adds at most 20%.
    assert_eq!(backoff(4, 5, 600, 999), 40 + 7);
    assert_eq!(backoff(30, 5, 600, 999), 600 + 600 * 999 / 5000);
    assert!(backoff(0, 0, 0, 0) >= 1);
}
