//! The buffering metrics (request and response buffering, `crate::spool`):
//! bytes held in memory and on disk, which are also the process-wide
//! budgets' counts (one atomic each: the gauge is the budget), spills to
//! disk, exchanges relayed unbuffered because a budget ran out, and how
//! long each exchange held its backend connection beside how long its
//! client took.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhereLabel {
    pub r#where: &'static str,
}

/// Where buffered bytes are held (`finguard_buffered_bytes{where}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Memory,
    Disk,
}

impl Held {
    pub fn as_str(self) -> &'static str {
        match self {
            Held::Memory => "memory",
            Held::Disk => "disk",
        }
    }
}

/// Why an exchange was relayed (in part) unbuffered
/// (`finguard_buffer_fallbacks_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `buffer.memory_total` was reached.
    MemoryTotal,
    /// `buffer.file_total` was reached.
    FileTotal,
    /// The temporary file could not be made or written.
    FileError,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::MemoryTotal => "memory_total",
            Fallback::FileTotal => "file_total",
            Fallback::FileError => "file_error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabel {
    pub reason: &'static str,
}

pub struct BufferMetrics {
    /// Indexed by `Held as usize`; the budgets count on these.
    bytes: [Gauge; 2],
    bytes_family: Family<WhereLabel, Gauge>,
    spills: Counter,
    fallbacks: Family<FallbackLabel, Counter>,
    hold: Histogram,
    client: Histogram,
}

/// 0.5 ms to ~65 s: a loopback backend's whole response to a slow client's.
fn buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 18)
}

impl BufferMetrics {
    pub(super) fn new() -> BufferMetrics {
        let bytes_family: Family<WhereLabel, Gauge> = Family::default();
        let bytes =
            [Held::Memory, Held::Disk].map(|h| bytes_family.get_or_create(&WhereLabel { r#where: h.as_str() }).clone());
        BufferMetrics {
            bytes,
            bytes_family,
            spills: Counter::default(),
            fallbacks: Family::default(),
            hold: Histogram::new(buckets()),
            client: Histogram::new(buckets()),
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "finguard_buffered_bytes",
            "Bytes of request and response bodies held for slow clients, in memory or in temporary files",
            self.bytes_family.clone(),
        );
        registry.register(
            "finguard_buffer_spills",
            "Exchanges whose buffered body spilled from memory to a temporary file",
            self.spills.clone(),
        );
        registry.register(
            "finguard_buffer_fallbacks",
            "Exchanges relayed (in part) unbuffered because a buffer budget ran out or the temporary file failed",
            self.fallbacks.clone(),
        );
        registry.register(
            "finguard_backend_hold_seconds",
            "How long each exchange held its backend connection (checkout to release)",
            self.hold.clone(),
        );
        registry.register(
            "finguard_client_exchange_seconds",
            "How long each proxied exchange took on the client's side (request head to last response byte taken)",
            self.client.clone(),
        );
    }

    /// Adds `n` bytes to what is held `at`, if that stays within `limit`.
    pub fn try_hold(&self, at: Held, n: u64, limit: u64) -> bool {
        let g = &self.bytes[at as usize];
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let before = g.inc_by(n);
        if before.saturating_add(n) > i64::try_from(limit).unwrap_or(i64::MAX) {
            g.dec_by(n);
            return false;
        }
        true
    }

    /// Gives back `n` bytes held `at`.
    pub fn release(&self, at: Held, n: u64) {
        self.bytes[at as usize].dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Bytes held `at` now.
    pub fn held(&self, at: Held) -> u64 {
        u64::try_from(self.bytes[at as usize].get()).unwrap_or(0)
    }

    pub fn spilled(&self) {
        self.spills.inc();
    }

    pub fn fell_back(&self, why: Fallback) {
        self.fallbacks
            .get_or_create(&FallbackLabel { reason: why.as_str() })
            .inc();
    }

    pub fn held_backend(&self, d: Duration) {
        self.hold.observe(d.as_secs_f64());
    }

    pub fn client_took(&self, d: Duration) {
        self.client.observe(d.as_secs_f64());
    }
}
