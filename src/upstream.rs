//! The backend side: a bounded pool of HTTP/1.1 keep-alive connections per
//! backend.
//!
//! - `max_connections` caps open connections (idle + busy); a request that
//!   finds none free waits up to `queue_timeout` (then 503).
//! - Each connection is driven by its own task (hyper's client connection), so
//!   a backend FIN on an idle connection is seen at once and the socket closed:
//!   no CLOSE_WAIT on finguard's side. The task holds the connection's slot.
//! - Idle connections are reused LIFO (few stay warm), never past what the
//!   backend announced (`Keep-Alive: timeout=N, max=M`, `Connection: close`),
//!   trimmed to `pool_max_idle` and expired after `pool_idle_timeout` by
//!   [`Upstream::reap`].
//! - Addresses are chosen round-robin (the pool already keeps load per
//!   connection even; least-outstanding would need a shared counter on the hot
//!   path for little gain with a handful of addresses); one that fails to
//!   connect `eject_after` times in a row sits out `eject_cool_off`, then is
//!   probed again.
//! - With PROXY protocol, a connection speaks for one client address: it is
//!   reused only for requests from that same client IP.
//!
//! This module never sees a client socket.

mod idle;
mod proxy_protocol;

pub use idle::{set_worker, RawConn};

use crate::config::{BackendConfig, ProxyProtocol};
use crate::metrics::{Metrics, ReapReason};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request bodies sent to a backend on the HTTP/2 path (hyper's client).
pub type UpBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no backend connection free within queue_timeout")]
    QueueTimeout,
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

/// A backend connection, lent to one request at a time.
pub struct PooledConn {
    pub sender: SendRequest<UpBody>,
    pub addr: SocketAddr,
    /// The client it speaks for (PROXY protocol), if any.
    source: Option<SocketAddr>,
    /// Requests it has carried.
    uses: u32,
    /// At most this many, as the backend announced (`Keep-Alive: max=`).
    max_uses: Option<u32>,
    /// When it must leave the pool if still idle.
    expires: Instant,
    /// Set while it sits in the pool: lets its task tell a backend close of
    /// an idle connection from the end of a busy one.
    idle: Arc<AtomicBool>,
}

impl PooledConn {
    /// It carried a request before: a failure may be a stale-connection race.
    pub fn reused(&self) -> bool {
        self.uses > 0
    }
}

pub use crate::http1::response::ReuseHint;

/// Taken off an announced keep-alive timeout, so finguard lets go first.
const KEEPALIVE_MARGIN: Duration = Duration::from_millis(500);

#[derive(Debug, Default, Clone, Copy)]
struct AddrHealth {
    failures: u32,
    ejected_until: Option<Instant>,
}

/// One backend's pool.
pub struct Upstream {
    pub cfg: BackendConfig,
    idle: Mutex<Vec<PooledConn>>,
    slots: Arc<Semaphore>,
    /// Signalled when a connection is checked in or a slot is freed.
    freed: Arc<Notify>,
    next_addr: AtomicUsize,
    health: Mutex<Vec<AddrHealth>>,
    metrics: Arc<Metrics>,
    /// Raw connections for HTTP/1 exchanges, idle, one list per worker thread.
    raw: Vec<idle::IdleList>,
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
    _permit: OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.freed.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upstream {
    pub fn new(cfg: BackendConfig, metrics: Arc<Metrics>, workers: usize) -> Arc<Self> {
        Arc::new(Upstream {
            raw: Self::idle_lists(workers),
            slots: Arc::new(Semaphore::new(cfg.max_connections as usize)),
            idle: Mutex::new(Vec::new()),
            freed: Arc::new(Notify::new()),
            next_addr: AtomicUsize::new(0),
            health: Mutex::new(vec![AddrHealth::default(); cfg.addrs.len()]),
            metrics,
            cfg,
        })
    }

    /// A free slot, if any; it wakes a queued request when dropped.
    fn take_slot(&self) -> Option<SlotGuard> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(SlotGuard {
            _permit: permit,
            freed: self.freed.clone(),
        })
    }

    /// Connections open now (idle and busy).
    pub fn open_connections(&self) -> usize {
        self.cfg.max_connections as usize - self.slots.available_permits()
    }

    /// Idle connections whose backend has not closed them.
    pub fn idle_connections(&self) -> usize {
        lock(&self.idle).iter().filter(|c| !c.sender.is_closed()).count() + self.raw_idle()
    }

    /// Closes the oldest idle HTTP/2-path connection to free its slot.
    fn evict_hyper_idle(&self) -> bool {
        let victim = {
            let mut idle = lock(&self.idle);
            (!idle.is_empty()).then(|| idle.remove(0))
        };
        if let Some(v) = &victim {
            v.idle.store(false, Ordering::Release);
            self.metrics.reaped(&self.cfg.name, ReapReason::OverMaxIdle);
        }
        victim.is_some()
    }

    /// How long a connection may sit idle after a response with `hint`.
    fn ttl(&self, hint: ReuseHint) -> Duration {
        match hint.timeout {
            Some(t) => self.cfg.pool_idle_timeout.min(t.saturating_sub(KEEPALIVE_MARGIN)),
            None => self.cfg.pool_idle_timeout,
        }
    }

    /// Lends a connection: an idle one (unless `fresh`), else a new one if a
    /// slot is free, else waits for either until `queue_timeout`. `client` is
    /// the client address, used for PROXY protocol.
    pub async fn checkout(
        &self,
        fresh: bool,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Result<PooledConn, UpstreamError> {
        let deadline = Instant::now() + self.cfg.queue_timeout;
        let source = (self.cfg.proxy_protocol != ProxyProtocol::Off).then_some(client);
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !fresh {
                if let Some(c) = self.pop_idle(source).await {
                    return Ok(c);
                }
            }
            if let Some(slot) = self.take_slot() {
                return self.connect(slot, source, local).await;
            }
            // Make room: an idle connection the HTTP/1 path holds, or (for a
            // fresh one) the oldest idle one here, gives up its slot.
            if self.evict_raw(None) {
                continue; // its slot is free now
            }
            if fresh || source.is_some() {
                self.evict_hyper_idle(); // its slot frees when its task ends
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(UpstreamError::QueueTimeout);
            }
        }
    }

    /// The most recently used idle connection that is still good.
    async fn pop_idle(&self, source: Option<SocketAddr>) -> Option<PooledConn> {
        loop {
            let mut c = {
                let mut idle = lock(&self.idle);
                let i = match source {
                    None => idle.len().checked_sub(1)?,
                    Some(s) => idle.iter().rposition(|c| c.source.map(|a| a.ip()) == Some(s.ip()))?,
                };
                idle.remove(i)
            };
            c.idle.store(false, Ordering::Release);
            if c.sender.is_closed() {
                continue; // counted as backend_closed by its task
            }
            if Instant::now() >= c.expires {
                self.metrics.reaped(&self.cfg.name, ReapReason::IdleTimeout);
                continue;
            }
            // Checked in right after its response ended; hyper may need a moment
            // to mark it ready again.
            if tokio::time::timeout(self.cfg.connect_timeout, c.sender.ready())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Some(c);
            }
            self.metrics.reaped(&self.cfg.name, ReapReason::Error);
        }
    }

    /// Returns a connection after a complete exchange, unless the backend
    /// said it will not take another request on it.
    pub fn checkin(&self, mut c: PooledConn, hint: ReuseHint) {
        c.uses += 1;
        if let Some(m) = hint.max {
            // The backend's count already includes this request.
            c.max_uses = Some(c.uses + m.saturating_sub(1));
        }
        let used_up = c.max_uses.is_some_and(|m| c.uses >= m);
        if hint.close || used_up || c.sender.is_closed() {
            return; // dropped: its task closes the socket
        }
        let ttl = self.ttl(hint);
        if ttl.is_zero() {
            return;
        }
        c.expires = Instant::now() + ttl;
        let mut idle = lock(&self.idle);
        if idle.len() >= self.cfg.pool_max_idle as usize {
            drop(idle);
            self.metrics.reaped(&self.cfg.name, ReapReason::OverMaxIdle);
            return;
        }
        c.idle.store(true, Ordering::Release);
        idle.push(c);
        drop(idle);
        self.freed.notify_one();
    }

    /// Picks the next address round-robin, skipping ejected ones while any
    /// other is available.
    fn pick_addr(&self) -> usize {
        let n = self.cfg.addrs.len();
        let start = self.next_addr.fetch_add(1, Ordering::Relaxed);
        let health = lock(&self.health);
        let now = Instant::now();
        let usable = |i: usize| health[i].ejected_until.is_none_or(|t| now >= t);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| usable(i))
            .unwrap_or_else(|| (0..n).min_by_key(|&i| health[i].ejected_until).unwrap_or(0))
    }

    fn connect_failed(&self, i: usize) {
        let mut health = lock(&self.health);
        let h = &mut health[i];
        h.failures += 1;
        if h.failures >= self.cfg.eject_after && h.ejected_until.is_none_or(|t| Instant::now() >= t) {
            h.ejected_until = Some(Instant::now() + self.cfg.eject_cool_off);
            drop(health);
            Metrics::backend_counter(&self.metrics.backend_ejections, &self.cfg.name).inc();
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

    /// Opens a connection, trying each address at most once.
    async fn connect(
        &self,
        slot: SlotGuard,
        source: Option<SocketAddr>,
        local: SocketAddr,
    ) -> Result<PooledConn, UpstreamError> {
        let (stream, addr) = self.open_any(source, local).await?;
        self.handshake(stream, addr, source, slot).await
    }

    /// Connects to the next usable address, trying each at most once.
    async fn open_any(
        &self,
        source: Option<SocketAddr>,
        local: SocketAddr,
    ) -> Result<(TcpStream, SocketAddr), UpstreamError> {
        let mut last_err = None;
        for _ in 0..self.cfg.addrs.len() {
            let i = self.pick_addr();
            let addr = self.cfg.addrs[i];
            match self.open(addr, source, local).await {
                Ok(stream) => {
                    self.connect_ok(i);
                    return Ok((stream, addr));
                }
                Err(e) => {
                    debug!(backend = %self.cfg.name, %addr, error = %e, "backend connect failed");
                    self.connect_failed(i);
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(UpstreamError::QueueTimeout))
    }

    async fn open(
        &self,
        addr: SocketAddr,
        source: Option<SocketAddr>,
        local: SocketAddr,
    ) -> Result<TcpStream, UpstreamError> {
        let mut stream = match tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::Connect(addr, e)),
            Err(_) => return Err(UpstreamError::ConnectTimeout(addr)),
        };
        let _ = stream.set_nodelay(true);
        if let Some(src) = source {
            let header = proxy_protocol::header(self.cfg.proxy_protocol, src, local);
            stream
                .write_all(&header)
                .await
                .map_err(|e| UpstreamError::Connect(addr, e))?;
        }
        Ok(stream)
    }

    async fn handshake(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        source: Option<SocketAddr>,
        slot: SlotGuard,
    ) -> Result<PooledConn, UpstreamError> {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Handshake(addr, e))?;
        Metrics::backend_counter(&self.metrics.backend_connects, &self.cfg.name).inc();
        let idle = Arc::new(AtomicBool::new(false));
        let (backend, metrics, idle_flag) = (self.cfg.name.clone(), self.metrics.clone(), idle.clone());
        let span = tracing::debug_span!("backend", %backend, %addr);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _slot = slot;
                let result = conn.await;
                let was_idle = idle_flag.load(Ordering::Acquire);
                match result {
                    Ok(()) if was_idle => metrics.reaped(&backend, ReapReason::BackendClosed),
                    Ok(()) => {}
                    Err(e) => {
                        debug!(%backend, %addr, error = %e, "backend connection ended with an error");
                        let reason = if was_idle {
                            ReapReason::BackendClosed
                        } else {
                            ReapReason::Error
                        };
                        metrics.reaped(&backend, reason);
                    }
                }
            },
            span,
        ));
        debug!(backend = %self.cfg.name, %addr, "opened backend connection");
        Ok(PooledConn {
            sender,
            addr,
            source,
            uses: 0,
            max_uses: None,
            expires: Instant::now() + self.cfg.pool_idle_timeout,
            idle,
        })
    }

    /// Closes idle connections past their expiry or over `pool_max_idle`, and
    /// forgets those the backend closed. Returns how many it closed.
    pub fn reap(&self) -> usize {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        let (mut expired, mut excess) = (0, 0);
        idle.retain(|c| {
            if c.sender.is_closed() {
                false // counted by its task as backend_closed
            } else if now >= c.expires {
                expired += 1;
                c.idle.store(false, Ordering::Release); // finguard closes it, not the backend
                false
            } else {
                true
            }
        });
        let max = self.cfg.pool_max_idle as usize;
        if idle.len() > max {
            excess = idle.len() - max;
            for c in idle.drain(..excess) {
                c.idle.store(false, Ordering::Release); // oldest first
            }
        }
        drop(idle);
        let (raw_expired, raw_excess) = self.reap_raw(now);
        let (expired, excess) = (expired + raw_expired, excess + raw_excess);
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
