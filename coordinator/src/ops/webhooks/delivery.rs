//! The delivery worker: fans new events out to the subscriptions that match them (one
//! delivery per event and webhook, made once), then POSTs due deliveries, signed, with retries
//! (capped exponential backoff with jitter) for `retry_for_s`. Each receiver gets at most
//! `per_receiver_concurrency` requests at a time, each bounded by `timeout_s`, so a slow one
//! cannot stall the others. Everything it needs is in the store: a restart loses nothing (an
//! attempt in flight at a crash is made again: at least once; receivers drop duplicates by
//! event id).

use crate::domain::event::{backoff, signature};
use crate::state::coordinator::Coordinator;
use crate::state::settings::WebhookConfig;
use crate::store::{Attempt, Outgoing};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Largest receiver response body read (the rest is dropped).
const MAX_RESPONSE: usize = 64 << 10;

/// Finished deliveries (and events no delivery needs) are kept this long, for `deliveries/`.
pub const KEEP_S: i64 = 7 * 86_400;

/// Addresses a receiver may not be at unless `allow_private`.
fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_link_local()
                || a.is_private()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64 // 100.64/10
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (a.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (a.segments()[0] & 0xffc0) == 0xfe80 // link local
                || a.to_ipv4_mapped().is_some_and(|v4| private(IpAddr::V4(v4)))
        }
    }
}

/// Checks a receiver URL against the configuration: scheme, no credentials, a host, and no
/// private target written as an address or as `localhost`.
pub fn check_url(raw: &str, cfg: &WebhookConfig) -> Result<reqwest::Url, String> {
    if raw.len() > 2048 {
        return Err("the URL is longer than 2048 characters".into());
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if cfg.allow_http => {}
        "http" => return Err("receivers must use https".into()),
        other => return Err(format!("scheme {other:?} is not allowed: https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed: the signature authenticates".into());
    }
    let Some(host) = url.host() else {
        return Err("the URL has no host".into());
    };
    let local = match host {
        url::Host::Ipv4(a) => private(IpAddr::V4(a)),
        url::Host::Ipv6(a) => private(IpAddr::V6(a)),
        url::Host::Domain(d) => d == "localhost" || d.ends_with(".localhost"),
    };
    if local && !cfg.allow_private {
        return Err("loopback, link-local and private receivers are not allowed".into());
    }
    Ok(url)
}

/// The address to connect to: resolved now and checked, so a name cannot point the
/// coordinator at a private address after the URL was accepted.
async fn vetted(
    url: &reqwest::Url,
    cfg: &WebhookConfig,
) -> Result<Option<(String, SocketAddr)>, String> {
    let Some(url::Host::Domain(d)) = url.host() else {
        return Ok(None);
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((d, port))
        .await
        .map_err(|e| format!("cannot resolve {d}: {e}"))?
        .collect();
    let ok = addrs
        .into_iter()
        .find(|a| cfg.allow_private || !private(a.ip()))
        .ok_or_else(|| format!("{d} resolves only to private addresses"))?;
    Ok(Some((d.to_owned(), ok)))
}

/// One POST of a delivery; the attempt as recorded.
async fn send(o: &Outgoing, cfg: &WebhookConfig, now: i64) -> Attempt {
    let fail = |status: Option<u16>, error: String| (status, Some(error));
    let outcome: Result<u16, (Option<u16>, Option<String>)> = async {
        let url = check_url(&o.url, cfg).map_err(|e| fail(None, e))?;
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_s))
            .connect_timeout(Duration::from_secs(cfg.timeout_s))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("backfill-webhooks/", env!("CARGO_PKG_VERSION")));
        if let Some((host, addr)) = vetted(&url, cfg).await.map_err(|e| fail(None, e))? {
            b = b.resolve(&host, addr);
        }
        let client = b.build().map_err(|e| fail(None, e.to_string()))?;
        let ts = now;
        let resp = client
            .post(url)
            .header("content-type", "application/json")
            .header("x-backfill-event", o.delivery.event_type.as_str())
            .header("x-backfill-event-id", o.delivery.event_id.as_str())
            .header("x-backfill-delivery", o.delivery.uuid.as_str())
            .header("x-backfill-timestamp", ts.to_string())
            .header(
                "x-backfill-signature",
                signature(&o.secret, ts, o.payload.as_bytes()),
            )
            .body(o.payload.clone())
            .send()
            .await
            .map_err(|e| fail(None, e.to_string()))?;
        let status = resp.status().as_u16();
        // Read (and drop) at most MAX_RESPONSE of the answer.
        let mut resp = resp;
        let mut read = 0usize;
        while read < MAX_RESPONSE {
            match resp.chunk().await {
                Ok(Some(c)) => read += c.len(),
                _ => break,
            }
        }
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err(fail(
                Some(status),
                format!("the receiver answered {status}"),
            ))
        }
    }
    .await;
    match outcome {
        Ok(status) => Attempt {
            at: now,
            status: Some(status),
            error: None,
            delivered: true,
            next_at: None,
        },
        Err((status, error)) => {
            let attempt = o.delivery.attempts.saturating_add(1);
            let wait = backoff(
                attempt,
                cfg.backoff_base_s,
                cfg.backoff_max_s,
                rand_jitter(&o.delivery.uuid, attempt),
            );
            let wait = i64::try_from(wait).unwrap_or(i64::MAX);
            let deadline = o
                .delivery
                .created_at
                .saturating_add(i64::try_from(cfg.retry_for_s).unwrap_or(i64::MAX));
            let next = now.saturating_add(wait);
            Attempt {
                at: now,
                status,
                error,
                delivered: false,
                next_at: (next <= deadline).then_some(next),
            }
        }
    }
}

/// Jitter in 0..1000, different per delivery and attempt (so retries of many deliveries to a
/// receiver that came back do not arrive in lockstep).
fn rand_jitter(delivery: &str, attempt: u32) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for b in delivery.bytes().chain(attempt.to_le_bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    h % 1000
}

impl Coordinator {
    /// Makes the deliveries of events not fanned out yet.
    async fn fan_out(&self) -> Result<(), crate::store::StoreError> {
        let events = self.store.unfanned_events(200).await?;
        if events.is_empty() {
            return Ok(());
        }
        let subs = self.store.subscriptions().await?;
        let now = self.clock.now();
        for e in events {
            let hooks: BTreeSet<String> = subs
                .iter()
                .filter(|s| s.matches(&e))
                .map(|s| s.webhook.clone())
                .collect();
            let hooks: Vec<String> = hooks.into_iter().collect();
            self.store.fan_out(&e.id, &hooks, now).await?;
        }
        Ok(())
    }
}

/// Runs until `shutdown`: fan out, send what is due, wait for new events or a second.
pub async fn run(c: Arc<Coordinator>, shutdown: CancellationToken) {
    backfill_shared::tls::install_default_provider();
    let in_flight: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut limits: BTreeMap<String, Arc<Semaphore>> = BTreeMap::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let mut pruned_at = i64::MIN;
    loop {
        let now = c.clock.now();
        if now.saturating_sub(pruned_at) >= 3600 {
            pruned_at = now;
            match c.store.prune_outbox(now.saturating_sub(KEEP_S)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "webhooks: old deliveries and events pruned"),
                Err(e) => tracing::warn!(error = %e, "webhooks: cannot prune the outbox"),
            }
        }
        if let Err(e) = c.fan_out().await {
            tracing::error!(error = %e, "webhooks: cannot fan events out; retrying");
        }
        let now = c.clock.now();
        match c.store.due_deliveries(now, 200).await {
            Err(e) => tracing::error!(error = %e, "webhooks: cannot read due deliveries"),
            Ok(due) => {
                for o in due {
                    let id = o.delivery.uuid.clone();
                    let fresh = in_flight
                        .lock()
                        .map(|mut s| s.insert(id.clone()))
                        .unwrap_or(false);
                    if !fresh {
                        continue;
                    }
                    let cfg = c.webhooks.clone();
                    let permits = limits
                        .entry(o.delivery.webhook.clone())
                        .or_insert_with(|| {
                            Arc::new(Semaphore::new(
                                usize::try_from(cfg.per_receiver_concurrency).unwrap_or(1),
                            ))
                        })
                        .clone();
                    let (c2, flight) = (c.clone(), in_flight.clone());
                    tasks.spawn(async move {
                        let Ok(_permit) = permits.acquire_owned().await else {
                            return;
                        };
                        let attempt = send(&o, &cfg, c2.clock.now()).await;
                        let kind = if attempt.delivered { "delivered" } else { "failed" };
                        c2.metrics
                            .webhook_attempts
                            .get_or_create(&crate::telemetry::Kind { kind: kind.into() })
                            .inc();
                        if !attempt.delivered {
                            tracing::warn!(delivery = %o.delivery.uuid, url = %o.url, status = ?attempt.status, error = ?attempt.error, retry_at = ?attempt.next_at, "webhook delivery failed");
                        }
                        if let Err(e) = c2.store.record_attempt(&o.delivery.uuid, &attempt).await {
                            tracing::error!(error = %e, "webhooks: cannot record an attempt");
                        }
                        if let Ok(mut s) = flight.lock() {
                            s.remove(&o.delivery.uuid);
                        }
                        c2.events_ready.notify_one();
                    });
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = c.events_ready.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_urls_are_checked() {
        let strict = WebhookConfig::default();
        assert!(check_url("https://hooks.example.com/x", &strict).is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "ftp://hooks.example.com/x",
            "https://127.0.0.1/x",
            "https://169.254.169.254/latest",
            "https://10.1.2.3/x",
            "https://[::1]/x",
            "https://[fe80::1]/x",
            "https://localhost:8080/x",
            "https://user:pw@hooks.example.com/x",
            "not a url",
        ] {
            assert!(check_url(bad, &strict).is_err(), "{bad}");
        }
        let lab = WebhookConfig {
            allow_http: true,
            allow_private: true,
            ..WebhookConfig::default()
        };
        assert!(check_url("http://127.0.0.1:9/x", &lab).is_ok());
        assert!(check_url("ftp://127.0.0.1/x", &lab).is_err());
    }

    #[test]
    fn jitter_differs_per_delivery_and_attempt() {
        assert_ne!(rand_jitter("a", 1), rand_jitter("b", 1));
        assert_ne!(rand_jitter("a", 1), rand_jitter("a", 2));
        assert!(rand_jitter("a", 1) < 1000);
    }
}
