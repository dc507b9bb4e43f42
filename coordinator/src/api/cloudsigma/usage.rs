//! `/usage/` and `/ledger/`: what each server cost, at the perf_factor in force and the price
//! of its class. A tenant sees its own account; the operator sees every account, or one with
//! `?account=`.

use crate::api::cloudsigma::listing::{page, page_or, period};
use crate::api::cloudsigma::views::to_json;
use crate::api::params::Params;
use crate::api::tenant::Caller;
use crate::api::{ApiError, AppState};
use crate::domain::billing::format_money;
use crate::domain::usage::UsageFilter;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use backfill_api::ListMeta;
use backfill_api::accounts::{LedgerEntry, LedgerList, UsageLine, UsageReport, UsageTotals};
use backfill_shared::clock::rfc3339;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The default period: the last 30 days.
const DEFAULT_PERIOD_S: i64 = 30 * 86_400;
/// The longest period one request may ask for.
const MAX_PERIOD_S: i64 = 3 * 366 * 86_400;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/usage/", get(usage))
        .route("/ledger/", get(ledger))
        .route(
            "/subscriptions/",
            get(subscriptions).post(refuse_subscription),
        )
}

/// No subscriptions are sold: every second is metered, and backfill and spot capacity is
/// billed at the burst rate, which no CPU or memory subscription may cover. The (empty) list
/// still pages like every other.
async fn subscriptions(caller: Caller, Params(params): Params) -> Result<Json<Value>, ApiError> {
    let _ = caller;
    let (limit, offset) = page(&params)?;
    Ok(Json(
        json!({"meta": {"limit": limit, "offset": offset, "total_count": 0}, "objects": []}),
    ))
}

async fn refuse_subscription(caller: Caller) -> ApiError {
    let _ = caller;
    ApiError::permission(
        "subscriptions are not available: usage is metered per second, and backfill and spot \
         capacity is billed at the burst rate, which no CPU or memory subscription may cover",
    )
}

fn filter(
    state: &AppState,
    caller: &Caller,
    params: &BTreeMap<String, String>,
) -> Result<UsageFilter, ApiError> {
    let now = state.coordinator.clock.now();
    let (start, end) = period(params, now, DEFAULT_PERIOD_S, MAX_PERIOD_S)?;
    let account = match (caller, params.get("account")) {
        (Caller::Tenant(a), None) => Some(a.name.clone()),
        (Caller::Tenant(a), Some(asked)) if *asked == a.name => Some(a.name.clone()),
        (Caller::Tenant(_), Some(_)) => {
            return Err(ApiError::permission("a tenant sees only its own usage"));
        }
        (Caller::Admin, asked) => asked.cloned(),
    };
    Ok(UsageFilter {
        account,
        start,
        end,
    })
}

async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params,
) -> Result<Json<Value>, ApiError> {
    let f = filter(&state, &caller, &params)?;
    // The report's lines page like a list (all by default: the report is read whole); the
    // totals are the whole period's.
    let (limit, offset) = page_or(&params, 0)?;
    let rows = state.coordinator.usage(&f).await?;
    let take = if limit == 0 { usize::MAX } else { limit };
    let (mut secs, mut cpu, mut mem, mut amount) = (0u64, 0u64, 0u64, 0i128);
    for r in &rows {
        secs = secs.saturating_add(r.seconds);
        cpu = cpu.saturating_add(r.cpu_mhz_seconds);
        mem = mem.saturating_add(r.mem_byte_seconds);
        amount = amount.saturating_add(r.amount_micro);
    }
    let objects: Vec<UsageLine> = rows
        .iter()
        .skip(offset)
        .take(take)
        .map(|r| UsageLine {
            server: r.server.clone(),
            name: r.name.clone(),
            account: r.account.clone(),
            class: r.class.clone(),
            seconds: r.seconds,
            cpu_mhz_seconds: r.cpu_mhz_seconds,
            mem_byte_seconds: r.mem_byte_seconds,
            amount: format_money(r.amount_micro),
        })
        .collect();
    Ok(Json(to_json(&UsageReport {
        start: rfc3339(f.start),
        end: rfc3339(f.end),
        currency: state.coordinator.billing.currency.clone(),
        meta: ListMeta {
            limit,
            offset,
            total_count: rows.len(),
        },
        objects,
        totals: UsageTotals {
            seconds: secs,
            cpu_mhz_seconds: cpu,
            mem_byte_seconds: mem,
            amount: format_money(amount),
        },
    })))
}

/// CloudSigma-style ledger entries: one debit per server for the period.
async fn ledger(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params,
) -> Result<Json<Value>, ApiError> {
    let f = filter(&state, &caller, &params)?;
    let (limit, offset) = page(&params)?;
    let rows = state.coordinator.usage(&f).await?;
    let take = if limit == 0 { usize::MAX } else { limit };
    let objects: Vec<LedgerEntry> = rows
        .iter()
        .skip(offset)
        .take(take)
        .map(|r| {
            let drive = r.class == "drive";
            let rate = if r.class == "normal" {
                "usage"
            } else {
                "burst usage"
            };
            LedgerEntry {
                id: format!("{}-{}-{}", r.server, f.start, f.end),
                time: rfc3339(f.end),
                start: rfc3339(f.start),
                end: rfc3339(f.end),
                amount: format_money(-r.amount_micro),
                currency: state.coordinator.billing.currency.clone(),
                resource: if drive { "drive" } else { "server" }.into(),
                resource_uuid: r.server.clone(),
                user: r.account.clone(),
                reason: if drive {
                    format!("storage of drive {:?}", r.name)
                } else {
                    format!("{rate} of {} server {:?}", r.class, r.name)
                },
            }
        })
        .collect();
    Ok(Json(to_json(&LedgerList {
        meta: ListMeta {
            limit,
            offset,
            total_count: rows.len(),
        },
        objects,
    })))
}
