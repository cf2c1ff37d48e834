//! One error type for an exchange, over HTTP/1 and HTTP/2 alike.
//!
//! Each failure says which side is at fault (the client, the backend, or
//! finguard itself) and maps, here and nowhere else, to the status the client
//! gets and the level of its log line. Whether a failed request may be sent
//! again is decided by the exchange (it alone knows whether the connection was
//! reused and whether the request can be replayed), from [`ProxyError::before_response`].

use crate::http1::framing::BodyFault;
use crate::http1::head::Reject;
use crate::upstream::UpstreamError;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request target too long")]
    UriTooLong,
    #[error("unsupported Expect")]
    Expectation,
    #[error("CONNECT is not proxied")]
    Connect,
    #[error("request body over max_body_bytes")]
    BodyTooLarge,
    #[error("request body stalled past body_timeout")]
    BodyTimeout,
    #[error("malformed chunked request body")]
    BodyMalformed,
    #[error("client closed inside the request body")]
    ClientClosed,
    #[error("client stopped reading the response")]
    ClientWrite,
    #[error("no route for this host and path")]
    NoRoute,
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("backend did not answer within response_timeout")]
    ResponseTimeout,
    #[error("backend stopped reading the request body for response_timeout")]
    BackendWriteTimeout,
    #[error("backend closed the connection before responding")]
    BackendClosed,
    #[error("backend connection failed: {0}")]
    BackendIo(std::io::Error),
    #[error("invalid backend response: {0}")]
    BadResponse(&'static str),
}

impl From<BodyFault> for ProxyError {
    fn from(f: BodyFault) -> Self {
        match f {
            BodyFault::TooLarge => ProxyError::BodyTooLarge,
            BodyFault::Malformed => ProxyError::BodyMalformed,
            BodyFault::Timeout => ProxyError::BodyTimeout,
            BodyFault::Truncated => ProxyError::ClientClosed,
        }
    }
}

impl From<Reject> for ProxyError {
    fn from(r: Reject) -> Self {
        match r {
            Reject::Bad(why) => ProxyError::BadRequest(why),
            Reject::HeadTooLarge => ProxyError::HeadTooLarge,
            Reject::UriTooLong => ProxyError::UriTooLong,
            Reject::BodyTooLarge => ProxyError::BodyTooLarge,
            Reject::Expectation => ProxyError::Expectation,
            Reject::Connect => ProxyError::Connect,
        }
    }
}

impl From<crate::http1::response::BadResponse> for ProxyError {
    fn from(b: crate::http1::response::BadResponse) -> Self {
        ProxyError::BadResponse(b.0)
    }
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::HeadTooLarge
            | ProxyError::UriTooLong
            | ProxyError::Expectation
            | ProxyError::Connect
            | ProxyError::BodyTooLarge
            | ProxyError::BodyTimeout
            | ProxyError::BodyMalformed
            | ProxyError::ClientClosed
            | ProxyError::ClientWrite => Side::Client,
            ProxyError::NoRoute => Side::Internal,
            ProxyError::Upstream(_)
            | ProxyError::ResponseTimeout
            | ProxyError::BackendWriteTimeout
            | ProxyError::BackendClosed
            | ProxyError::BackendIo(_)
            | ProxyError::BadResponse(_) => Side::Backend,
        }
    }

    /// The status the client is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BodyMalformed | ProxyError::ClientClosed => 400,
            ProxyError::ClientWrite => 400,
            ProxyError::BodyTooLarge => 413,
            ProxyError::HeadTooLarge => 431,
            ProxyError::UriTooLong => 414,
            ProxyError::Expectation => 417,
            ProxyError::Connect => 501,
            ProxyError::BodyTimeout => 408,
            ProxyError::NoRoute => 404,
            ProxyError::Upstream(UpstreamError::QueueTimeout | UpstreamError::AllDown) => 503,
            ProxyError::Upstream(_) => 502,
            ProxyError::ResponseTimeout | ProxyError::BackendWriteTimeout => 504,
            ProxyError::BackendClosed | ProxyError::BackendIo(_) | ProxyError::BadResponse(_) => 502,
        }
    }

    /// A short fixed reason for a refusal made before any backend is involved.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) => why,
            ProxyError::HeadTooLarge => "request head too large",
            ProxyError::UriTooLong => "request target too long",
            ProxyError::BodyTooLarge => "request body over max_body_bytes",
            ProxyError::Expectation => "unsupported Expect",
            ProxyError::Connect => "CONNECT is not proxied",
            ProxyError::BodyTimeout => "request body stalled past body_timeout",
            ProxyError::BodyMalformed => "malformed chunked request body",
            ProxyError::ClientClosed => "client closed inside the request body",
            ProxyError::ClientWrite => "client stopped reading the response",
            ProxyError::NoRoute => "no route for this host and path",
            _ => "backend failure",
        }
    }

    /// The backend connection broke before any byte of a response came back:
    /// on a reused connection, the stale-connection race.
    pub fn before_response(&self) -> bool {
        matches!(self, ProxyError::BackendClosed | ProxyError::BackendIo(_))
    }

    /// The one log line for a failure: warn for finguard's and the backend's,
    /// info for the client's own.
    pub fn log(&self, peer: std::net::SocketAddr, request_line: &[u8]) {
        let line = String::from_utf8_lossy(request_line);
        let status = self.status();
        match self.side() {
            Side::Client => tracing::info!(%peer, request = %line, status, reason = %self, "request refused"),
            Side::Backend => tracing::warn!(%peer, request = %line, status, reason = %self, "request failed"),
            Side::Internal => tracing::info!(%peer, request = %line, status, reason = %self, "request not routed"),
        }
    }
}

/// Whether a failed attempt on a reused backend connection may be made
/// again on a fresh one (HTTP/1 exchanges and HTTP/2 streams alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySafe {
    No,
    /// The request was refused while being written: never processed.
    Always,
    /// The backend went away before any response byte: idempotent requests only.
    IfIdempotent,
}

impl RetrySafe {
    pub fn allows(self, idempotent: bool) -> bool {
        match self {
            RetrySafe::No => false,
            RetrySafe::Always => true,
            RetrySafe::IfIdempotent => idempotent,
        }
    }

    /// A failure while the request was being sent; `wrote`: some of it went.
    pub fn while_sending(err: &ProxyError, wrote: bool) -> RetrySafe {
        match (err.before_response(), wrote) {
            (false, _) => RetrySafe::No,
            (true, true) => RetrySafe::IfIdempotent,
            (true, false) => RetrySafe::Always,
        }
    }

    /// A failure while waiting for the response head; `nothing_read`: not a
    /// byte of it came (the stale-connection race, maybe).
    pub fn while_waiting(err: &ProxyError, nothing_read: bool) -> RetrySafe {
        if err.before_response() && nothing_read {
            RetrySafe::IfIdempotent
        } else {
            RetrySafe::No
        }
    }
}
