//! The admin listener: `/healthz`, `/metrics`, `/census`, `/connections`.
//!
//! Off unless `[admin] addr` or `--admin` is given; meant for loopback or a
//! private interface: it has no authentication, so never bind it publicly.
//! Scrape-time values (pool sizes, the TCP census) are read when asked for,
//! never on the request path.

use crate::census;
use crate::exposition;
use crate::metrics::SocketSide;
use crate::shared::{Current, Shared};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::debug;

/// Bounds an admin client, which is a scraper, not a browser.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoints until `stop`.
pub async fn serve(listener: TcpListener, current: Current, listeners: Vec<SocketAddr>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: the proxy's own backoff applies.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (current, listeners) = (current.clone(), listeners.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = current.read().unwrap_or_else(|p| p.into_inner()).clone();
                let listeners = listeners.clone();
                async move { Ok::<_, Infallible>(route(req, &shared, &listeners)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Ok(Err(e)) = tokio::time::timeout(ADMIN_TIMEOUT * 6, conn).await {
                debug!(error = %e, "admin connection error");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

fn route(req: Request<Incoming>, shared: &Shared, listeners: &[SocketAddr]) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/healthz" if shared.draining.is_cancelled() => {
            reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/metrics" => {
            refresh_gauges(shared, listeners);
            let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let format = exposition::negotiate(accept);
            let text = shared.metrics.render();
            let body = match format {
                exposition::Format::OpenMetrics => text,
                exposition::Format::Classic => exposition::to_classic(&text),
            };
            reply(StatusCode::OK, format.content_type(), body)
        }
        "/census" => {
            let c = census::sides(&census::sockets(), listeners, &backend_addrs(shared));
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&c).unwrap_or_default(),
            )
        }
        "/connections" => {
            let v = shared.clients.snapshot(shared.config.pressure.grace);
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&v).unwrap_or_default(),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn backend_addrs(shared: &Shared) -> Vec<SocketAddr> {
    shared
        .upstreams
        .iter()
        .flat_map(|u| u.cfg.addrs.iter().copied())
        .collect()
}

/// Sets the gauges that are read at scrape time.
fn refresh_gauges(shared: &Shared, listeners: &[SocketAddr]) {
    let m = &shared.metrics;
    m.set_client_states(&shared.clients.count_by_state());
    m.pressure.set_level(shared.pressure.level());
    for u in &shared.upstreams {
        let idle = u.idle_connections();
        let busy = u.open_connections().saturating_sub(idle);
        m.set_backend_pool(&u.cfg.name, idle, busy);
    }
    let c = census::sides(&census::sockets(), listeners, &backend_addrs(shared));
    let sides = [(SocketSide::Client, &c.client), (SocketSide::Backend, &c.backend)];
    m.set_tcp_sockets(
        sides
            .into_iter()
            .flat_map(|(side, counts)| counts.iter().map(move |(state, n)| (side, *state, *n))),
    );
}
