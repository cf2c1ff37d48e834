//! Backend connections that HTTP/1 exchanges drive directly: lent out whole
//! (the socket itself, no task, no channel), kept idle per worker thread.
//!
//! A connection stays on the worker thread that opened it: its socket is
//! registered with that thread's reactor, so it is lent only to exchanges
//! running there and sits idle in that thread's list.
//!
//! While idle, a connection's read readiness is armed with a waker of its own
//! ([`IdleWake`]). Nothing should arrive on an idle connection: a FIN, a reset
//! or stray bytes from the backend fire that waker, which marks the connection
//! and wakes its thread's watcher task; the watcher closes it at once (no
//! CLOSE_WAIT left on finguard's side) and counts why. This costs one task per
//! thread and backend, not one per connection, and nothing per request.

use super::{lock, SlotGuard, Speaker, Tried, Upstream, UpstreamError};
use crate::config::ProxyProtocol;
use crate::metrics::ReapReason;
use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Names the calling thread as worker `i` (its idle lists are `i`'s).
pub fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

fn worker() -> usize {
    WORKER.with(Cell::get)
}

/// One worker thread's idle connections to one backend.
#[derive(Default)]
pub(super) struct IdleList {
    conns: Mutex<Vec<RawConn>>,
    /// Woken by an idle connection's socket.
    signal: Arc<Notify>,
    /// The watcher task runs (it is spawned on the first check-in).
    watching: AtomicBool,
}

/// Fired by an idle connection's socket: marks it and wakes the watcher.
struct IdleWake {
    flagged: AtomicBool,
    signal: Arc<Notify>,
}

impl Wake for IdleWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.flagged.store(true, Ordering::Release);
        self.signal.notify_one();
    }
}

/// A backend connection's socket, whose close is bounded ([`Drop`]).
pub struct Socket {
    /// `None` only when the connection is being dropped: [`RawConn::abort`]
    /// took it, or [`Upstream::steal`] failed to move it to another reactor.
    io: Option<TcpStream>,
    /// The bound: the backend's `connect_timeout`, or what
    /// [`RawConn::let_go`] says.
    gone_after: Duration,
}

impl Drop for Socket {
    /// A close of a backend connection whose host went away unseen ends
    /// within `gone_after`, not after the kernel's retries
    /// ([`crate::sys::bound_orphan`]). Set at the close only: on a live
    /// connection the same `TCP_USER_TIMEOUT` would also cut a backend that
    /// is still there but keeps its receive window shut that long.
    fn drop(&mut self) {
        if let Some(io) = &self.io {
            crate::sys::bound_orphan(io, self.gone_after);
        }
    }
}

impl std::ops::Deref for Socket {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        self.io
            .as_ref()
            .expect("a backend socket is taken only to be put back or dropped")
    }
}

impl std::ops::DerefMut for Socket {
    fn deref_mut(&mut self) -> &mut TcpStream {
        self.io
            .as_mut()
            .expect("a backend socket is taken only to be put back or dropped")
    }
}

/// A backend connection lent to one exchange at a time.
pub struct RawConn {
    pub stream: Socket,
    pub addr: SocketAddr,
    /// The client it speaks for (PROXY protocol), if any.
    source: Option<SocketAddr>,
    uses: u32,
    max_uses: Option<u32>,
    expires: Instant,
    /// The worker whose list it belongs to.
    home: usize,
    wake: Arc<IdleWake>,
    /// Times the exchange that holds it (`finguard_backend_hold_seconds`);
    /// boxed once per connection, so that a lent connection stays small.
    hold: Box<Hold>,
    _slot: SlotGuard,
}

/// A request waits this long for the first byte of its answer on a fresh
/// connection before finguard suspects the backend has no worker for it:
/// one that serves a connection per worker (Apache prefork) leaves a new
/// connection in its listen backlog while our idle keep-alive connections
/// hold its workers, until its keep-alive timeout (5 s by default) frees
/// one. nginx, which closes upstream connections after each request by
/// default, never meets this.
pub const STUCK_AFTER: Duration = Duration::from_millis(100);

/// While a request is stuck so, the idle connection to its backend that
/// has not been taken for longest, and for at least this long, is closed
/// (looked for again at this pace until there is one): nobody needs it,
/// and its backend worker may be what the request waits for. Under load
/// idle connections are taken again within microseconds, and a fresh
/// connection is made only when none was idle, so a busy backend loses
/// nothing to this rule. (Closing every connection coming back while a
/// request waited churned connections under a 1,000-connection load: 59
/// new backend connections per 1,000 requests. Closing every idle one
/// every 50 ms for as long as a long poll waited made each request beside
/// it open a connection of its own.)
pub const UNNEEDED_AFTER: Duration = Duration::from_millis(50);

/// A backend that is merely slow is not stuck: a wait on a fresh connection
/// counts as stuck only past this many times the slowest answer the backend
/// gave lately ([`SlowestAnswer`]), if that is longer than [`STUCK_AFTER`].
/// (Against [`STUCK_AFTER`] alone, a backend that takes 300 ms per request
/// under bursts lost its idle connections between bursts to the rule and
/// accepted 111 connections for 158 requests.)
pub const STUCK_FACTOR: u32 = 3;

/// [`SlowestAnswer`] halves in this time, so that one slow request does not
/// blunt the rule for good.
const SLOWEST_HALF_LIFE: Duration = Duration::from_secs(30);

/// A long poll answered after 30 s says nothing of a worker shortage: the
/// rule waits at most [`STUCK_FACTOR`] times this, still short of Apache's
/// 5 s `KeepAliveTimeout`.
const SLOWEST_COUNTED: Duration = Duration::from_secs(1);

/// What the pool knows of one backend address's answers: how slow it is
/// lately, and the requests stuck in its backlog beside the workers freed
/// for them.
#[derive(Default)]
pub struct AddrAnswers {
    slowest: SlowestAnswer,
    /// Requests on fresh connections that count as stuck, not answered yet.
    stuck: AtomicUsize,
    /// Idle connections closed for them, not yet matched by an answer: no
    /// more are closed than requests are stuck, so a long poll or a hung
    /// request costs the pool one connection, while a burst in the backlog
    /// frees a worker for each of its requests (whichever of them the
    /// backend then accepts first).
    freed: AtomicUsize,
}

/// One request counted as stuck, until it is answered or given up.
struct Stuck<'a>(&'a AddrAnswers);

impl Drop for Stuck<'_> {
    fn drop(&mut self) {
        sub_one(&self.0.stuck);
        sub_one(&self.0.freed);
    }
}

fn sub_one(a: &AtomicUsize) {
    let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
}

impl AddrAnswers {
    fn stuck(&self) -> Stuck<'_> {
        self.stuck.fetch_add(1, Ordering::AcqRel);
        Stuck(self)
    }

    /// Takes the right to free one more worker, while fewer were freed than
    /// requests are stuck.
    fn may_free(&self) -> bool {
        self.freed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                (f < self.stuck.load(Ordering::Acquire)).then_some(f + 1)
            })
            .is_ok()
    }
}

/// The slowest recent wait for an answer's first byte from one backend,
/// decaying by half every [`SLOWEST_HALF_LIFE`], counted up to
/// [`SLOWEST_COUNTED`]: fed by answers on reused connections (which cannot
/// sit in a listen backlog) and by those on fresh ones that came before the
/// wait counted as stuck (a later one may have waited for the backlog, not
/// the backend). Two relaxed atomics: a lost race loses one sample of a
/// heuristic.
pub struct SlowestAnswer {
    base: Instant,
    us: AtomicU64,
    at_ms: AtomicU64,
}

impl Default for SlowestAnswer {
    fn default() -> Self {
        SlowestAnswer {
            base: Instant::now(),
            us: AtomicU64::new(0),
            at_ms: AtomicU64::new(0),
        }
    }
}

impl SlowestAnswer {
    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    /// The slowest answer, decayed to `now`.
    fn get(&self, now: Instant) -> Duration {
        let us = self.us.load(Ordering::Relaxed);
        let age = self.now_ms(now).saturating_sub(self.at_ms.load(Ordering::Relaxed));
        let halvings = age / u64::try_from(SLOWEST_HALF_LIFE.as_millis()).unwrap_or(u64::MAX);
        Duration::from_micros(us.checked_shr(u32::try_from(halvings).unwrap_or(u32::MAX)).unwrap_or(0))
    }

    fn record(&self, took: Duration, now: Instant) {
        let took = took.min(SLOWEST_COUNTED);
        if took > self.get(now) {
            self.us
                .store(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
            self.at_ms.store(self.now_ms(now), Ordering::Relaxed);
        }
    }

    /// How long a fresh connection may wait for its answer before it counts
    /// as stuck.
    pub fn stuck_after(&self, now: Instant) -> Duration {
        STUCK_AFTER.max(self.get(now).saturating_mul(STUCK_FACTOR))
    }
}

/// Since when an exchange holds a connection: observed when it comes back
/// to the pool or is dropped, whichever path its exchange took.
struct Hold {
    since: Option<Instant>,
    /// When the last exchange let it go: since when it is idle in the pool
    /// (here, not in `RawConn`, which every exchange moves).
    released: Instant,
    metrics: Arc<crate::metrics::Metrics>,
    /// The exchange's own record of it (its access-log line), if it asked.
    report: Option<Arc<HoldCell>>,
    /// Bounds each wait for an answer on the connection (here, in the box,
    /// so that a lent connection stays small).
    timer: crate::timeouts::Timer,
}

/// What one exchange held its backend connections for, summed over its
/// attempts: written as each connection is released (back to the pool or
/// dropped), read when the exchange's access-log line is written.
#[derive(Debug, Default)]
pub struct HoldCell(AtomicU64);

impl HoldCell {
    fn add(&self, d: Duration) {
        // 0 means "never held": a hold adds at least one microsecond.
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.fetch_add(us, Ordering::Relaxed);
    }

    /// The total, once a connection was held and released.
    pub fn get(&self) -> Option<Duration> {
        let us = self.0.load(Ordering::Relaxed);
        (us > 0).then(|| Duration::from_micros(us))
    }
}

impl Hold {
    fn start(&mut self) {
        self.since = Some(crate::clock::now());
    }

    fn stop(&mut self) {
        let now = crate::clock::now();
        self.released = now;
        if let Some(t) = self.since.take() {
            let d = now.saturating_duration_since(t);
            self.metrics.buffer.held_backend(d);
            if let Some(r) = self.report.take() {
                r.add(d);
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConn")
            .field("addr", &self.addr)
            .field("uses", &self.uses)
            .finish_non_exhaustive()
    }
}

impl RawConn {
    /// It carried a request before: a failure may be a stale-connection race.
    pub fn reused(&self) -> bool {
        self.uses > 0
    }

    /// Adds this exchange's hold of the connection to `cell` when it ends.
    pub fn report_hold(&mut self, cell: Arc<HoldCell>) {
        self.hold.report = Some(cell);
    }

    /// Closes with RST: no orphan, so nothing to bound.
    pub fn abort(mut self) {
        if let Some(io) = self.stream.io.take() {
            crate::downstream::linger::abort(io);
        }
    }

    /// Closes to a backend whose host stopped answering, the orphan bounded
    /// by `within` rather than `connect_timeout`
    /// (`crate::downstream::linger::let_go`).
    pub fn let_go(mut self, within: Duration) {
        self.stream.gone_after = within;
    }
}

/// A connection handed to an exchange: its hold begins.
fn lent(mut c: RawConn) -> RawConn {
    c.hold.start();
    c
}

/// Arms an idle connection's readiness with its own waker; says whether the
/// backend already closed it or sent bytes nobody asked for.
fn arm(c: &RawConn) -> Result<(), ReapReason> {
    let waker = Waker::from(c.wake.clone());
    let mut cx = Context::from_waker(&waker);
    // Readiness may be stale from the last response: a read that would block
    // clears it, and the next poll registers the waker.
    for _ in 0..4 {
        match c.stream.poll_read_ready(&mut cx) {
            Poll::Pending => return Ok(()),
            Poll::Ready(Err(_)) => return Err(ReapReason::Error),
            Poll::Ready(Ok(())) => match c.stream.try_read(&mut [0u8; 1]) {
                Ok(0) => return Err(ReapReason::BackendClosed),
                Ok(_) => return Err(ReapReason::Error),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(ReapReason::BackendClosed),
            },
        }
    }
    Err(ReapReason::Error)
}

/// Closes the flagged connections of one worker's list as their backend
/// closed them; ends when the pool is gone.
async fn watch(pool: Weak<Upstream>, w: usize, signal: Arc<Notify>) {
    loop {
        signal.notified().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep_flagged(w);
    }
}

impl Upstream {
    pub(super) fn idle_lists(workers: usize) -> Vec<IdleList> {
        (0..workers.max(1)).map(|_| IdleList::default()).collect()
    }

    /// Idle connections, every worker's list together.
    pub fn idle_connections(&self) -> usize {
        self.raw.iter().map(|l| lock(&l.conns).len()).sum()
    }

    /// Lends a connection for one exchange: this worker's most recent idle
    /// one (unless `fresh`), else a new one while under `max_connections`,
    /// else waits for either until `queue_timeout`. A new one goes to an
    /// address that `tried` (the request's, across its checkouts) does not
    /// hold; each address that fails to connect is added to it.
    pub async fn checkout_raw(
        &self,
        fresh: bool,
        client: SocketAddr,
        local: SocketAddr,
        tried: &mut Tried,
    ) -> Result<RawConn, UpstreamError> {
        let source = self.source(client);
        if self.all_down() {
            // No waiting on a connect that the health check says is futile.
            return Err(UpstreamError::AllDown);
        }
        let w = worker() % self.raw.len();
        let mut deadline = None;
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !fresh {
                if let Some(c) = self.pop_raw(w, source) {
                    return Ok(lent(c));
                }
                // Few warm connections beat a new one: another worker's idle
                // connection moves over to this one.
                if let Some(c) = self.steal(w, source) {
                    return Ok(lent(c));
                }
            }
            if let Some(slot) = self.take_slot() {
                let speaker = Speaker::Client { client, local };
                return self.connect_raw(slot, source, speaker, tried, w).await.map(lent);
            }
            // Every slot is taken: only a fresh connection makes an idle one
            // give up its slot (the backend never sees more than `max_connections`).
            if (fresh || source.is_some()) && self.evict_raw(None) {
                continue; // its slot is free now
            }
            let until = *deadline.get_or_insert_with(|| Instant::now() + self.cfg.queue_timeout);
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return Err(UpstreamError::QueueTimeout);
            }
        }
    }

    /// [`Self::checkout_raw`]'s usual case, with nothing to wait for: this
    /// worker's idle connection (`None`: take the whole path). No waiter is
    /// registered and no future is built, which on every request cost a
    /// lock on the pool's `Notify` and a copy of that path's state.
    pub fn checkout_idle(&self, fresh: bool, client: SocketAddr) -> Option<RawConn> {
        if fresh || self.all_down() {
            return None;
        }
        let source = self.source(client);
        self.pop_raw(worker() % self.raw.len(), source).map(lent)
    }

    /// The client an idle connection must speak for: only a PROXY protocol
    /// backend's connections carry one.
    fn source(&self, client: SocketAddr) -> Option<SocketAddr> {
        (self.cfg.proxy_protocol != ProxyProtocol::Off).then_some(client)
    }

    /// This worker's most recently used idle connection that is still good.
    fn pop_raw(&self, w: usize, source: Option<SocketAddr>) -> Option<RawConn> {
        loop {
            let c = {
                let mut idle = lock(&self.raw[w].conns);
                let i = match source {
                    None => idle.len().checked_sub(1)?,
                    Some(s) => idle.iter().rposition(|c| c.source.map(|a| a.ip()) == Some(s.ip()))?,
                };
                idle.remove(i)
            };
            if c.wake.flagged.load(Ordering::Acquire) {
                if let Err(reason) = arm(&c) {
                    self.metrics.reaped(&self.cfg.name, reason);
                    continue;
                }
            }
            if crate::clock::now() >= c.expires {
                self.metrics.reaped(&self.cfg.name, ReapReason::IdleTimeout);
                continue;
            }
            if self.addr_down(c.addr) {
                // Checked in after the health check took its address out.
                self.metrics.reaped(&self.cfg.name, ReapReason::Error);
                continue;
            }
            return Some(c);
        }
    }

    /// Another worker's idle connection, moved to worker `w`: its socket
    /// leaves that worker's reactor for this one's (two `epoll_ctl` calls, only
    /// when this worker has none idle).
    fn steal(&self, w: usize, source: Option<SocketAddr>) -> Option<RawConn> {
        let n = self.raw.len();
        for k in 1..n {
            while let Some(mut c) = self.pop_raw((w + k) % n, source) {
                let Some(io) = c.stream.io.take() else { continue };
                match io.into_std().and_then(TcpStream::from_std) {
                    Ok(stream) => {
                        c.stream.io = Some(stream);
                        c.home = w;
                        c.wake = Arc::new(IdleWake {
                            flagged: AtomicBool::new(false),
                            signal: self.raw[w].signal.clone(),
                        });
                        // The old one is filed with the other worker's timers.
                        c.hold.timer = crate::timeouts::Timer::default();
                        return Some(c);
                    }
                    Err(e) => {
                        debug!(backend = %self.cfg.name, error = %e, "could not move an idle connection");
                        self.metrics.reaped(&self.cfg.name, ReapReason::Error);
                    }
                }
            }
        }
        None
    }

    /// Closes every idle connection to `addr` (the health check took it out).
    pub(super) fn close_idle_to(&self, addr: SocketAddr) {
        for list in &self.raw {
            let closed: Vec<RawConn> = {
                let mut idle = lock(&list.conns);
                let (gone, kept) = std::mem::take(&mut *idle).into_iter().partition(|c| c.addr == addr);
                *idle = kept;
                gone
            };
            for _ in &closed {
                self.metrics.reaped(&self.cfg.name, ReapReason::Error);
            }
        }
    }

    /// Reads the next bytes of a response head from `c` into `resp` until
    /// `deadline` (`None`: it passed). While a fresh connection's answer
    /// has not begun after [`SlowestAnswer::stuck_after`], the idle
    /// connection to the same address unused longest (for at least
    /// [`UNNEEDED_AFTER`]) is closed, which frees the backend worker it
    /// held, as long as fewer were closed so than requests are stuck
    /// ([`AddrAnswers`]).
    pub async fn read_answer(
        &self,
        c: &mut RawConn,
        resp: &mut bytes::BytesMut,
        deadline: Instant,
    ) -> Option<io::Result<usize>> {
        use tokio::io::AsyncReadExt;
        if !resp.is_empty() {
            return c.hold.timer.timeout(deadline, c.stream.read_buf(resp)).await;
        }
        let addr = c.addr;
        let Some(answers) = self
            .cfg
            .addrs
            .iter()
            .position(|a| *a == addr)
            .and_then(|i| self.answers.get(i))
        else {
            return c.hold.timer.timeout(deadline, c.stream.read_buf(resp)).await;
        };
        let slowest = &answers.slowest;
        let asked = crate::clock::now();
        let answered = |r: &Option<io::Result<usize>>| {
            if let Some(Ok(n)) = r {
                if *n > 0 {
                    let now = crate::clock::now();
                    slowest.record(now.saturating_duration_since(asked), now);
                }
            }
        };
        if c.uses > 0 {
            let r = c.hold.timer.timeout(deadline, c.stream.read_buf(resp)).await;
            answered(&r);
            return r;
        }
        let read = c.stream.read_buf(resp);
        tokio::pin!(read);
        let mut check = asked + slowest.stuck_after(asked);
        let mut stuck = None;
        loop {
            tokio::select! {
                r = &mut read => {
                    let r = Some(r);
                    if stuck.is_none() {
                        answered(&r);
                    }
                    return r;
                }
                () = tokio::time::sleep_until(check.min(deadline)) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            // An answer on another connection may have shown meanwhile that
            // the backend is merely slow.
            let stuck_at = asked + slowest.stuck_after(now);
            if stuck.is_none() && now < stuck_at {
                check = stuck_at;
                continue;
            }
            stuck.get_or_insert_with(|| answers.stuck());
            if answers.may_free() {
                if self.close_one_unneeded_to(addr) {
                    debug!(backend = %self.cfg.name, %addr, "closed an idle connection: a request waits on a fresh one");
                } else {
                    sub_one(&answers.freed);
                }
            }
            check = now + UNNEEDED_AFTER;
        }
    }

    /// Closes the idle connection to `addr` unused longest, if it was
    /// unused for [`UNNEEDED_AFTER`], from any worker's list; whether one
    /// was closed.
    fn close_one_unneeded_to(&self, addr: SocketAddr) -> bool {
        let now = Instant::now();
        let oldest = |idle: &Vec<RawConn>| {
            idle.iter()
                .enumerate()
                .filter(|(_, c)| c.addr == addr && now.saturating_duration_since(c.hold.released) >= UNNEEDED_AFTER)
                .min_by_key(|(_, c)| c.hold.released)
                .map(|(i, c)| (i, c.hold.released))
        };
        let Some(list) = self
            .raw
            .iter()
            .filter_map(|list| oldest(&lock(&list.conns)).map(|(_, at)| (list, at)))
            .min_by_key(|(_, at)| *at)
            .map(|(list, _)| list)
        else {
            return false;
        };
        // Taken out under the lock again: another request may have taken it.
        let closed = {
            let mut idle = lock(&list.conns);
            oldest(&idle).map(|(i, _)| idle.remove(i))
        };
        match closed {
            Some(c) => {
                drop(c);
                self.metrics.reaped(&self.cfg.name, ReapReason::OverMaxIdle);
                true
            }
            None => false,
        }
    }

    /// Closes one idle raw connection to free its slot, from any worker's
    /// list but `skip`'s. Returns whether one was closed.
    pub(super) fn evict_raw(&self, skip: Option<usize>) -> bool {
        for (i, list) in self.raw.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let victim = {
                let mut idle = lock(&list.conns);
                (!idle.is_empty()).then(|| idle.remove(0))
            };
            if victim.is_some() {
                self.metrics.reaped(&self.cfg.name, ReapReason::OverMaxIdle);
                return true;
            }
        }
        false
    }

    async fn connect_raw(
        &self,
        slot: SlotGuard,
        source: Option<SocketAddr>,
        speaker: Speaker,
        tried: &mut Tried,
        w: usize,
    ) -> Result<RawConn, UpstreamError> {
        let (stream, addr) = self.open_any(speaker, tried).await?;
        self.metrics.backend_connected(&self.cfg.name);
        debug!(backend = %self.cfg.name, %addr, "opened backend connection");
        Ok(RawConn {
            stream: Socket {
                io: Some(stream),
                gone_after: self.cfg.connect_timeout,
            },
            addr,
            source,
            uses: 0,
            max_uses: None,
            expires: Instant::now() + self.cfg.pool_idle_timeout,
            home: w,
            wake: Arc::new(IdleWake {
                flagged: AtomicBool::new(false),
                signal: self.raw[w].signal.clone(),
            }),
            hold: Box::new(Hold {
                report: None,
                since: None,
                released: Instant::now(),
                metrics: self.metrics.clone(),
                timer: crate::timeouts::Timer::default(),
            }),
            _slot: slot,
        })
    }

    /// Returns a connection after a complete exchange, unless the backend
    /// said it will not take another request on it.
    pub fn checkin_raw(self: &Arc<Self>, mut c: RawConn, hint: super::ReuseHint) {
        c.hold.stop();
        c.hold.timer.release();
        c.uses += 1;
        if let Some(m) = hint.max {
            // The backend's count already includes this request.
            c.max_uses = Some(c.uses + m.saturating_sub(1));
        }
        if hint.close || c.max_uses.is_some_and(|m| c.uses >= m) {
            return; // dropped: closed
        }
        let ttl = self.ttl(hint);
        if ttl.is_zero() {
            return;
        }
        c.expires = c.hold.released + ttl;
        c.wake.flagged.store(false, Ordering::Release);
        if let Err(reason) = arm(&c) {
            self.metrics.reaped(&self.cfg.name, reason);
            return;
        }
        let w = c.home % self.raw.len();
        let list = &self.raw[w];
        // `pool_max_idle` counts every worker's idle connections. Two
        // check-ins racing may pass it by one; the reaper trims that.
        if self.idle_connections() >= self.cfg.pool_max_idle as usize {
            drop(c);
            self.metrics.reaped(&self.cfg.name, ReapReason::OverMaxIdle);
            return;
        }
        lock(&list.conns).push(c);
        if !list.watching.swap(true, Ordering::AcqRel) {
            tokio::spawn(watch(Arc::downgrade(self), w, list.signal.clone()));
        }
        self.freed.notify_one();
    }

    fn sweep_flagged(&self, w: usize) {
        let mut closed = Vec::new();
        lock(&self.raw[w].conns).retain(|c| {
            if !c.wake.flagged.swap(false, Ordering::AcqRel) {
                return true;
            }
            match arm(c) {
                Ok(()) => true,
                Err(reason) => {
                    closed.push(reason);
                    false
                }
            }
        });
        for reason in closed {
            debug!(backend = %self.cfg.name, reason = reason.as_str(), "closed an idle backend connection");
            self.metrics.reaped(&self.cfg.name, reason);
        }
    }

    /// The reaper's sweep of raw idle connections: past their expiry, or over
    /// `pool_max_idle` (the oldest of the longest list first). Returns
    /// (expired, excess).
    pub(super) fn reap_raw(&self, now: Instant) -> (usize, usize) {
        let mut expired = 0;
        for list in &self.raw {
            let mut idle = lock(&list.conns);
            let before = idle.len();
            idle.retain(|c| now < c.expires);
            expired += before - idle.len();
        }
        let mut excess = 0;
        while self.idle_connections() > self.cfg.pool_max_idle as usize {
            let longest = self.raw.iter().max_by_key(|l| lock(&l.conns).len());
            match longest.map(|l| lock(&l.conns)) {
                Some(mut idle) if !idle.is_empty() => {
                    idle.remove(0);
                    excess += 1;
                }
                _ => break,
            }
        }
        (expired, excess)
    }

    /// Wakes the watchers so they see the pool is gone and end.
    pub(super) fn stop_watchers(&self) {
        for l in &self.raw {
            l.signal.notify_one();
        }
    }
}
