//! The backend side: a bounded pool of HTTP/1.1 keep-alive connections per
//! backend.
//!
//! - `max_connections` caps open connections (idle + busy); a request that
//!   finds none free waits up to `queue_timeout` (then 503).
//! - Connections are lent whole to one exchange at a time (HTTP/1 and HTTP/2
//!   clients alike) and kept idle per worker thread ([`idle`]); a backend FIN
//!   on an idle connection is seen at once and the socket closed: no
//!   CLOSE_WAIT on finguard's side. A connection holds its slot until it
//!   closes.
//! - Idle connections are reused LIFO (few stay warm), never past what the
//!   backend announced (`Keep-Alive: timeout=N, max=M`, `Connection: close`),
//!   trimmed to `pool_max_idle` and expired after `pool_idle_timeout` by
//!   [`Upstream::reap`].
//! - A request that gets no answer on a fresh connection within
//!   `idle::STUCK_AFTER` (or `idle::STUCK_FACTOR` times the slowest answer
//!   its address gave lately, if longer) may sit in the listen backlog of
//!   a backend with a worker per connection (Apache prefork) whose workers
//!   our idle connections hold: it closes the idle connection to that
//!   address that nobody took for longest (at least `idle::UNNEEDED_AFTER`),
//!   freeing its worker, while fewer were closed so than requests are stuck
//!   (`idle::AddrAnswers`).
//! - Addresses are chosen round-robin (the pool already keeps load per
//!   connection even; least-outstanding would need a shared counter on the hot
//!   path for little gain with a handful of addresses); one that fails to
//!   connect `eject_after` times in a row sits out `eject_cool_off`, then is
//!   probed again. A request never connects again to an address that
//!   failed it while another is untried ([`Tried`], held by the request: the
//!   round-robin counter is shared, so the next pick alone may land on the
//!   same dead address).
//! - Every backend connection is opened by one `Connector`
//!   (`connect_timeout`, `TCP_NODELAY`, the PROXY header), health checks'
//!   too, so a check reaches an address exactly as a request does.
//! - With PROXY protocol, a connection speaks for one client address: it is
//!   reused only for requests from that same client IP.
//!
//! This module never sees a client socket.

pub mod health;
mod idle;

pub use idle::{set_worker, HoldCell, RawConn};

use crate::config::{BackendConfig, ProxyProtocol};
use crate::metrics::{Metrics, ReapReason};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no backend connection free within queue_timeout")]
    QueueTimeout,
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("every address is down (health check)")]
    AllDown,
    #[error("every address up was tried for this request")]
    AllTried,
}

pub use crate::http1::response::ReuseHint;

/// Taken off an announced keep-alive timeout, so finguard lets go first.
const KEEPALIVE_MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, Default, Clone, Copy)]
struct AddrHealth {
    failures: u32,
    ejected_until: Option<Instant>,
}

/// The addresses one request failed to connect to, so that its next pick
/// (in the same checkout or a retry's) goes to another while one is left.
/// A request holds one from its first checkout to its last; it is empty,
/// and costs no allocation, until a connect fails.
#[derive(Debug, Default)]
pub struct Tried(Vec<SocketAddr>);

impl Tried {
    fn has(&self, addr: SocketAddr) -> bool {
        self.0.contains(&addr)
    }
}

/// Whom a new backend connection speaks for, in its PROXY header.
#[derive(Debug, Clone, Copy)]
enum Speaker {
    /// A client, and the address it reached finguard on.
    Client { client: SocketAddr, local: SocketAddr },
    /// finguard itself (a health check): the header names the connection's
    /// own ends, which is what a v2 `LOCAL` or v1 `UNKNOWN` header would tell
    /// the backend to use. Not `UNKNOWN` itself: Apache 2.4's mod_remoteip
    /// fails that short line when the request arrives in the same read
    /// (AH03513 "have data left over").
    Itself,
}

/// Opens backend connections the one way the pool does: within
/// `connect_timeout`, with `TCP_NODELAY`, the PROXY header first when the
/// backend wants one (Apache with `RemoteIPProxyProtocol On` drops a
/// connection without it).
#[derive(Debug, Clone, Copy)]
struct Connector {
    connect_timeout: Duration,
    proxy_protocol: ProxyProtocol,
}

impl Connector {
    fn new(cfg: &BackendConfig) -> Connector {
        Connector {
            connect_timeout: cfg.connect_timeout,
            proxy_protocol: cfg.proxy_protocol,
        }
    }

    async fn open(&self, addr: SocketAddr, speaker: Speaker) -> Result<TcpStream, UpstreamError> {
        let connect = async {
            let mut stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            if self.proxy_protocol != ProxyProtocol::Off {
                let (src, dst) = match speaker {
                    Speaker::Client { client, local } => (client, local),
                    Speaker::Itself => (stream.local_addr()?, addr),
                };
                // A few dozen bytes a new connection's send buffer takes at once.
                let header = crate::proxy_protocol::header(self.proxy_protocol, src, dst);
                stream.write_all(&header).await?;
            }
            Ok(stream)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(UpstreamError::Connect(addr, e)),
            Err(_) => Err(UpstreamError::ConnectTimeout(addr)),
        }
    }
}

/// One backend's pool.
pub struct Upstream {
    pub cfg: BackendConfig,
    connector: Connector,
    slots: Arc<Semaphore>,
    /// Signalled when a connection is checked in or a slot is freed.
    freed: Arc<Notify>,
    next_addr: AtomicUsize,
    health: Mutex<Vec<AddrHealth>>,
    /// Out of rotation by the active health check, per address.
    down: Vec<AtomicBool>,
    /// How many addresses are down: the hot path looks no further while 0.
    down_count: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Raw connections for HTTP/1 exchanges, idle, one list per worker thread.
    raw: Vec<idle::IdleList>,
    /// How long each address takes to answer when it is merely slow, and
    /// its requests stuck in a backlog (`idle::read_answer`).
    answers: Vec<idle::AddrAnswers>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop_watchers();
    }
}

/// A connection slot under `max_connections`, held from before the connect
/// until the connection closes. Whenever it is given back (the connection
/// closed, or the connect failed) a queued request is woken to use it.
struct SlotGuard {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        // The slot first, then the wake: a request woken on another worker
        // thread before the permit was back found no slot, waited again and
        // was never woken (503 after `queue_timeout` with the slot free).
        drop(self.permit.take());
        self.freed.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upstream {
    pub fn new(cfg: BackendConfig, metrics: Arc<Metrics>, workers: usize) -> Arc<Self> {
        Arc::new(Upstream {
            connector: Connector::new(&cfg),
            raw: Self::idle_lists(workers),
            answers: cfg.addrs.iter().map(|_| idle::AddrAnswers::default()).collect(),
            slots: Arc::new(Semaphore::new(cfg.max_connections as usize)),
            freed: Arc::new(Notify::new()),
            next_addr: AtomicUsize::new(0),
            health: Mutex::new(vec![AddrHealth::default(); cfg.addrs.len()]),
            down: cfg.addrs.iter().map(|_| AtomicBool::new(false)).collect(),
            down_count: AtomicUsize::new(0),
            metrics,
            cfg,
        })
    }

    /// A free slot, if any; it wakes a queued request when dropped.
    fn take_slot(&self) -> Option<SlotGuard> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(SlotGuard {
            permit: Some(permit),
            freed: self.freed.clone(),
        })
    }

    /// Connections open now (idle and busy).
    pub fn open_connections(&self) -> usize {
        self.cfg.max_connections as usize - self.slots.available_permits()
    }

    /// How long a connection may sit idle after a response with `hint`.
    fn ttl(&self, hint: ReuseHint) -> Duration {
        match hint.timeout {
            Some(t) => self.cfg.pool_idle_timeout.min(t.saturating_sub(KEEPALIVE_MARGIN)),
            None => self.cfg.pool_idle_timeout,
        }
    }

    /// Whether the health check has taken address `i` out.
    pub fn is_down(&self, i: usize) -> bool {
        self.down.get(i).is_some_and(|d| d.load(Ordering::Relaxed))
    }

    /// Whether the health check has taken every address out.
    pub fn all_down(&self) -> bool {
        self.down_count.load(Ordering::Relaxed) >= self.cfg.addrs.len()
    }

    /// Whether `addr` is out of rotation (cheap while no address is).
    fn addr_down(&self, addr: SocketAddr) -> bool {
        self.down_count.load(Ordering::Relaxed) > 0
            && self
                .cfg
                .addrs
                .iter()
                .position(|a| *a == addr)
                .is_some_and(|i| self.is_down(i))
    }

    /// The health check's verdict on address `i`: out of rotation (its idle
    /// connections closed) or back in.
    pub fn set_down(&self, i: usize, down: bool) {
        let Some(flag) = self.down.get(i) else { return };
        if flag.swap(down, Ordering::Relaxed) == down {
            return;
        }
        if down {
            self.down_count.fetch_add(1, Ordering::Relaxed);
            self.close_idle_to(self.cfg.addrs[i]);
        } else {
            self.down_count.fetch_sub(1, Ordering::Relaxed);
        }
        self.metrics.backend_health(&self.cfg.name, self.cfg.addrs[i], !down);
    }

    /// How the pool connects, for health checks to connect the same way.
    fn connector(&self) -> Connector {
        self.connector
    }

    /// Picks the next address round-robin, skipping those the health check
    /// took out and those this request tried (none left: `None`), and
    /// ejected ones while any other is available.
    fn pick_addr(&self, tried: &Tried) -> Option<usize> {
        let n = self.cfg.addrs.len();
        let start = self.next_addr.fetch_add(1, Ordering::Relaxed);
        let health = lock(&self.health);
        let now = Instant::now();
        let candidate = |i: &usize| !self.is_down(*i) && !tried.has(self.cfg.addrs[*i]);
        let usable = |i: &usize| health[*i].ejected_until.is_none_or(|t| now >= t);
        let order = || (0..n).map(|k| (start + k) % n).filter(candidate);
        order()
            .find(usable)
            .or_else(|| order().min_by_key(|&i| health[i].ejected_until))
    }

    fn connect_failed(&self, i: usize) {
        let mut health = lock(&self.health);
        let h = &mut health[i];
        h.failures += 1;
        if h.failures >= self.cfg.eject_after && h.ejected_until.is_none_or(|t| Instant::now() >= t) {
            h.ejected_until = Some(Instant::now() + self.cfg.eject_cool_off);
            drop(health);
            self.metrics.backend_ejected(&self.cfg.name);
            warn!(backend = %self.cfg.name, addr = %self.cfg.addrs[i], cool_off = ?self.cfg.eject_cool_off,
                "backend address ejected after consecutive connect failures");
        }
    }

    fn connect_ok(&self, i: usize) {
        let mut health = lock(&self.health);
        let was_ejected = health[i].ejected_until.is_some();
        health[i] = AddrHealth::default();
        drop(health);
        if was_ejected {
            info!(backend = %self.cfg.name, addr = %self.cfg.addrs[i], "backend address back in rotation");
        }
    }

    /// Connects to the next usable address this request has not tried,
    /// until one answers or none is left.
    async fn open_any(&self, speaker: Speaker, tried: &mut Tried) -> Result<(TcpStream, SocketAddr), UpstreamError> {
        let mut last_err = None;
        // Bounded: each failure adds its address to `tried`, which picks skip.
        loop {
            let Some(i) = self.pick_addr(tried) else {
                return Err(match last_err {
                    Some(e) => e,
                    None if tried.0.is_empty() => UpstreamError::AllDown,
                    None => UpstreamError::AllTried,
                });
            };
            let addr = self.cfg.addrs[i];
            match self.connector.open(addr, speaker).await {
                Ok(stream) => {
                    self.connect_ok(i);
                    return Ok((stream, addr));
                }
                Err(e) => {
                    debug!(backend = %self.cfg.name, %addr, error = %e, "backend connect failed");
                    self.connect_failed(i);
                    tried.0.push(addr);
                    last_err = Some(e);
                }
            }
        }
    }

    /// Closes idle connections past their expiry or over `pool_max_idle`, and
    /// forgets those the backend closed. Returns how many it closed.
    pub fn reap(&self) -> usize {
        let (expired, excess) = self.reap_raw(Instant::now());
        for _ in 0..expired {
            self.metrics.reaped(&self.cfg.name, ReapReason::IdleTimeout);
        }
        for _ in 0..excess {
            self.metrics.reaped(&self.cfg.name, ReapReason::OverMaxIdle);
        }
        expired + excess
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reuse_hints() {
        let mut h = http::HeaderMap::new();
        h.insert("keep-alive", "timeout=5, max=99".parse().unwrap());
        assert_eq!(
            ReuseHint::from_headers(&h),
            ReuseHint {
                close: false,
                timeout: Some(Duration::from_secs(5)),
                max: Some(99)
            }
        );
        h.insert("connection", "Keep-Alive, Close".parse().unwrap());
        assert!(ReuseHint::from_headers(&h).close);
    }
}

#[cfg(test)]
mod ttl_tests {
    use super::*;

    /// A pool in front of a loopback listener that accepts and holds.
    async fn pool(extra: &str) -> (Arc<Upstream>, tokio::net::TcpListener) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let text = format!(
            "[[backend]]\nname = \"b\"\naddrs = [\"{}\"]\n{extra}",
            l.local_addr().unwrap()
        );
        let cfg = crate::config::parse("t", &text, &Default::default()).unwrap();
        let up = Upstream::new(cfg.backends[0].clone(), Arc::new(Metrics::new()), 1);
        (up, l)
    }

    async fn one_idle(up: &Arc<Upstream>, l: &tokio::net::TcpListener, hint: ReuseHint) -> TcpStream {
        let me: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c = up.checkout_raw(false, me, me, &mut Tried::default()).await.unwrap();
        let (held, _) = l.accept().await.unwrap();
        up.checkin_raw(c, hint);
        assert_eq!(up.idle_connections(), 1);
        held
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_pool_idle_timeout() {
        let (up, l) = pool("pool_idle_timeout = \"4s\"").await;
        let _held = one_idle(&up, &l, ReuseHint::default()).await;
        tokio::time::advance(Duration::from_millis(3999)).await;
        assert_eq!(up.reap(), 0);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(up.reap(), 1);
        assert_eq!(up.idle_connections(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_keep_alive_timeout_shortens_the_ttl_by_the_margin() {
        let (up, l) = pool("pool_idle_timeout = \"30s\"").await;
        let hint = ReuseHint {
            timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let _held = one_idle(&up, &l, hint).await;
        // The backend said 2 s: finguard lets go 500 ms before it would.
        tokio::time::advance(Duration::from_millis(1499)).await;
        assert_eq!(up.reap(), 0);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(up.reap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_the_backend_will_close_is_not_kept() {
        let (up, l) = pool("").await;
        let me: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c = up.checkout_raw(false, me, me, &mut Tried::default()).await.unwrap();
        let _held = l.accept().await.unwrap();
        let hint = ReuseHint {
            close: true,
            ..Default::default()
        };
        up.checkin_raw(c, hint);
        assert_eq!(up.idle_connections(), 0);
    }
}
