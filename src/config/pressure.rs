//! The `[client.pressure]` table: what finguard does as its client
//! connections near `max_connections` (or the open-files limit): keep-alive
//! timeouts that shrink, idle connections closed to make room, and
//! `Connection: close` when nothing idle is left.
//!
//! This module only reads and checks the thresholds; they are applied in
//! `crate::pressure`. They may change on a reload.

use super::units::{fmt_duration, ConfDuration};
use serde::Deserialize;
use std::time::Duration;

/// Occupancy where keep-alive timeouts start to shrink: below it a front
/// with room left keeps Apache's 5 s (Envoy's overload manager scales from
/// a threshold the same way).
pub const DEFAULT_SCALE_FROM: f64 = 0.7;
/// The shortest keep-alive timeout pressure can bring: a browser's next
/// request after a page load still finds its connection open.
pub const DEFAULT_MIN_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Occupancy above which idle connections are closed to make room; the
/// tenth left free absorbs a burst while victims close (nginx drains when
/// fewer than 1/16 of its slots are free).
pub const DEFAULT_HIGH_WATER: f64 = 0.9;
/// nginx's `keepalive_min_timeout` role: a connection that has just sent a
/// response is kept this long, so the client's next request does not race
/// the close.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPressure {
    pub scale_from: Option<f64>,
    pub min_keepalive_timeout: Option<ConfDuration>,
    pub high_water: Option<f64>,
    pub grace: Option<ConfDuration>,
}

/// The checked `[client.pressure]` table. Occupancy is open client
/// connections over the nearer of `max_connections` and the open-files room.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PressureConfig {
    /// Keep-alive timeouts shrink linearly from here ...
    pub scale_from: f64,
    /// ... to this at `high_water` (never above a connection's own timeout).
    pub min_keepalive_timeout: Duration,
    /// At or above it, idle keep-alive connections are closed to make room.
    pub high_water: f64,
    /// A connection is not closed within this of its last response.
    pub grace: Duration,
}

impl Default for PressureConfig {
    fn default() -> Self {
        PressureConfig {
            scale_from: DEFAULT_SCALE_FROM,
            min_keepalive_timeout: DEFAULT_MIN_KEEPALIVE_TIMEOUT,
            high_water: DEFAULT_HIGH_WATER,
            grace: DEFAULT_GRACE,
        }
    }
}

impl PressureConfig {
    /// Checks the raw table; `err(key, reason)` builds the error.
    pub fn from_raw<E>(raw: &RawPressure, err: impl Fn(&str, &str) -> E) -> Result<PressureConfig, E> {
        let d = PressureConfig::default();
        let p = PressureConfig {
            scale_from: raw.scale_from.unwrap_or(d.scale_from),
            min_keepalive_timeout: raw.min_keepalive_timeout.map_or(d.min_keepalive_timeout, |v| v.0),
            high_water: raw.high_water.unwrap_or(d.high_water),
            grace: raw.grace.map_or(d.grace, |v| v.0),
        };
        let key = |k: &str| format!("client.pressure.{k}");
        let fraction = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
        if !fraction(p.high_water) {
            return Err(err(&key("high_water"), "must be a fraction above 0 and at most 1"));
        }
        if !fraction(p.scale_from) {
            return Err(err(&key("scale_from"), "must be a fraction above 0 and at most 1"));
        }
        if p.scale_from > p.high_water {
            return Err(err(&key("scale_from"), "must be <= high_water"));
        }
        if p.min_keepalive_timeout.is_zero() {
            return Err(err(&key("min_keepalive_timeout"), "must be greater than 0"));
        }
        Ok(p)
    }

    /// The keep-alive timeout for the next idle wait at occupancy `level`:
    /// `configured` up to `scale_from`, then linearly down to
    /// `min_keepalive_timeout` at `high_water` (never longer than `configured`).
    pub fn keepalive_timeout(&self, configured: Duration, level: f64) -> Duration {
        let floor = self.min_keepalive_timeout.min(configured);
        if level <= self.scale_from {
            return configured;
        }
        if level >= self.high_water {
            return floor;
        }
        let span = self.high_water - self.scale_from;
        let shrink = ((level - self.scale_from) / span).clamp(0.0, 1.0);
        configured.saturating_sub((configured - floor).mul_f64(shrink))
    }

    /// The table as `finguard check` prints it.
    pub fn to_table(&self) -> toml::Table {
        use toml::Value;
        let mut t = toml::Table::new();
        t.insert("scale_from".into(), Value::Float(self.scale_from));
        t.insert(
            "min_keepalive_timeout".into(),
            Value::String(fmt_duration(self.min_keepalive_timeout)),
        );
        t.insert("high_water".into(), Value::Float(self.high_water));
        t.insert("grace".into(), Value::String(fmt_duration(self.grace)));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_shrinks_linearly_between_the_watermarks() {
        let p = PressureConfig {
            scale_from: 0.5,
            high_water: 0.9,
            min_keepalive_timeout: Duration::from_secs(1),
            grace: Duration::ZERO,
        };
        let five = Duration::from_secs(5);
        assert_eq!(p.keepalive_timeout(five, 0.2), five);
        assert_eq!(p.keepalive_timeout(five, 0.5), five);
        assert_eq!(p.keepalive_timeout(five, 0.7), Duration::from_secs(3));
        assert_eq!(p.keepalive_timeout(five, 0.9), Duration::from_secs(1));
        assert_eq!(p.keepalive_timeout(five, 1.0), Duration::from_secs(1));
        // A rule's own shorter timeout is never lengthened.
        let short = Duration::from_millis(500);
        assert_eq!(p.keepalive_timeout(short, 0.95), short);
    }

    #[test]
    fn bad_thresholds_name_their_key() {
        let err = |k: &str, why: &str| format!("{k}: {why}");
        let raw = RawPressure {
            high_water: Some(1.5),
            ..Default::default()
        };
        let e = PressureConfig::from_raw(&raw, err).unwrap_err();
        assert!(e.starts_with("client.pressure.high_water:"), "{e}");
        let raw = RawPressure {
            scale_from: Some(0.95),
            ..Default::default()
        };
        let e = PressureConfig::from_raw(&raw, err).unwrap_err();
        assert_eq!(e, "client.pressure.scale_from: must be <= high_water");
    }
}
