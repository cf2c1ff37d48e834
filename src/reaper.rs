//! The reaper: every `[reaper] interval`, sweeps every backend pool (idle
//! timeout, `pool_max_idle`) and ends client connections stuck lingering past
//! `linger_time` (a safety net: the lingering loop has its own deadline). It
//! only takes short locks, never waits on a socket.
//!
//! It holds narrow handles — the pools and the client registry —
//! never the whole generation; one reaper per generation, ending when its
//! generation is gone (reloaded away and its last connection closed).

use crate::registry::Registry;
use crate::upstream::Upstream;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::{debug, warn};

/// What the reaper sweeps.
pub struct Handles {
    /// Alive while the generation is.
    pub alive: Weak<()>,
    pub pools: Vec<Weak<Upstream>>,
    pub clients: Arc<Registry>,
    pub interval: Duration,
    /// The longest any rule lets a connection linger, plus one interval.
    pub max_linger: Duration,
}

pub async fn run(h: Handles) {
    let mut tick = tokio::time::interval(h.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if h.alive.strong_count() == 0 {
            return;
        }
        for p in h.pools.iter().filter_map(Weak::upgrade) {
            let n = p.reap();
            if n > 0 {
                debug!(backend = %p.cfg.name, reaped = n, "reaped idle backend connections");
            }
        }
        // Each connection counts itself when it ends (`finguard_client_reaped_total`).
        let stuck = h.clients.reap_lingering(h.max_linger);
        if stuck > 0 {
            warn!(stuck, "ending client connections lingering past linger_time");
        }
    }
}
