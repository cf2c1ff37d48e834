//! HTTP/2 to clients (ALPN `h2` on TLS listeners); the backend side stays
//! HTTP/1.1 through the pool.
//!
//! The User-Agent policy maps as far as HTTP/2 allows: `nokeepalive` sends
//! GOAWAY after the first response; the HTTP/1.0 options do not apply;
//! timeouts and the close mode do.
//!
//! A stream is open from its request until its response body is done (the
//! body's drop), so a connection is idle only when no stream is open; a
//! download is never cut by the idle watch or by a GOAWAY. Idle limits are
//! HTTP/1's: the first request within `header_timeout` of the start (a client
//! that sends no preface, or the preface and nothing else, is idle), the next
//! ones within `keepalive_timeout`. What bounds a stream instead is
//! progress: a response the client takes nothing of for `body_timeout` (it
//! keeps the stream's flow-control window shut) has its stream reset (see
//! [`StreamExec`]: hyper alone would never poll the body to see it fail),
//! and a response frame handed to h2 with no frame taken on any stream for
//! `body_timeout` ends the connection: with GOAWAY, which a client that only
//! kept windows shut still reads, then, if its PING is not acked within
//! `linger_timeout` (the client stopped reading), with a reset, as a stuck
//! HTTP/1 write does.
//!
//! Every close but an abort starts with GOAWAY (hyper's graceful shutdown:
//! GOAWAY and a PING, the final GOAWAY when the PING is acked) and lets the
//! open streams end. hyper waits for that ack without a deadline, so once no
//! stream is open a client silent for `linger_timeout` (`linger_time` when it
//! was sent enough to be still reading it: see [`ack_wait`]) is dropped and
//! closed the configured way: GOAWAY and its PING are HTTP/2's half of a lingering
//! close, and a silent client must not hold its permit, or a drain, forever.
//!
//! Abuse limits: concurrent streams, header list size (`max_header_bytes`),
//! `max_requests_per_connection` streams per connection, then GOAWAY (nginx's
//! `keepalive_requests`); rapid reset (CVE-2023-44487) in both forms: h2's
//! own guard caps streams reset before they were accepted, finguard caps
//! those reset after (each may have cost a backend request) at
//! [`MAX_RESET_STREAMS`], then GOAWAY; a client that keeps opening streams
//! well past its GOAWAY is reset. CONTINUATION floods are bounded by the
//! header list size.

use super::Ending;
use crate::config::ClientSettings;
use crate::exchange::h2::{self as exchange, RequestCtx};
use crate::exchange::pump::StreamAbort;
use crate::policy::ClientPolicy;
use crate::registry::{ClientState, Tracked};
use crate::shared::Shared;
use crate::stream::ClientStream;
use crate::timeouts::ClientTimeouts;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::debug;

/// Concurrent streams per connection (nginx `http2_max_concurrent_streams`).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may reset before finguard accepted them, then GOAWAY.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams a client may reset after finguard accepted them, then GOAWAY.
/// Each may have cost a backend request, and h2's guard above does not see
/// them; nginx bounds the same attack with `keepalive_requests` (1,000).
/// A lower `max_requests_per_connection` comes first.
pub const MAX_RESET_STREAMS: u32 = 1000;

struct H2Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: SocketAddr,
    policy: OnceLock<Arc<ClientPolicy>>,
    track: Tracked,
    /// Streams open now: from the request until the response body is done.
    active: AtomicU32,
    /// Response frames handed to h2 so far (progress towards the client).
    sent: AtomicU64,
    /// Streams whose last frame h2 has not come back for: it waits for
    /// the client (TCP or flow-control window).
    waiting_client: AtomicU32,
    /// `sent` + 1 when a stream was reset for keeping the client waiting
    /// (a frame of its waited `body_timeout`), 0 before: until a frame
    /// is taken again the connection still waits for its client.
    reset_stalled_at: AtomicU64,
    /// Asks the connection to send GOAWAY (policy `nokeepalive`, request
    /// limit, resets).
    goaway: Notify,
    /// When HTTP/2 began: the first request's deadline counts from here.
    started: Instant,
    /// Streams accepted so far.
    streams: AtomicU32,
    /// Streams the client reset before their response was done.
    resets: AtomicU32,
    /// `streams` when GOAWAY went out; `u32::MAX` before.
    streams_at_goaway: AtomicU32,
    /// The client keeps opening streams well past GOAWAY: reset the connection.
    flood: Notify,
    /// The last open stream closed.
    idle: Notify,
}

impl H2Conn {
    /// The policy's settings from the first request on, the base ones before.
    fn settings(&self) -> ClientSettings {
        self.policy
            .get()
            .map_or(self.shared.policies.base().settings, |p| p.settings)
    }

    /// How long the connection may have no stream: as for HTTP/1, the first
    /// request within `header_timeout`, the next ones within `keepalive_timeout`.
    fn idle_limit(&self) -> Duration {
        let t = self.timeouts();
        if self.streams.load(Ordering::Acquire) == 0 {
            t.head
        } else {
            t.idle
        }
    }

    fn timeouts(&self) -> ClientTimeouts {
        ClientTimeouts::new(&self.settings())
    }

    /// Counts a new stream: the last one `max_requests` allows asks for
    /// GOAWAY; one far past GOAWAY is refused and the connection reset.
    fn admit(&self, max_requests: u32) -> Result<(), Refused> {
        let n = self.streams.fetch_add(1, Ordering::AcqRel) + 1;
        // More streams after GOAWAY than a client could have had on the way
        // when it arrived: it ignores GOAWAY, and (the final GOAWAY would
        // refuse them) keeps its PING unacked.
        let at_goaway = self.streams_at_goaway.load(Ordering::Acquire);
        if n > at_goaway.saturating_add(MAX_CONCURRENT_STREAMS) {
            self.flood.notify_one();
            return Err("stream opened long after GOAWAY");
        }
        if n == max_requests {
            debug!(peer = %self.peer, streams = n, "max_requests_per_connection reached; GOAWAY");
            self.goaway.notify_one();
        }
        Ok(())
    }
}

/// Serves an HTTP/2 connection to its end, then closes it the configured way.
pub async fn serve<S: ClientStream>(mut stream: S, peer: SocketAddr, shared: Arc<Shared>) {
    let local = stream.tcp().local_addr().unwrap_or(peer);
    let _ = stream.tcp().set_nodelay(true);
    let track = shared.clients.open(peer);
    track.entry.set_fd(std::os::fd::AsRawFd::as_raw_fd(stream.tcp()));
    track.set(ClientState::Idle);
    let conn = Arc::new(H2Conn {
        shared: shared.clone(),
        peer,
        local,
        policy: OnceLock::new(),
        track,
        active: AtomicU32::new(0),
        sent: AtomicU64::new(0),
        waiting_client: AtomicU32::new(0),
        reset_stalled_at: AtomicU64::new(0),
        goaway: Notify::new(),
        started: Instant::now(),
        streams: AtomicU32::new(0),
        resets: AtomicU32::new(0),
        streams_at_goaway: AtomicU32::new(u32::MAX),
        flood: Notify::new(),
        idle: Notify::new(),
    });
    match drive(&mut stream, &conn, &shared).await {
        Driven::Abort => return super::abort(stream, &shared.metrics),
        Driven::Gone => return super::let_go(stream, &conn.settings(), &shared.metrics),
        Driven::Close => {}
    }
    let settings = conn.settings();
    Box::pin(super::finish(
        stream,
        Ending::Close,
        &settings,
        false,
        &shared,
        &conn.track,
    ))
    .await;
}

/// How an HTTP/2 connection is to be closed once [`drive`] is done with it.
enum Driven {
    /// The configured close.
    Close,
    /// Aborted: the client stopped taking responses, or ignores GOAWAY.
    Abort,
    /// Let go (`super::let_go`): the client's host stopped answering.
    Gone,
}

/// Runs the HTTP/2 connection until it ends, or GOAWAY (policy, limits,
/// drain, idle) and its open streams end.
async fn drive<S: ClientStream>(stream: &mut S, conn: &Arc<H2Conn>, shared: &Shared) -> Driven {
    let svc = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            Box::pin(handle(req, conn))
        })
    };
    // HTTP/2's own bound on a header list, before any User-Agent is known:
    // the largest any rule allows (as an HTTP/1 connection's first head is
    // read), plus HPACK's 32 bytes per field over the HTTP/1 line, so that
    // the request's own rule judges it, on the head it stands for.
    let list_limit = shared.first_head_limit + 32 * crate::http1::head::MAX_HEADERS;
    let mut builder = hyper::server::conn::http2::Builder::new(StreamExec);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(list_limit).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .keep_alive_interval(None);
    let fd = stream.tcp().as_raw_fd();
    let h2 = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(h2);
    let gap = conn.timeouts().gap;
    let stalled = tokio::select! {
        _ = h2.as_mut() => return Driven::Close,
        () = conn.goaway.notified() => false,
        () = shared.draining.cancelled() => false,
        () = quiet_for(conn, conn.started, || conn.idle_limit()) => false,
        gone = stall_watch(conn, gap, fd) => {
            if gone {
                debug!(peer = %conn.peer, "the HTTP/2 client's host no longer answers; letting go");
                return Driven::Gone;
            }
            true
        }
    };
    // GOAWAY, then the open streams run to their end (or stall). A
    // connection that stalled gets GOAWAY too: a client that only kept one
    // stream's window shut still reads, and learns not to send on it (an
    // abort lost a request sent right after the stream's reset), and a
    // stream it opens before the final GOAWAY is served; but one more
    // `linger_timeout` without a frame taken (the client stopped reading)
    // aborts it.
    let stall_limit = if stalled {
        debug!(peer = %conn.peer, "HTTP/2 client stopped taking responses; GOAWAY");
        conn.settings().close.linger_timeout
    } else {
        gap
    };
    conn.streams_at_goaway
        .store(conn.streams.load(Ordering::Acquire), Ordering::Release);
    h2.as_mut().graceful_shutdown();
    let goaway = Instant::now();
    tokio::select! {
        // h2 first: GOAWAY is written even when the wait below is zero
        // (`linger_timeout` may be, outside the lingering mode).
        biased;
        _ = h2.as_mut() => Driven::Close,
        gone = stall_watch(conn, stall_limit, fd) => {
            if gone {
                debug!(peer = %conn.peer, "the HTTP/2 client's host no longer answers; letting go");
                return Driven::Gone;
            }
            debug!(peer = %conn.peer, "HTTP/2 client stopped taking responses; aborting");
            Driven::Abort
        }
        () = conn.flood.notified() => {
            debug!(peer = %conn.peer, "HTTP/2 client opens streams past GOAWAY; aborting");
            Driven::Abort
        }
        () = ack_wait(conn, goaway) => {
            debug!(peer = %conn.peer, "HTTP/2 client did not ack GOAWAY's PING; closing");
            Driven::Close
        }
    }
}

/// Response bytes past which a client may still be reading what it was
/// sent when it falls silent: more than a receive buffer takes at once.
const UNREAD_ALLOWANCE: u64 = 256 * 1024;

/// The wait for GOAWAY's PING to be acked, once no stream is open (counted
/// from `since` at the earliest): `linger_timeout`, or `linger_time` for a
/// connection that was sent more than [`UNREAD_ALLOWANCE`]. A slow reader's
/// last response may sit in the kernel's buffers, the client's own receive
/// buffer among them, long after h2 wrote it, and the ack cannot come
/// before the client has read that far; nothing the server sees moves
/// meanwhile (its window opens in rare steps). Closing after
/// `linger_timeout` cut the tail of such downloads (or reset them when the
/// client acked at last). A client silent after small answers is still let
/// go after `linger_timeout`; the rest are held no longer than a lingering
/// close would be.
async fn ack_wait(conn: &H2Conn, since: Instant) {
    let close = conn.settings().close;
    let sent = conn.track.entry.bytes_out.load(Ordering::Relaxed);
    let limit = if sent > UNREAD_ALLOWANCE {
        close.linger_time
    } else {
        close.linger_timeout
    };
    quiet_for(conn, since, || limit).await;
}

/// Runs each stream's task (hyper spawns one per stream) so that it can be
/// ended from outside ([`StreamAbort`]): a frame that waits for a client
/// keeping its stream's window shut holds hyper's task in that wait (the
/// body is not polled again), and only dropping the task makes h2 reset
/// the stream.
#[derive(Clone, Copy)]
struct StreamExec;

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(StreamAbort::guard(fut));
    }
}

/// How many times per `limit` [`stall_watch`] looks: a stall is seen
/// within `limit` and an eighth of it.
const STALL_LOOKS: u32 = 8;

/// Resolves when a response frame has waited for the client for `limit`
/// with no frame taken on any stream meanwhile. A stream reset for its
/// stall still counts as waiting (until a frame is taken): its reset
/// alone must not let a client that took nothing keep the connection.
/// Also when the client's host went away (`fd`, looked at every half
/// `limit` while frames are taken: [`crate::sys::peer_gone`] with `limit`
/// of silence): frames of a trickling response still go into the kernel's
/// buffer for it, so none waits, and the connection would be held until the
/// kernel gave up its retransmissions, about 15 minutes. Returns whether
/// that is why.
async fn stall_watch(conn: &H2Conn, limit: Duration, fd: RawFd) -> bool {
    let step = (limit / STALL_LOOKS).max(Duration::from_millis(10));
    let mut last = conn.sent.load(Ordering::Relaxed);
    let mut since = Instant::now();
    let (mut steps, mut looked_at) = (0, last);
    loop {
        tokio::time::sleep(step).await;
        let now = conn.sent.load(Ordering::Relaxed);
        steps += 1;
        if steps == STALL_LOOKS / 2 {
            steps = 0;
            if now != looked_at && crate::sys::peer_gone(&fd, limit) {
                return true;
            }
            looked_at = now;
        }
        let waiting = conn.waiting_client.load(Ordering::Acquire) > 0
            || conn.reset_stalled_at.load(Ordering::Acquire) == now.wrapping_add(1);
        if now != last || !waiting {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= limit {
            return false;
        }
    }
}

/// Resolves once no stream has been open for `limit()`, counted from `since`
/// at the earliest. `limit` is asked again each turn: the first request
/// changes it.
async fn quiet_for(conn: &H2Conn, since: Instant, limit: impl Fn() -> Duration) {
    loop {
        // Registered before the look at the state: the last stream may
        // close in between.
        let idle = conn.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if conn.track.entry.state() != ClientState::Idle {
            idle.await;
            continue;
        }
        let wait = limit().saturating_sub(conn.track.in_state_for().min(since.elapsed()));
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// A stream refused without a backend: hyper resets it.
type Refused = &'static str;

async fn handle(req: Request<Incoming>, conn: Arc<H2Conn>) -> Result<http::Response<StreamBody>, Refused> {
    let shared = &conn.shared;
    let policy = conn
        .policy
        .get_or_init(|| {
            let ua = req
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            super::classify(shared, &conn.track, ua)
        })
        .clone();
    conn.admit(policy.settings.max_requests)?;
    let body_timeout = policy.settings.body_timeout;
    conn.track.entry.requests.fetch_add(1, Ordering::Relaxed);
    conn.active.fetch_add(1, Ordering::AcqRel);
    conn.track.set(ClientState::Active);
    let has_body = !http_body::Body::is_end_stream(req.body());
    let nokeepalive = !policy.allows_keepalive();
    let headers = req.headers();
    let xff = headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes());
    let client = SocketAddr::new(shared.config.believed_client(conn.peer.ip(), xff), conn.peer.port());
    // What the access log needs of the request, taken before it is sent on.
    let logged = shared.access.enabled().then(|| {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        Logged {
            request_line: format!("{} {target} HTTP/2.0", req.method()),
            referer: text(http::header::REFERER),
            user_agent: text(http::header::USER_AGENT),
        }
    });
    let hold = shared
        .access
        .json()
        .then(|| Arc::new(crate::upstream::HoldCell::default()));
    let started = tokio::time::Instant::now();
    let ctx = Arc::new(RequestCtx {
        shared: shared.clone(),
        policy,
        peer: conn.peer,
        client,
        local: conn.local,
        scheme: "https",
        has_body,
        hold: hold.clone(),
    });
    // Counted open from here: the stream closes when its body is dropped.
    let open = OpenStream {
        conn: conn.clone(),
        done: false,
        abort: StreamAbort::current(),
    };
    let resp = match exchange::handle(req, ctx).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if nokeepalive {
        conn.goaway.notify_one();
    }
    // Written when the stream ends, with what the client took and when.
    let log = logged.map(|l| {
        Box::new(PendingLog {
            logged: l,
            client,
            status: resp.status().as_u16(),
            backend: resp.extensions().get::<crate::exchange::Answered>().map(|a| (a.0, a.1)),
            hold,
            started,
            bytes_out: 0,
        })
    });
    let proxied = resp.extensions().get::<crate::exchange::Answered>().is_some();
    let resp = resp.map(|inner| StreamBody {
        inner,
        rest: None,
        handed: false,
        body_timeout,
        open,
        log,
        proxied,
        started,
    });
    Ok(resp)
}

/// What the access log needs of an HTTP/2 request.
struct Logged {
    request_line: String,
    referer: Option<String>,
    user_agent: Option<String>,
}

/// An HTTP/2 request's access-log line, written when its stream ends: the
/// bytes the client took, how long it took them, how long the backend was held.
struct PendingLog {
    logged: Logged,
    client: SocketAddr,
    status: u16,
    backend: Option<(SocketAddr, std::time::Duration)>,
    hold: Option<Arc<crate::upstream::HoldCell>>,
    started: tokio::time::Instant,
    bytes_out: u64,
}

impl PendingLog {
    fn write(&self, conn: &H2Conn) {
        let l = &self.logged;
        conn.shared.access.request(&crate::accesslog::Record {
            peer: self.client,
            request_line: &l.request_line,
            status: self.status,
            bytes_out: self.bytes_out,
            referer: l.referer.as_deref(),
            user_agent: l.user_agent.as_deref(),
            rules: conn.track.entry.rules.get().map_or(&[][..], |r| &r[..]),
            backend: self.backend,
            backend_hold: self.hold.as_ref().and_then(|h| h.get()),
            client_time: Some(self.started.elapsed()),
        });
    }
}

/// One open stream; closing it may leave the connection idle. Dropped
/// before its response was `done`, it was reset by the client.
struct OpenStream {
    conn: Arc<H2Conn>,
    done: bool,
    /// Reset by finguard (the client kept its window shut), not the client.
    abort: Option<Arc<StreamAbort>>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let conn = &self.conn;
        let ours = self.abort.as_ref().is_some_and(|a| a.fired());
        if !self.done && !ours && conn.resets.fetch_add(1, Ordering::AcqRel) + 1 == MAX_RESET_STREAMS {
            debug!(peer = %conn.peer, resets = MAX_RESET_STREAMS, "HTTP/2 client resets its streams; GOAWAY");
            conn.goaway.notify_one();
        }
        if conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            conn.track.set(ClientState::Idle);
            conn.idle.notify_waiters();
        }
    }
}

/// The most a frame handed to h2 holds (h2's default largest frame): the
/// grain at which a client's progress is seen. A client that takes less
/// than this within `body_timeout` is cut off.
const PIECE: usize = 16 * 1024;

/// A response body as h2 sends it: counts progress towards the client and
/// keeps its stream open until h2 is done with it.
///
/// Each frame handed to h2 waits for the client: hyper polls the body
/// again (or drops it at its end) only once the stream has window past
/// what it holds already. A frame not taken within `body_timeout` ends the
/// stream ([`StreamAbort`]), and counts as waiting for the connection's
/// stall watch. A body's last byte goes as a frame of its own (and so does
/// the last byte of data when nothing more is held yet: the end may come
/// after it): hyper takes it only when all before it was sent, so when the
/// body ends (and the watch with it) at most that byte is left with h2; a
/// client that keeps its window shut short of the end is cut off like any
/// other.
pub struct StreamBody {
    inner: exchange::ProxyBody,
    /// Data taken from `inner`, not handed yet.
    rest: Option<bytes::Bytes>,
    /// The last frame went to h2 and h2 has not asked for more yet.
    handed: bool,
    body_timeout: std::time::Duration,
    open: OpenStream,
    log: Option<Box<PendingLog>>,
    /// Answered by a backend (timed in `finguard_client_exchange_seconds`).
    proxied: bool,
    started: tokio::time::Instant,
}

impl StreamBody {
    /// What it handed to h2 waits for the client (until `taken`, which
    /// each poll begins with).
    fn hand(&mut self) {
        self.handed = true;
        self.open.conn.waiting_client.fetch_add(1, Ordering::AcqRel);
        if let Some(a) = &self.open.abort {
            a.handed(self.body_timeout);
        }
    }

    fn taken(&mut self) {
        if std::mem::take(&mut self.handed) {
            self.open.conn.waiting_client.fetch_sub(1, Ordering::AcqRel);
            if let Some(a) = &self.open.abort {
                a.taken();
            }
        }
    }

    /// The next frame's data out of `data`, the rest kept for later: at
    /// most [`PIECE`], and a last byte on its own unless more data is
    /// known to follow (a streamed body's end may come later, on its own:
    /// the byte before it must be a frame of its own too).
    fn piece(&mut self, mut data: bytes::Bytes) -> bytes::Bytes {
        if data.len() > PIECE {
            self.rest = Some(data.split_off(PIECE));
        } else if data.len() > 1 && !self.inner.more_follows() {
            self.rest = Some(data.split_off(data.len() - 1));
        }
        data
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        let conn = &self.open.conn;
        if self.handed && self.open.abort.as_ref().is_some_and(|a| a.fired()) {
            // Before `taken`: the connection never looks unwaited-for.
            let sent = conn.sent.load(Ordering::Relaxed);
            conn.reset_stalled_at.store(sent.wrapping_add(1), Ordering::Release);
        }
        self.taken();
        // h2 drops a body it saw end without polling it again.
        self.open.done |= http_body::Body::is_end_stream(self);
        let conn = &self.open.conn;
        if self.proxied {
            conn.shared.metrics.buffer.client_took(self.started.elapsed());
        }
        if let Some(l) = &self.log {
            l.write(conn);
        }
    }
}

impl http_body::Body for StreamBody {
    type Data = bytes::Bytes;
    type Error = exchange::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        this.taken();
        let frame = match this.rest.take() {
            Some(rest) => http_body::Frame::data(this.piece(rest)),
            None => match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(data) => http_body::Frame::data(this.piece(data)),
                    Err(f) => f,
                },
                other => {
                    // Ended, or failed on the backend's side: not the
                    // client's reset.
                    if matches!(other, Poll::Ready(None | Some(Err(_)))) {
                        this.open.done = true;
                    }
                    return other;
                }
            },
        };
        let conn = &this.open.conn;
        conn.sent.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = frame.data_ref() {
            conn.track.entry.bytes_out.fetch_add(d.len() as u64, Ordering::Relaxed);
            if let Some(l) = &mut this.log {
                l.bytes_out += d.len() as u64;
            }
        }
        this.hand();
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(rest) = &self.rest {
            let n = rest.len() as u64;
            let lower = hint.lower() + n;
            // The upper bound first: a lower one above it panics.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
            hint.set_lower(lower);
        }
        hint
    }
}
