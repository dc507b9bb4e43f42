//! Metering and prices. A server is metered while it holds resources and runs (`running`,
//! `stopping`); each change that ends a stretch at one perf_factor (a new perf_factor in force,
//! a stop, a resize, the periodic flush) writes a usage segment in the same transaction as the
//! change, and moves the server's `metered_until` to that moment.

use crate::domain::server::ServerRecord;
use crate::domain::usage::{Prices, UsageSegment};
use backfill_shared::{PerfFactor, ServerClass, ServerStatus};
use serde::{Deserialize, Serialize};

/// `[billing]` in the coordinator configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Seconds between flushes of running servers' usage to the store.
    #[serde(default = "default_interval")]
    pub interval_s: u64,
    /// Normal servers.
    #[serde(default = "default_normal")]
    pub normal: PriceConfig,
    /// Backfill and spot servers: the burst rate.
    #[serde(default = "default_burst")]
    pub burst: PriceConfig,
}

/// Decimal prices, as strings so that no float rounding creeps into money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub cpu_ghz_hour: String,
    pub mem_gib_hour: String,
}

fn default_currency() -> String {
    "USD".into()
}
fn default_interval() -> u64 {
    60
}
fn default_normal() -> PriceConfig {
    PriceConfig {
        cpu_ghz_hour: "0.0140".into(),
        mem_gib_hour: "0.0070".into(),
    }
}
fn default_burst() -> PriceConfig {
    PriceConfig {
        cpu_ghz_hour: "0.0070".into(),
        mem_gib_hour: "0.0035".into(),
    }
}

impl Default for BillingConfig {
    fn default() -> BillingConfig {
        BillingConfig {
            currency: default_currency(),
            interval_s: default_interval(),
            normal: default_normal(),
            burst: default_burst(),
        }
    }
}

/// Validated billing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Billing {
    pub currency: String,
    pub interval_s: i64,
    pub normal: Prices,
    pub burst: Prices,
}

impl Default for Billing {
    fn default() -> Billing {
        // The defaults parse.
        Billing::from_config(&BillingConfig::default()).unwrap_or(Billing {
            currency: default_currency(),
            interval_s: 60,
            normal: Prices::default(),
            burst: Prices::default(),
        })
    }
}

impl Billing {
    /// `Err((key, reason))` names what is wrong.
    pub fn from_config(c: &BillingConfig) -> Result<Billing, (&'static str, String)> {
        if c.currency.is_empty() || c.currency.len() > 8 {
            return Err(("billing.currency", "must be 1 to 8 characters".into()));
        }
        if !(1..=3_600).contains(&c.interval_s) {
            return Err(("billing.interval_s", "must be 1 to 3600".into()));
        }
        let price = |key, s: &str| parse_money(s).map_err(|e| (key, e));
        Ok(Billing {
            currency: c.currency.clone(),
            interval_s: i64::try_from(c.interval_s).unwrap_or(60),
            normal: Prices {
                cpu: price("billing.normal.cpu_ghz_hour", &c.normal.cpu_ghz_hour)?,
                mem: price("billing.normal.mem_gib_hour", &c.normal.mem_gib_hour)?,
            },
            burst: Prices {
                cpu: price("billing.burst.cpu_ghz_hour", &c.burst.cpu_ghz_hour)?,
                mem: price("billing.burst.mem_gib_hour", &c.burst.mem_gib_hour)?,
            },
        })
    }

    pub fn prices(&self, class: ServerClass) -> Prices {
        match class {
            ServerClass::Normal => self.normal,
            ServerClass::Backfill | ServerClass::Spot => self.burst,
        }
    }
}

/// "0.0140" → 14_000 micro-units. At most six decimals, not negative.
pub fn parse_money(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not an amount such as \"0.0140\" (at most 6 decimals)");
    let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if int.is_empty() && frac.is_empty()
        || frac.len() > 6
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let int: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac: i64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    int.checked_mul(1_000_000)
        .and_then(|v| v.checked_add(frac))
        .ok_or_else(bad)
}

/// 14_000 micro-units → "0.014000".
pub fn format_money(micro: i128) -> String {
    let sign = if micro < 0 { "-" } else { "" };
    let m = micro.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// Whether a server in this state is charged.
pub fn metered(s: &ServerRecord) -> bool {
    matches!(s.status, ServerStatus::Running | ServerStatus::Stopping) && s.host.is_some()
}

/// Moves metering from `old` (as committed) to `new` (about to be committed) at `now`.
/// `perf_now` is the perf_factor in force from now on. The open stretch since
/// `old.metered_until` is charged at `old.metered_perf`. A caller asks for a flush of a server
/// that stays metered by setting `new.metered_until = Some(now)`. Returns the segment to
/// write with the change, if any.
pub fn settle(
    old: Option<&ServerRecord>,
    new: &mut ServerRecord,
    perf_now: PerfFactor,
    now: i64,
    billing: &Billing,
) -> Option<UsageSegment> {
    let still = metered(new);
    let Some((old, from)) = old.and_then(|o| o.metered_until.map(|t| (o, t))) else {
        new.metered_until = still.then(|| new.active_since.unwrap_or(now).min(now));
        new.metered_perf = perf_now;
        return None;
    };
    let resized = new.cpu != old.cpu || new.mem != old.mem;
    let flush = !still || resized || new.metered_until == Some(now);
    if !flush {
        new.metered_until = Some(from);
        new.metered_perf = old.metered_perf;
        return None;
    }
    new.metered_until = still.then_some(now);
    new.metered_perf = perf_now;
    let perf_old = old.metered_perf;
    (now > from).then(|| UsageSegment {
        server: old.uuid,
        account: old.owner.clone(),
        name: old.name.clone(),
        class: old.class,
        start: from,
        end: now,
        cpu: old.cpu,
        mem: old.mem,
        perf: perf_old,
        prices: billing.prices(old.class),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_parses_exactly_and_refuses_nonsense() {
        assert_eq!(parse_money("0.0140"), Ok(14_000));
        assert_eq!(parse_money("2"), Ok(2_000_000));
        assert_eq!(parse_money(".5"), Ok(500_000));
        for bad in ["", ".", "-1", "1.1234567", "abc", "1e3"] {
            assert!(parse_money(bad).is_err(), "{bad}");
        }
        assert_eq!(format_money(14_000), "0.014000");
        assert_eq!(format_money(-2_500_000), "-2.500000");
    }

    #[test]
    fn charges_follow_the_perf_factor_and_the_price() {
        let prices = Prices {
            cpu: 1_000_000,
            mem: 1_000_000,
        }; // 1 per GHz-hour, 1 per GiB-hour
        let full =
            crate::domain::usage::usage_charge(2_000, 1 << 30, PerfFactor::FULL, prices, 3_600);
        assert_eq!(full.cpu_mhz_seconds, 2_000 * 3_600);
        assert_eq!(full.amount_micro, 3_000_000); // 2 GHz-h + 1 GiB-h
        let half = crate::domain::usage::usage_charge(
            2_000,
            1 << 30,
            PerfFactor { cpu: 0.5, mem: 0.5 },
            prices,
            3_600,
        );
        assert_eq!(half.amount_micro, 1_500_000);
    }
}
