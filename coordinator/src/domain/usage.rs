//! Metered usage: segments of one server at one perf_factor and price, and what they cost.

use backfill_shared::{PerfFactor, ServerClass, ServerId};

/// Micro-currency per GHz-hour of CPU and per GiB-hour of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prices {
    pub cpu: i64,
    pub mem: i64,
}

/// `[start, end)` of one server at a constant allocation, perf_factor and price.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSegment {
    pub server: ServerId,
    pub account: String,
    pub name: String,
    pub class: ServerClass,
    pub start: i64,
    pub end: i64,
    pub cpu: u64,
    pub mem: u64,
    pub perf: PerfFactor,
    pub prices: Prices,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageFilter {
    /// `None`: every account (the admin's view).
    pub account: Option<String>,
    pub start: i64,
    pub end: i64,
}

/// One server's usage within a period.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageRow {
    pub server: String,
    pub account: String,
    pub name: String,
    pub class: String,
    pub seconds: u64,
    /// Allocated MHz times the CPU perf_factor in force, over the seconds.
    pub cpu_mhz_seconds: u64,
    pub mem_byte_seconds: u64,
    /// Micro-currency, rounded half up from the exact sum.
    pub amount_micro: i128,
    /// The exact amount in units of 1 / `AMOUNT_DENOMINATOR` micro-currency.
    pub(crate) amount_exact: i128,
}

/// MHz-seconds per GHz-hour times bytes per GiB: one denominator for both parts of a charge.
const AMOUNT_DENOMINATOR: i128 = 3_600_000 * (1 << 30);

impl UsageRow {
    /// Adds another stretch of the same server.
    pub fn add(&mut self, other: &UsageRow) {
        self.seconds = self.seconds.saturating_add(other.seconds);
        self.cpu_mhz_seconds = self.cpu_mhz_seconds.saturating_add(other.cpu_mhz_seconds);
        self.mem_byte_seconds = self.mem_byte_seconds.saturating_add(other.mem_byte_seconds);
        self.amount_exact += other.amount_exact;
        self.amount_micro = round_micro(self.amount_exact);
    }
}

fn round_micro(exact: i128) -> i128 {
    (exact + AMOUNT_DENOMINATOR / 2).div_euclid(AMOUNT_DENOMINATOR)
}

/// The charge for `seconds` of `cpu` MHz and `mem` bytes at `perf` and `prices`.
pub fn charge(cpu: u64, mem: u64, perf: PerfFactor, prices: Prices, seconds: i64) -> UsageRow {
    let secs = u64::try_from(seconds.max(0)).unwrap_or(0);
    let perf = perf.clamped();
    let cpu_s = (cpu as f64 * perf.cpu).round() as u64;
    let mem_s = (mem as f64 * perf.mem).round() as u64;
    let cpu_mhz_seconds = cpu_s.saturating_mul(secs);
    let mem_byte_seconds = mem_s.saturating_mul(secs);
    // per GHz-hour: MHz-seconds / 3_600_000; per GiB-hour: byte-seconds / (2^30 * 3_600)
    let amount_exact = i128::from(cpu_mhz_seconds) * i128::from(prices.cpu) * (1 << 30)
        + i128::from(mem_byte_seconds) * i128::from(prices.mem) * 1_000;
    UsageRow {
        seconds: secs,
        cpu_mhz_seconds,
        mem_byte_seconds,
        amount_micro: round_micro(amount_exact),
        amount_exact,
        ..UsageRow::default()
    }
}

pub use self::charge as usage_charge;
