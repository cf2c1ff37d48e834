//! The metrics of a full house (`crate::pressure`): how near the limit the
//! client connections are, the idle connections closed to make room (by
//! reason and by User-Agent rule), and the new connections that still had to
//! wait for a slot.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Why an idle connection was closed to make room, in the order they go
/// (`finguard_client_evictions_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EvictReason {
    /// Its client matched a `[[user_agent]]` rule with `reclaim_first = true`.
    ReclaimFirst,
    /// Accepted, and never sent a byte.
    NeverUsed,
    /// Idle between two requests (the longest idle go first).
    Idle,
}

impl EvictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::ReclaimFirst => "reclaim_first",
            EvictReason::NeverUsed => "never_used",
            EvictReason::Idle => "idle",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonRuleLabel {
    pub reason: &'static str,
    /// The `[[user_agent]]` rule's `match`, or `none`.
    pub rule: String,
}

/// The `rule` label of a connection that matched no rule.
pub const NO_RULE: &str = "none";

pub struct PressureMetrics {
    level: Gauge<f64, AtomicU64>,
    evictions: Family<ReasonRuleLabel, Counter>,
    admission_waits: Counter,
}

impl PressureMetrics {
    pub(super) fn new() -> PressureMetrics {
        PressureMetrics {
            level: Gauge::default(),
            evictions: Family::default(),
            admission_waits: Counter::default(),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "finguard_client_pressure",
            "Open client connections over the nearer of max_connections and the open-files room (0-1)",
            self.level.clone(),
        );
        registry.register(
            "finguard_client_evictions",
            "Idle client connections closed to make room, by reason and by the User-Agent rule they matched",
            self.evictions.clone(),
        );
        registry.register(
            "finguard_client_admission_waits",
            "New client connections that found every slot taken and nothing idle to close, and waited for a slot",
            self.admission_waits.clone(),
        );
    }

    /// The occupancy, set at scrape time.
    pub fn set_level(&self, level: f64) {
        self.level.set(level);
    }

    pub fn evicted(&self, reason: EvictReason, rule: &str) {
        self.evictions
            .get_or_create(&ReasonRuleLabel {
                reason: reason.as_str(),
                rule: rule.to_string(),
            })
            .inc();
    }

    pub fn admission_waited(&self) {
        self.admission_waits.inc();
    }
}
