//! The client side: one task per client connection, running an explicit
//! keep-alive loop.
//!
//! Each turn of the loop reads a request head itself (idle and head timeouts,
//! size limit, strict framing checks), classifies the User-Agent on the first
//! request, then hands the parsed head to [`crate::exchange`], which serves
//! that one request over this task's own socket and a pooled backend socket.
//! When the response is out, the loop decides: next request, or close — and
//! every close goes through `linger::close` (or an abort), so no path can skip
//! the lingering close or leave a socket behind.
//!
//! This module never talks to a backend itself: that is `exchange`.

pub mod h2;
pub mod linger;
pub mod parking;
pub mod tunnel;

use crate::accesslog;
use crate::exchange;
use crate::http1::head::{self, Reject};
use crate::policy::ClientPolicy;
use crate::registry::{self, ClientState};
use crate::shared::{Shared, Slot};
use crate::stream::{ClientStream, Unhooked};
use crate::timeouts::ClientTimeouts;
use crate::tls::stream::TlsConn;
use crate::upstream::HoldCell;
use bytes::BytesMut;
use linger::CloseOutcome;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, trace};

/// Why the keep-alive loop stopped.
#[derive(Debug)]
pub(super) enum Ending {
    /// The client closed (FIN) while idle: nothing to linger for.
    ClientClosed,
    /// Keep-alive over (policy, limit, timeout, shutdown): configured close.
    Close,
    /// Answer with this status before the configured close.
    Reply(u16, &'static str),
    /// A response could not be completed: RST, so that it never looks whole.
    Abort,
    /// The client's host stopped answering: a plain close bounded by
    /// `TCP_USER_TIMEOUT` (`linger::let_go`), no lingering.
    LetGo,
    /// The backend switched protocols: tunnel bytes both ways (the bytes
    /// the client sent past its request go first).
    Tunnel(Box<crate::upstream::RawConn>, BytesMut),
    /// Idle, and asked to make room for a newcomer: closed at once (FIN;
    /// nothing is in flight and nothing unread, so no lingering).
    Evicted,
    /// Not an ending: idle past `parking::park_after`, to be parked until this
    /// keep-alive deadline (handled by the loop, never by `finish`).
    Park(Instant),
}

/// Serves one client connection to its end.
///
/// Not an `async fn`: one would keep its own copy of `stream` beside the
/// loop's in every connection's task (a TLS stream is large).
pub fn serve<S: ClientStream>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    slot: Slot,
) -> impl std::future::Future<Output = ()> {
    let _ = stream.tcp().set_nodelay(true);
    let track = shared.clients.open(peer);
    track.entry.set_fd(std::os::fd::AsRawFd::as_raw_fd(stream.tcp()));
    track.set_evictable();
    let held = Held {
        shared,
        track,
        conn: ConnState {
            policy: None,
            served: 0,
            returns: 0,
        },
        _slot: slot,
    };
    crate::clock::Polled::new(keep_alive(stream, held, Instant::now(), None))
}

/// A parked connection handed back by its idle set: on to the same
/// keep-alive loop, in a task of its own again.
/// `until`: the keep-alive deadline it was parked with, which it keeps.
pub(crate) fn resume(
    sock: Unhooked,
    mut held: Held,
    why: parking::Wake,
    until: Instant,
) -> impl std::future::Future<Output = ()> {
    use tokio_util::either::Either;
    if why == parking::Wake::Readable {
        held.conn.returns = held.conn.returns.saturating_add(1);
    }
    let woken = Woken { why, until };
    crate::clock::Polled::new(match sock.tls {
        None => Either::Left(resume_as::<tokio::net::TcpStream>(sock, held, woken)),
        Some(_) => Either::Right(resume_as::<TlsConn>(sock, held, woken)),
    })
}

/// Why a parked connection was handed back, and the keep-alive deadline it
/// was parked with.
#[derive(Debug, Clone, Copy)]
struct Woken {
    why: parking::Wake,
    until: Instant,
}

async fn resume_as<S: ClientStream>(sock: Unhooked, held: Held, woken: Woken) {
    let stream = match S::from_std(sock) {
        Ok(s) => s,
        Err(e) => {
            debug!(peer = %held.track.entry.peer, error = %e, "cannot take a parked connection back; closing it");
            held.shared.metrics.closed(CloseOutcome::Error, 0);
            return;
        }
    };
    trace!(peer = %held.track.entry.peer, why = ?woken.why, "idle connection unparked");
    // Its first request is long served: `accepted` is not looked at again.
    keep_alive(stream, held, Instant::now(), Some(woken)).await;
}

/// What an open HTTP/1 connection owns between two requests: all a parked
/// connection keeps (`parking`), beside its socket.
pub(crate) struct Held {
    shared: Arc<Shared>,
    track: registry::Tracked,
    conn: ConnState,
    _slot: Slot,
}

/// The keep-alive loop, from a new connection or a parked one (`woken`:
/// why its idle set handed it back).
///
/// Not an `async fn`: its arguments would be stored twice in every
/// connection's task (once as arguments, once as the body's locals); an
/// `async move` block uses what it captured in place.
// Clippy's `async fn` would be exactly what this avoids.
#[allow(clippy::manual_async_fn)]
fn keep_alive<S: ClientStream>(
    mut stream: S,
    mut held: Held,
    accepted: Instant,
    woken: Option<Woken>,
) -> impl std::future::Future<Output = ()> {
    async move {
        // Allocated when bytes arrive, released while idle (parked, or in a
        // long wait): an idle keep-alive connection costs its socket and a
        // small entry, not a buffer.
        let mut buf = BytesMut::new();
        // Bounds every idle wait of this task (see `Timer`).
        let mut timer = crate::timeouts::Timer::default();
        // A connection handed back for another reason than a readable socket
        // ends here, as it would have in its own idle wait.
        let early = match woken.map(|w| w.why) {
            Some(parking::Wake::Timeout | parking::Wake::Drain) => Some(Ending::Close),
            Some(parking::Wake::Evict) if goes_to_make_room(&stream, &held.track) => Some(Ending::Evicted),
            _ => None,
        };
        let mut may_park = S::PARKABLE;
        // Woken from the idle set: the keep-alive deadline it was parked
        // with still holds until a request arrives. Bytes that bring none
        // (empty lines; over TLS, a record without data) must not buy a new
        // one at each wake.
        let mut parked_until = woken.map(|w| w.until);
        let ending = match early {
            Some(e) => e,
            None => loop {
                let Held {
                    shared, track, conn, ..
                } = &mut held;
                // Only what the wait needs: everything held across it is in every
                // idle connection's task.
                let settings = &conn.policy.as_deref().unwrap_or(shared.policies.base()).settings;
                // The first head is read before the User-Agent is known: up to the
                // largest limit any rule allows, then held to its own rule's.
                let max_header_bytes = match conn.policy {
                    None => shared.first_head_limit,
                    Some(_) => settings.max_header_bytes,
                };
                let t = ClientTimeouts::new(settings);
                // The first head must be complete `header_timeout` after accept; later
                // ones may idle `keepalive_timeout`, then have `header_timeout`.
                // Under pressure the keep-alive timeout shrinks (`[client.pressure]`).
                let now = crate::clock::now();
                let idle_until = if conn.served == 0 {
                    accepted + t.head
                } else if let Some(until) = parked_until {
                    until
                } else {
                    now + shared.pressure.keepalive_timeout(t.idle, &shared.config.pressure)
                };
                // Part of a TLS record read is a request arriving: not idle.
                let idle = buf.is_empty() && conn.served > 0 && !stream.input_begun();
                track.set(if idle { ClientState::Idle } else { ClientState::Reading });
                let wait = Wait {
                    idle_until,
                    park_at: (may_park && idle).then(|| now + parking::park_after(conn.returns)),
                    header_timeout: t.head,
                    max: max_header_bytes,
                    served_before: conn.served > 0,
                    keep_buf: conn.served > 1,
                };
                let len = match wait_head(&mut stream, &mut buf, &mut timer, &wait, track).await {
                    Ok(len) => {
                        parked_until = None;
                        may_park = S::PARKABLE;
                        len
                    }
                    Err(Ending::Park(deadline)) => match park(stream, held, deadline) {
                        Parking::Parked => return,
                        Parking::Kept(s, h) => {
                            (stream, held, may_park) = (s, h, false);
                            continue;
                        }
                    },
                    Err(e) => break e,
                };
                // Boxed: its state lives on the heap only while a request is served.
                if let Some(e) = Box::pin(serve_request(&mut stream, &mut buf, len, conn, shared, track)).await {
                    break e;
                }
            },
        };
        let Held {
            shared, track, conn, ..
        } = &held;
        let settings = conn.policy.as_deref().unwrap_or(shared.policies.base()).settings;
        let force10 = conn.policy.as_deref().is_some_and(|p| p.force_response_1_0);
        // Boxed: the drain buffer exists only while lingering, not in every idle task.
        Box::pin(finish(stream, ending, &settings, force10, shared, track)).await;
    }
}

/// What became of a connection offered to the idle set.
enum Parking<S> {
    Parked,
    /// Not parked (no idle set on this thread, draining): it stays in its task.
    Kept(S, Held),
}

/// Offers an idle connection to this worker's idle set until `deadline`.
fn park<S: ClientStream>(stream: S, held: Held, deadline: Instant) -> Parking<S> {
    let sock = match stream.into_std() {
        Ok(sock) => sock,
        Err(Ok(stream)) => return Parking::Kept(stream, held),
        Err(Err(e)) => {
            debug!(peer = %held.track.entry.peer, error = %e, "cannot park an idle connection; closing it");
            held.shared.metrics.closed(CloseOutcome::Error, 0);
            return Parking::Parked;
        }
    };
    match parking::park(sock, held, deadline) {
        Ok(()) => Parking::Parked,
        Err((sock, held)) => match S::from_std(sock) {
            Ok(stream) => Parking::Kept(stream, held),
            Err(e) => {
                debug!(peer = %held.track.entry.peer, error = %e, "cannot take an idle connection back; closing it");
                held.shared.metrics.closed(CloseOutcome::Error, 0);
                Parking::Parked
            }
        },
    }
}

/// What a connection keeps from one request to the next.
struct ConnState {
    /// Classified on the first request.
    policy: Option<Arc<ClientPolicy>>,
    served: u32,
    /// Times its client came back while it was parked (saturating): it
    /// waits longer before it is parked again ([`parking::park_after`]).
    returns: u8,
}

/// Serves the request whose head is the first `len` bytes of `buf`: parse,
/// classify (first request), the exchange, the access log. Returns how the
/// connection ends, or `None` to wait for the next request.
async fn serve_request<S: ClientStream>(
    stream: &mut S,
    buf: &mut BytesMut,
    len: usize,
    conn: &mut ConnState,
    shared: &Arc<Shared>,
    track: &registry::Tracked,
) -> Option<Ending> {
    let logging = shared.access.enabled();
    let first = conn.policy.is_none();
    // The first request's limits are its rule's, known only once its head
    // is parsed: parsed without a body limit, then held to the rule's.
    let max_body = conn.policy.as_ref().map_or(u64::MAX, |p| p.settings.max_body_bytes);
    let mut head = match head::parse(buf, len, max_body, first || logging, logging) {
        Ok(h) => h,
        Err(r) => return Some(reject(r)),
    };
    let ua = head.user_agent.as_deref().unwrap_or("");
    let policy = conn.policy.get_or_insert_with(|| classify(shared, track, ua));
    if first {
        if let Err(r) = head.hold_to(
            &buf[..len],
            policy.settings.max_header_bytes,
            policy.settings.max_body_bytes,
        ) {
            return Some(reject(r));
        }
    }
    head.framing.limit_trailers(policy.settings.max_header_bytes);
    conn.served += 1;
    track.set(ClientState::Active);
    // Asked to make room since its bytes arrived: it is busy now, and a
    // request it serves is never cut off (nor the next one, in the grace
    // window after it).
    track.entry.decline_eviction();
    track.entry.requests.fetch_add(1, Ordering::Relaxed);
    let keepalive = exchange::KeepAlive::for_request(policy, &head, conn.served);
    let (user_agent, referer) = (head.user_agent.take(), head.referer.take());
    let head_bytes = buf.split_to(head.len).freeze();
    let request_line = head_bytes.slice(..head.line_end);
    let bytes_before = track.entry.bytes_out.load(Ordering::Relaxed);
    let peer = track.entry.peer;
    let xff = head
        .headers
        .iter()
        .filter(|h| h.name.get(&head_bytes).eq_ignore_ascii_case(b"x-forwarded-for"))
        .map(|h| h.value.get(&head_bytes));
    let client = SocketAddr::new(shared.config.believed_client(peer.ip(), xff), peer.port());
    let req = exchange::Request {
        head_bytes,
        head,
        keepalive,
        remaining: policy.settings.max_requests - conn.served,
    };
    // Only a JSON line has a place for the hold time.
    let hold = shared.access.json().then(|| Arc::new(HoldCell::default()));
    let cx = exchange::Conn {
        shared,
        policy,
        peer,
        client,
        scheme: S::SCHEME,
        entry: &track.entry,
        hold: hold.as_ref(),
    };
    let started = crate::clock::now();
    let done = exchange::run(stream, buf, req, &cx).await;
    let took = crate::clock::since(started);
    shared.metrics.response(done.status);
    if done.backend.is_some() {
        shared.metrics.buffer.client_took(took);
    }
    if logging {
        let logged = Logged {
            client,
            request_line: &request_line,
            referer: referer.as_deref(),
            user_agent: user_agent.as_deref(),
            bytes_before,
            backend_hold: hold.and_then(|h| h.get()),
            client_time: took,
        };
        log_request(shared, track, &logged, &done);
    }
    match done.next {
        exchange::Next::KeepAlive => None,
        exchange::Next::Tunnel(bc) => Some(Ending::Tunnel(bc, std::mem::take(buf))),
        exchange::Next::Abort => Some(Ending::Abort),
        exchange::Next::LetGo => Some(Ending::LetGo),
        _ => Some(Ending::Close),
    }
}

/// What the access log needs of a request's head.
struct Logged<'a> {
    client: SocketAddr,
    request_line: &'a [u8],
    referer: Option<&'a str>,
    user_agent: Option<&'a str>,
    /// The connection's byte count before the response.
    bytes_before: u64,
    backend_hold: Option<Duration>,
    client_time: Duration,
}

fn log_request(shared: &Shared, track: &registry::Tracked, logged: &Logged<'_>, done: &exchange::Done) {
    let bytes_out = track.entry.bytes_out.load(Ordering::Relaxed) - logged.bytes_before;
    shared.access.request(&accesslog::Record {
        peer: logged.client,
        request_line: &String::from_utf8_lossy(logged.request_line),
        status: done.status,
        bytes_out,
        referer: logged.referer,
        user_agent: logged.user_agent,
        rules: track.entry.rules.get().map_or(&[], |r| &r[..]),
        backend: done.backend,
        backend_hold: logged.backend_hold,
        client_time: Some(logged.client_time),
    });
}

/// The connection's policy from its first request's User-Agent: recorded on
/// the connection (for `/connections`) and counted per matched rule.
pub(super) fn classify(shared: &Shared, track: &registry::Tracked, ua: &str) -> Arc<ClientPolicy> {
    let p = shared.policies.classify(&shared.config.rules, ua);
    let _ = track.entry.user_agent.set(shared.clients.intern(ua));
    if p.reclaim_first {
        track.set_reclaim_first();
    }
    if !p.names.is_empty() {
        debug!(peer = %track.entry.peer, user_agent = ua, rules = ?p.names, "user-agent rules matched");
        for r in p.names.iter() {
            shared.metrics.ua_rule_matched(r);
        }
        let _ = track.entry.rules.set(p.names.clone());
    }
    p
}

/// A refused head: its status from the one table in [`crate::error::ProxyError`].
fn reject(r: Reject) -> Ending {
    let e = crate::error::ProxyError::from(r);
    Ending::Reply(e.status(), e.reason())
}

/// What a wait for a request head is bounded by.
struct Wait {
    /// The keep-alive deadline (the first head's: `header_timeout` after accept).
    idle_until: Instant,
    /// Idle still then: handed to the idle set ([`Ending::Park`]).
    park_at: Option<Instant>,
    header_timeout: Duration,
    max: usize,
    served_before: bool,
    /// The client came back at least once: its buffer is kept while it
    /// waits to be parked.
    keep_buf: bool,
}

/// Waits for a complete request head in `buf`; returns its length. A drain
/// ends the wait of a connection that was served before (an idle keep-alive
/// one); a new connection still gets its first request answered (with
/// `Connection: close`): it may have been accepted just before the drain,
/// its request on the way, as when a new process takes the listeners over.
async fn wait_head<S: ClientStream>(
    stream: &mut S,
    buf: &mut BytesMut,
    timer: &mut crate::timeouts::Timer,
    w: &Wait,
    track: &registry::Tracked,
) -> Result<usize, Ending> {
    let Wait {
        idle_until,
        header_timeout,
        max,
        served_before,
        ..
    } = *w;
    // Parking only pays before the keep-alive deadline.
    let park_at = w.park_at.filter(|at| *at < idle_until);
    let mut head_until = None;
    loop {
        let skip = head::leading_empty_lines(buf);
        let _ = buf.split_to(skip);
        if !buf.is_empty() {
            if let Some(len) = head::find_end(buf).map_err(reject)? {
                if len > max {
                    return Err(reject(head::too_large(buf, max)));
                }
                return Ok(len);
            }
            if buf.len() > max {
                return Err(reject(head::too_large(buf, max)));
            }
            // Part of a head: a request is arriving (a whole one goes on to
            // `Active` at once, without a second change of state).
            track.set(ClientState::Reading);
        }
        // A keep-alive wait ends when the next head starts: from its first
        // byte it has `header_timeout`. The first head's deadline is fixed at
        // accept (`idle_until`), so a slow first head cannot stretch it.
        let deadline = if buf.is_empty() {
            idle_until
        } else if served_before {
            *head_until.get_or_insert_with(|| crate::clock::now() + header_timeout)
        } else {
            idle_until
        };
        let idle = buf.is_empty();
        if idle {
            // A wait that may be long gives the buffer up, and so does a
            // connection that served one request (many never send
            // another). One that came back before, and will be parked
            // within `park_after` (which frees the buffer with the task),
            // keeps it: a busy client costs no allocation and no free per
            // request.
            if park_at.is_none() || !w.keep_buf {
                *buf = BytesMut::new();
            }
            let ready = tokio::select! {
                biased;
                r = timer.timeout(park_at.unwrap_or(deadline), std::future::poll_fn(|cx| stream.poll_read_ready(cx))) => Ok(r),
                why = track.entry.asked(served_before) => Err(why),
            };
            match ready {
                Ok(Some(Ok(()))) => {}
                Ok(None) if park_at.is_some() => return Err(Ending::Park(deadline)),
                Ok(_) | Err(registry::Asked::Drain) => return Err(Ending::Close),
                Err(registry::Asked::MakeRoom) if goes_to_make_room(&*stream, track) => return Err(Ending::Evicted),
                Err(registry::Asked::MakeRoom) => {}
            }
        }
        buf.reserve(2048);
        // Idle, a read that would wait goes back to the wait above, where a
        // connection can be asked to make room or be parked again, rather
        // than idling in a read that can be neither: the readiness may be
        // stale (only a read that would block clears it), and a TLS record
        // may be partial (kept in the session, parked or not) or carry no
        // data (a key update).
        let read = if idle && S::ENCRYPTED {
            match poll_once(stream.read_buf(buf)).await {
                Some(r) => Ok(r),
                None => {
                    if stream.input_begun() {
                        // Part of a record: a request is arriving.
                        track.set(ClientState::Reading);
                    }
                    continue;
                }
            }
        } else if idle {
            match crate::stream::try_read_draining(stream.tcp(), buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => Ok(r),
            }
        } else {
            tokio::time::timeout_at(deadline, stream.read_buf(buf)).await
        };
        match read {
            Ok(Ok(0)) if buf.is_empty() => return Err(Ending::ClientClosed),
            Ok(Ok(0)) => return Err(Ending::Reply(400, "client closed inside the request head")),
            Ok(Ok(n)) => {
                track.entry.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                trace!(error = %e, "read error while waiting for a request");
                return Err(Ending::Close);
            }
            Err(_) if buf.is_empty() => return Err(Ending::Close),
            Err(_) => return Err(Ending::Reply(408, "request head not received in time")),
        }
    }
}

/// Polls `f` once: `None` when it would wait (its waker is then registered,
/// and dropped with it).
async fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// An idle connection asked to make room: whether it goes. It stays (and
/// is read) when the client's next request has begun to arrive: bytes
/// unread on the socket, or part of a TLS record already read from it.
fn goes_to_make_room<S: ClientStream>(stream: &S, track: &registry::Tracked) -> bool {
    if stream.input_begun() || crate::sys::unread_bytes(stream.tcp()).is_some_and(|n| n > 0) {
        debug!(peer = %track.entry.peer, "asked to make room, but a request is arriving");
        track.entry.decline_eviction();
        return false;
    }
    true
}

/// Closes an evicted connection (FIN: TLS `close_notify` first, nothing in
/// flight, nothing unread) and counts it by reason and User-Agent rule.
async fn evicted<S: ClientStream>(
    stream: S,
    settings: &crate::config::ClientSettings,
    shared: &Shared,
    track: &registry::Tracked,
) {
    use crate::metrics::{EvictReason, NO_RULE};
    let rules = shared.config.rules.rules();
    let matched = track.entry.rules.get().map_or(&[][..], |r| &r[..]);
    let (reason, rule) = if track.entry.reclaim_first() {
        let reclaims = |m: &&String| rules.iter().any(|r| &r.pattern == *m && r.reclaim_first == Some(true));
        (EvictReason::ReclaimFirst, matched.iter().rev().find(reclaims))
    } else if track.entry.requests.load(Ordering::Relaxed) == 0 {
        (EvictReason::NeverUsed, None)
    } else {
        (EvictReason::Idle, matched.last())
    };
    let rule = rule.map_or(NO_RULE, String::as_str);
    let peer = track.entry.peer;
    debug!(%peer, reason = reason.as_str(), rule, "closing an idle connection to make room");
    shared.metrics.pressure.evicted(reason, rule);
    // Idle, so nothing to linger for; a client whose host went away while
    // idle never acknowledges the FIN.
    close_bounded(stream, settings.close.linger_time).await;
    shared.metrics.closed(CloseOutcome::Immediate, 0);
    let requests = track.entry.requests.load(Ordering::Relaxed);
    shared.access.close(peer, "evicted", requests, 0);
}

/// Lets go of a client whose host stopped answering after `body_timeout`
/// of silence: the kernel keeps trying to deliver what is queued, and the
/// end, for `linger_time` more (counted from the first unanswered
/// retransmission, so `body_timeout` plus `linger_time` in all).
pub(super) fn let_go<S: ClientStream>(
    stream: S,
    settings: &crate::config::ClientSettings,
    metrics: &crate::metrics::Metrics,
) {
    let within = ClientTimeouts::new(settings).gap + settings.close.linger_time;
    linger::let_go(stream.into_tcp_abort(), within);
    metrics.closed(CloseOutcome::Error, 0);
}

/// Ends a connection with RST (no TLS `close_notify`: nothing may look
/// complete), counted as an `error` close.
pub(super) fn abort<S: ClientStream>(stream: S, metrics: &crate::metrics::Metrics) {
    linger::abort(stream.into_tcp_abort());
    metrics.closed(CloseOutcome::Error, 0);
}

/// A plain close with nothing to linger for (TLS: `close_notify` first),
/// whose orphan ends within `within` should the client have gone away
/// unseen ([`crate::sys::bound_orphan`]).
async fn close_bounded<S: ClientStream>(stream: S, within: std::time::Duration) {
    let tcp = stream.into_tcp().await;
    crate::sys::bound_orphan(&tcp, within);
}

/// finguard's own answer before the close (logged like a request); `false`
/// when the client did not take it within `body_timeout`.
async fn reply<S: ClientStream>(
    stream: &mut S,
    status: u16,
    why: &'static str,
    settings: &crate::config::ClientSettings,
    force10: bool,
    shared: &Shared,
    track: &registry::Tracked,
) -> bool {
    debug!(peer = %track.entry.peer, status, reason = why, "refusing request");
    shared.metrics.response(status);
    let bytes = crate::exchange::error_response(status, false, force10, false);
    shared.access.request(&accesslog::Record {
        peer: track.entry.peer,
        request_line: why,
        status,
        bytes_out: bytes.len() as u64,
        referer: None,
        user_agent: track.entry.user_agent.get().map(|a| &**a),
        rules: track.entry.rules.get().map_or(&[], |r| &r[..]),
        backend: None,
        backend_hold: None,
        client_time: None,
    });
    let written = tokio::time::timeout(ClientTimeouts::new(settings).gap, stream.write_all(&bytes)).await;
    if matches!(written, Ok(Ok(()))) {
        track.entry.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        return true;
    }
    false
}

/// Writes a final error response, then closes the configured way.
pub(super) async fn finish<S: ClientStream>(
    mut stream: S,
    ending: Ending,
    settings: &crate::config::ClientSettings,
    force10: bool,
    shared: &Shared,
    track: &registry::Tracked,
) {
    let peer = track.entry.peer;
    let metrics = &shared.metrics;
    let ending = match ending {
        Ending::Tunnel(conn, pending) => {
            let t = ClientTimeouts::new(settings);
            let end = tunnel::run(
                stream,
                *conn,
                pending,
                t.upgrade_idle,
                settings.close.linger_time,
                &track.entry,
            )
            .await;
            metrics.tunnel_closed(end);
            trace!(%peer, outcome = end.as_str(), "tunnel closed");
            return;
        }
        other => other,
    };
    if let Ending::Evicted = ending {
        return evicted(stream, settings, shared, track).await;
    }
    if let Ending::Abort = ending {
        trace!(%peer, "aborting the client connection");
        return abort(stream, metrics);
    }
    if let Ending::LetGo = ending {
        return let_go(stream, settings, metrics);
    }
    if let Ending::ClientClosed = ending {
        trace!(%peer, "client closed an idle connection");
        // TLS: the client's `close_notify` is answered with finguard's before
        // the close (RFC 8446 §6.1; a client that waits for it, as Python's
        // `SSLSocket.unwrap` does, otherwise sees a truncation).
        // Its FIN is answered with finguard's; a client whose host went away
        // after sending it never acknowledges that (LAST_ACK).
        close_bounded(stream, settings.close.linger_time).await;
        metrics.closed(CloseOutcome::ClientFin, 0);
        return;
    }
    if let Ending::Reply(status, why) = ending {
        if !reply(&mut stream, status, why, settings, force10, shared, track).await {
            return abort(stream, metrics);
        }
    }
    // TLS: `close_notify` must not wait behind a response a slow reader is
    // still taking. One that took nothing for `body_timeout` is aborted,
    // unless its stack still answers (a program asleep with its buffer
    // full): then it is closed as usual, and the lingering close hands what
    // is still queued to the kernel rather than reset it. (Plain TCP: the
    // lingering close looks at the send queue itself before a reset.)
    if S::ENCRYPTED
        && !linger::wait_sent(stream.tcp(), ClientTimeouts::new(settings).gap).await
        && !crate::sys::peer_answers(stream.tcp())
    {
        debug!(%peer, "client stopped reading; aborting");
        return abort(stream, metrics);
    }
    track.set(ClientState::Lingering);
    let tcp = stream.into_tcp().await;
    let (outcome, drained) = linger::close(tcp, &settings.close, track.entry.kill_wanted(), |waits| {
        track.sending(waits)
    })
    .await;
    if track.entry.killed() {
        metrics.client_reaped();
    }
    metrics.closed(outcome, drained);
    let requests = track.entry.requests.load(Ordering::Relaxed);
    shared.access.close(peer, outcome.as_str(), requests, drained);
    trace!(%peer, outcome = outcome.as_str(), drained, "client connection closed");
}
