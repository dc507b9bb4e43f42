//! `webhook ...`: an account's event receivers (`/webhooks/`), their subscriptions and
//! deliveries (account certificates). The signing secret is in the create's answer only, so
//! `create` prints it plainly and says so.

use crate::api::Api;
use crate::cli::{EVENT_TYPES, Output, SubscribeArgs, WebhookCmd, WebhookCreate};
use crate::error::CtlError;
use crate::output::{Out, note, typed};
use crate::table::{Table, cell, key_values};
use backfill_api::ActionResult;
use backfill_api::webhooks::{
    CreatedWebhooks, DeliveryList, DeliveryView, Filters, SubscriptionCreate, SubscriptionFields,
    SubscriptionList, SubscriptionView, WebhookFields, WebhookList, WebhookView,
};
use reqwest::Method;
use serde_json::{Value, json};

const COLL: &str = "webhooks";
/// The fields `show` and `create` print first.
const FIRST: &[&str] = &["uuid", "url", "description", "created_at"];
const SUB_FIRST: &[&str] = &["uuid", "events", "filters", "created_at"];
/// The longest `last_error` a deliveries table shows (the JSON has all of it).
const ERROR_WIDTH: usize = 60;

pub async fn run(api: &Api, out: Out, cmd: WebhookCmd) -> Result<(), CtlError> {
    match cmd {
        WebhookCmd::List => {
            let v = api.get(&[COLL], &[("limit", "0")]).await?;
            out.show_as(&v, list_table)
        }
        WebhookCmd::Show { uuid } => {
            let v = api.get(&[COLL, &uuid], &[]).await?;
            let hook: WebhookView = typed(&v)?;
            out.show(&v, |raw| show_table(raw, &hook))
        }
        WebhookCmd::Create(c) => create(api, out, &c).await,
        WebhookCmd::Delete { uuid } => {
            api.call(Method::DELETE, &[COLL, &uuid], &[], None).await?;
            out.say(&format!("deleted {uuid}"))
        }
        WebhookCmd::Subscriptions { uuid } => {
            let v = api
                .get(&[COLL, &uuid, "subscriptions"], &[("limit", "0")])
                .await?;
            out.show_as(&v, |l: &SubscriptionList| subscriptions_table(&l.objects))
        }
        WebhookCmd::Subscribe(s) => {
            let v = api
                .send(
                    Method::POST,
                    &[COLL, &s.uuid, "subscriptions"],
                    &[],
                    &subscribe_body(&s),
                )
                .await?;
            out.show(&v, |v| subscription_fields(&v["objects"][0]))
        }
        WebhookCmd::Unsubscribe { uuid, subscription } => {
            let segments = [COLL, &uuid, "subscriptions", &subscription];
            api.call(Method::DELETE, &segments, &[], None).await?;
            out.say(&format!("unsubscribed {subscription}"))
        }
        WebhookCmd::Deliveries { uuid } => {
            let v = api
                .get(&[COLL, &uuid, "deliveries"], &[("limit", "0")])
                .await?;
            out.show_as(&v, deliveries_table)
        }
        WebhookCmd::Redeliver { uuid, delivery } => {
            let answer = api
                .call(
                    Method::POST,
                    &[COLL, &uuid, "deliveries", &delivery, "action"],
                    &[("do", "redeliver")],
                    Some(&json!({})),
                )
                .await?;
            out.show_as(&answer, |r: &ActionResult| {
                let result = if r.result.is_empty() {
                    "accepted"
                } else {
                    &r.result
                };
                format!("{delivery}: redeliver {result}\n")
            })
        }
        // Handled before the API settings are read (it needs none).
        WebhookCmd::Listen(args) => crate::listen::run(args).await,
    }
}

/// The `{"objects": [...]}` a create sends; no description is the API's empty one.
pub fn create_body(c: &WebhookCreate) -> backfill_api::webhooks::WebhookCreate {
    backfill_api::webhooks::WebhookCreate {
        objects: vec![WebhookFields {
            url: c.url.clone(),
            description: c.description.clone(),
        }],
    }
}

/// The `{"objects": [...]}` a subscribe sends; empty filter lists do not narrow.
pub fn subscribe_body(s: &SubscribeArgs) -> SubscriptionCreate {
    SubscriptionCreate {
        objects: vec![SubscriptionFields {
            events: s.events.clone(),
            filters: Some(Filters {
                servers: s.servers.clone(),
                tags: s.tags.clone(),
                classes: s.classes.clone(),
            }),
        }],
    }
}

async fn create(api: &Api, out: Out, c: &WebhookCreate) -> Result<(), CtlError> {
    let v = api
        .send(Method::POST, &[COLL], &[], &create_body(c))
        .await?;
    let created: CreatedWebhooks = typed(&v)?;
    if created
        .objects
        .first()
        .and_then(|h| h.secret.as_ref())
        .is_none()
    {
        return Err(CtlError::BadResponse {
            url: api.url(&[COLL], &[]).to_string(),
            detail: "the create answer holds no objects[0].secret".into(),
        });
    }
    if out.format == Output::Json {
        note(
            "the signing secret in this answer (objects[0].secret) is never shown again: keep it now",
        );
    }
    out.show(&v, |v| created_text(&v["objects"][0]))
}

/// The new webhook, then its secret on a line of its own with what to do with it.
fn created_text(hook: &Value) -> String {
    let mut shown = hook.clone();
    let secret = shown
        .as_object_mut()
        .and_then(|o| o.remove("secret"))
        .unwrap_or(Value::Null);
    let uuid = cell(&hook["uuid"]);
    format!(
        "{}\nsecret: {}\n\n\
         Keep the secret now: it will not be shown again. Every delivery carries\n\
         X-Backfill-Signature: sha256=<hex HMAC-SHA256 of \"<X-Backfill-Timestamp>.<body>\" keyed by it>.\n\
         Next: backfillctl webhook subscribe {uuid} --event TYPE\n",
        webhook_fields(&shown),
        cell(&secret),
    )
}

/// The webhook's own fields as `FIELD VALUE` rows (its subscriptions are a table of their own).
fn webhook_fields(hook: &Value) -> String {
    let mut own = hook.clone();
    if let Some(o) = own.as_object_mut() {
        o.remove("subscriptions");
    }
    key_values(&own, FIRST).render()
}

/// Unique event types over a webhook's subscriptions, in the order of [`EVENT_TYPES`] (others
/// after them, as first seen).
fn events_of(hook: &WebhookView) -> String {
    let mut events: Vec<&str> = Vec::new();
    for e in hook.subscriptions.iter().flat_map(|s| &s.events) {
        if !events.contains(&e.as_str()) {
            events.push(e);
        }
    }
    events.sort_by_key(|e| {
        EVENT_TYPES
            .iter()
            .position(|t| t == e)
            .unwrap_or(EVENT_TYPES.len())
    });
    if events.is_empty() {
        "-".into()
    } else {
        events.join(", ")
    }
}

/// A string cell: `-` when empty.
fn text(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

pub fn webhook_row(hook: &WebhookView) -> Vec<String> {
    vec![
        text(&hook.uuid),
        text(&hook.url),
        text(&hook.description),
        hook.subscriptions.len().to_string(),
        events_of(hook),
        text(&hook.created_at),
    ]
}

fn list_table(v: &WebhookList) -> String {
    let mut t = Table::new(&["UUID", "URL", "DESCRIPTION", "SUBS", "EVENTS", "CREATED"]);
    for w in &v.objects {
        t.row(webhook_row(w));
    }
    t.render()
}

/// The webhook's fields as the API sent them, then its subscriptions.
fn show_table(raw: &Value, hook: &WebhookView) -> String {
    let tail = if hook.subscriptions.is_empty() {
        format!(
            "no subscriptions: backfillctl webhook subscribe {} --event TYPE\n",
            text(&hook.uuid)
        )
    } else {
        subscriptions_table(&hook.subscriptions)
    };
    format!("{}\n{tail}", webhook_fields(raw))
}

/// A filter list; empty does not narrow.
fn any_of(v: &[String]) -> String {
    if v.is_empty() {
        "any".into()
    } else {
        v.join(", ")
    }
}

/// One subscription as `FIELD VALUE` rows, a filter that does not narrow as `any`.
fn subscription_fields(s: &Value) -> String {
    let mut s = s.clone();
    for k in ["servers", "tags", "classes"] {
        if s["filters"].is_object() {
            let narrows = s["filters"][k].as_array().is_some_and(|a| !a.is_empty());
            if !narrows {
                s["filters"][k] = "any".into();
            }
        }
    }
    key_values(&s, SUB_FIRST).render()
}

pub fn subscription_row(s: &SubscriptionView) -> Vec<String> {
    let f = &s.filters;
    vec![
        text(&s.uuid),
        text(&s.events.join(", ")),
        any_of(&f.servers),
        any_of(&f.tags),
        any_of(&f.classes),
        text(&s.created_at),
    ]
}

fn subscriptions_table(list: &[SubscriptionView]) -> String {
    let mut t = Table::new(&[
        "SUBSCRIPTION",
        "EVENTS",
        "SERVERS",
        "TAGS",
        "CLASSES",
        "CREATED",
    ]);
    for s in list {
        t.row(subscription_row(s));
    }
    t.render()
}

/// The last attempt: the receiver's status code, or what went wrong before one came back.
fn last_result(d: &DeliveryView) -> String {
    let code = d.last_status_code;
    let error = d.last_error.as_deref().filter(|e| !e.is_empty());
    let short = |e: &str| {
        if e.chars().count() > ERROR_WIDTH {
            let cut: String = e.chars().take(ERROR_WIDTH - 1).collect();
            format!("{cut}…")
        } else {
            e.to_owned()
        }
    };
    match (code, error) {
        (Some(c), Some(e)) => format!("{c}: {}", short(e)),
        (Some(c), None) => c.to_string(),
        (None, Some(e)) => short(e),
        (None, None) => "-".into(),
    }
}

pub fn delivery_row(d: &DeliveryView) -> Vec<String> {
    let when = match d.status.as_str() {
        "delivered" => &d.delivered_at,
        "pending" => &d.next_attempt_at,
        _ => &d.last_attempt_at,
    };
    vec![
        text(&d.uuid),
        text(&d.event_type),
        text(&d.status),
        d.attempts.to_string(),
        last_result(d),
        when.as_deref().map_or_else(|| "-".into(), text),
        text(&d.created_at),
    ]
}

fn deliveries_table(v: &DeliveryList) -> String {
    let mut t = Table::new(&[
        "DELIVERY", "TYPE", "STATUS", "ATTEMPTS", "LAST", "WHEN", "CREATED",
    ]);
    for d in &v.objects {
        t.row(delivery_row(d));
    }
    t.render()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hook() -> Value {
        json!({
            "uuid": "w1", "url": "https://example.com/hook", "description": "ops",
            "created_at": "2025-01-01T00:00:00Z", "resource_uri": "/api/2.0/webhooks/w1/",
            "subscriptions": [
                {"uuid": "s1", "events": ["server_downsized", "cloud_termination"],
                 "filters": {"servers": [], "tags": ["batch"], "classes": []},
                 "created_at": "2025-01-01T00:00:01Z",
                 "resource_uri": "/api/2.0/webhooks/w1/subscriptions/s1/"},
                {"uuid": "s2", "events": ["server_downsized", "perf_factor_restored"],
                 "filters": {"servers": [], "tags": [], "classes": ["backfill", "spot"]},
                 "created_at": "2025-01-01T00:00:02Z",
                 "resource_uri": "/api/2.0/webhooks/w1/subscriptions/s2/"},
            ],
        })
    }

    #[test]
    fn bodies_carry_what_was_given() {
        let c = WebhookCreate {
            url: "https://example.com/hook".into(),
            description: None,
        };
        assert_eq!(
            serde_json::to_value(create_body(&c)).unwrap(),
            json!({"objects": [{"url": "https://example.com/hook"}]})
        );
        let s = SubscribeArgs {
            uuid: "w1".into(),
            events: vec!["cloud_termination".into()],
            servers: vec![],
            tags: vec!["batch".into()],
            classes: vec!["backfill".into()],
        };
        assert_eq!(
            serde_json::to_value(subscribe_body(&s)).unwrap(),
            json!({"objects": [{"events": ["cloud_termination"],
                   "filters": {"servers": [], "tags": ["batch"], "classes": ["backfill"]}}]})
        );
    }

    #[test]
    fn rows_summarize_subscriptions() {
        assert_eq!(
            webhook_row(&typed(&hook()).unwrap()),
            [
                "w1",
                "https://example.com/hook",
                "ops",
                "2",
                "cloud_termination, server_downsized, perf_factor_restored",
                "2025-01-01T00:00:00Z"
            ]
        );
        let bare = json!({"uuid": "w2", "url": "u", "description": "", "subscriptions": []});
        assert_eq!(webhook_row(&typed(&bare).unwrap())[3..5], ["0", "-"]);
        assert_eq!(
            subscription_row(&typed(&hook()["subscriptions"][1]).unwrap()),
            [
                "s2",
                "server_downsized, perf_factor_restored",
                "any",
                "any",
                "backfill, spot",
                "2025-01-01T00:00:02Z"
            ]
        );
    }

    #[test]
    fn a_new_subscription_says_any_for_filters_left_out() {
        let t = subscription_fields(&hook()["subscriptions"][0]);
        assert!(t.contains("filters.servers  any\n"), "{t}");
        assert!(t.contains("filters.tags     batch\n"), "{t}");
        assert!(
            t.starts_with("FIELD            VALUE\nuuid             s1\n"),
            "{t}"
        );
    }

    #[test]
    fn show_lists_subscriptions_or_says_how_to_add_one() {
        let t = show_table(&hook(), &typed(&hook()).unwrap());
        assert!(t.starts_with("FIELD"), "{t}");
        assert!(!t.contains("subscriptions."), "{t}");
        assert!(t.contains("\nSUBSCRIPTION "), "{t}");
        let bare = json!({"uuid": "w2", "url": "u", "subscriptions": []});
        assert!(
            show_table(&bare, &typed(&bare).unwrap())
                .ends_with("no subscriptions: backfillctl webhook subscribe w2 --event TYPE\n")
        );
    }

    #[test]
    fn the_secret_is_printed_once_on_its_own_line() {
        let mut h = hook();
        h["subscriptions"] = json!([]);
        h["secret"] = "0123abcd".into();
        let t = created_text(&h);
        assert_eq!(t.matches("0123abcd").count(), 1, "{t}");
        assert!(t.contains("\nsecret: 0123abcd\n"), "{t}");
        assert!(t.contains("will not be shown again"), "{t}");
        assert!(
            t.contains("backfillctl webhook subscribe w1 --event TYPE"),
            "{t}"
        );
    }

    #[test]
    fn deliveries_show_the_last_attempt() {
        let failed = json!({
            "uuid": "d1", "event_id": "e1", "event_type": "server_state_changed",
            "status": "pending", "attempts": 2, "next_attempt_at": "2025-01-01T00:01:00Z",
            "last_attempt_at": "2025-01-01T00:00:30Z", "last_status_code": null,
            "last_error": "x".repeat(100), "created_at": "2025-01-01T00:00:00Z",
            "delivered_at": null,
        });
        let row = delivery_row(&typed(&failed).unwrap());
        assert_eq!(row[2..4], ["pending", "2"]);
        assert_eq!(row[4].chars().count(), ERROR_WIDTH);
        assert!(row[4].ends_with('…'));
        assert_eq!(row[5], "2025-01-01T00:01:00Z");
        let done = json!({
            "uuid": "d2", "event_type": "cloud_termination", "status": "delivered",
            "attempts": 1, "last_status_code": 204, "last_error": null,
            "delivered_at": "2025-01-01T00:00:05Z", "created_at": "2025-01-01T00:00:00Z",
        });
        assert_eq!(
            delivery_row(&typed(&done).unwrap())[4..6],
            ["204", "2025-01-01T00:00:05Z"]
        );
        let code_and_error = json!({"last_status_code": 500, "last_error": "boom"});
        assert_eq!(last_result(&typed(&code_and_error).unwrap()), "500: boom");
    }
}
