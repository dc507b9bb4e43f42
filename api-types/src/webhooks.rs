//! `/webhooks/`: an account's event receivers, their subscriptions and deliveries; and the
//! signature every delivery carries.

use crate::common::{lists, objects};
use serde::{Deserialize, Serialize};

/// What a subscription narrows its events to; an empty list does not narrow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Filters {
    pub servers: Vec<String>,
    pub tags: Vec<String>,
    pub classes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct SubscriptionView {
    pub uuid: String,
    /// cloud_termination, server_downsized, server_state_changed, perf_factor_restored.
    pub events: Vec<String>,
    pub filters: Filters,
    pub created_at: String,
    pub resource_uri: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct WebhookView {
    pub uuid: String,
    pub url: String,
    pub description: String,
    pub created_at: String,
    pub resource_uri: String,
    pub subscriptions: Vec<SubscriptionView>,
    /// Only in the create's answer: the HMAC-SHA256 key of `X-Backfill-Signature`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct DeliveryView {
    pub uuid: String,
    pub event_id: String,
    pub event_type: String,
    /// pending, delivered or failed (given up).
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

lists! {
    /// `GET /webhooks/`.
    WebhookList: WebhookView;
    /// `GET /webhooks/{uuid}/subscriptions/`.
    SubscriptionList: SubscriptionView;
    /// `GET /webhooks/{uuid}/deliveries/`.
    DeliveryList: DeliveryView;
}

objects! {
    /// A webhook create's answer (with its `secret`).
    CreatedWebhooks: WebhookView;
    /// A subscribe's answer.
    CreatedSubscriptions: SubscriptionView;
    /// `POST /webhooks/`.
    WebhookCreate: WebhookFields;
    /// `POST /webhooks/{uuid}/subscriptions/`.
    SubscriptionCreate: SubscriptionFields;
}

/// Create: `url` (https, unless the operator allows http), optional `description`. The
/// coordinator refuses unknown fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookFields {
    pub url: String,
    /// Empty when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = String))]
    pub description: Option<String>,
}

/// The coordinator refuses unknown fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFields {
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
}

/// A delivery's `X-Backfill-Signature`: `sha256=` and the hex HMAC-SHA256, keyed by the
/// webhook's secret, of `"<X-Backfill-Timestamp>.<body>"`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether `got` (a delivery's `X-Backfill-Signature`) is the signature of `body` at
/// `timestamp` under `secret`, compared in constant time.
pub fn verify(secret: &str, timestamp: i64, body: &[u8], got: &str) -> bool {
    let want = signature(secret, timestamp, body);
    want.len() == got.len()
        && want
            .bytes()
            .zip(got.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // python3: hmac.new(b"whsec_test", b'1700000000.{"id":"e1"}', sha256).hexdigest()
        let sig = signature("whsec_test", 1_700_000_000, br#"{"id":"e1"}"#);
        assert_eq!(
            sig,
            "sha256=6a85cb117c993612a34c72b4cfb5a16baed25a80d26e298ce0e6671320fd07c8"
        );
        assert!(verify("whsec_test", 1_700_000_000, br#"{"id":"e1"}"#, &sig));
        assert!(!verify(
            "whsec_test",
            1_700_000_001,
            br#"{"id":"e1"}"#,
            &sig
        ));
        assert!(!verify("other", 1_700_000_000, br#"{"id":"e1"}"#, &sig));
        assert!(!verify(
            "whsec_test",
            1_700_000_000,
            br#"{"id":"e1"}"#,
            "sha256="
        ));
    }
}
