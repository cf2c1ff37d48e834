//! The HTTP/2 request path (a hyper service per stream): route, forward to
//! the backend over hyper's pooled HTTP/1.1 client, relay the response. HTTP/2
//! has no connection headers and no HTTP/1.0 rules to shape; HTTP/1 requests
//! go through [`crate::exchange`] instead.
//!
//! Statuses come from the one table in [`ProxyError`]; each failure is one log
//! line here.

use crate::config::{BackendConfig, Forwarded};
use crate::error::ProxyError;
use crate::http1::framing::BodyFault;
use crate::metrics::Metrics;
use crate::policy::ClientPolicy;
use crate::shared::Shared;
use crate::upstream::{PooledConn, ReuseHint, Upstream, UpstreamError};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tracing::{info, warn};

pub use crate::upstream::{BoxError, UpBody};

/// What the proxy knows about one request besides the request itself.
pub struct RequestCtx {
    pub shared: Arc<Shared>,
    pub policy: Arc<ClientPolicy>,
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    pub has_body: bool,
    pub idempotent: bool,
}

/// Why a request body stopped, seen by the request path when the backend
/// request fails because of it.
type FaultSlot = Arc<std::sync::Mutex<Option<BodyFault>>>;

/// The hyper service: one call per request.
pub async fn handle(req: Request<Incoming>, ctx: Arc<RequestCtx>) -> Result<Response<ProxyBody>, Infallible> {
    let started = tokio::time::Instant::now();
    let (mut parts, body) = req.into_parts();
    let resp = match forward(&mut parts, body, &ctx).await {
        Ok(r) => r,
        Err((status, why)) => {
            let level_warn = status.is_server_error();
            if level_warn {
                warn!(peer = %ctx.peer, method = %parts.method, uri = %parts.uri, status = status.as_u16(), reason = %why, "request failed");
            } else {
                info!(peer = %ctx.peer, method = %parts.method, uri = %parts.uri, status = status.as_u16(), reason = %why, "request refused");
            }
            error_response(status)
        }
    };
    ctx.shared.metrics.response(resp.status().as_u16());
    tracing::trace!(elapsed = ?started.elapsed(), status = resp.status().as_u16(), "response ready");
    Ok(resp)
}

type Failure = (StatusCode, String);

async fn forward(parts: &mut request::Parts, body: Incoming, ctx: &RequestCtx) -> Result<Response<ProxyBody>, Failure> {
    let shared = &ctx.shared;
    let Some(idx) = route(shared, parts) else {
        return Err((StatusCode::NOT_FOUND, "no route for this host and path".into()));
    };
    let upstream = &shared.upstreams[idx];
    let cfg = &upstream.cfg;
    let settings = &ctx.policy.settings;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| crate::http1::head::parse_content_length(v.as_bytes()));
    if declared.is_some_and(|n| n > settings.max_body_bytes) {
        return Err(fault_failure(BodyFault::TooLarge));
    }
    // Wait for the first body bytes before taking a backend connection: a
    // client that announces a body and never sends it (or sends garbage)
    // never costs the backend anything.
    let fault = FaultSlot::default();
    let mut body = if ctx.has_body {
        Some(peek_body(body, settings.max_body_bytes, settings.body_timeout, &fault).await?)
    } else {
        None
    };
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded(&mut parts.headers, ctx.peer, ctx.scheme, cfg);
    let mut fresh = false;
    let mut unsent: Option<Request<UpBody>> = None;
    loop {
        let mut conn = upstream
            .checkout(fresh, ctx.peer, ctx.local)
            .await
            .map_err(upstream_failure)?;
        let reused = conn.reused();
        let req = unsent
            .take()
            .unwrap_or_else(|| upstream_request(parts, body.take().unwrap_or_else(empty_body), cfg));
        let sent = tokio::time::timeout(cfg.response_timeout, conn.sender.try_send_request(req)).await;
        let mut err = match sent {
            Err(_) => {
                let why = format!("backend {} did not answer within response_timeout", cfg.name);
                return Err((StatusCode::GATEWAY_TIMEOUT, why));
            }
            Ok(Ok(resp)) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let why = format!("backend {} switched protocols without being asked", cfg.name);
                    return Err((StatusCode::BAD_GATEWAY, why));
                }
                return Ok(relay(resp, conn, upstream.clone()));
            }
            Ok(Err(e)) => e,
        };
        // Only a reused connection can have gone stale under us, and only once.
        if reused && !fresh {
            // Never written: any request may go again, body and all.
            unsent = err.take_message();
            let replayable = cfg.retry_idempotent && ctx.idempotent && !ctx.has_body;
            if unsent.is_some() || replayable {
                tracing::debug!(error = %err.error(), "reused backend connection failed; retrying on a fresh one");
                Metrics::backend_counter(&shared.metrics.backend_retries, &cfg.name).inc();
                fresh = true;
                continue;
            }
        }
        // The client's body failing (too large, too slow) fails the backend
        // request too: the client's fault is the answer.
        if let Some(f) = fault.lock().ok().and_then(|f| *f) {
            return Err(fault_failure(f));
        }
        return Err((
            StatusCode::BAD_GATEWAY,
            format!("backend {}: {}", cfg.name, err.into_error()),
        ));
    }
}

fn empty_body() -> UpBody {
    UnsyncBoxBody::new(http_body_util::Empty::new().map_err(|e: Infallible| match e {}))
}

/// Statuses and reasons come from the one table in [`ProxyError`].
fn failure(e: ProxyError) -> Failure {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, e.to_string())
}

fn upstream_failure(e: UpstreamError) -> Failure {
    failure(e.into())
}

fn fault_failure(f: BodyFault) -> Failure {
    failure(f.into())
}

/// Picks the backend by the host (`Host`, else `:authority`) and path, with
/// the HTTP/1 path's one routing rule.
fn route(shared: &Shared, parts: &request::Parts) -> Option<usize> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or("");
    crate::exchange::route(shared, host.as_bytes(), parts.uri.path().as_bytes())
}

async fn peek_body(mut body: Incoming, max: u64, gap: Duration, fault: &FaultSlot) -> Result<UpBody, Failure> {
    let first = match tokio::time::timeout(gap, body.frame()).await {
        Err(_) => return Err(fault_failure(BodyFault::Timeout)),
        Ok(None) => None,
        Ok(Some(Ok(f))) => Some(f),
        Ok(Some(Err(_))) => return Err(fault_failure(BodyFault::Truncated)),
    };
    let seen = first.as_ref().and_then(|f| f.data_ref()).map_or(0, |d| d.len() as u64);
    if seen > max {
        return Err(fault_failure(BodyFault::TooLarge));
    }
    Ok(UnsyncBoxBody::new(Limited {
        first,
        rest: body,
        seen,
        max,
        gap,
        timer: None,
        fault: fault.clone(),
    }))
}

/// A request body on its way to the backend, held to the client's limits:
/// at most `max_body_bytes` (413), and no gap between frames longer than
/// `body_timeout` (408), as on HTTP/1. Its first frame was already read.
struct Limited {
    first: Option<Frame<Bytes>>,
    rest: Incoming,
    seen: u64,
    max: u64,
    gap: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    fault: FaultSlot,
}

impl Limited {
    fn fail(&mut self, f: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Ok(mut slot) = self.fault.lock() {
            *slot = Some(f);
        }
        Poll::Ready(Some(Err(ProxyError::from(f).to_string().into())))
    }
}

impl Body for Limited {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(f) = this.first.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        match Pin::new(&mut this.rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                this.seen += f.data_ref().map_or(0, |d| d.len() as u64);
                if this.seen > this.max {
                    return this.fail(BodyFault::TooLarge);
                }
                if let Some(t) = this.timer.as_mut() {
                    t.as_mut().reset(tokio::time::Instant::now() + this.gap);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(_))) => this.fail(BodyFault::Truncated),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let gap = this.gap;
                let t = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                if t.as_mut().poll(cx).is_ready() {
                    return this.fail(BodyFault::Timeout);
                }
                Poll::Pending
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let n = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        let mut h = SizeHint::new();
        if let Some(u) = rest.upper() {
            h.set_upper(u.saturating_add(n));
        }
        h.set_lower(rest.lower().saturating_add(n));
        h
    }
}

/// Removes hop-by-hop headers: those named by `Connection`, and the fixed set.
/// `Trailer` stays (it is end to end): it announces trailers that travel
/// with the body, which is how the HTTP/1 backend's chunked encoder learns
/// which trailer fields to send.
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

fn upstream_request(parts: &request::Parts, body: UpBody, cfg: &BackendConfig) -> Request<UpBody> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = pq.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    *req.headers_mut() = parts.headers.clone();
    if !req.headers().contains_key(header::HOST) {
        // HTTP/2 clients send :authority; HTTP/1.0 ones may send nothing.
        // HTTP/1.1 backends require a Host.
        let host = parts
            .uri
            .authority()
            .map_or_else(|| cfg.addr_specs[0].clone(), |a| a.to_string());
        if let Ok(v) = HeaderValue::from_str(&host) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req
}

fn relay(resp: Response<Incoming>, conn: PooledConn, upstream: Arc<Upstream>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let hint = ReuseHint::from_headers(&parts.headers);
    // finguard speaks HTTP/1.1 to the client whatever the backend spoke.
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    let gap = upstream.cfg.response_timeout;
    let body = ProxyBody {
        inner: Inner::Upstream(body),
        pooled: Some((conn, upstream, hint)),
        gap,
        gap_timer: None,
        complete: false,
    };
    Response::from_parts(parts, body)
}

/// A short plain-text error response.
fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let text = format!("{} {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let mut resp = Response::new(ProxyBody::full(Bytes::from(text)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

enum Inner {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// A response body on its way to the client. When it ends it signals the
/// connection loop and returns the backend connection to its pool.
pub struct ProxyBody {
    inner: Inner,
    pooled: Option<(PooledConn, Arc<Upstream>, ReuseHint)>,
    /// Longest wait for the next chunk from the backend.
    gap: Duration,
    gap_timer: Option<Pin<Box<Sleep>>>,
    complete: bool,
}

impl ProxyBody {
    fn full(b: Bytes) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(b)),
            pooled: None,
            gap: Duration::ZERO,
            gap_timer: None,
            complete: false,
        }
    }

    fn end(&mut self) {
        self.complete = true;
        if let Some((conn, upstream, hint)) = self.pooled.take() {
            upstream.checkin(conn, hint);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let ended = self.complete || matches!(&self.inner, Inner::Upstream(b) if b.is_end_stream());
        if ended {
            self.end();
        } else {
            // Not relayed to its end: the backend connection is not reusable.
            self.pooled = None;
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
        };
        match polled {
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.pooled = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(f))) => {
                if let Some(t) = this.gap_timer.as_mut() {
                    t.as_mut().reset(tokio::time::Instant::now() + this.gap);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => {
                let gap = this.gap;
                let t = this.gap_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                if t.as_mut().poll(cx).is_ready() {
                    this.pooled = None;
                    return Poll::Ready(Some(Err("backend stalled inside the response body".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}
