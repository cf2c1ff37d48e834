//! The HTTP/2 request path: each stream (a hyper service call) is forwarded
//! as an HTTP/1.1 request on a pooled raw backend connection — the same pool
//! and the same codec as the HTTP/1 path ([`crate::exchange`]), written and
//! read by the stream's own task, with no client connection task or channel
//! in between.
//!
//! The request head is written from the stream's headers (hop-by-hop ones
//! dropped, `X-Forwarded-*` or `Forwarded` added); the body follows with its
//! declared length, or chunked (trailers and all) when it has none. The
//! backend is read while the body goes up, so an early answer stops the
//! upload. The response head is judged by [`crate::http1::response`]; its
//! body is decoded from the backend connection as h2 asks for it
//! ([`ProxyBody`]), and the connection goes back to the pool when it ends
//! where its framing said.
//!
//! Statuses come from the one table in [`ProxyError`]; each failure is one log
//! line here.

use crate::config::{BackendConfig, Forwarded, ProxyProtocol};
use crate::error::{ProxyError, RetrySafe};
use crate::http1::framing::{BodyFault, ChunkScanner, Framing};
use crate::http1::response::{self, BodyMode, Parsed2, ReuseHint};
use crate::policy::ClientPolicy;
use crate::shared::Shared;
use crate::timeouts::Timeouts;
use crate::upstream::{RawConn, Upstream};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The backend's response is read in steps of this much.
const RESP_BUF: usize = 16 * 1024;

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
    pub idempotent: bool,
}

/// The hyper service: one call per request.
pub async fn handle(req: Request<Incoming>, ctx: Arc<RequestCtx>) -> Result<Response<ProxyBody>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let resp = match forward(&mut parts, body, &ctx).await {
        Ok(r) => r,
        Err((e, unread)) => {
            let unread = Unread::new(unread, ctx.policy.settings.close.linger_time);
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
            if status.is_server_error() {
                warn!(peer = %ctx.peer, method = %parts.method, uri = %parts.uri, status = status.as_u16(), reason = %e, "request failed");
            } else {
                info!(peer = %ctx.peer, method = %parts.method, uri = %parts.uri, status = status.as_u16(), reason = %e, "request refused");
            }
            error_response(status, unread)
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

/// The rest of a request body that is answered before its end (413, an
/// early 401 from the backend): a lingering close for one stream. When the
/// answer has been handed to h2, what the client still sends is read and
/// thrown away until it stops (as it does once it reads the answer), for at
/// most `linger_time`. Dropping it at once would make h2 reset the stream
/// (RST_STREAM NO_ERROR) while the answer may still be queued: the h2 crate
/// then discards the queued DATA, and the client sees a reset instead of
/// the answer.
pub struct Unread {
    body: Option<Incoming>,
    linger: Duration,
}

impl Unread {
    fn new(body: Option<Incoming>, linger: Duration) -> Option<Unread> {
        body.map(|b| Unread { body: Some(b), linger })
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        let (Some(mut body), Ok(rt)) = (self.body.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let linger = self.linger;
        rt.spawn(async move {
            let drain = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(linger, drain).await;
        });
    }
}

async fn forward(parts: &mut request::Parts, body: Incoming, ctx: &RequestCtx) -> Result<Response<ProxyBody>, Refused> {
    let shared = &ctx.shared;
    let routed = crate::exchange::route(shared, request_host(parts).as_bytes(), parts.uri.path().as_bytes());
    let Some(idx) = routed else {
        return Err((ProxyError::NoRoute, Some(body)));
    };
    let upstream = &shared.upstreams[idx];
    let cfg = &upstream.cfg;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| crate::http1::head::parse_content_length(v.as_bytes()));
    let (first, rest) = take_body(body, declared, ctx).await?;
    let chunked = ctx.has_body && declared.is_none();
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded(&mut parts.headers, ctx.peer, ctx.scheme, cfg);
    let mut out = Vec::with_capacity(512);
    write_head(&mut out, parts, chunked, cfg);
    let mut last_chunk = false;
    if let Some(f) = first {
        last_chunk = encode_frame(&mut out, f, chunked);
    }
    if rest.is_none() && chunked && !last_chunk {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    let up = Upload {
        rest,
        chunked,
        last_chunk,
        linger: ctx.policy.settings.close.linger_time,
    };
    let head_request = parts.method == http::Method::HEAD;
    // The whole request is in `out` when `up` has no rest: it can be sent
    // again on a fresh connection.
    send_with_retry(upstream, Bytes::from(out), up, head_request, ctx).await
}

/// The body's first frame, read within `body_timeout` before a backend
/// connection is taken (a client that announces a body and never sends it
/// never costs the backend anything), and the rest of it, held to the limits.
async fn take_body(
    mut body: Incoming,
    declared: Option<u64>,
    ctx: &RequestCtx,
) -> Result<(Option<Frame<Bytes>>, Option<Limited>), Refused> {
    let settings = &ctx.policy.settings;
    if declared.is_some_and(|n| n > settings.max_body_bytes) {
        return Err((BodyFault::TooLarge.into(), Some(body)));
    }
    if !ctx.has_body {
        return Ok((None, None));
    }
    match first_frame(&mut body, settings.max_body_bytes, settings.body_timeout).await {
        Ok(first) => {
            let seen = first_len(&first);
            let rest = (!body.is_end_stream()).then(|| Limited::new(body, seen, settings));
            Ok((first, rest))
        }
        Err(e) => Err((e, Some(body))),
    }
}

/// Attempts on a pooled connection; a reused one that failed as a stale
/// connection does is retried once on a fresh one, when that is safe.
async fn send_with_retry(
    upstream: &Arc<Upstream>,
    out: Bytes,
    mut up: Upload,
    head_request: bool,
    ctx: &RequestCtx,
) -> Result<Response<ProxyBody>, Refused> {
    let cfg = &upstream.cfg;
    let t = Timeouts::new(&ctx.policy.settings, cfg);
    let local = match cfg.proxy_protocol {
        ProxyProtocol::Off => ctx.peer,
        _ => ctx.local,
    };
    let replayable = up.rest.is_none();
    let mut retried = false;
    let mut tried = crate::upstream::Tried::default();
    loop {
        let bc = match upstream.checkout_raw(retried, ctx.client, local, &mut tried).await {
            Ok(bc) => bc,
            Err(e) => return Err((e.into(), up.rest.map(|l| l.rest))),
        };
        let reused = bc.reused();
        let (err, retry_safe) = match attempt(bc, out.clone(), &mut up, head_request, upstream, &t).await {
            Ok(resp) => return Ok(resp),
            Err(failed) => failed,
        };
        let safe = retry_safe.allows(cfg.retry_idempotent && ctx.idempotent);
        if !(reused && !retried && replayable && safe) {
            return Err((err, up.rest.map(|l| l.rest)));
        }
        debug!(error = %err, "reused backend connection failed; retrying on a fresh one");
        ctx.shared.metrics.backend_retried(&cfg.name);
        retried = true;
    }
}

type Failed = (ProxyError, RetrySafe);

/// One try on one backend connection: send, then read the response head.
async fn attempt(
    mut bc: RawConn,
    out: Bytes,
    up: &mut Upload,
    head_request: bool,
    upstream: &Arc<Upstream>,
    t: &Timeouts,
) -> Result<Response<ProxyBody>, Failed> {
    let mut resp = BytesMut::with_capacity(RESP_BUF);
    let complete = send(&mut bc, out, up, &mut resp, t).await?;
    let head = read_head(&mut bc, &mut resp, head_request, t).await?;
    resp.advance(head.len);
    let rest = match head.body {
        BodyMode::Empty => Rest::Empty,
        BodyMode::Length(n) => Rest::Length(n),
        BodyMode::Chunked => match Framing::chunked(u64::MAX) {
            Framing::Chunked(c) => Rest::Chunked(c, Vec::new()),
            Framing::Length(_) => Rest::Empty,
        },
        BodyMode::Close => Rest::ToClose,
    };
    let pool = (complete && !head.reuse.close).then(|| upstream.clone());
    // An early answer: the rest of the upload lingers.
    let unread = if complete {
        None
    } else {
        Unread::new(up.rest.take().map(|l| l.rest), up.linger)
    };
    let mut body = BackendBody {
        conn: Some(bc),
        buf: resp,
        rest,
        pool,
        reuse: head.reuse,
        gap: t.response,
        timer: None,
        trailers: None,
        _unread: unread,
    };
    if matches!(body.rest, Rest::Empty | Rest::Length(0)) {
        // No body: h2 sends the head with END_STREAM and never polls it.
        body.rest = Rest::Empty;
        body.finish();
    }
    let status =
        StatusCode::from_u16(head.status).map_err(|_| (ProxyError::BadResponse("bad status"), RetrySafe::No))?;
    let mut out = Response::new(ProxyBody::Backend(body));
    *out.status_mut() = status;
    *out.headers_mut() = head.headers;
    Ok(out)
}

/// Reads the final response head within `response_timeout` (1xx skipped).
async fn read_head(
    bc: &mut RawConn,
    resp: &mut BytesMut,
    head_request: bool,
    t: &Timeouts,
) -> Result<response::Head2, Failed> {
    let deadline = Instant::now() + t.response;
    loop {
        if !resp.is_empty() {
            match response::parse_h2(resp, head_request).map_err(|b| (b.into(), RetrySafe::No))? {
                Parsed2::Partial => {}
                Parsed2::Interim(len) => {
                    resp.advance(len);
                    continue;
                }
                Parsed2::Final(h) => return Ok(h),
            }
        }
        resp.reserve(RESP_BUF);
        let read = tokio::time::timeout_at(deadline, bc.stream.read_buf(resp)).await;
        let err = match read {
            Ok(Ok(n)) if n > 0 => continue,
            Err(_) => ProxyError::ResponseTimeout,
            Ok(Ok(_)) if resp.is_empty() => ProxyError::BackendClosed,
            Ok(Ok(_)) => ProxyError::BadResponse("closed inside the head"),
            Ok(Err(e)) => ProxyError::BackendIo(e),
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
    mut out: Bytes,
    up: &mut Upload,
    resp: &mut BytesMut,
    t: &Timeouts,
) -> Result<bool, Failed> {
    let stream = &mut bc.stream;
    // The common case: the whole request in one write.
    if up.rest.is_none() {
        match stream.try_write(&out) {
            Ok(n) if n == out.len() => return Ok(true),
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(failed_sending(ProxyError::BackendIo(e), false)),
        }
    }
    let mut wrote = false;
    let (mut rd, mut wr) = stream.split();
    loop {
        if out.is_empty() {
            let Some(rest) = up.rest.as_mut() else {
                return Ok(true);
            };
            resp.reserve(RESP_BUF);
            tokio::select! {
                biased;
                r = rd.read_buf(resp) => if heard(r, resp, wrote)? {
                    return Ok(false); // an early answer: the upload stops here
                },
                f = rest.frame() => out = up.next_bytes(f).map_err(|e| (e, RetrySafe::No))?,
            }
        } else {
            resp.reserve(RESP_BUF);
            tokio::select! {
                biased;
                r = rd.read_buf(resp) => if heard(r, resp, wrote)? {
                    return Ok(false);
                },
                r = tokio::time::timeout(t.response, wr.write(&out)) => {
                    out.advance(wrote_to_backend(r, wrote)?);
                    wrote = true;
                }
            }
        }
    }
}

/// A write to the backend during the upload: how much went, or why it failed.
fn wrote_to_backend(
    r: Result<std::io::Result<usize>, tokio::time::error::Elapsed>,
    wrote: bool,
) -> Result<usize, Failed> {
    match r {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(failed_sending(ProxyError::BackendIo(e), wrote)),
        Err(_) => Err(failed_sending(ProxyError::BackendWriteTimeout, wrote)),
    }
}

impl Upload {
    /// The wire bytes for the body's next frame (or its end).
    fn next_bytes(&mut self, f: Option<Result<Frame<Bytes>, ProxyError>>) -> Result<Bytes, ProxyError> {
        let mut next = Vec::new();
        match f {
            Some(Ok(f)) => self.last_chunk |= encode_frame(&mut next, f, self.chunked),
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

/// What a backend read during the upload means: `true` stops the upload
/// (an answer is there, or the backend went away after saying something);
/// an error ends the attempt.
fn heard(r: std::io::Result<usize>, resp: &BytesMut, wrote: bool) -> Result<bool, Failed> {
    match r {
        Ok(0) | Err(_) if !resp.is_empty() => Ok(true),
        Ok(0) => Err(failed_sending(ProxyError::BackendClosed, wrote)),
        Err(e) => Err(failed_sending(ProxyError::BackendIo(e), wrote)),
        Ok(_) => Ok(response::final_head_ready(resp)),
    }
}

fn failed_sending(err: ProxyError, wrote: bool) -> Failed {
    let safe = RetrySafe::while_sending(&err, wrote);
    (err, safe)
}

/// Appends one request body frame as the backend is to get it. Returns
/// whether it wrote the last chunk (trailers end a chunked body).
fn encode_frame(out: &mut Vec<u8>, f: Frame<Bytes>, chunked: bool) -> bool {
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
                out.extend_from_slice(b"0\r\n");
                for (name, value) in &trailers {
                    put(out, name.as_str().as_bytes(), value.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                return true;
            }
        }
    }
    false
}

fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The host the request names: `Host`, else `:authority`.
fn request_host(parts: &request::Parts) -> &str {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// The backend's request head: request line, `Host`, the stream's headers,
/// and the body's framing.
fn write_head(out: &mut Vec<u8>, parts: &request::Parts, chunked: bool, cfg: &BackendConfig) {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(header::HOST) {
        // HTTP/2 clients send :authority; HTTP/1.1 backends require a Host.
        let host = match parts.uri.authority() {
            Some(a) => a.as_str(),
            None => cfg.addr_specs.first().map_or("localhost", String::as_str),
        };
        put(out, b"Host", host.as_bytes());
    }
    for (name, value) in &parts.headers {
        put(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
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
            gap: s.body_timeout,
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

/// Removes hop-by-hop headers: those named by `Connection`, and the fixed set.
/// `Trailer` stays (it is end to end): it announces trailers that travel
/// with the body.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
}

/// Adds `X-Forwarded-*` or RFC 7239 `Forwarded`, per backend.
pub fn add_forwarded(h: &mut HeaderMap, peer: SocketAddr, scheme: &'static str, cfg: &BackendConfig) {
    let ip = peer.ip();
    match cfg.forwarded {
        Forwarded::Off => {}
        Forwarded::XForwarded => {
            let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                h.insert("x-forwarded-for", v);
            }
            h.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
            if let Some(host) = h.get(header::HOST).cloned() {
                h.insert("x-forwarded-host", host);
            }
        }
        Forwarded::Forwarded => {
            let node = if ip.is_ipv6() {
                format!("\"[{ip}]\"")
            } else {
                ip.to_string()
            };
            let mut elem = format!("for={node};proto={scheme}");
            if let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) {
                elem.push_str(&format!(";host=\"{host}\""));
            }
            let value = match h.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {elem}"),
                None => elem,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(header::FORWARDED, v);
            }
        }
    }
}

/// A short plain-text error response; it keeps `unread` (the request body
/// not read to its end) until it is sent.
fn error_response(status: StatusCode, unread: Option<Unread>) -> Response<ProxyBody> {
    let text = format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let mut resp = Response::new(ProxyBody::Full(Some(Bytes::from(text)), unread));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// How much of the backend's response body is still to come.
enum Rest {
    Empty,
    Length(u64),
    /// The scanner, and the trailer section's bytes as they arrive.
    Chunked(ChunkScanner, Vec<u8>),
    ToClose,
}

/// A response body on its way to an HTTP/2 client.
// `Backend` is the common variant: boxing it would cost an allocation per
// response to shrink the rare one.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    /// finguard's own answer, and the request body it did not read.
    Full(Option<Bytes>, Option<Unread>),
    Backend(BackendBody),
}

/// A response body read from its backend connection as h2 asks for it.
pub struct BackendBody {
    /// Until the body's end.
    conn: Option<RawConn>,
    /// Read from the backend, not yet handed on.
    buf: BytesMut,
    rest: Rest,
    /// Where the connection goes back when the body ended cleanly.
    pool: Option<Arc<Upstream>>,
    reuse: ReuseHint,
    /// Longest wait for the next bytes from the backend (`response_timeout`).
    gap: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Trailers to hand on after the last data.
    trailers: Option<HeaderMap>,
    _unread: Option<Unread>,
}

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

impl BackendBody {
    /// The body ended where its framing said: the connection goes back to
    /// the pool if nothing followed the body.
    fn finish(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            if self.buf.is_empty() {
                pool.checkin_raw(conn, self.reuse);
            }
        }
    }

    /// The next frame from what is buffered, if any.
    fn take_buffered(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        match &mut self.rest {
            Rest::Empty => None,
            Rest::Length(n) => {
                let k = (*n).min(self.buf.len() as u64) as usize;
                *n -= k as u64;
                let data = self.buf.split_to(k).freeze();
                if *n == 0 {
                    self.rest = Rest::Empty;
                    self.finish();
                }
                (!data.is_empty()).then(|| Ok(Frame::data(data)))
            }
            Rest::Chunked(scanner, trailer) => {
                let mut data = BytesMut::new();
                let wire: &[u8] = &self.buf;
                let used = scanner.consume_parts(wire, |r| data.extend_from_slice(&wire[r]), |b| trailer.push(b));
                let used = match used {
                    Ok(n) => n,
                    Err(_) => return Some(Err("malformed chunked body from the backend".into())),
                };
                self.buf.advance(used);
                if scanner.is_done() {
                    self.trailers = parse_trailers(trailer);
                    self.rest = Rest::Empty;
                    self.finish();
                }
                (!data.is_empty()).then(|| Ok(Frame::data(data.freeze())))
            }
            Rest::ToClose => (!self.buf.is_empty()).then(|| Ok(Frame::data(self.buf.split().freeze()))),
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Polled {
        loop {
            if let Some(f) = self.take_buffered() {
                return Poll::Ready(Some(f));
            }
            if matches!(self.rest, Rest::Empty) {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Some(Err("backend connection gone".into())));
            };
            self.buf.reserve(RESP_BUF);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) if matches!(self.rest, Rest::ToClose) => {
                    self.rest = Rest::Empty;
                    self.conn = None;
                }
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err("backend closed inside the response body".into())));
                }
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Ok(_)) => {
                    if let Some(t) = self.timer.as_mut() {
                        t.as_mut().reset(Instant::now() + self.gap);
                    }
                }
                Poll::Pending => {
                    let gap = self.gap;
                    let t = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                    if t.as_mut().poll(cx).is_ready() {
                        self.conn = None;
                        return Poll::Ready(Some(Err("backend stalled inside the response body".into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The fields of a chunked body's trailer section (its raw bytes, ending
/// with the empty line); `None` when there are none or they do not parse.
fn parse_trailers(raw: &[u8]) -> Option<HeaderMap> {
    if raw.len() <= 2 {
        return None;
    }
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(raw, &mut fields) else {
        return None;
    };
    let mut map = HeaderMap::new();
    for f in fields {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            map.append(n, v);
        }
    }
    (!map.is_empty()).then_some(map)
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        match &mut *self {
            ProxyBody::Full(b, _) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Backend(b) => b.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b, _) => b.is_none(),
            ProxyBody::Backend(b) => matches!(b.rest, Rest::Empty) && b.buf.is_empty() && b.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b), _) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None, _) => SizeHint::with_exact(0),
            ProxyBody::Backend(b) => match b.rest {
                Rest::Empty => SizeHint::with_exact(0),
                Rest::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}
