//! A configuration generation: what every connection task shares, read-only
//! — the checked config, the base policy, the backend pools — plus what
//! outlives reloads (metrics, the client registry, the drain signal, per-IP
//! counts, the access-log writer). A reload (SIGHUP) builds the next generation; existing
//! connections keep the one they started with.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::registry::Registry;
use crate::upstream::Upstream;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// The most connections whose room each idle set reserves up front:
/// virtual memory, touched only as connections come (filled in order; a
/// hash table's would not be: its entries land on every page at once).
pub const MAX_PRESIZED: u32 = 1 << 20;

/// Everything a connection task needs, shared read-only.
pub struct Shared {
    pub config: Config,
    /// The policy of each client: by the rules its User-Agent matched.
    pub policies: Policies,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Cancelled when the process starts draining.
    pub draining: CancellationToken,
    pub metrics: Arc<Metrics>,
    pub clients: Arc<Registry>,
    /// The connection slots and how full they are.
    pub pressure: Arc<crate::pressure::Pressure>,
    pub access: crate::accesslog::Logger,
    /// Open connections per client IP (`max_connections_per_ip`).
    pub(crate) per_ip: Arc<Mutex<HashMap<IpAddr, u32>>>,
    /// The largest head any client may send as its first request: the base
    /// limit or a `[[user_agent]]` rule's, whichever is larger (the rule is
    /// known only once the head is read).
    pub first_head_limit: usize,
    /// Held while the generation lives: its reaper ends when it is gone.
    alive: Arc<()>,
}

/// The generation new connections get.
pub type Current = Arc<RwLock<Arc<Shared>>>;

impl Shared {
    pub(crate) fn first(config: Config, log: Arc<crate::accesslog::Writer>) -> Arc<Shared> {
        let metrics = Arc::new(Metrics::new());
        let pressure = Arc::new(crate::pressure::Pressure::new(&config));
        Shared::build(
            config,
            log,
            metrics.clone(),
            Arc::new(Registry::new()),
            pressure,
            CancellationToken::new(),
            Arc::default(),
        )
    }

    fn build(
        config: Config,
        log: Arc<crate::accesslog::Writer>,
        metrics: Arc<Metrics>,
        clients: Arc<Registry>,
        pressure: Arc<crate::pressure::Pressure>,
        draining: CancellationToken,
        per_ip: Arc<Mutex<HashMap<IpAddr, u32>>>,
    ) -> Arc<Shared> {
        let upstreams = config
            .backends
            .iter()
            .cloned()
            .map(|b| Upstream::new(b, metrics.clone(), config.workers.max(1)))
            .collect();
        let first_head_limit = config
            .rules
            .rules()
            .iter()
            .map(|r| {
                let mut s = config.client;
                r.overrides.apply(&mut s);
                s.max_header_bytes
            })
            .fold(config.client.max_header_bytes, usize::max);
        let shared = Arc::new(Shared {
            first_head_limit,
            access: crate::accesslog::Logger::new(config.access_log, log),
            policies: Policies::new(config.client),
            upstreams,
            metrics,
            clients,
            pressure,
            draining,
            per_ip,
            alive: Arc::new(()),
            config,
        });
        tokio::spawn(crate::reaper::run(shared.reaper_handles()));
        for up in &shared.upstreams {
            if let Some(hc) = up.cfg.health_check.clone() {
                for &addr in &up.cfg.addrs {
                    shared.metrics.backend_checked(&up.cfg.name, addr);
                }
                tokio::spawn(crate::upstream::health::run(Arc::downgrade(up), hc));
            }
        }
        shared
    }

    /// The next generation, from a new config; what outlives reloads is kept.
    pub(crate) fn next(&self, config: Config) -> Arc<Shared> {
        Shared::build(
            config,
            self.access.writer().clone(),
            self.metrics.clone(),
            self.clients.clone(),
            self.pressure.clone(),
            self.draining.clone(),
            self.per_ip.clone(),
        )
    }
}

impl Shared {
    /// Whether a response may keep its connection alive, as far as the
    /// process is concerned: not while draining, nor near saturation.
    pub fn keepalive_allowed(&self) -> bool {
        !self.clients.is_draining() && !self.pressure.saturated(&self.config.pressure)
    }

    /// What this generation's reaper sweeps.
    fn reaper_handles(&self) -> crate::reaper::Handles {
        let max_linger = self
            .config
            .rules
            .rules()
            .iter()
            .filter_map(|r| r.overrides.linger_time.map(|d| d.0))
            .chain([self.config.client.close.linger_time])
            .max()
            .unwrap_or_default()
            + self.config.reaper_interval;
        crate::reaper::Handles {
            alive: Arc::downgrade(&self.alive),
            pools: self.upstreams.iter().map(Arc::downgrade).collect(),
            clients: self.clients.clone(),
            interval: self.config.reaper_interval,
            max_linger,
        }
    }
}

/// Counts a client IP's open connections while alive.
pub struct IpGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl IpGuard {
    /// `None` when the IP is at `max_connections_per_ip`.
    pub(crate) fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<IpGuard> {
        // A trusted proxy carries many clients' connections: not limited.
        let limit = shared
            .config
            .max_connections_per_ip
            .filter(|_| !shared.config.trusts(ip));
        let Some(max) = limit.map(|m| m.get()) else {
            return Some(IpGuard {
                shared: shared.clone(),
                ip,
            });
        };
        let mut map = shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpGuard {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        if self.shared.config.max_connections_per_ip.is_none() || self.shared.config.trusts(self.ip) {
            return;
        }
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// What an open client connection holds of the process's limits: its
/// connection slot and its client IP's count. Whoever owns the connection
/// owns this (its task, or its worker's idle set while it is parked).
pub struct Slot {
    pub permit: tokio::sync::OwnedSemaphorePermit,
    pub ip: IpGuard,
}
