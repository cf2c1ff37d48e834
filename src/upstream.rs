//! The backend side: a bounded pool of HTTP/1.1 keep-alive connections per
//! backend.
//!
//! - `max_connections` caps open connections (idle + busy); a request that
//!   finds none free waits up to `queue_timeout` (then 503).
//! - Each connection is driven by its own task (hyper's client connection), so
//!   a backend FIN on an idle connection is seen at once and the socket closed:
//!   no CLOSE_WAIT on finguard's side. The task holds the connection's slot.
//! - Idle connections are reused LIFO (few stay warm), trimmed to
//!   `pool_max_idle` and expired after `pool_idle_timeout` by [`Upstream::reap`].
//!
//! This module never sees a client socket.

use crate::config::BackendConfig;
use crate::proxy::UpBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::debug;

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

struct Idle {
    sender: SendRequest<UpBody>,
    since: Instant,
}

/// One backend's pool.
pub struct Upstream {
    pub cfg: BackendConfig,
    idle: Mutex<Vec<Idle>>,
    slots: Arc<Semaphore>,
    /// Signalled when a connection is checked in or a slot is freed.
    freed: Arc<Notify>,
    next_addr: AtomicUsize,
}

/// A connection lent to one request.
pub struct Lease {
    pub sender: SendRequest<UpBody>,
    /// It served a request before: a failure on it may be a stale-connection race.
    pub reused: bool,
}

/// Frees a slot and wakes a queued request when a connection's task ends.
struct SlotGuard {
    _permit: OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.freed.notify_one();
    }
}

impl Upstream {
    pub fn new(cfg: BackendConfig) -> Arc<Self> {
        Arc::new(Upstream {
            slots: Arc::new(Semaphore::new(cfg.max_connections as usize)),
            idle: Mutex::new(Vec::new()),
            freed: Arc::new(Notify::new()),
            next_addr: AtomicUsize::new(0),
            cfg,
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections open now (idle and busy).
    pub fn open_connections(&self) -> usize {
        self.cfg.max_connections as usize - self.slots.available_permits()
    }

    pub fn idle_connections(&self) -> usize {
        self.idle().len()
    }

    /// Lends a connection: an idle one (unless `fresh`), else a new one if a
    /// slot is free, else waits for either until `queue_timeout`.
    pub async fn checkout(&self, fresh: bool) -> Result<Lease, UpstreamError> {
        let deadline = Instant::now() + self.cfg.queue_timeout;
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !fresh {
                if let Some(sender) = self.pop_idle().await {
                    return Ok(Lease {
                        sender,
                        reused: true,
                    });
                }
            }
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return self.connect(permit).await.map(|sender| Lease {
                    sender,
                    reused: false,
                });
            }
            if fresh {
                // Make room: a fresh connection is worth more than an idle one.
                let victim = self.idle().pop();
                drop(victim);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(UpstreamError::QueueTimeout);
            }
        }
    }

    /// The most recently used idle connection that is still good.
    async fn pop_idle(&self) -> Option<SendRequest<UpBody>> {
        loop {
            let Idle { mut sender, since } = self.idle().pop()?;
            if sender.is_closed() || since.elapsed() >= self.cfg.pool_idle_timeout {
                continue;
            }
            // Checked in right after its response ended; hyper may need a moment
            // to mark it ready again.
            if tokio::time::timeout(self.cfg.connect_timeout, sender.ready())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                return Some(sender);
            }
        }
    }

    /// Returns a connection after a complete exchange.
    pub fn checkin(&self, sender: SendRequest<UpBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() >= self.cfg.pool_max_idle as usize {
            return; // dropped: its task closes the socket
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        drop(idle);
        self.freed.notify_one();
    }

    async fn connect(
        &self,
        permit: OwnedSemaphorePermit,
    ) -> Result<SendRequest<UpBody>, UpstreamError> {
        let addrs = &self.cfg.addrs;
        let addr = addrs[self.next_addr.fetch_add(1, Ordering::Relaxed) % addrs.len()];
        let stream =
            match tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(UpstreamError::Connect(addr, e)),
                Err(_) => return Err(UpstreamError::ConnectTimeout(addr)),
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Handshake(addr, e))?;
        let guard = SlotGuard {
            _permit: permit,
            freed: self.freed.clone(),
        };
        let backend = self.cfg.name.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = conn.await {
                debug!(%backend, %addr, error = %e, "backend connection ended");
            }
        });
        debug!(backend = %self.cfg.name, %addr, "opened backend connection");
        Ok(sender)
    }

    /// Closes idle connections past `pool_idle_timeout` or over `pool_max_idle`,
    /// and forgets those the backend closed. Returns how many went.
    pub fn reap(&self) -> usize {
        let mut idle = self.idle();
        let before = idle.len();
        let ttl = self.cfg.pool_idle_timeout;
        idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < ttl);
        let max = self.cfg.pool_max_idle as usize;
        if idle.len() > max {
            let excess = idle.len() - max;
            idle.drain(..excess); // oldest first
        }
        before - idle.len()
    }
}

/// Sweeps every pool on `interval` until `stop` fires.
pub async fn reaper(
    pools: Vec<Arc<Upstream>>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        for p in &pools {
            let n = p.reap();
            if n > 0 {
                debug!(backend = %p.cfg.name, reaped = n, "reaped idle backend connections");
            }
        }
    }
}
