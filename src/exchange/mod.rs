//! One exchange: a client's request carried to a backend and its answer
//! back, for HTTP/1 and HTTP/2 clients alike. What both protocols share is
//! here, once: the route (on the normalised path), the backend's request
//! head (written by [`forward::write_head`] from a parsed HTTP/1.1 head; an
//! HTTP/2 request is first turned into the head it stands for, and judged
//! by the same parser), the checkout → attempt → retry rules ([`Tries`]),
//! and the bound on what a backend may send while a request goes up.
//!
//! What differs per protocol is the client side: [`h1`] writes the response
//! to the client's socket itself; [`h2`] hands hyper a response whose body
//! pulls from the backend connection.
//!
//! This module never reads a client socket or writes a response: that is
//! the two client sides'.

pub mod body;
pub mod h1;
pub mod h2;
mod h2_response;
pub mod pump;
pub mod request_spool;
pub mod upload;

pub use h1::{error_response, run, Conn, Done, Next, Request};

use crate::error::{ProxyError, RetrySafe};
use crate::http1::forward;
use crate::http1::head::Head;
use crate::policy::ClientPolicy;
use crate::shared::Shared;
use crate::upstream::{HoldCell, RawConn, Tried, Upstream};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::debug;

/// How one request may be tried on a backend.
pub struct Plan {
    /// Never on a pooled connection (an upgrade takes its own).
    pub fresh: bool,
    /// For the PROXY protocol header: the client and the address it reached.
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// The whole request is held: it can be sent again.
    pub replayable: bool,
    pub idempotent: bool,
}

/// The rules of the checkout → attempt → retry loop, for both protocols: a
/// reused connection that failed as a stale one does is tried once more on
/// a fresh connection, when the request is held whole and the failure
/// allows it.
pub struct Tries {
    plan: Plan,
    retried: bool,
    /// Addresses this request failed to connect to: not tried again.
    tried: Tried,
    /// Where the backend hold time goes, for the access log.
    pub hold: Option<Arc<HoldCell>>,
}

impl Tries {
    pub fn new(plan: Plan) -> Tries {
        Tries {
            plan,
            retried: false,
            tried: Tried::default(),
            hold: None,
        }
    }

    /// A connection for the next attempt: an idle one at once when there is
    /// one, else the whole path (connect, or wait for a slot), boxed so that
    /// the exchange's state does not carry it.
    pub fn checkout<'a>(
        &'a mut self,
        upstream: &'a Upstream,
    ) -> impl std::future::Future<Output = Result<RawConn, ProxyError>> + Send + 'a {
        use tokio_util::either::Either;
        let fresh = self.plan.fresh || self.retried;
        match upstream.checkout_idle(fresh, self.plan.client) {
            Some(c) => Either::Left(std::future::ready(Ok(self.held(c)))),
            None => Either::Right(Box::pin(self.checkout_slow(upstream))),
        }
    }

    async fn checkout_slow(&mut self, upstream: &Upstream) -> Result<RawConn, ProxyError> {
        let p = &self.plan;
        let fresh = p.fresh || self.retried;
        let c = upstream.checkout_raw(fresh, p.client, p.local, &mut self.tried).await?;
        Ok(self.held(c))
    }

    /// The exchange's hold time goes to its access-log line.
    fn held(&self, mut c: RawConn) -> RawConn {
        if let Some(cell) = &self.hold {
            c.report_hold(cell.clone());
        }
        c
    }

    /// After a failed attempt on a connection (`reused` or not): `Ok` to
    /// try again, or the error to answer.
    pub fn again(
        &mut self,
        upstream: &Upstream,
        metrics: &crate::metrics::Metrics,
        reused: bool,
        err: ProxyError,
        retry_safe: RetrySafe,
    ) -> Result<(), ProxyError> {
        let safe = retry_safe.allows(upstream.cfg.retry_idempotent && self.plan.idempotent);
        if !(reused && !self.retried && self.plan.replayable && safe) {
            return Err(err);
        }
        debug!(error = %err, "reused backend connection failed; retrying on a fresh one");
        metrics.backend_retried(&upstream.cfg.name);
        self.retried = true;
        Ok(())
    }
}

/// The backend's request head, written from the parsed head by the one
/// forward-head writer, for either protocol (an HTTP/2 request arrives here
/// as the HTTP/1.1 head it was turned into).
pub fn backend_head(
    head_bytes: &[u8],
    head: &Head,
    target: &forward::Target<'_>,
    peer: SocketAddr,
    scheme: &'static str,
    upstream: &Upstream,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(head_bytes.len() + 160);
    let fcx = forward::ForwardCtx {
        peer,
        scheme,
        forwarded: upstream.cfg.forwarded,
        default_host: upstream.cfg.addr_specs.first().map_or("localhost", String::as_str),
        upgrade: head.upgrade,
    };
    forward::write_head(&mut out, head_bytes, head, target, &fcx);
    out
}

/// The one keep-alive decision of a client connection, ANDed from facts as
/// they become known (hyper's `KA`): the policy and the request head when
/// the request is read ([`KeepAlive::for_request`]); whether the request
/// was read to its end, and whether a drain began, when the answer is
/// written (finguard's own: [`KeepAlive::at_answer`]; a backend's: the
/// request's end once the upload is over, the drain each time its head is
/// parsed, as a drain may begin while the backend works); near saturation
/// (`[client.pressure]`: at `high_water` with nothing idle left to close),
/// looked at with the drain; the response's
/// framing, when its head is shaped (`http1::response`). Once false, it stays false, and the
/// client is told what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive(bool);

impl KeepAlive {
    /// What the policy and the request allow; `served` counts this request.
    pub fn for_request(policy: &ClientPolicy, head: &Head, served: u32) -> KeepAlive {
        KeepAlive(
            policy.allows_keepalive()
                && !head.upgrade
                && served < policy.settings.max_requests
                && !head.wants_close
                && (head.wants_keepalive || !(head.http10 || policy.downgrade_1_0)),
        )
    }

    /// The facts known when finguard writes its own answer.
    pub fn at_answer(mut self, request_complete: bool, shared: &Shared) -> KeepAlive {
        self &= request_complete;
        self &= shared.keepalive_allowed();
        self
    }

    pub fn get(self) -> bool {
        self.0
    }
}

impl std::ops::BitAndAssign<bool> for KeepAlive {
    fn bitand_assign(&mut self, fact: bool) {
        self.0 &= fact;
    }
}

/// finguard's own answer to a request it could not serve, the same on both
/// protocols: the status (from the one table in [`ProxyError`]), a one-line
/// plain-text body, and `Retry-After` on a 503.
pub struct Answer {
    pub status: u16,
    pub reason: &'static str,
    pub body: String,
}

impl Answer {
    pub fn new(status: u16) -> Answer {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        Answer {
            status,
            reason,
            body: format!("{status} {reason}\n"),
        }
    }

    /// The fields besides framing and the connection decision.
    pub fn fields(&self) -> &'static [(&'static str, &'static str)] {
        if self.status == 503 {
            &[("Content-Type", "text/plain"), ("Retry-After", "1")]
        } else {
            &[("Content-Type", "text/plain")]
        }
    }
}

/// The backend that answered a request and how long its head took: for the
/// access log of either protocol (an HTTP/2 response carries it as an
/// extension to the connection layer, which writes the line).
#[derive(Debug, Clone, Copy)]
pub struct Answered(pub SocketAddr, pub std::time::Duration);

/// Picks the backend: routes whose host matches (exact before `*`), longest
/// path prefix first. The host's port, if any, is ignored, and so is the
/// trailing dot of a fully qualified name (`admin.test.` is `admin.test`).
/// The asterisk form (`OPTIONS *`) is routed as `/`.
/// `path` is normalised ([`forward::normalize`]).
pub fn route(shared: &Shared, host: &[u8], path: &[u8]) -> Option<usize> {
    find_route(shared, host, path).map(|r| r.backend)
}

/// The route [`route`] picks, with its own settings.
pub fn find_route<'s>(shared: &'s Shared, host: &[u8], path: &[u8]) -> Option<&'s crate::config::RouteConfig> {
    let host = match host.iter().rposition(|&b| b == b':') {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) && !host.ends_with(b"]") => &host[..i],
        _ => host,
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    // `OPTIONS *` asks about the server as a whole: the root's backend answers.
    let path = if path == b"*" { &b"/"[..] } else { path };
    shared
        .config
        .routes
        .iter()
        .filter(|r| {
            r.host
                .as_deref()
                .is_none_or(|h| h.as_bytes().eq_ignore_ascii_case(host))
        })
        .filter(|r| path.starts_with(r.path_prefix.as_bytes()))
        .max_by_key(|r| (r.host.is_some(), r.path_prefix.len()))
}

/// Whether an exchange's request and response are buffered: `[buffer]`,
/// its route and its client's User-Agent rules (`config::buffer::decide`).
#[derive(Debug, Clone, Copy)]
pub struct Buffering {
    pub requests: bool,
    pub responses: bool,
}

impl Buffering {
    pub fn of(shared: &Shared, route: &crate::config::RouteConfig, policy: &ClientPolicy) -> Buffering {
        use crate::config::buffer::decide;
        let b = &shared.config.buffer;
        Buffering {
            requests: decide(b.requests, route.request_buffering, policy.request_buffering),
            responses: decide(b.responses, route.response_buffering, policy.response_buffering),
        }
    }
}
