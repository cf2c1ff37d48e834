//! The HTTP/2 client side of an exchange: each stream (a hyper service
//! call) is forwarded as an HTTP/1.1 request on a pooled raw backend
//! connection — the same pool, the same judgement and the same
//! forward-head writer as HTTP/1 ([`super`]), written and read by the
//! stream's own task, with no client connection task or channel in between.
//!
//! The stream's head is turned into the HTTP/1.1 head it stands for
//! ([`h1_head`]) and judged by the HTTP/1 parser; the backend's head is
//! written from that parse; the body follows with its declared length, or
//! chunked (trailers and all) when it has none. The
//! backend is read while the body goes up, so an early answer stops the
//! upload. The response head is judged by [`crate::http1::response`]; its
//! body is read from the backend connection as h2 asks for it
//! (`h2_response.rs`), and the connection goes back to the pool when it
//! ends where its framing said.
//!
//! Statuses come from the one table in [`ProxyError`]; each failure is one log
//! line here.

use super::body::Rest;
use super::h2_response::{error_response, SpooledBody, Unread};
pub use super::h2_response::{BoxError, ProxyBody};
use super::pump::Pump;
use super::request_spool::{self, Prefixed};
use super::upload::{self, Failure, RequestBody, Sent};
use super::{Plan, Tries};
use crate::config::ProxyProtocol;
use crate::error::{ProxyError, RetrySafe};
use crate::http1::forward;
use crate::http1::framing::{forbidden_trailer, BodyFault, Framing};
use crate::http1::response::{self, Parsed2};
use crate::policy::ClientPolicy;
use crate::shared::Shared;
use crate::timeouts::{ClientTimeouts, Timeouts};
use crate::upstream::{RawConn, Upstream};
use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{request, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The backend's response is read in steps of this much.
const RESP_BUF: usize = 16 * 1024;

/// How one request is sent and its answer taken.
#[derive(Clone, Copy)]
struct How {
    head_request: bool,
    idempotent: bool,
    buffer_response: bool,
}

/// What the proxy knows about one request besides the request itself.
pub struct RequestCtx {
    pub shared: Arc<Shared>,
    pub policy: Arc<ClientPolicy>,
    pub peer: SocketAddr,
    /// The client the request comes from: `peer`, or the address a trusted
    /// proxy named in `X-Forwarded-For` (the PROXY header's source).
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    pub has_body: bool,
    /// Where the backend hold time goes (the access log's).
    pub hold: Option<Arc<crate::upstream::HoldCell>>,
}

/// The hyper service: one call per request.
pub async fn handle(req: Request<Incoming>, ctx: Arc<RequestCtx>) -> Result<Response<ProxyBody>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let resp = match forward(&mut parts, body, &ctx).await {
        Ok(r) => r,
        Err((e, unread)) => {
            let unread = Unread::new(unread, ctx.policy.settings.close.linger_time);
            e.log(ctx.peer, format!("{} {}", parts.method, parts.uri).as_bytes());
            error_response(e.status(), unread)
        }
    };
    ctx.shared.metrics.response(resp.status().as_u16());
    Ok(resp)
}

/// The request body, as the backend is sent it.
struct Upload {
    /// The rest of the body after `first`, unless it all came in `first`.
    rest: Option<Limited>,
    /// Chunked on the wire (no length was declared).
    chunked: bool,
    /// The last chunk (with trailers) is written already.
    last_chunk: bool,
    /// How long the rest may linger after an early answer.
    linger: Duration,
}

/// A failure, and the request body if it is still being received.
type Refused = (ProxyError, Option<Incoming>);

async fn forward(parts: &mut request::Parts, body: Incoming, ctx: &RequestCtx) -> Result<Response<ProxyBody>, Refused> {
    let shared = &ctx.shared;
    let settings = &ctx.policy.settings;
    let (head_bytes, head) = match h1_head(parts, ctx.has_body, settings.max_header_bytes, settings.max_body_bytes) {
        Ok(h) => h,
        Err(e) => return Err((e, Some(body))),
    };
    let target = match forward::target(&head_bytes, &head) {
        Ok(t) => t,
        Err(r) => return Err((r.into(), Some(body))),
    };
    let Some(route) = super::find_route(shared, target.host.unwrap_or_default(), &target.path) else {
        return Err((ProxyError::NoRoute, Some(body)));
    };
    let buffering = super::Buffering::of(shared, route, &ctx.policy);
    let upstream = &shared.upstreams[route.backend];
    // Over its limit, a declared length was refused by the parse (413).
    let (first, rest) = take_body(body, ctx).await?;
    let chunked = matches!(head.framing, Framing::Chunked(_));
    let mut out = super::backend_head(&head_bytes, &head, &target, ctx.peer, ctx.scheme, upstream);
    let mut last_chunk = false;
    if let Some(f) = first {
        last_chunk = match encode_frame(&mut out, f, chunked) {
            Ok(last) => last,
            Err(e) => return Err((e, rest.map(|l| l.rest))),
        };
    }
    if rest.is_none() && chunked && !last_chunk {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    let mut up = Prefixed {
        pre: None,
        live: Upload {
            rest,
            chunked,
            last_chunk,
            linger: settings.close.linger_time,
        },
    };
    // Request buffering: the rest of the body is taken before a backend
    // connection is (a body complete in its first frame goes out at once).
    if buffering.requests && !up.live.is_done() {
        let (cfg, metrics) = (shared.config.buffer.clone(), shared.metrics.clone());
        match request_spool::take(&mut up.live, cfg, metrics).await {
            Ok(pre) => up.pre = Some(pre),
            Err(e) => return Err((e, up.live.rest.take().map(|l| l.rest))),
        }
    }
    let head_request = parts.method == http::Method::HEAD;
    // The whole request is in `out` when `up` has no rest: it can be sent
    // again on a fresh connection.
    let how = How {
        head_request,
        idempotent: head.idempotent,
        buffer_response: buffering.responses,
    };
    send_with_retry(upstream, Bytes::from(out), up, how, ctx).await
}

/// The HTTP/1.1 request head an HTTP/2 request stands for, parsed by the
/// same strict parser as an HTTP/1 client's, so that both protocols reach
/// the one forward-head writer with the same judgement: one `Host` (and a
/// `Host` that agrees with `:authority`, RFC 9113 §8.3.1), valid host
/// values, lengths that agree. Cookie crumbs are joined with `"; "` (RFC
/// 9113 §8.2.3): Apache would join repeated lines with `", "`. A body
/// without a declared length is chunked.
pub fn h1_head(
    parts: &request::Parts,
    has_body: bool,
    max_head: usize,
    max_body: u64,
) -> Result<(Bytes, crate::http1::head::Head), ProxyError> {
    let authority = parts.uri.authority().map(|a| a.as_str());
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    if let (Some(a), Some(h)) = (authority, hosts.next()) {
        if !h.as_bytes().eq_ignore_ascii_case(a.as_bytes()) {
            return Err(ProxyError::BadRequest("Host differs from :authority"));
        }
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let (Some(a), false) = (authority, parts.headers.contains_key(header::HOST)) {
        crate::http1::put(&mut out, b"host", a.as_bytes());
    }
    let mut cookies = parts.headers.get_all(header::COOKIE).iter();
    if let Some(first) = cookies.next() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(first.as_bytes());
        for c in cookies {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(c.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        if name != header::COOKIE {
            crate::http1::put(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if has_body && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let len = out.len();
    if len > max_head {
        return Err(ProxyError::from(crate::http1::head::too_large(&out, max_head)));
    }
    let head = crate::http1::head::parse(&out, len, max_body, false, false)?;
    Ok((Bytes::from(out), head))
}

/// The body's first frame, read within `body_timeout` before a backend
/// connection is taken (a client that announces a body and never sends it
/// never costs the backend anything), and the rest of it, held to the limits.
async fn take_body(mut body: Incoming, ctx: &RequestCtx) -> Result<(Option<Frame<Bytes>>, Option<Limited>), Refused> {
    let settings = &ctx.policy.settings;
    if !ctx.has_body {
        return Ok((None, None));
    }
    match first_frame(&mut body, settings.max_body_bytes, ClientTimeouts::new(settings).gap).await {
        Ok(first) => {
            let seen = first_len(&first);
            let rest = (!body.is_end_stream()).then(|| Limited::new(body, seen, settings));
            Ok((first, rest))
        }
        Err(e) => Err((e, Some(body))),
    }
}

/// Attempts on pooled connections, by the rules of [`Tries`].
async fn send_with_retry(
    upstream: &Arc<Upstream>,
    out: Bytes,
    mut up: Prefixed<Upload>,
    how: How,
    ctx: &RequestCtx,
) -> Result<Response<ProxyBody>, Refused> {
    let t = Timeouts::new(&ctx.policy.settings, &upstream.cfg);
    let mut tries = Tries::new(Plan {
        fresh: false,
        client: ctx.client,
        local: match upstream.cfg.proxy_protocol {
            ProxyProtocol::Off => ctx.peer,
            _ => ctx.local,
        },
        replayable: up.live.rest.is_none() && up.pre.is_none(),
        idempotent: how.idempotent,
    });
    tries.hold = ctx.hold.clone();
    loop {
        let bc = match tries.checkout(upstream).await {
            Ok(bc) => bc,
            Err(e) => return Err((e, up.live.rest.map(|l| l.rest))),
        };
        let reused = bc.reused();
        let (err, retry_safe) = match attempt(bc, out.clone(), &mut up, how, upstream, &t, ctx).await {
            Ok(resp) => return Ok(resp),
            Err(failed) => failed,
        };
        if let Err(err) = tries.again(upstream, &ctx.shared.metrics, reused, err, retry_safe) {
            return Err((err, up.live.rest.map(|l| l.rest)));
        }
    }
}

type Failed = (ProxyError, RetrySafe);

/// One try on one backend connection: send, then read the response head.
async fn attempt(
    mut bc: RawConn,
    out: Bytes,
    up: &mut Prefixed<Upload>,
    how: How,
    upstream: &Arc<Upstream>,
    t: &Timeouts,
    ctx: &RequestCtx,
) -> Result<Response<ProxyBody>, Failed> {
    let mut resp = BytesMut::with_capacity(RESP_BUF);
    let complete = send(&mut bc, out, up, &mut resp, t).await?;
    let started = Instant::now();
    let head = read_head(&mut bc, upstream, &mut resp, how.head_request, t).await?;
    let answered = super::Answered(bc.addr, started.elapsed());
    resp.advance(head.len);
    let rest = Rest::new(head.body);
    let pool = (complete && !head.reuse.close).then(|| upstream.clone());
    // An early answer: the rest of the upload lingers.
    let unread = if complete {
        None
    } else {
        Unread::new(up.live.rest.take().map(|l| l.rest), up.live.linger)
    };
    // A small body that came whole with its head (the usual 12 B page, or
    // a dynamic page's chunks) is sent from memory, and the connection
    // goes back at once: no pump task, no spool, nothing held of the
    // backend. (A pump per response was a task spawn, a channel and a
    // spool: with the copies of their state, a third of this path's CPU
    // under h2load.) A stream whose window stays shut holds at most these
    // bytes, as it would an error page of finguard's.
    let body = if let Some(bytes) = whole_body(&rest, &mut resp) {
        if let Some(pool) = pool {
            pool.checkin_raw(bc, head.reuse);
        }
        // An empty one goes with the head (END_STREAM on HEADERS).
        ProxyBody::Full((!bytes.is_empty()).then_some(bytes), unread)
    } else if !rest.is_done() {
        // A body goes through a pump task, buffered or not. An HTTP/2
        // stream whose window stays shut never polls its body: the stream's
        // watch (`StreamAbort`) ends it, and with it the pump's wait.
        let buffered = how.buffer_response && !head.unbuffered;
        let pump = Pump {
            conn: bc,
            buf: resp,
            rest,
            pool,
            reuse: head.reuse,
            data_only: true,
            gap: t.response,
            stall: None,
        };
        let (cfg, metrics) = (ctx.shared.config.buffer.clone(), ctx.shared.metrics.clone());
        let reader = if buffered {
            pump.start(cfg, metrics)
        } else {
            pump.start_streaming(cfg, metrics)
        };
        ProxyBody::Spooled(SpooledBody::new(reader, unread))
    } else {
        // No body: the connection goes back at once if nothing followed
        // the head (h2 sends the head with END_STREAM).
        if let (Some(pool), true) = (pool, resp.is_empty()) {
            pool.checkin_raw(bc, head.reuse);
        }
        ProxyBody::Full(None, unread)
    };
    let status =
        StatusCode::from_u16(head.status).map_err(|_| (ProxyError::BadResponse("bad status"), RetrySafe::No))?;
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = head.headers;
    out.extensions_mut().insert(answered);
    Ok(out)
}

/// The largest body sent from memory when it came whole with its head.
const WHOLE_MAX: usize = 16 * 1024;

/// The body, taken out of `buf`, when all of it came with its head, nothing
/// followed it, and it is at most [`WHOLE_MAX`] on the wire: its data (a
/// chunked body's without its framing). `None` (`buf` untouched) when more
/// is to come, bytes follow it, it is malformed, or a chunked body has
/// trailer fields: the pump reads it then, as any other (its framing is
/// judged in one place, [`Rest::take`]).
fn whole_body(rest: &Rest, buf: &mut BytesMut) -> Option<Bytes> {
    if rest.is_done() || buf.len() > WHOLE_MAX {
        return None;
    }
    // The trailer section of a chunked body without fields is its final
    // CRLF alone.
    let mut trailer = 0usize;
    let (used, done) = rest.clone().take(buf, |_| {}, |_| trailer += 1).ok()?;
    if !done || used != buf.len() || trailer > 2 {
        return None;
    }
    if !rest.is_chunked() {
        return Some(buf.split().freeze());
    }
    let mut data = BytesMut::with_capacity(buf.len());
    let wire: &[u8] = buf;
    rest.clone()
        .take(wire, |r| data.extend_from_slice(&wire[r]), |_| {})
        .ok()?;
    buf.clear();
    Some(data.freeze())
}

/// Reads the final response head within `response_timeout` (1xx skipped).
async fn read_head(
    bc: &mut RawConn,
    upstream: &Upstream,
    resp: &mut BytesMut,
    head_request: bool,
    t: &Timeouts,
) -> Result<response::Head2, Failed> {
    let deadline = Instant::now() + t.response;
    let mut interims = 0;
    loop {
        // An always-ready read never lets `timeout_at` fire (see h1).
        if Instant::now() >= deadline {
            return Err((ProxyError::ResponseTimeout, RetrySafe::No));
        }
        if !resp.is_empty() {
            match response::parse_h2(resp, head_request).map_err(|b| (b.into(), RetrySafe::No))? {
                Parsed2::Partial => {}
                Parsed2::Interim(len) => {
                    interims += 1;
                    if interims > response::MAX_INTERIM {
                        return Err((ProxyError::BadResponse("too many interim responses"), RetrySafe::No));
                    }
                    resp.advance(len);
                    continue;
                }
                Parsed2::Final(h) => return Ok(h),
            }
        }
        resp.reserve(RESP_BUF);
        let read = upstream.read_answer(bc, resp, deadline).await;
        let err = match read {
            Some(Ok(n)) if n > 0 => continue,
            None => ProxyError::ResponseTimeout,
            Some(Ok(_)) if resp.is_empty() => ProxyError::BackendClosed,
            Some(Ok(_)) => ProxyError::BadResponse("closed inside the head"),
            Some(Err(e)) => ProxyError::BackendIo(e),
        };
        let safe = RetrySafe::while_waiting(&err, resp.is_empty());
        return Err((err, safe));
    }
}

/// Sends `out` (the head and what was held of the body), then the rest of
/// the body, reading the backend meanwhile. Returns whether the whole request
/// went out (`false`: the backend answered before its end).
async fn send(
    bc: &mut RawConn,
    out: Bytes,
    up: &mut Prefixed<Upload>,
    resp: &mut BytesMut,
    t: &Timeouts,
) -> Result<bool, Failed> {
    match upload::upload(&mut bc.stream, out, up, resp, t).await {
        Ok(Sent::Complete) => Ok(true),
        Ok(Sent::Early) => Ok(false),
        // The client's fault: answered by its status, never retried.
        Err(Failure::Client(err)) => Err((err, RetrySafe::No)),
        Err(Failure::Backend { err, wrote }) => Err(failed_sending(err, wrote)),
    }
}

impl RequestBody for Upload {
    fn is_done(&self) -> bool {
        self.rest.is_none()
    }

    async fn next(&mut self) -> Result<Bytes, ProxyError> {
        let f = match self.rest.as_mut() {
            Some(rest) => rest.frame().await,
            None => None,
        };
        self.next_bytes(f)
    }
}

impl Upload {
    /// The wire bytes for the body's next frame (or its end).
    fn next_bytes(&mut self, f: Option<Result<Frame<Bytes>, ProxyError>>) -> Result<Bytes, ProxyError> {
        let mut next = Vec::new();
        match f {
            Some(Ok(f)) => self.last_chunk |= encode_frame(&mut next, f, self.chunked)?,
            Some(Err(e)) => return Err(e),
            None => {
                self.rest = None;
                if self.chunked && !self.last_chunk {
                    next.extend_from_slice(b"0\r\n\r\n");
                }
            }
        }
        Ok(Bytes::from(next))
    }
}

fn failed_sending(err: ProxyError, wrote: bool) -> Failed {
    let safe = RetrySafe::while_sending(&err, wrote);
    (err, safe)
}

/// Appends one request body frame as the backend is to get it. Returns
/// whether it wrote the last chunk (trailers end a chunked body). Trailers
/// a request may not carry are refused, as on HTTP/1 (`limit_trailers`).
fn encode_frame(out: &mut Vec<u8>, f: Frame<Bytes>, chunked: bool) -> Result<bool, ProxyError> {
    match f.into_data() {
        Ok(d) if !chunked => out.extend_from_slice(&d),
        Ok(d) if d.is_empty() => {}
        Ok(d) => {
            out.extend_from_slice(format!("{:x}\r\n", d.len()).as_bytes());
            out.extend_from_slice(&d);
            out.extend_from_slice(b"\r\n");
        }
        Err(f) => {
            // A body with a declared length cannot carry trailers in HTTP/1.1.
            if let (true, Ok(trailers)) = (chunked, f.into_trailers()) {
                if trailers.keys().any(|n| forbidden_trailer(n.as_str().as_bytes())) {
                    return Err(ProxyError::BadRequest("a field the request trailers may not carry"));
                }
                out.extend_from_slice(b"0\r\n");
                for (name, value) in &trailers {
                    crate::http1::put(out, name.as_str().as_bytes(), value.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Reads the first body frame within `body_timeout`.
async fn first_frame(body: &mut Incoming, max: u64, gap: Duration) -> Result<Option<Frame<Bytes>>, ProxyError> {
    let first = match tokio::time::timeout(gap, body.frame()).await {
        Err(_) => return Err(BodyFault::Timeout.into()),
        Ok(None) => None,
        Ok(Some(Ok(f))) => Some(f),
        Ok(Some(Err(_))) => return Err(BodyFault::Truncated.into()),
    };
    if first_len(&first) > max {
        return Err(BodyFault::TooLarge.into());
    }
    Ok(first)
}

fn first_len(first: &Option<Frame<Bytes>>) -> u64 {
    first.as_ref().and_then(|f| f.data_ref()).map_or(0, |d| d.len() as u64)
}

/// The rest of a request body, held to the client's limits: at most
/// `max_body_bytes` (413), and no gap between frames longer than
/// `body_timeout` (408), as on HTTP/1.
struct Limited {
    rest: Incoming,
    seen: u64,
    max: u64,
    gap: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Limited {
    fn new(rest: Incoming, seen: u64, s: &crate::config::ClientSettings) -> Limited {
        Limited {
            rest,
            seen,
            max: s.max_body_bytes,
            gap: ClientTimeouts::new(s).gap,
            timer: None,
        }
    }

    /// The next frame, `None` at the end.
    async fn frame(&mut self) -> Option<Result<Frame<Bytes>, ProxyError>> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        match Pin::new(&mut self.rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                self.seen += f.data_ref().map_or(0, |d| d.len() as u64);
                if self.seen > self.max {
                    return Poll::Ready(Some(Err(BodyFault::TooLarge.into())));
                }
                if let Some(t) = self.timer.as_mut() {
                    t.as_mut().reset(Instant::now() + self.gap);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(BodyFault::Truncated.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let gap = self.gap;
                let t = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(BodyFault::Timeout.into())));
                }
                Poll::Pending
            }
        }
    }
}
