//! A full house: how near its limit finguard's client side is, and what it
//! does about it (`[client.pressure]`).
//!
//! Occupancy ("pressure") is the open client connections — the connection
//! slots taken — over the nearer of `max_connections` and the open-files
//! room (`RLIMIT_NOFILE` less a reserve for backend connections, listeners
//! and files). As it rises:
//! - from `scale_from`, the keep-alive timeout of each next idle wait
//!   shrinks linearly, to `min_keepalive_timeout` at `high_water`;
//! - at `high_water`, or when no slot is free, the accept loop asks idle
//!   keep-alive connections to close before a newcomer takes a slot
//!   ([`Pressure::make_room`], the order is the registry's), a batch of at
//!   most [`MAX_BATCH`] at a time (nginx's `ngx_drain_connections` closes up
//!   to 32, least recently used first, blind to who the client is);
//! - when nothing idle is left to close, responses carry `Connection: close`
//!   ([`Pressure::saturated`]), so clients give their slots back themselves.
//!
//! This module owns the connection slots (the semaphore) and the verdicts;
//! it never touches a socket: connections close themselves.

use crate::config::pressure::PressureConfig;
use crate::config::Config;
use crate::registry::{Eviction, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// At most this many idle connections are asked to close per newcomer.
pub const MAX_BATCH: usize = 32;
/// Descriptors kept out of the client side's share of `RLIMIT_NOFILE`
/// beside the backends' `max_connections`: listeners, the admin socket,
/// log and temporary files, the refusals in flight.
pub const FD_RESERVE: u64 = 64;
/// How often a newcomer that waits for a slot looks again for idle
/// connections to close (grace windows expire meanwhile).
pub const RECHECK: Duration = Duration::from_millis(50);

/// The connection slots and how full they are. Outlives reloads.
pub struct Pressure {
    permits: Arc<Semaphore>,
    /// `max_connections`.
    slots: usize,
    /// The nearer of `slots` and the open-files room.
    capacity: usize,
    /// The last look found nothing idle to close (and nothing closing).
    saturated: AtomicBool,
}

impl Pressure {
    pub fn new(config: &Config) -> Pressure {
        let slots = config.max_connections as usize;
        let capacity = slots.min(fd_room(config)).max(1);
        Pressure {
            permits: Arc::new(Semaphore::new(slots)),
            slots,
            capacity,
            saturated: AtomicBool::new(false),
        }
    }

    /// One per open client connection.
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// The connections at which occupancy is 1.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Open client connections (slots taken).
    pub fn open(&self) -> usize {
        self.slots.saturating_sub(self.permits.available_permits())
    }

    /// Occupancy, 0 to 1.
    pub fn level(&self) -> f64 {
        (self.open() as f64 / self.capacity as f64).min(1.0)
    }

    /// The keep-alive timeout for an idle wait that starts now.
    pub fn keepalive_timeout(&self, configured: Duration, t: &PressureConfig) -> Duration {
        t.keepalive_timeout(configured, self.level())
    }

    /// At or above `high_water` with nothing idle left to close: responses
    /// end keep-alive.
    pub fn saturated(&self, t: &PressureConfig) -> bool {
        self.saturated.load(Ordering::Relaxed) && self.open() >= high_water_slots(self.capacity, t)
    }

    /// Called before a newcomer takes a slot: at or above `high_water`, or
    /// with no slot free, asks enough idle connections to close to bring
    /// occupancy back under `high_water` with the newcomer in (at least
    /// one, at most [`MAX_BATCH`]).
    pub fn make_room(&self, clients: &Registry, t: &PressureConfig) -> Eviction {
        let open = self.open();
        let mark = high_water_slots(self.capacity, t);
        let full = self.permits.available_permits() == 0 || open >= self.capacity;
        if open < mark && !full {
            self.saturated.store(false, Ordering::Relaxed);
            return Eviction {
                pending: 0,
                requested: 0,
            };
        }
        let need = (open + 1).saturating_sub(mark).clamp(1, MAX_BATCH);
        let e = clients.evict(need, t.grace);
        self.saturated.store(!e.room_coming(), Ordering::Relaxed);
        e
    }
}

/// Open connections at which occupancy reaches `high_water`.
fn high_water_slots(capacity: usize, t: &PressureConfig) -> usize {
    // The small epsilon keeps 0.9 × 20 at 18, not 19 by a rounding error.
    ((t.high_water * capacity as f64 - 1e-9).ceil() as usize).clamp(1, capacity)
}

/// The client side's share of the open-files limit: the limit less the
/// backends' connections and [`FD_RESERVE`], but at least half the limit.
fn fd_room(config: &Config) -> usize {
    // Raised to the hard limit at start (`lifecycle`).
    let limit = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) if soft != rlimit::INFINITY => soft,
        _ => return usize::MAX,
    };
    let backends: u64 = config.backends.iter().map(|b| u64::from(b.max_connections)).sum();
    let room = limit.saturating_sub(backends + FD_RESERVE).max(limit / 2);
    usize::try_from(room).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_high_water_mark_is_counted_in_whole_connections() {
        let t = PressureConfig::default();
        assert_eq!(high_water_slots(20, &t), 18);
        assert_eq!(high_water_slots(10, &t), 9);
        assert_eq!(high_water_slots(1, &t), 1);
        let all = PressureConfig { high_water: 1.0, ..t };
        assert_eq!(high_water_slots(7, &all), 7);
    }
}
