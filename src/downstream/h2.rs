//! HTTP/2 to clients (ALPN `h2` on TLS listeners); the backend side stays
//! HTTP/1.1 through the pool.
//!
//! The User-Agent policy maps as far as HTTP/2 allows: `nokeepalive` sends
//! GOAWAY after the first response; the HTTP/1.0 options do not apply;
//! timeouts and the close mode do. Abuse limits: concurrent streams, header
//! list size (`max_header_bytes`), and h2's own guard against rapid reset
//! (CVE-2023-44487: streams reset before they were accepted are capped, then
//! GOAWAY) and CONTINUATION floods (bounded by the header list size).

use super::Ending;
use crate::policy::ClientPolicy;
use crate::proxy::{self, RequestCtx};
use crate::registry::{ClientState, Tracked};
use crate::shared::Shared;
use crate::stream::ClientStream;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Concurrent streams per connection (nginx `http2_max_concurrent_streams`).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may reset before finguard accepted them, then GOAWAY.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;

struct H2Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: SocketAddr,
    policy: OnceLock<Arc<ClientPolicy>>,
    track: Tracked,
    /// Streams being served now.
    active: AtomicU32,
    /// Asks the connection to send GOAWAY (policy `nokeepalive`).
    goaway: Notify,
}

/// Serves an HTTP/2 connection to its end, then closes it the configured way.
pub async fn serve<S: ClientStream>(mut stream: S, peer: SocketAddr, shared: Arc<Shared>) {
    let local = stream.tcp().local_addr().unwrap_or(peer);
    let _ = stream.tcp().set_nodelay(true);
    let track = shared.clients.open(peer);
    track.set(ClientState::Idle);
    let base = shared.base_policy.settings;
    let conn = Arc::new(H2Conn {
        shared: shared.clone(),
        peer,
        local,
        policy: OnceLock::new(),
        track,
        active: AtomicU32::new(0),
        goaway: Notify::new(),
    });
    let svc = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            Box::pin(async move { Ok::<_, std::convert::Infallible>(handle(req, conn).await) })
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(base.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .keep_alive_interval(None);
    {
        let h2 = builder.serve_connection(TokioIo::new(&mut stream), svc);
        tokio::pin!(h2);
        let done = tokio::select! {
            r = h2.as_mut() => Some(r),
            () = conn.goaway.notified() => None,
            () = shared.draining.cancelled() => None,
            () = idle_watch(&conn, base.keepalive_timeout) => None,
        };
        if done.is_none() {
            h2.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(base.body_timeout, h2.as_mut()).await;
        }
    }
    let settings = conn.policy.get().map_or(base, |p| p.settings);
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

/// Resolves when the connection has had no stream for `keepalive_timeout`.
async fn idle_watch(conn: &H2Conn, keepalive: Duration) {
    loop {
        tokio::time::sleep(keepalive).await;
        if conn.track.entry.state() == ClientState::Idle && conn.track.in_state_for() >= keepalive {
            return;
        }
    }
}

async fn handle(req: Request<Incoming>, conn: Arc<H2Conn>) -> http::Response<proxy::ProxyBody> {
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
    conn.track.entry.requests.fetch_add(1, Ordering::Relaxed);
    conn.active.fetch_add(1, Ordering::AcqRel);
    conn.track.set(ClientState::Active);
    let idempotent = matches!(
        req.method().as_str(),
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    );
    let has_body = !http_body::Body::is_end_stream(req.body());
    let nokeepalive = !policy.allows_keepalive();
    let ctx = Arc::new(RequestCtx {
        shared: shared.clone(),
        policy,
        peer: conn.peer,
        local: conn.local,
        scheme: "https",
        has_body,
        idempotent,
    });
    let resp = match proxy::handle(req, ctx).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
        conn.track.set(ClientState::Idle);
    }
    if nokeepalive {
        conn.goaway.notify_one();
    }
    resp
}
