//! The HTTP/1 client side of an exchange, owned from start to end by the
//! client connection's task: it drives the client socket and a pooled
//! backend socket itself, with no connection object per request and no hop
//! to another task.
//!
//! 1. The request head was parsed once (`http1::head`); here it is
//!    routed and the backend's head written from that parse (`http1::forward`).
//! 2. A request body is relayed by its framing, with backpressure both ways,
//!    while the backend socket is read too: a backend that answers early
//!    (401/413 before reading the body) is heard, the upload stops, and the
//!    answer reaches the client with `Connection: close`.
//! 3. The response head is parsed and shaped for the client (`http1::response`),
//!    the body relayed by its framing through one reused buffer.
//! 4. The backend connection goes back to its pool only after a complete
//!    exchange; a response cut short ends the client connection with an
//!    abort (RST), never with a clean close that would pass it off as whole.
//!
//! Every await has a deadline from [`Timeouts`]; every failure is a
//! [`ProxyError`], answered, logged and counted in one place ([`refuse`]).
//! Bytes of a request body finguard did not read are never parsed as a next
//! request: after an error the connection closes.

use super::body::Rest;
use super::pump::Pump;
use super::request_spool::{self, Prefixed};
use super::upload::{self, Failure, RequestBody, Sent, RESP_BUF};
use super::{Plan, Tries};
use crate::error::{ProxyError, RetrySafe};
use crate::http1::forward;
use crate::http1::framing::Framing;
use crate::http1::head::Head;
use crate::http1::response::{self, ClientBody, ClientView, Parsed, Shaped};
use crate::policy::ClientPolicy;
use crate::registry::Entry;
use crate::shared::Shared;
use crate::stream::ClientStream;
use crate::timeouts::{ClientTimeouts, Timeouts};
use crate::upstream::{RawConn, Upstream};
use bytes::{Buf, Bytes, BytesMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, warn};

/// A request body read from the client at a time.
const BODY_BUF: usize = 16 * 1024;

/// What the client connection contributes to an exchange.
pub struct Conn<'a> {
    pub shared: &'a Arc<Shared>,
    pub policy: &'a ClientPolicy,
    pub peer: SocketAddr,
    /// The client the request comes from: `peer`, or the address a trusted
    /// proxy named in `X-Forwarded-For` (the PROXY header's source).
    pub client: SocketAddr,
    pub scheme: &'static str,
    pub entry: &'a Entry,
    /// Where the exchange's backend hold time goes (the access log's).
    pub hold: Option<&'a Arc<crate::upstream::HoldCell>>,
}

/// A parsed request head and what the connection allows after it.
pub struct Request {
    pub head_bytes: Bytes,
    pub head: Head,
    /// Policy and request allow another request on this connection.
    pub keepalive: super::KeepAlive,
    /// Requests still allowed after this one.
    pub remaining: u32,
}

/// What the client connection does next.
pub enum Next {
    KeepAlive,
    /// The configured (lingering) close.
    Close,
    /// RST: a response could not be completed and must not look whole.
    Abort,
    /// The client's host stopped answering in the middle of a response:
    /// let go of it with a plain close the kernel keeps trying to deliver
    /// for a while (`linger::let_go`).
    LetGo,
    /// The backend switched protocols: tunnel bytes both ways (boxed: the
    /// rare case, kept from sizing every exchange's result).
    Tunnel(Box<RawConn>),
}

/// How an exchange ended.
pub struct Done {
    pub status: u16,
    /// The backend address and the time to its response head.
    pub backend: Option<(SocketAddr, Duration)>,
    pub next: Next,
}

/// Serves one request. On return `buf` holds the bytes the client sent past
/// this request (a pipelined next one), when the connection may go on.
///
/// Not an `async fn`, nor is [`attempt`]: one would store its arguments
/// twice in its state (as arguments, then as the body's locals), and this
/// state is built, and copied, once per request.
#[allow(clippy::manual_async_fn)]
pub fn run<'a, 'c, S: ClientStream>(
    client: &'a mut S,
    buf: &'a mut BytesMut,
    req: Request,
    conn: &'a Conn<'c>,
) -> impl std::future::Future<Output = Done> + use<'a, 'c, S> {
    async move {
        let head = &req.head;
        let hb = &req.head_bytes[..];
        let mut framing = head.framing.clone();
        // Whether a body was announced, before any of it is counted as read.
        let has_body = framing.has_body();
        let in_buf = match framing.consume(buf) {
            Ok(n) => n,
            Err(f) => return refuse(client, &req, conn, f.into(), false).await,
        };
        let mut body0 = buf.split_to(in_buf);
        let target = match forward::target(hb, head) {
            Ok(t) => t,
            Err(r) => return refuse(client, &req, conn, r.into(), false).await,
        };
        let Some(route) = super::find_route(conn.shared, target.host.unwrap_or_default(), &target.path) else {
            return refuse(client, &req, conn, ProxyError::NoRoute, framing.is_done()).await;
        };
        let buffering = super::Buffering::of(conn.shared, route, conn.policy);
        let upstream = &conn.shared.upstreams[route.backend];
        let t = Timeouts::new(&conn.policy.settings, &upstream.cfg);
        if has_body && body0.is_empty() {
            // A client that announces a body and never sends it never costs the
            // backend a connection. `Expect: 100-continue` is answered here.
            // Not to a client treated as HTTP/1.0 (RFC 9110 §15.2), as Apache's
            // `downgrade-1.0` does not.
            let p = conn.policy;
            let send_continue = head.expect_continue && !(p.downgrade_1_0 || p.force_response_1_0);
            if let Err(e) = first_body_bytes(client, buf, &mut framing, &mut body0, send_continue, &t, conn.entry).await
            {
                return refuse(client, &req, conn, e, false).await;
            }
        }
        // Request buffering: the rest of the body is taken before a backend
        // connection is (a body complete in the first read goes out at once).
        let mut pre = None;
        if buffering.requests && !framing.is_done() {
            let mut live = H1Body {
                client: &mut *client,
                buf: &mut *buf,
                framing: &mut framing,
                gap: t.client.gap,
                entry: conn.entry,
            };
            let (cfg, metrics) = (conn.shared.config.buffer.clone(), conn.shared.metrics.clone());
            match request_spool::take(&mut live, cfg, metrics).await {
                Ok(p) => pre = Some(p),
                Err(e) => return refuse(client, &req, conn, e, false).await,
            }
        }
        let mut out = super::backend_head(hb, head, &target, conn.peer, conn.scheme, upstream);
        out.extend_from_slice(&body0);
        let out = Bytes::from(out);
        let plan = Plan {
            fresh: head.upgrade,
            client: conn.client,
            // The address the client reached, for a PROXY protocol header only
            // (a system call, so not for every request).
            local: match upstream.cfg.proxy_protocol {
                crate::config::ProxyProtocol::Off => conn.peer,
                _ => client.tcp().local_addr().unwrap_or(conn.peer),
            },
            // The whole request is in `out`: it can be sent again on a fresh connection.
            replayable: framing.is_done() && pre.is_none(),
            idempotent: head.idempotent,
        };
        let mut tries = Tries::new(plan);
        tries.hold = conn.hold.cloned();
        loop {
            let bc = match tries.checkout(upstream).await {
                Ok(bc) => bc,
                Err(err) => return refuse(client, &req, conn, err, framing.is_done()).await,
            };
            let reused = bc.reused();
            let (err, retry_safe) = match attempt(
                client,
                buf,
                bc,
                &out,
                &mut framing,
                &req,
                conn,
                upstream,
                &t,
                buffering,
                &mut pre,
            )
            .await
            {
                Attempt::Done(done) => return done,
                Attempt::Failed { err, retry_safe } => (err, retry_safe),
            };
            if let Err(err) = tries.again(upstream, &conn.shared.metrics, reused, err, retry_safe) {
                return refuse(client, &req, conn, err, framing.is_done()).await;
            }
        }
    }
}

enum Attempt {
    Done(Done),
    /// Nothing reached the client yet.
    Failed {
        err: ProxyError,
        retry_safe: RetrySafe,
    },
}

/// One try on one backend connection: send, read the head, relay.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn attempt<'a, 'c, S: ClientStream>(
    client: &'a mut S,
    buf: &'a mut BytesMut,
    mut bc: RawConn,
    out: &'a Bytes,
    framing: &'a mut Framing,
    req: &'a Request,
    conn: &'a Conn<'c>,
    upstream: &'a Arc<Upstream>,
    t: &'a Timeouts,
    buffering: super::Buffering,
    pre: &'a mut Option<request_spool::Prefix>,
) -> impl std::future::Future<Output = Attempt> + use<'a, 'c, S> {
    async move {
        let mut resp = BytesMut::with_capacity(RESP_BUF);
        let mut body = Prefixed {
            pre: pre.take(),
            live: H1Body {
                client: &mut *client,
                buf,
                framing,
                gap: t.client.gap,
                entry: conn.entry,
            },
        };
        let sent = upload::upload(&mut bc.stream, out.clone(), &mut body, &mut resp, t).await;
        // What is left of a buffered body (all of it but what went up, after
        // an early answer) is given up now, not when the response is relayed:
        // its memory and file count against the budgets.
        drop(body);
        let request_complete = match sent {
            Ok(Sent::Complete) => true,
            Ok(Sent::Early) => false,
            Err(Failure::Client(err)) => return Attempt::Done(refuse(client, req, conn, err, false).await),
            Err(Failure::Backend { err, wrote }) => return upload_failed(err, wrote),
        };
        let started = crate::clock::now();
        let mut chead = Vec::with_capacity(512);
        let parsed = match response_head(
            client,
            &mut bc,
            upstream,
            &mut resp,
            &mut chead,
            req,
            conn,
            request_complete,
            t,
        )
        .await
        {
            Ok(p) => p,
            Err(a) => return a,
        };
        let backend = Some((bc.addr, crate::clock::since(started)));
        let shaped = match parsed {
            Final::Response(s) => s,
            Final::Switch(len) => {
                return Attempt::Done(switch(client, bc, &mut resp, len, chead, backend, t, conn).await)
            }
        };
        resp.advance(shaped.len);
        let pool = (request_complete && !shaped.reuse.close).then_some(upstream);
        let spool = (buffering.responses && !shaped.unbuffered).then_some(conn.shared);
        let relayed = relay(client, Some(bc), pool, &mut resp, &shaped, chead, t, conn.entry, spool).await;
        Attempt::Done(Done {
            status: shaped.status,
            backend,
            next: after_relay(relayed, &shaped, conn),
        })
    }
}

/// What the client connection does after a relayed response.
fn after_relay(relayed: Result<(), Relay>, shaped: &Shaped, conn: &Conn<'_>) -> Next {
    match relayed {
        Ok(()) if shaped.keepalive => Next::KeepAlive,
        Ok(()) => Next::Close,
        Err(Relay::Backend(why)) => {
            let status = shaped.status;
            warn!(peer = %conn.peer, status, reason = why, "backend response cut short; aborting the client connection");
            Next::Abort
        }
        Err(Relay::Client) => {
            debug!(peer = %conn.peer, "client stopped reading the response");
            Next::Abort
        }
        Err(Relay::Gone) => {
            debug!(peer = %conn.peer, "the client's host no longer answers; letting go of the response");
            Next::LetGo
        }
    }
}

/// Reads the response head (1xx relayed on the way), shaped for the client
/// into `chead`; a failure is the attempt's end.
#[allow(clippy::too_many_arguments)]
async fn response_head<S: ClientStream>(
    client: &mut S,
    bc: &mut RawConn,
    upstream: &Upstream,
    resp: &mut BytesMut,
    chead: &mut Vec<u8>,
    req: &Request,
    conn: &Conn<'_>,
    request_complete: bool,
    t: &Timeouts,
) -> Result<Final, Attempt> {
    let mut view = client_view(req, conn, request_complete);
    let deadline = crate::clock::now() + t.response;
    let parsed = read_response(client, bc, upstream, resp, &mut view, conn, chead, deadline, t).await;
    match parsed {
        Ok(p) => Ok(p),
        Err(HeadError::Failed(err)) => {
            let retry_safe = RetrySafe::while_waiting(&err, resp.is_empty());
            Err(Attempt::Failed { err, retry_safe })
        }
        Err(HeadError::ClientGone) => Err(Attempt::Done(aborted(0, None))),
    }
}

/// The upload failed on the backend's side: whether it may be tried again.
fn upload_failed(err: ProxyError, wrote: bool) -> Attempt {
    let retry_safe = RetrySafe::while_sending(&err, wrote);
    Attempt::Failed { err, retry_safe }
}

/// A 101: the client gets its head and what followed it, then the
/// connection becomes a tunnel on this backend connection (which keeps its
/// pool slot).
#[allow(clippy::too_many_arguments)]
async fn switch<S: ClientStream>(
    client: &mut S,
    bc: RawConn,
    resp: &mut BytesMut,
    len: usize,
    mut chead: Vec<u8>,
    backend: Option<(SocketAddr, Duration)>,
    t: &Timeouts,
    conn: &Conn<'_>,
) -> Done {
    resp.advance(len);
    chead.extend_from_slice(resp);
    if write_client(client, &chead, &t.client, conn.entry).await.is_err() {
        return aborted(101, backend);
    }
    Done {
        status: 101,
        backend,
        next: Next::Tunnel(Box::new(bc)),
    }
}

fn aborted(status: u16, backend: Option<(SocketAddr, Duration)>) -> Done {
    Done {
        status,
        backend,
        next: Next::Abort,
    }
}

fn client_view(req: &Request, conn: &Conn<'_>, request_complete: bool) -> ClientView {
    let p = conn.policy;
    ClientView {
        http10: req.head.http10,
        force_response_1_0: p.force_response_1_0,
        downgrade_1_0: p.downgrade_1_0,
        // A drain is looked at when the response head arrives
        // (read_response): it may begin while the backend works.
        keepalive: {
            let mut ka = req.keepalive;
            ka &= request_complete;
            ka.get()
        },
        head_request: req.head.method.get(&req.head_bytes) == b"HEAD",
        upgrade_requested: req.head.upgrade,
        keepalive_timeout_secs: p.settings.keepalive_timeout.as_secs(),
        remaining: req.remaining,
    }
}

/// Waits for the first bytes of an announced body (answering
/// `Expect: 100-continue` first when `send_continue`) and takes what belongs to the body.
async fn first_body_bytes<S: ClientStream>(
    client: &mut S,
    buf: &mut BytesMut,
    framing: &mut Framing,
    body0: &mut BytesMut,
    send_continue: bool,
    t: &Timeouts,
    entry: &Entry,
) -> Result<(), ProxyError> {
    if send_continue {
        write_client(client, b"HTTP/1.1 100 Continue\r\n\r\n", &t.client, entry)
            .await
            .map_err(|()| ProxyError::ClientWrite)?;
    }
    buf.reserve(BODY_BUF);
    match tokio::time::timeout(t.client.gap, client.read_buf(buf)).await {
        Err(_) => return Err(ProxyError::BodyTimeout),
        Ok(Ok(0)) | Ok(Err(_)) => return Err(ProxyError::ClientClosed),
        Ok(Ok(n)) => {
            entry.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let used = framing.consume(buf)?;
    *body0 = buf.split_to(used);
    Ok(())
}

/// The rest of an HTTP/1 request body: read from the client's socket by
/// its framing (the bytes past it stay in `buf`: the next request).
struct H1Body<'a, S> {
    client: &'a mut S,
    buf: &'a mut BytesMut,
    framing: &'a mut Framing,
    gap: Duration,
    entry: &'a Entry,
}

impl<S: ClientStream> RequestBody for H1Body<'_, S> {
    fn is_done(&self) -> bool {
        self.framing.is_done()
    }

    async fn next(&mut self) -> Result<Bytes, ProxyError> {
        self.buf.reserve(BODY_BUF);
        let n = match tokio::time::timeout(self.gap, self.client.read_buf(self.buf)).await {
            Err(_) => return Err(ProxyError::BodyTimeout),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(ProxyError::ClientClosed),
            Ok(Ok(n)) => n,
        };
        self.entry.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        let used = self.framing.consume(self.buf)?;
        Ok(self.buf.split_to(used).freeze())
    }
}

enum HeadError {
    Failed(ProxyError),
    /// The client went away while an interim response was written to it.
    ClientGone,
}

/// A final response head, shaped for the client.
enum Final {
    Response(Shaped),
    /// A 101 of this length: the client's head is written, a tunnel follows.
    Switch(usize),
}

/// Reads the response head; 1xx interim responses are relayed on the way.
#[allow(clippy::too_many_arguments)]
async fn read_response<S: ClientStream>(
    client: &mut S,
    backend: &mut RawConn,
    upstream: &Upstream,
    resp: &mut BytesMut,
    view: &mut ClientView,
    conn: &Conn<'_>,
    out: &mut Vec<u8>,
    deadline: Instant,
    t: &Timeouts,
) -> Result<Final, HeadError> {
    let entry = conn.entry;
    let mut interims = 0;
    loop {
        // A read that is always ready never lets `timeout_at` fire: an
        // endless flood of 1xx is held to the deadline here.
        if crate::clock::now() >= deadline {
            return Err(HeadError::Failed(ProxyError::ResponseTimeout));
        }
        if !resp.is_empty() {
            out.clear();
            view.keepalive &= conn.shared.keepalive_allowed();
            match response::parse(resp, view, out).map_err(|b| HeadError::Failed(b.into()))? {
                Parsed::Partial => {}
                Parsed::Interim(len) => {
                    interims += 1;
                    if interims > response::MAX_INTERIM {
                        return Err(HeadError::Failed(ProxyError::BadResponse("too many interim responses")));
                    }
                    if !out.is_empty() && write_client(client, out, &t.client, entry).await.is_err() {
                        return Err(HeadError::ClientGone);
                    }
                    resp.advance(len);
                    continue;
                }
                Parsed::Switch(len) => return Ok(Final::Switch(len)),
                Parsed::Final(s) => return Ok(Final::Response(s)),
            }
        }
        resp.reserve(RESP_BUF);
        match upstream.read_answer(backend, resp, deadline).await {
            None => return Err(HeadError::Failed(ProxyError::ResponseTimeout)),
            Some(Ok(0)) if resp.is_empty() => return Err(HeadError::Failed(ProxyError::BackendClosed)),
            Some(Ok(0)) => return Err(HeadError::Failed(ProxyError::BadResponse("closed inside the head"))),
            Some(Err(e)) => return Err(HeadError::Failed(ProxyError::BackendIo(e))),
            Some(Ok(_)) => {}
        }
    }
}

enum Relay {
    /// The backend broke the body off (a reason for the log).
    Backend(&'static str),
    Client,
    /// The client's host stopped answering ([`Heard`]).
    Gone,
}

/// Writes the client head and relays the body by its framing. When the body
/// ended where its framing said, with nothing after it, the connection goes
/// back to `pool` (if given) before the last bytes are written to the client,
/// so that the client's next request finds it there.
/// (`bc`: always `Some` when called, then taken when the connection goes
/// back or to a pump.)
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn relay<'a, S: ClientStream>(
    client: &'a mut S,
    mut bc: Option<RawConn>,
    pool: Option<&'a Arc<Upstream>>,
    resp: &'a mut BytesMut,
    shaped: &'a Shaped,
    mut first: Vec<u8>,
    t: &'a Timeouts,
    entry: &'a Entry,
    spool: Option<&'a Arc<Shared>>,
) -> impl std::future::Future<Output = Result<(), Relay>> + use<'a, S> {
    async move {
        let mut rest = Rest::new(shaped.backend_body);
        let decode = shaped.client_body == ClientBody::ChunkedDecode;
        let mut scratch = Vec::new();
        let mut head_pending = true;
        let mut heard = Heard::new(client.tcp().as_raw_fd(), t.client.gap);
        loop {
            scratch.clear();
            let wire: &[u8] = resp;
            let (take, done) = rest
                .take(
                    wire,
                    |r| {
                        if decode {
                            scratch.extend_from_slice(&wire[r])
                        }
                    },
                    |_| {},
                )
                .map_err(Relay::Backend)?;
            let decoded = decode;
            if let (false, Some(shared), Some(conn)) = (done, spool, bc.take_if(|_| !done && spool.is_some())) {
                let pump = Pump {
                    conn,
                    buf: resp.split_off(take),
                    rest,
                    pool: pool.cloned(),
                    reuse: shaped.reuse,
                    data_only: decode,
                    gap: t.response,
                    stall: Some(t.client.gap),
                };
                let reader = pump.start(shared.config.buffer.clone(), shared.metrics.clone());
                let part: &[u8] = if decoded { &scratch } else { &resp[..take] };
                // Boxed: a pumped response is long; a small one, the usual, does
                // not carry this state.
                return Box::pin(drain_spool(client, reader, &mut first, part, &t.client, entry)).await;
            }
            if done {
                let conn = bc.take();
                if let (Some(pool), Some(conn), true) = (pool, conn, resp.len() == take) {
                    pool.checkin_raw(conn, shaped.reuse);
                }
            }
            let part: &[u8] = if decoded { &scratch } else { &resp[..take] };
            if head_pending {
                write_head_and(client, &mut first, part, &t.client, entry)
                    .await
                    .map_err(|()| Relay::Client)?;
                head_pending = false;
                first = Vec::new();
            } else if !part.is_empty() {
                write_client(client, part, &t.client, entry)
                    .await
                    .map_err(|()| Relay::Client)?;
                if heard.gone() {
                    return Err(Relay::Gone);
                }
            }
            let Some(backend) = bc.as_mut().filter(|_| !done) else {
                return Ok(());
            };
            resp.clear();
            resp.reserve(RESP_BUF);
            if read_body_part(backend, resp, &rest, t).await? {
                return Ok(());
            }
        }
    }
}

/// Writes the head and the first part, then what the pump spools, as fast
/// as the client takes it.
async fn drain_spool<S: ClientStream>(
    client: &mut S,
    mut reader: crate::spool::Reader,
    head: &mut Vec<u8>,
    part: &[u8],
    t: &ClientTimeouts,
    entry: &Entry,
) -> Result<(), Relay> {
    write_head_and(client, head, part, t, entry)
        .await
        .map_err(|()| Relay::Client)?;
    let mut heard = Heard::new(client.tcp().as_raw_fd(), t.gap);
    while let Some(next) = reader.next().await {
        let bytes = next.map_err(Relay::Backend)?;
        write_client(client, &bytes, t, entry)
            .await
            .map_err(|()| Relay::Client)?;
        if heard.gone() {
            return Err(Relay::Gone);
        }
    }
    Ok(())
}

/// Whether the client of a long response is still there, looked at
/// ([`crate::sys::peer_gone`], `body_timeout` of silence) at most once per
/// half `body_timeout`, after a write. Writes that go straight into the
/// kernel's buffer (a trickle, or a spool fed slowly) never wait, so a
/// client whose host went away would otherwise hold the exchange, and its
/// backend connection, until the kernel gave up its retransmissions
/// (`tcp_retries2`: about 15 minutes). A response of one write never looks.
struct Heard {
    fd: std::os::fd::RawFd,
    silent: Duration,
    next: Instant,
}

impl Heard {
    fn new(fd: std::os::fd::RawFd, silent: Duration) -> Self {
        Heard {
            fd,
            silent,
            next: crate::clock::now() + silent / 2,
        }
    }

    fn gone(&mut self) -> bool {
        let now = crate::clock::now();
        if now < self.next {
            return false;
        }
        self.next = now + self.silent / 2;
        crate::sys::peer_gone(&self.fd, self.silent)
    }
}

/// Reads the next part of the response body; `true` when the body ended
/// at the backend's close (a close-delimited body).
async fn read_body_part(backend: &mut RawConn, resp: &mut BytesMut, rest: &Rest, t: &Timeouts) -> Result<bool, Relay> {
    match tokio::time::timeout(t.response, backend.stream.read_buf(resp)).await {
        Err(_) => Err(Relay::Backend("stalled inside the response body")),
        Ok(Ok(0)) if rest.ends_at_close() => Ok(true),
        Ok(Ok(0)) => Err(Relay::Backend("closed inside the response body")),
        Ok(Err(_)) => Err(Relay::Backend("connection failed inside the response body")),
        Ok(Ok(_)) => Ok(false),
    }
}

/// Below this, a body part is copied behind the head: one plain write.
const COPY_MAX: usize = 4096;

/// Writes the response head and the first body part: a small part is copied
/// behind the head, a large one goes in the same vectored write (a copy of
/// 16 KiB into a fresh buffer was 15% of the CPU under 16 KiB responses).
async fn write_head_and<S: ClientStream>(
    client: &mut S,
    head: &mut Vec<u8>,
    part: &[u8],
    t: &ClientTimeouts,
    entry: &Entry,
) -> Result<(), ()> {
    if part.len() <= COPY_MAX || !client.is_write_vectored() {
        head.extend_from_slice(part);
        return write_client(client, head, t, entry).await;
    }
    let total = head.len() + part.len();
    let mut done = 0;
    let fd = client.tcp().as_raw_fd();
    // `body_timeout` without the client taking anything (see `taking`).
    while done < total {
        let w = async {
            if done < head.len() {
                let bufs = [std::io::IoSlice::new(&head[done..]), std::io::IoSlice::new(part)];
                client.write_vectored(&bufs).await
            } else {
                client.write(&part[done - head.len()..]).await
            }
        };
        match taking(fd, t.gap, w).await {
            Ok(Ok(n)) if n > 0 => done += n,
            _ => return Err(()),
        }
    }
    if !matches!(taking(fd, t.gap, client.flush()).await, Ok(Ok(()))) {
        return Err(());
    }
    entry.bytes_out.fetch_add(total as u64, Ordering::Relaxed);
    Ok(())
}

/// Waits for `w`, a write to the client, as long as the client takes
/// something within each `gap`: what the write takes, or what leaves the
/// kernel's send queue (acknowledged by the client). A large send buffer
/// (the kernel grows it to megabytes) is writable again only once much of
/// it drained: a client reading a few KiB a second takes something all
/// along, though no write may go through for longer than `gap`. `Err`:
/// it took nothing for `gap`.
/// A write that goes through at once costs no system call here: the send
/// queue is looked at only when it has to wait.
async fn taking<F: std::future::Future>(fd: std::os::fd::RawFd, gap: Duration, w: F) -> Result<F::Output, ()> {
    let mut w = std::pin::pin!(w);
    if let Poll::Ready(out) = std::future::poll_fn(|cx| Poll::Ready(w.as_mut().poll(cx))).await {
        return Ok(out);
    }
    let mut queued = crate::sys::unsent_bytes(&fd);
    loop {
        match tokio::time::timeout(gap, w.as_mut()).await {
            Ok(out) => return Ok(out),
            Err(_) => match (queued, crate::sys::unsent_bytes(&fd)) {
                (Some(before), Some(now)) if now < before => queued = Some(now),
                _ => return Err(()),
            },
        }
    }
}

/// Writes to the client; a client that takes nothing for `client_gap` fails.
/// The usual case, a socket that takes the bytes at once, arms no timer.
async fn write_client<S: ClientStream>(
    client: &mut S,
    bytes: &[u8],
    t: &ClientTimeouts,
    entry: &Entry,
) -> Result<(), ()> {
    let mut off = 0;
    let at_once = std::future::poll_fn(|cx| {
        while off < bytes.len() {
            match Pin::new(&mut *client).poll_write(cx, &bytes[off..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(n)) => off += n,
                Poll::Pending => return Poll::Ready(Ok(false)),
            }
        }
        match Pin::new(&mut *client).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(true)),
            Poll::Ready(Err(_)) => Poll::Ready(Err(())),
            Poll::Pending => Poll::Ready(Ok(false)),
        }
    })
    .await?;
    if !at_once {
        // `body_timeout` without the client taking anything, not for the
        // whole write: a slow reader that keeps taking bytes is never cut
        // off because one chunk takes it longer than that.
        let fd = client.tcp().as_raw_fd();
        while off < bytes.len() {
            match taking(fd, t.gap, client.write(&bytes[off..])).await {
                Ok(Ok(n)) if n > 0 => off += n,
                _ => return Err(()),
            }
        }
        if !matches!(taking(fd, t.gap, client.flush()).await, Ok(Ok(()))) {
            return Err(());
        }
    }
    entry.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Answers a request finguard could not serve: one status, one log line, one
/// metric (`ProxyError` says which). When the request's body was not read to
/// its end, the connection closes (its bytes are never parsed as a request).
async fn refuse<S: ClientStream>(
    client: &mut S,
    req: &Request,
    conn: &Conn<'_>,
    err: ProxyError,
    request_complete: bool,
) -> Done {
    let status = err.status();
    let line = req.head_bytes.get(..req.head.line_end).unwrap_or_default();
    err.log(conn.peer, line);
    let keepalive = req.keepalive.at_answer(request_complete, conn.shared).get();
    let force10 = conn.policy.force_response_1_0;
    let bytes = error_response(status, keepalive, force10, req.head.http10);
    let t = ClientTimeouts::new(&conn.policy.settings);
    let next = match write_client(client, &bytes, &t, conn.entry).await {
        Err(()) => Next::Abort,
        Ok(()) if keepalive => Next::KeepAlive,
        Ok(()) => Next::Close,
    };
    Done {
        status,
        backend: None,
        next,
    }
}

/// A short plain-text error response.
pub fn error_response(status: u16, keepalive: bool, force10: bool, http10: bool) -> Vec<u8> {
    let a = super::Answer::new(status);
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(if force10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    crate::http1::response::push_num(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(a.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in a.fields() {
        crate::http1::put(&mut out, name.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"Content-Length: ");
    crate::http1::response::push_num(&mut out, a.body.len() as u64);
    out.extend_from_slice(b"\r\n");
    match (keepalive, http10 || force10) {
        (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
        (true, true) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        (true, false) => {}
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(a.body.as_bytes());
    out
}
