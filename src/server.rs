//! Running the proxy: bind the listeners, accept with connection permits and
//! per-IP limits, spawn one task per client, drain on SIGTERM/SIGINT.
//!
//! A reload (SIGHUP) builds a new [`Shared`] generation — policy, routes,
//! backend pools — and swaps it in: new connections get it, existing ones keep
//! the one they started with. Metrics, the connection registry, the per-IP
//! counts and the drain signal outlive generations.
//!
//! A listening socket speaks what its listener said when it was bound (TLS,
//! PROXY protocol) until the process ends: a reload finds each socket's
//! listener in the new config by address, renews its certificates, and only
//! reports what it cannot apply (see `endpoint`).
//!
//! The accept loop never dies on a transient error: on descriptor exhaustion
//! (EMFILE/ENFILE) it backs off instead of spinning, and the connections in the
//! backlog wait for a permit rather than being refused. The slot is taken
//! after the accept: a slot held by a loop waiting in `accept` would be one
//! that no other worker's socket could use (with `SO_REUSEPORT` the kernel,
//! not finguard, picks the socket a connection waits on). Before a newcomer
//! takes its slot, at `[client.pressure] high_water` or with no slot free,
//! idle keep-alive connections are asked to close to make room (see
//! `crate::pressure`); only when nothing idle is left does it wait, one per
//! accept loop, the rest in the backlog.
//!
//! A connection refused before its first request (over
//! `max_connections_per_ip`, a bad PROXY header) holds no connection slot
//! while it closes, and its lingering close is cut short (see `admission`).

mod admission;
mod endpoint;

use crate::config::Config;
use crate::downstream;
use crate::metrics::{ProxyHeader, TlsHandshake};
use crate::shared::{Current, Shared};
use crate::upstream;
use admission::{refuse, IpGuard};
use endpoint::{Endpoint, Endpoints};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

/// How long the accept loop pauses when the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What every accept loop of the process shares.
#[derive(Clone)]
struct Accepting {
    current: Current,
    endpoints: Endpoints,
    /// One per open connection: `max_connections`.
    permits: Arc<Semaphore>,
    /// One per refused connection still closing. They hold no connection
    /// slot, so they are bounded apart (as many as `max_connections`: the
    /// client sockets finguard holds stay within twice that); past it, a
    /// refusal is a reset at once.
    refusals: Arc<Semaphore>,
    stop: CancellationToken,
}

/// A running proxy: its bound addresses and the handles that reload and stop it.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub current: Current,
    /// What each listening socket speaks, in `addrs` order.
    endpoints: Endpoints,
    tracker: TaskTracker,
    stop_accepting: CancellationToken,
    /// Duplicates of every listening socket, `[listener][k]`, for `handoff`
    /// (empty unless started `upgradable`).
    pub handoff: crate::handoff::Inherited,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open log.access_file {}: {source}", path.display())]
    AccessLog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A worker thread could not be created (thread limit, address-space cap).
    #[error("cannot start worker thread {worker}: {source}")]
    Worker { worker: usize, source: std::io::Error },
}

/// Binds every listener and starts serving.
///
/// Each of `workers` threads runs its own single-threaded runtime with its
/// own `SO_REUSEPORT` socket per listener, so a connection lives on the core
/// that accepted it (nginx's model). Measured on one core, tokio's
/// work-stealing scheduler served 1000 busy connections unfairly (p99 ten
/// times the median); one runtime per thread keeps them in FIFO order.
///
/// `inherited`: the listening sockets of the process this one replaces.
/// `upgradable`: keep a duplicate of every listening socket in
/// [`Running::handoff`], for the process that will replace this one.
pub async fn start(
    config: Config,
    inherited: Option<crate::handoff::Inherited>,
    upgradable: bool,
) -> Result<Running, StartError> {
    let workers = config.workers.max(1);
    let (listening, addrs) = listening_sockets(&config, workers, inherited)?;
    let handoff = if upgradable {
        listening
            .iter()
            .map(|l| l.iter().filter_map(|s| s.try_clone().ok()).collect())
            .collect()
    } else {
        Vec::new()
    };
    // sockets[w]: worker w's sockets, each with its listener's index; a
    // listener's sockets are dealt out round-robin.
    let mut sockets: Vec<Vec<(usize, std::net::TcpListener)>> = (0..workers).map(|_| Vec::new()).collect();
    for (idx, socks) in listening.into_iter().enumerate() {
        for (k, s) in socks.into_iter().enumerate() {
            sockets[k % workers].push((idx, s));
        }
    }
    let admin = match config.admin {
        Some(a) => Some(bind(a).map_err(|source| StartError::Bind { addr: a, source })?),
        None => None,
    };
    let log =
        crate::accesslog::Writer::start(config.access_file.as_deref()).map_err(|source| StartError::AccessLog {
            path: config.access_file.clone().unwrap_or_default(),
            source,
        })?;
    let endpoints: Endpoints = Arc::new(RwLock::new(config.listeners.iter().map(Endpoint::new).collect()));
    let slots = config.max_connections as usize;
    let first = Shared::first(config, log);
    let permits = first.pressure.permits().clone();
    let current: Current = Arc::new(RwLock::new(first));
    let tracker = TaskTracker::new();
    let stop_accepting = CancellationToken::new();
    let accepting = Accepting {
        current: current.clone(),
        endpoints: endpoints.clone(),
        permits,
        refusals: Arc::new(Semaphore::new(slots)),
        stop: stop_accepting.clone(),
    };
    for (w, socks) in sockets.into_iter().enumerate() {
        let accepting = accepting.clone();
        // Counts as one task of the global tracker until this worker's connections are done.
        let alive = tracker.token();
        std::thread::Builder::new()
            .name(format!("finguard-w{w}"))
            .spawn(move || worker(w, socks, accepting, alive))
            .map_err(|source| StartError::Worker { worker: w, source })?;
    }
    if let Some(listener) = admin {
        if let Ok(bound) = listener.local_addr() {
            eprintln!("finguard: admin on {bound}");
        }
        // Runs until the process exits, so /healthz can say 503 while draining.
        tokio::spawn(crate::admin::serve(listener, current.clone(), addrs.clone()));
    }
    Ok(Running {
        addrs,
        current,
        endpoints,
        tracker,
        stop_accepting,
        handoff,
    })
}

/// Every listener's sockets, `[listener][k]`: one per worker (`SO_REUSEPORT`
/// when there are several), or those handed over by the process this one
/// replaces (then one more per worker beyond their count).
fn listening_sockets(
    config: &Config,
    workers: usize,
    inherited: Option<crate::handoff::Inherited>,
) -> Result<(Vec<Vec<std::net::TcpListener>>, Vec<SocketAddr>), StartError> {
    let mut inherited = inherited.map(|i| i.into_iter());
    let mut all = Vec::new();
    let mut addrs = Vec::new();
    for l in &config.listeners {
        let bind_err = |addr| move |source| StartError::Bind { addr, source };
        let mut socks = match inherited.as_mut() {
            Some(it) => it.next().ok_or_else(|| StartError::Bind {
                addr: l.addr,
                source: std::io::Error::other("the process taken over has fewer listeners than the config"),
            })?,
            None => vec![bind_std(l.addr, workers > 1).map_err(bind_err(l.addr))?],
        };
        let addr = socks[0].local_addr().map_err(bind_err(l.addr))?;
        if !l.addr.ip().is_unspecified() && l.addr.port() != 0 && addr != l.addr {
            return Err(StartError::Bind {
                addr: l.addr,
                source: std::io::Error::other(format!("the process taken over listens on {addr} instead")),
            });
        }
        while socks.len() < workers {
            socks.push(bind_std(addr, true).map_err(bind_err(addr))?);
        }
        addrs.push(addr);
        all.push(socks);
    }
    Ok((all, addrs))
}

/// One worker thread: accept loops for its sockets, then, once `stop` fires,
/// waits for its own connections (and a loop still holding one it accepted)
/// before its runtime goes away.
fn worker(
    w_index: usize,
    socks: Vec<(usize, std::net::TcpListener)>,
    accepting: Accepting,
    alive: tokio_util::task::task_tracker::TaskTrackerToken,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    upstream::set_worker(w_index);
    rt.block_on(async move {
        let conns = TaskTracker::new();
        let first = accepting.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        let room = first.config.max_connections.min(crate::shared::MAX_PRESIZED) as usize;
        if let Some((set, poll)) = downstream::parking::start(&first.clients, room) {
            let (draining, stop) = (first.draining.clone(), accepting.stop.clone());
            conns.spawn(downstream::parking::drive(set, poll, conns.clone(), draining, stop));
        }
        drop(first);
        for (idx, s) in socks {
            match TcpListener::from_std(s) {
                Ok(l) => {
                    conns.spawn(accept_loop(idx, l, accepting.clone(), conns.clone()));
                }
                Err(e) => error!(error = %e, "cannot register a listener"),
            }
        }
        accepting.stop.cancelled().await;
        conns.close();
        conns.wait().await;
        drop(alive);
    });
}

/// `reuse_port` lets the workers share a port; without it a second process
/// on the same port fails to bind, as it should.
fn bind_std(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, false)?)
}

impl Running {
    pub fn shared(&self) -> Arc<Shared> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new configuration for new connections. A listener added,
    /// removed, or turning TLS or the PROXY protocol on or off, and admin and
    /// `max_connections` changes need a restart: they are reported, not applied.
    pub fn reload(&self, config: Config) -> Vec<String> {
        let old = self.shared();
        let running = self.endpoints.read().unwrap_or_else(|p| p.into_inner()).clone();
        let (endpoints, mut not_applied) = endpoint::rematch(&running, &config.listeners);
        *self.endpoints.write().unwrap_or_else(|p| p.into_inner()) = endpoints;
        if old.config.admin != config.admin {
            not_applied.push("admin.addr".to_string());
        }
        if old.config.max_connections != config.max_connections {
            not_applied.push("client.max_connections".to_string());
        }
        if old.config.access_file != config.access_file {
            old.access.writer().reopen(config.access_file.clone());
        }
        let next = old.next(config);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        not_applied
    }

    /// Reopens the access-log file (SIGUSR1), for log rotation.
    pub fn reopen_logs(&self) {
        let shared = self.shared();
        shared.access.writer().reopen(shared.config.access_file.clone());
    }

    /// Stops accepting, lets in-flight requests finish and idle connections
    /// close the configured way; gives up after `timeout`. Returns whether
    /// every connection ended in time.
    pub async fn drain(self, timeout: Duration) -> bool {
        self.stop_accepting.cancel();
        // The registry first: `keepalive_allowed` looks at it.
        self.shared().clients.drain();
        self.shared().draining.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(timeout, self.tracker.wait()).await.is_ok();
        if !drained {
            let n = self.shared().clients.reset_in_flight();
            tracing::warn!(
                connections = n,
                "shutdown_timeout reached: in-flight client connections are reset"
            );
        }
        drained
    }
}

async fn accept_loop(idx: usize, listener: TcpListener, ctx: Accepting, tracker: TaskTracker) {
    let mut starved = false;
    loop {
        // Taken from the backlog even when every slot is taken: the newcomer
        // is what tells idle connections to make room (`take_slot`).
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = ctx.stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                if std::mem::take(&mut starved) {
                    info!("descriptors available again; accepting");
                }
                x
            }
            Err(e) => {
                if is_out_of_descriptors(&e) {
                    free_descriptors(&ctx);
                }
                if !accept_failed(&e, &mut starved, &ctx.stop).await {
                    return;
                }
                continue;
            }
        };
        if !admit(stream, peer, idx, &ctx, &tracker).await {
            return;
        }
    }
}

/// Hands an accepted connection to its task: refused at once when its IP is
/// over its limit, else served once it has a connection slot. A PROXY
/// listener's client is known only from its header, read with a slot held.
/// `false`: the slots are gone (never, while the process runs).
async fn admit(stream: TcpStream, peer: SocketAddr, idx: usize, ctx: &Accepting, tracker: &TaskTracker) -> bool {
    let shared = ctx.current.read().unwrap_or_else(|p| p.into_inner()).clone();
    shared.metrics.accepted();
    let Some(endpoint) = endpoint::get(&ctx.endpoints, idx) else {
        error!(
            listener = idx,
            "a listening socket without its listener; closing the connection"
        );
        return true;
    };
    let ip_guard = if endpoint.proxy_protocol {
        None
    } else {
        let Some(guard) = IpGuard::take(&shared, peer.ip()) else {
            info!(%peer, "over max_connections_per_ip; refusing");
            let tls = endpoint.tls.is_some();
            tracker.spawn(refuse(stream, 503, shared, tls, ctx.refusals.clone()));
            return true;
        };
        Some(guard)
    };
    // Not cut short by a drain: slots free as connections end, and it is
    // answered (with `Connection: close`).
    let Some(permit) = take_slot(&ctx.permits, &shared).await else {
        return false;
    };
    let (tls, refusals) = (endpoint.tls, ctx.refusals.clone());
    match ip_guard {
        Some(ip) => tracker.spawn(serve_in_span(stream, peer, shared, tls, permit, ip, idx)),
        None => tracker.spawn(serve_proxied(stream, peer, shared, tls, permit, idx, refusals)),
    };
    true
}

/// A connection slot for a newcomer, room made first when the house is
/// full (`crate::pressure`). When no slot is free and nothing idle is on
/// its way out, the newcomer waits — counted once — and looks again every
/// [`RECHECK`](crate::pressure::RECHECK) (grace windows expire). `None`:
/// the semaphore is gone (never, while the process runs).
async fn take_slot(permits: &Arc<Semaphore>, shared: &Shared) -> Option<OwnedSemaphorePermit> {
    let (pressure, t) = (&shared.pressure, &shared.config.pressure);
    let mut room = pressure.make_room(&shared.clients, t);
    if let Ok(p) = permits.clone().try_acquire_owned() {
        return Some(p);
    }
    let mut counted = false;
    loop {
        if !counted && !room.room_coming() {
            counted = true;
            shared.metrics.pressure.admission_waited();
            debug!("every connection slot taken and nothing idle to close; waiting");
        }
        tokio::select! {
            p = permits.clone().acquire_owned() => return p.ok(),
            () = tokio::time::sleep(crate::pressure::RECHECK) => {
                room = pressure.make_room(&shared.clients, t);
            }
        }
    }
}

/// `serve_accepted` in a span per connection: every log line of it carries
/// the peer (a disabled span still costs an enter and exit on every poll).
async fn serve_in_span(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<crate::tls::TlsSettings>,
    permit: OwnedSemaphorePermit,
    ip_guard: IpGuard,
    idx: usize,
) {
    let span = tracing::debug_span!("client", %peer, listener = idx);
    let task = serve_accepted(stream, peer, shared, tls, permit, ip_guard);
    if span.is_disabled() {
        task.await
    } else {
        tracing::Instrument::instrument(task, span).await
    }
}

/// A connection on a `proxy_protocol` listener (behind a load balancer):
/// its PROXY header first, within `header_timeout`. The client it names is
/// the peer from then on: per-IP limit, access log, `X-Forwarded-For`, and
/// the PROXY header to the backend. A `LOCAL` header (the balancer's own
/// health check) keeps the balancer's address.
async fn serve_proxied(
    mut stream: TcpStream,
    balancer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<crate::tls::TlsSettings>,
    permit: OwnedSemaphorePermit,
    idx: usize,
    refusals: Arc<Semaphore>,
) {
    let limit = crate::timeouts::ClientTimeouts::new(&shared.policies.base().settings).head;
    let read = tokio::time::timeout(limit, crate::proxy_protocol::read(&mut stream)).await;
    let peer = match read {
        Ok(Ok(named)) => {
            shared.metrics.proxy_header(ProxyHeader::Ok);
            named.map_or(balancer, |(client, _)| client)
        }
        Ok(Err(why)) => {
            debug!(%balancer, %why, "bad PROXY protocol header; refusing");
            shared.metrics.proxy_header(ProxyHeader::Invalid);
            drop(permit);
            return refuse(stream, 400, shared, tls.is_some(), refusals).await;
        }
        Err(_) => {
            debug!(%balancer, "no PROXY protocol header within header_timeout");
            shared.metrics.proxy_header(ProxyHeader::Timeout);
            return downstream::linger::abort(stream);
        }
    };
    let Some(ip_guard) = IpGuard::take(&shared, peer.ip()) else {
        info!(%peer, "over max_connections_per_ip; refusing");
        drop(permit);
        return refuse(stream, 503, shared, tls.is_some(), refusals).await;
    };
    serve_in_span(stream, peer, shared, tls, permit, ip_guard, idx).await
}

/// One accepted connection's task. Its future is what every busy (and TLS
/// idle) connection costs in memory, so everything large is boxed and built
/// only when needed. Not `async`: an `async fn` would keep its arguments
/// beside the future it hands them to.
fn serve_accepted(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<crate::tls::TlsSettings>,
    permit: OwnedSemaphorePermit,
    ip: IpGuard,
) -> tokio_util::either::Either<impl std::future::Future<Output = ()>, impl std::future::Future<Output = ()>> {
    use tokio_util::either::Either;
    let slot = crate::shared::Slot { permit, ip };
    match tls {
        None => Either::Left(downstream::serve(stream, peer, shared, slot)),
        // Boxed: the handshake and HTTP/2 states are large, and a plain
        // connection's task must not carry their size.
        Some(tls) => Either::Right(Box::pin(serve_tls(stream, peer, shared, tls, slot))),
    }
}

/// The TLS handshake, bounded by `handshake_timeout`, then the same client loop.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: crate::tls::TlsSettings,
    slot: crate::shared::Slot,
) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    // A block of its own: the handshake's state is gone before serving.
    let s = {
        let accept = tls.acceptor.accept(stream);
        tokio::pin!(accept);
        match tokio::time::timeout(tls.handshake_timeout, accept.as_mut()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TLS handshake failed");
                // The socket went with the handshake future: closed, with RST
                // if the client's bytes were unread.
                return shared.metrics.tls_handshake(TlsHandshake::Error);
            }
            Err(_) => {
                debug!(%peer, "TLS handshake not finished within handshake_timeout");
                // Reset, not closed: nothing is owed to a client that did not
                // finish its handshake, and a plain close left the kernel an
                // orphan retransmitting finguard's flight (or its FIN) for
                // minutes to a client whose host had gone. `accept` still owns
                // the socket, and closes it as it is dropped here.
                crate::sys::reset_on_close(fd);
                return shared.metrics.tls_handshake(TlsHandshake::Timeout);
            }
        }
    };
    shared.metrics.tls_handshake(TlsHandshake::Ok);
    after_handshake(s, peer, shared, slot).await;
}

/// HTTP/2 or the HTTP/1 loop, by ALPN. Not `async`: the stream is moved
/// into the future that serves it, never kept beside it in the task.
fn after_handshake(
    s: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    slot: crate::shared::Slot,
) -> tokio_util::either::Either<impl std::future::Future<Output = ()>, impl std::future::Future<Output = ()>> {
    use tokio_util::either::Either;
    if crate::stream::ClientStream::alpn(&s) == Some(b"h2") {
        let h2 = Box::pin(downstream::h2::serve(s, peer, shared));
        return Either::Left(async move {
            let _slot = slot;
            h2.await
        });
    }
    // HTTP/1: on a stream of finguard's own, which can be parked while idle.
    let s = crate::tls::stream::TlsConn::after_handshake(s);
    Either::Right(downstream::serve(s, peer, shared, slot))
}

/// Out of descriptors before the occupancy said so (more files or backend
/// connections than the reserve allowed for): an idle connection past its
/// grace, if any, is asked to close, one per try of the accept.
fn free_descriptors(ctx: &Accepting) {
    let shared = ctx.current.read().unwrap_or_else(|p| p.into_inner()).clone();
    let e = shared.clients.evict(1, shared.config.pressure.grace);
    if e.requested > 0 {
        debug!("out of descriptors; closing an idle connection to make room");
    }
}

/// A failed accept. Out of descriptors: one log line per episode, then a
/// pause before the next try. Returns `false` when the listener is stopping.
async fn accept_failed(e: &std::io::Error, starved: &mut bool, stop: &CancellationToken) -> bool {
    if !is_out_of_descriptors(e) {
        warn!(error = %e, "accept failed");
        return true;
    }
    if !*starved {
        error!(error = %e, "out of file descriptors; pausing accept (retrying every 100ms)");
        *starved = true;
    }
    tokio::select! {
        () = tokio::time::sleep(ACCEPT_BACKOFF) => true,
        () = stop.cancelled() => false,
    }
}

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle keep-alive connection costs its task's future: keep it small
    /// (a regression once made it 7 KiB by inlining the HTTP/2 state).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = l.accept().await.unwrap();
        let config = crate::config::parse("t", "", &Default::default()).unwrap();
        let shared = Shared::first(config, crate::accesslog::Writer::start(None).unwrap());
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let ip = IpGuard::take(&shared, peer.ip()).unwrap();
        let fut = serve_accepted(stream, peer, shared, None, permit, ip);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1024, "the connection task's future is {size} bytes");
    }
}
