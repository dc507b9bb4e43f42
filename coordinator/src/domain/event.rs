//! Events for tenants' webhooks. PURE here: which events a committed change makes (compare the
//! server before and after, as usage is settled), what receivers get, how it is signed, which
//! subscriptions match, and the retry schedule. The outbox and the delivery worker are in
//! `ops/webhooks/delivery.rs`; the tables in `store/webhooks.rs`.

use crate::domain::server::ServerRecord;
use crate::domain::server::holds_resources;
use backfill_shared::ServerClass;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The event types a subscription can name.
pub const TYPES: &[&str] = &[
    "cloud_termination",
    "server_downsized",
    "server_state_changed",
    "perf_factor_restored",
];

/// An event as written to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub account: String,
    pub kind: &'static str,
    pub server: String,
    /// The body receivers get.
    pub payload: Value,
    pub created_at: i64,
}

fn server_json(s: &ServerRecord) -> Value {
    json!({
        "uuid": s.uuid.to_string(),
        "name": s.name,
        "class": s.class.as_str(),
        "status": s.status.as_str(),
        "tags": s.tags,
    })
}

fn event(kind: &'static str, s: &ServerRecord, now: i64, data: Value) -> Event {
    let id = uuid::Uuid::new_v4().to_string();
    let mut payload = json!({
        "id": id,
        "type": kind,
        "time": backfill_shared::clock::rfc3339(now),
        "account": s.owner,
        "server": server_json(s),
        "data": data,
    });
    // As the metadata service tells the guest: Unix seconds, as strings.
    if let (Some(t), Some(o)) = (s.termination, payload.as_object_mut()) {
        o.insert(
            "cloud_termination_scheduled_event_time".into(),
            json!(t.scheduled_at.to_string()),
        );
        o.insert(
            "cloud_termination_time".into(),
            json!(t.terminate_at.to_string()),
        );
    }
    Event {
        id,
        account: s.owner.clone(),
        kind,
        server: s.uuid.to_string(),
        payload,
        created_at: now,
    }
}

/// The events a change of one server makes (none for a new server).
pub fn derive(old: Option<&ServerRecord>, new: &ServerRecord, now: i64) -> Vec<Event> {
    let Some(old) = old else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if old.termination.is_none() && new.termination.is_some() {
        out.push(event("cloud_termination", new, now, json!({})));
    }
    let placed = holds_resources(new.status) && new.host.is_some();
    let (o, n) = (old.perf_factor, new.perf_factor);
    let pf = json!({"cpu": n.cpu, "mem": n.mem});
    if placed && (n.cpu < o.cpu || n.mem < o.mem) {
        out.push(event(
            "server_downsized",
            new,
            now,
            json!({"perf_factor": pf, "previous": {"cpu": o.cpu, "mem": o.mem}}),
        ));
    } else if placed && (n.cpu > o.cpu || n.mem > o.mem) {
        out.push(event(
            "perf_factor_restored",
            new,
            now,
            json!({"perf_factor": pf, "previous": {"cpu": o.cpu, "mem": o.mem}, "full": n.cpu >= 1.0 && n.mem >= 1.0}),
        ));
    }
    if old.status != new.status {
        out.push(event(
            "server_state_changed",
            new,
            now,
            json!({"from": old.status.as_str(), "to": new.status.as_str()}),
        ));
    }
    out
}

/// What a subscription narrows its events to; an empty list does not narrow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub classes: Vec<String>,
}

impl Filters {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = self
            .classes
            .iter()
            .find(|c| ServerClass::parse(c).is_none())
        {
            return Err(format!("unknown class {c:?}: normal, backfill or spot"));
        }
        if let Some(s) = self
            .servers
            .iter()
            .find(|s| s.parse::<backfill_shared::ServerId>().is_err())
        {
            return Err(format!("{s:?} is not a server uuid"));
        }
        if self.servers.len() + self.tags.len() + self.classes.len() > 200 {
            return Err("at most 200 filter values".into());
        }
        Ok(())
    }

    /// Whether an event's server passes (its payload's `server`).
    pub fn admit(&self, server: &Value) -> bool {
        let s = |k: &str| server[k].as_str().unwrap_or_default().to_owned();
        let tags: Vec<&str> = server["tags"]
            .as_array()
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        (self.servers.is_empty() || self.servers.contains(&s("uuid")))
            && (self.classes.is_empty() || self.classes.contains(&s("class")))
            && (self.tags.is_empty() || self.tags.iter().any(|t| tags.contains(&t.as_str())))
    }
}

/// A subscription as the delivery worker matches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub uuid: String,
    pub webhook: String,
    pub owner: String,
    pub events: Vec<String>,
    pub filters: Filters,
    pub created_at: i64,
}

impl Subscription {
    /// Never another account's events.
    pub fn matches(&self, e: &Event) -> bool {
        self.owner == e.account
            && self.events.iter().any(|t| t == e.kind)
            && self.filters.admit(&e.payload["server"])
    }
}

/// `X-Backfill-Signature`: `sha256=` and the hex HMAC-SHA256, keyed by the webhook's secret,
/// of `<timestamp>.<body>`.
pub use backfill_api::webhooks::signature;

/// A new signing secret: 32 random bytes, hex.
pub fn new_secret() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("whsec_{a}{b}")
}

/// Seconds before attempt `attempt + 1` (1-based `attempt` just failed): exponential from
/// `base`, capped at `cap`, with up to 20% jitter from `jitter` (0..1000).
pub fn backoff(attempt: u32, base: u64, cap: u64, jitter: u32) -> u64 {
    let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let d = exp.min(cap).max(1);
    d.saturating_add(d.saturating_mul(u64::from(jitter % 1000)) / 5000)
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
