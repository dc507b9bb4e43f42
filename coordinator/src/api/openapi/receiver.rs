//! The OpenAPI document of the API a tenant's webhook receiver implements: one `POST` of a
//! signed JSON event. Served at `/api/2.0/webhooks/receiver-openapi.json`; the committed copy
//! is `docs/webhook-receiver-openapi.json` (a test compares them).

use serde_json::{Value, json};

fn header(name: &str, description: &str, example: &str) -> Value {
    json!({
        "name": name,
        "in": "header",
        "required": true,
        "description": description,
        "schema": {"type": "string"},
        "example": example,
    })
}

pub fn document() -> Value {
    let event_types = crate::domain::event::TYPES;
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "backfill webhook receiver",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "What a tenant's service implements to receive backfill events. The coordinator POSTs each event to the webhook's URL. Verify X-Backfill-Signature: 'sha256=' + hex(HMAC-SHA256(secret, X-Backfill-Timestamp + '.' + raw body)), compared in constant time, and refuse timestamps far from now (replay). Answer 2xx to acknowledge; anything else, or no answer within the coordinator's timeout, is retried with exponential backoff for the configured period. Delivery is at least once: drop duplicates by the event id (also X-Backfill-Event-Id)."
        },
        "paths": {
            "/": {
                "post": {
                    "summary": "One event (the path is whatever the webhook's URL names)",
                    "operationId": "receiveEvent",
                    "parameters": [
                        header("X-Backfill-Event", "The event type", "cloud_termination"),
                        header("X-Backfill-Event-Id", "The event id: the same on every retry", "9f6c3a56-0d1e-4c4b-9d0e-2f1c7b1f3f11"),
                        header("X-Backfill-Delivery", "This event's delivery to this webhook", "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"),
                        header("X-Backfill-Timestamp", "Unix seconds when this attempt was signed", "1764415200"),
                        header("X-Backfill-Signature", "sha256=<hex HMAC-SHA256 of '<timestamp>.<body>' keyed by the webhook's secret>", "sha256=6a85cb117c993612a34c72b4cfb5a16baed25a80d26e298ce0e6671320fd07c8"),
                    ],
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Event"}}}
                    },
                    "responses": {
                        "2XX": {"description": "Acknowledged: not sent again"},
                        "default": {"description": "Not acknowledged: retried later (the body is read up to 64 KiB and ignored)"}
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "Event": {
                    "type": "object",
                    "required": ["id", "type", "time", "account", "server", "data"],
                    "properties": {
                        "id": {"type": "string", "format": "uuid", "description": "Stable across retries"},
                        "type": {"type": "string", "enum": event_types},
                        "time": {"type": "string", "format": "date-time", "description": "When the change was committed"},
                        "account": {"type": "string"},
                        "server": {"$ref": "#/components/schemas/EventServer"},
                        "cloud_termination_scheduled_event_time": {"type": "string", "description": "While a termination is scheduled: when it was scheduled, Unix seconds (as the metadata service tells the guest)"},
                        "cloud_termination_time": {"type": "string", "description": "While a termination is scheduled: when the server stops, Unix seconds"},
                        "data": {
                            "type": "object",
                            "description": "server_downsized and perf_factor_restored: perf_factor {cpu, mem}, previous {cpu, mem} (and full); server_state_changed: from, to; cloud_termination: empty"
                        }
                    }
                },
                "EventServer": {
                    "type": "object",
                    "required": ["uuid", "name", "class", "status", "tags"],
                    "properties": {
                        "uuid": {"type": "string", "format": "uuid"},
                        "name": {"type": "string"},
                        "class": {"type": "string", "enum": ["normal", "backfill", "spot"]},
                        "status": {"type": "string"},
                        "tags": {"type": "array", "items": {"type": "string"}}
                    }
                }
            }
        }
    })
}

/// As served and committed: pretty JSON with a final newline.
pub fn document_json() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_copy_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/webhook-receiver-openapi.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == super::document_json(),
            "{} is out of date: run `cargo run -p backfill-coordinator -- openapi --receiver > docs/webhook-receiver-openapi.json`",
            path.display()
        );
    }
}
