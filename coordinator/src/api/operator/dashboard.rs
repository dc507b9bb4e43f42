//! The operators' dashboard at `/dashboard` (Dynamic Cluster shipped one there): one HTML page
//! with its style and script inline (no CDN, no other request than its data), fed by
//! `/dashboard/data.json`. Both need an operator: an admin certificate, or the management token
//! (a browser passes it as `?api_token=`, which the page hands on to its data requests).
//!
//! The page has three views, chosen by its URL's fragment: the fleet (`#`), one host
//! (`#host/ID`: its servers, the limits in force, its recent preemptions) and one server
//! (`#server/UUID`: its state changes, its perf_factor over time, its termination, its usage).
//! They are drawn from what the coordinator already keeps: hosts, servers, the capacity
//! samples and preemption timeline of `history`, and usage; nothing is recorded for the page.

use crate::api::AppState;
use crate::api::operator::auth::{Refused, authorize};
use crate::ops::operator::{HostView, QueueEntry};
use crate::state::history::Sample;
use axum::Router;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backfill_api::dashboard::{
    DashError, DashHost, DashPerfFactor, DashPreemption, DashQueued, DashSample, DashServer,
    DashShare, DashTermination, DashUsage, DashWork, DashboardData,
};
use std::collections::BTreeMap;

/// The most servers the data lists: every one that holds or waits for a host, then the newest
/// of the rest.
const MAX_SERVERS: usize = 500;
/// The period of the usage a server's view shows.
const USAGE_PERIOD_S: i64 = 30 * 86_400;

const PAGE: &str = include_str!("dashboard.html");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/data.json", get(data))
}

pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        authorize(parts, state)
            .map(|_| Operator)
            .map_err(|Refused { status, message }| {
                (status, axum::Json(DashError { error: message })).into_response()
            })
    }
}

async fn page(_: Operator) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Nothing but this page's own inline code and its data requests.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

fn host(h: &HostView) -> DashHost {
    let used = |total: u64, free: u64| total.saturating_sub(free);
    DashHost {
        id: h.id.clone(),
        worker_state: h.worker_state.as_str().into(),
        idle_behavior: h.idle_behavior.as_str().into(),
        pool: h.pool.clone(),
        address: h.address.map(|a| a.to_string()),
        instance_type: h.instance_type.clone(),
        state_since: h.state_since,
        gpus: h.gpus,
        vcpus: h.capacity.vcpus,
        launching: h.launching,
        error: h.error.clone(),
        cpu_total: h.capacity.cpu_mhz,
        cpu_used: used(h.capacity.cpu_mhz, h.free.cpu_mhz),
        mem_total: h.capacity.mem_bytes,
        mem_used: used(h.capacity.mem_bytes, h.free.mem_bytes),
        servers: h
            .work
            .iter()
            .map(|w| DashWork {
                uuid: w.uuid.to_string(),
                class: w.class.as_str().into(),
                status: w.status.as_str().into(),
            })
            .collect(),
    }
}

fn queued(e: &QueueEntry, now: i64) -> DashQueued {
    let s = &e.server;
    DashQueued {
        uuid: s.uuid.to_string(),
        name: s.name.clone(),
        owner: s.owner.clone(),
        class: s.class.as_str().into(),
        priority: s.priority,
        cpu: s.cpu,
        mem: s.mem,
        waiting_s: now.saturating_sub(s.created_at).max(0),
        reason: s.queued_reason.clone(),
    }
}

/// A server as the dashboard shows it (times in Unix seconds, for the charts).
fn server(s: &crate::domain::server::ServerRecord) -> DashServer {
    let rt = crate::api::cloudsigma::views::runtime(s);
    DashServer {
        uuid: s.uuid.to_string(),
        name: s.name.clone(),
        owner: s.owner.clone(),
        class: s.class.as_str().into(),
        status: s.status.as_str().into(),
        host: s
            .host
            .as_ref()
            .or(s.last_host.as_ref())
            .map(ToString::to_string),
        placed: s.host.is_some(),
        cpu: s.cpu,
        mem: s.mem,
        flavor: s.flavor.clone(),
        created_at: s.created_at,
        active_since: s.active_since,
        perf_factor: DashPerfFactor {
            cpu: s.perf_factor.cpu,
            mem: s.perf_factor.mem,
        },
        cpu_cores: rt.as_ref().and_then(|r| r.cpu_cores),
        mem_limit: rt.as_ref().and_then(|r| r.mem_limit),
        termination: s.termination.map(|t| DashTermination {
            scheduled_at: t.scheduled_at,
            terminate_at: t.terminate_at,
        }),
        stop_reason: s.stop_reason.clone(),
        queued_reason: s.queued_reason.clone(),
    }
}

fn sample(s: &Sample) -> DashSample {
    DashSample {
        at: s.at,
        cpu_total: s.cpu_total,
        cpu_free: s.cpu_free,
        cpu_normal: s.cpu_normal,
        cpu_backfill: s.cpu_backfill,
        cpu_spot: s.cpu_spot,
        mem_total: s.mem_total,
        mem_free: s.mem_free,
    }
}

/// The perf_factor a `downsized` event's detail names (`perf_factor cpu 0.50, mem 1.00`).
fn detail_perf_factor(detail: &str) -> Option<DashPerfFactor> {
    let rest = detail.strip_prefix("perf_factor cpu ")?;
    let (cpu, mem) = rest.split_once(", mem ")?;
    let (cpu, mem): (f64, f64) = (cpu.trim().parse().ok()?, mem.trim().parse().ok()?);
    Some(DashPerfFactor { cpu, mem })
}

async fn data(
    State(state): State<AppState>,
    _: Operator,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    let c = &state.coordinator;
    let now = c.now();
    let hosts: Vec<DashHost> = c.hosts().await.iter().map(host).collect();
    let queue: Vec<DashQueued> = c
        .queue()
        .await
        .iter()
        .filter(|e| e.position.is_some())
        .map(|e| queued(e, now))
        .collect();
    let (samples, events) = c.history().await;
    let (current, servers) = {
        let model = c.read_model().await;
        let mut current = crate::state::history::take_sample(&model, now);
        current.at = now;
        let mut list: Vec<&crate::domain::server::ServerRecord> = model.servers.values().collect();
        list.sort_by_key(|s| {
            let active = crate::domain::server::holds_resources(s.status)
                || crate::domain::server::is_queued(s);
            (!active, std::cmp::Reverse(s.created_at), s.uuid)
        });
        // The server a server's view asks for is there even when it is not among the newest.
        let asked = params.get("server");
        let shown = |i: usize, s: &crate::domain::server::ServerRecord| {
            i < MAX_SERVERS || asked.is_some_and(|a| *a == s.uuid.to_string())
        };
        let servers: Vec<DashServer> = list
            .into_iter()
            .enumerate()
            .filter(|(i, s)| shown(*i, s))
            .map(|(_, s)| server(&model.as_seen(s)))
            .collect();
        (current, servers)
    };
    let share = |v: u64| {
        if current.cpu_total == 0 {
            0.0
        } else {
            v as f64 / current.cpu_total as f64
        }
    };
    // One server's usage, for its view: its account's report, this server's line.
    let usage = match params.get("server") {
        Some(uuid) => {
            let owner = servers
                .iter()
                .find(|s| s.uuid == *uuid)
                .map(|s| s.owner.clone());
            let filter = crate::domain::usage::UsageFilter {
                account: owner,
                start: now.saturating_sub(USAGE_PERIOD_S),
                end: now,
            };
            match c.usage(&filter).await {
                Ok(rows) => rows.iter().find(|r| r.server == *uuid).map(|r| DashUsage {
                    seconds: r.seconds,
                    cpu_mhz_seconds: r.cpu_mhz_seconds,
                    mem_byte_seconds: r.mem_byte_seconds,
                    amount: crate::domain::billing::format_money(r.amount_micro),
                    currency: c.billing.currency.clone(),
                    period_s: USAGE_PERIOD_S,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard: cannot read usage");
                    None
                }
            }
        }
        None => None,
    };
    let body = DashboardData {
        now,
        auto_mode: c.auto_mode().await,
        sample_every_s: crate::state::history::SAMPLE_EVERY_S,
        hosts,
        servers,
        capacity: samples.iter().map(sample).collect(),
        current: sample(&current),
        share: DashShare {
            normal: share(current.cpu_normal),
            backfill: share(current.cpu_backfill),
            spot: share(current.cpu_spot),
            free: share(current.cpu_free),
        },
        queue,
        preemptions: events
            .iter()
            .rev()
            .map(|e| DashPreemption {
                at: e.at,
                kind: e.kind.into(),
                server: e.server.to_string(),
                host: e.host.as_ref().map(ToString::to_string),
                detail: e.detail.clone(),
                perf_factor: detail_perf_factor(&e.detail),
            })
            .collect(),
        usage,
    };
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_downsized_events_detail_gives_its_perf_factor() {
        assert_eq!(
            detail_perf_factor("perf_factor cpu 0.50, mem 1.00"),
            Some(DashPerfFactor { cpu: 0.5, mem: 1.0 })
        );
        assert_eq!(
            detail_perf_factor("terminates at 2026-11-30T00:00:00Z"),
            None
        );
        assert_eq!(detail_perf_factor("perf_factor cpu x, mem 1"), None);
    }
}
