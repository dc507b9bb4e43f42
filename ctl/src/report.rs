//! `capabilities` and `usage`: read-only reports.

use crate::api::Api;
use crate::cli::UsageArgs;
use crate::error::CtlError;
use crate::output::Out;
use crate::table::Table;
use crate::units::{format_bytes, format_duration};
use backfill_api::accounts::{UsageReport, UsageTotals};
use backfill_api::status::{Capabilities, CoordinatorsStatus};

pub async fn capabilities(api: &Api, out: Out) -> Result<(), CtlError> {
    let v = api.get(&["capabilities"], &[]).await?;
    out.show_as(&v, capabilities_table)
}

fn capabilities_table(v: &Capabilities) -> String {
    let mut text = format!("backfilling: {}\n", v.backfilling);
    let Some(free) = &v.free_resources else {
        if !v.backfilling {
            text.push_str("(this account cannot run backfill servers; an admin can grant it)\n");
        }
        return text;
    };
    let mut t = Table::new(&["FREE", "CPU (MHz)", "MEM"]);
    for (k, c) in [
        ("total", &free.total),
        ("most_free_by_cpu", &free.most_free_by_cpu),
        ("most_free_by_memory", &free.most_free_by_memory),
    ] {
        t.row(vec![k.into(), c.cpu.to_string(), format_bytes(c.mem)]);
    }
    text.push('\n');
    text.push_str(&t.render());
    text
}

/// `status`: the coordinators and the leader (`GET coordinators/`). A coordinator on SQLite
/// has no such path: it is the only one and always leads.
pub async fn status(api: &Api, out: Out) -> Result<(), CtlError> {
    match api.get(&["coordinators"], &[]).await {
        Ok(v) => out.show_as(&v, status_table),
        Err(CtlError::Api { code: 404, .. }) => out
            .say("one coordinator (SQLite): it always leads; several need PostgreSQL (docs/ha.md)"),
        Err(e) => Err(e),
    }
}

fn status_table(v: &CoordinatorsStatus) -> String {
    let leader = v.leader.as_ref().map(|l| l.holder.as_str());
    let mut text = match leader {
        Some(l) => format!("leader: {l} (epoch {})\n", v.epoch),
        None => format!("leader: none at the moment (last epoch {})\n", v.epoch),
    };
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    text.push_str(&format!(
        "answered by: {} ({})\n\n",
        or_dash(&v.this),
        or_dash(&v.role)
    ));
    let mut t = Table::new(&["COORDINATOR", "ROLE", "API", "AGENT LINK"]);
    for c in &v.coordinators {
        t.row(vec![
            or_dash(&c.name),
            if Some(c.name.as_str()) == leader {
                "leader"
            } else {
                "follower"
            }
            .into(),
            or_dash(&c.api_url),
            or_dash(&c.link_addr),
        ]);
    }
    text.push_str(&t.render());
    text
}

pub async fn usage(api: &Api, out: Out, a: UsageArgs) -> Result<(), CtlError> {
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = &a.start {
        query.push(("start", s));
    }
    if let Some(e) = &a.end {
        query.push(("end", e));
    }
    if let Some(acc) = &a.account {
        query.push(("account", acc));
    }
    let v = api.get(&["usage"], &query).await?;
    out.show_as(&v, usage_table)
}

/// MHz·s as GHz·h and byte·s as GiB·h, two decimals: for reading, not for billing (the API's
/// `amount` is the decimal to bill).
#[allow(clippy::cast_precision_loss)]
fn per_hour(n: u64, unit: f64) -> String {
    format!("{:.2}", n as f64 / unit / 3600.0)
}

fn usage_row(first: [String; 4], u: &UsageTotals) -> Vec<String> {
    let mut row = first.to_vec();
    row.extend([
        format_duration(u.seconds),
        per_hour(u.cpu_mhz_seconds, 1000.0),
        per_hour(u.mem_byte_seconds, f64::from(1u32 << 30)),
        u.amount.clone(),
    ]);
    row
}

fn usage_table(v: &UsageReport) -> String {
    let mut t = Table::new(&[
        "SERVER", "NAME", "ACCOUNT", "CLASS", "TIME", "GHz·h", "GiB·h", "AMOUNT",
    ]);
    for u in &v.objects {
        let first = [&u.server, &u.name, &u.account, &u.class].map(|s| s.clone());
        let totals = UsageTotals {
            seconds: u.seconds,
            cpu_mhz_seconds: u.cpu_mhz_seconds,
            mem_byte_seconds: u.mem_byte_seconds,
            amount: u.amount.clone(),
        };
        t.row(usage_row(first, &totals));
    }
    let blank = || String::new();
    t.row(usage_row(
        ["TOTAL".into(), blank(), blank(), blank()],
        &v.totals,
    ));
    format!("usage from {} to {}\n\n{}", v.start, v.end, t.render())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn capabilities_show_free_capacity() {
        let v = json!({"backfilling": true, "free_resources": {
            "total": {"cpu": 8000, "mem": 8_589_934_592_u64},
            "most_free_by_cpu": {"cpu": 4000, "mem": 4_294_967_296_u64},
            "most_free_by_memory": {"cpu": 4000, "mem": 4_294_967_296_u64},
        }});
        let t = capabilities_table(&serde_json::from_value(v).unwrap());
        assert!(t.starts_with("backfilling: true\n\nFREE"), "{t}");
        assert!(t.contains("total                8000       8 GiB\n"), "{t}");
        let no = capabilities_table(&Capabilities::default());
        assert!(no.contains("cannot run backfill servers"));
    }

    #[test]
    fn usage_has_a_total_row() {
        let v = json!({
            "start": "2025-01-01T00:00:00Z", "end": "2025-01-02T00:00:00Z",
            "objects": [{"server": "u", "name": "n", "account": "acme", "class": "backfill",
                         "seconds": 3600, "cpu_mhz_seconds": 3_600_000, "mem_byte_seconds": 3_865_470_566_400_u64,
                         "amount": "0.0100"}],
            "totals": {"seconds": 3600, "cpu_mhz_seconds": 3_600_000,
                       "mem_byte_seconds": 3_865_470_566_400_u64, "amount": "0.0100"},
        });
        let t = usage_table(&serde_json::from_value(v).unwrap());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "usage from 2025-01-01T00:00:00Z to 2025-01-02T00:00:00Z"
        );
        assert!(lines[2].starts_with("SERVER"));
        assert!(
            lines[3].contains("1h00m") && lines[3].contains("1.00") && lines[3].contains("0.0100")
        );
        assert!(
            lines[4].starts_with("TOTAL") && lines[4].contains("0.0100"),
            "{t}"
        );
    }
}
