//! The summary table: one row per number, one column per target, with the
//! ratio against the first target. The same rows feed the terminal table
//! and the HTML report, and each row names its JSON pointer within a
//! target, so the three can be checked against each other.

use super::{Report, TargetReport};
use serde_json::Value;

/// A row of the summary.
pub struct Row {
    /// JSON pointer within one target's object, e.g. `/latency_ms/p99`.
    pub key: &'static str,
    pub label: &'static str,
    /// Decimals shown (the JSON holds the same rounding).
    pub decimals: usize,
}

pub const ROWS: [Row; 19] = [
    row("/requests/intended", "requests due at the rate", 0),
    row("/requests/sent", "requests sent", 0),
    row("/requests/answered", "responses", 0),
    row("/requests/errors", "no response (timeout/close)", 0),
    row("/requests/lost_to_reset", "lost to a reset", 0),
    row("/requests/not_sent", "due but not sent", 0),
    row("/throughput_rps", "throughput (responses/s)", 1),
    row("/latency_ms/p50", "latency p50 (ms)", 3),
    row("/latency_ms/p90", "latency p90 (ms)", 3),
    row("/latency_ms/p99", "latency p99 (ms)", 3),
    row("/latency_ms/p99_9", "latency p99.9 (ms)", 3),
    row("/latency_ms/p99_99", "latency p99.99 (ms)", 3),
    row("/latency_ms/max", "latency max (ms)", 3),
    row("/scenario_responses_lost", "buggy clients' responses lost", 0),
    row("/census/0/port", "census port", 0),
    row("/census/0/fin_wait2_end", "  FIN_WAIT_2 left at end", 0),
    row("/census/0/close_wait_end", "  CLOSE_WAIT left at end", 0),
    row("/census/0/fin_wait2_peak", "  FIN_WAIT_2 peak", 0),
    row("/census/0/close_wait_peak", "  CLOSE_WAIT peak", 0),
];

const fn row(key: &'static str, label: &'static str, decimals: usize) -> Row {
    Row { key, label, decimals }
}

/// The value of `row` for one target, if it has one.
pub fn value(t: &TargetReport, row: &Row) -> Option<f64> {
    serde_json::to_value(t).ok()?.pointer(row.key).and_then(Value::as_f64)
}

pub fn format(v: Option<f64>, row: &Row) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.*}", row.decimals))
}

/// `×1.23` against the first target; empty where it means nothing.
pub fn ratio(v: Option<f64>, first: Option<f64>, row: &Row) -> String {
    match (v, first) {
        _ if row.key.ends_with("/port") => String::new(),
        (Some(v), Some(f)) if f != 0.0 => format!("×{:.2}", v / f),
        _ => String::new(),
    }
}

/// The table for a terminal.
pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let w = 14;
    o.push_str(&format!("{:<32}", ""));
    for t in &r.targets {
        o.push_str(&format!(" {:>w$}", t.name));
    }
    o.push('\n');
    for row in &ROWS {
        o.push_str(&format!("{:<32}", row.label));
        let first = r.targets.first().and_then(|t| value(t, row));
        for (i, t) in r.targets.iter().enumerate() {
            let v = value(t, row);
            let mut cell = format(v, row);
            let ratio = ratio(v, first, row);
            if i > 0 && !ratio.is_empty() {
                cell = format!("{cell} {ratio}");
            }
            o.push_str(&format!(" {cell:>w$}"));
        }
        o.push('\n');
    }
    if r.stopped_early {
        o.push_str("(stopped early: the numbers cover what ran)\n");
    }
    o
}
