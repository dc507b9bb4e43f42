//! Serves one synthetic guest (at 127.0.0.1) through the real metadata listener, for the load
//! benchmark `tests/bench/metadata-vs-nginx.sh`. Not part of the agent.
//!
//! `cargo run --release -p backfill-agent --example metadata_serve -- 127.0.0.1:8169`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_agent::metadata::{
    GuestInfo, MetadataConfig, MetadataService, MetadataStore, RateLimiter, TokenSealer, bind,
    serve,
};
use backfill_shared::{PerfFactor, ServerClass, ServerId, SystemClock, Termination};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8169".into())
        .parse()
        .expect("an address such as 127.0.0.1:8169");
    let store = Arc::new(MetadataStore::default());
    store.put(GuestInfo {
        server: ServerId::new_random(),
        name: "bench-guest".into(),
        hostname: "bench-guest".into(),
        availability_zone: "default".into(),
        project_id: "tenant".into(),
        class: ServerClass::Spot,
        instance_type: "spot-c2m4".into(),
        local_ipv4: Some("127.0.0.1".parse().unwrap()),
        gateway: None,
        meta: [("role".to_string(), "batch".to_string())].into(),
        perf_factor: PerfFactor::FULL,
        cpu_quota_us: Some(200_000),
        cpu_period_us: 100_000,
        mem_limit_bytes: Some(4 << 30),
        termination: Some(Termination {
            scheduled_at: 1_795_000_000,
            terminate_at: 1_795_000_900,
        }),
        acknowledged: false,
        user_data: None,
    });
    let (acks, _rx) = tokio::sync::mpsc::channel(1);
    let svc = Arc::new(MetadataService::new(
        store,
        MetadataConfig::default(),
        TokenSealer::random().unwrap(),
        // The benchmark measures the listener, not the rate limit.
        RateLimiter::new(1e9, u32::MAX),
        acks,
        Arc::new(SystemClock),
    ));
    let listener = bind(addr).expect("bind");
    println!("listening on {}", listener.local_addr().unwrap());
    serve(listener, svc, CancellationToken::new()).await;
}
