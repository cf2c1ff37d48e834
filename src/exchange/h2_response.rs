//! The response an HTTP/2 stream gets: its body read from the backend
//! connection as h2 asks for it ([`BackendBody`], framed by
//! [`super::body::Rest`], trailers handed on as HTTP/2 trailers), or
//! finguard's own answer ([`error_response`]); and the request body left
//! unread by an early answer, drained while the answer goes out ([`Unread`]).

use super::body::Rest;
use crate::http1::framing::forbidden_trailer;
use crate::http1::response::ReuseHint;
use crate::spool::Reader;
use crate::upstream::{RawConn, Upstream};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tracing::debug;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The backend's response is read in steps of this much.
const RESP_BUF: usize = 16 * 1024;

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
    pub(super) fn new(body: Option<Incoming>, linger: Duration) -> Option<Unread> {
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

/// A short plain-text error response; it keeps `unread` (the request body
/// not read to its end) until it is sent.
pub(super) fn error_response(status: u16, unread: Option<Unread>) -> Response<ProxyBody> {
    let a = super::Answer::new(status);
    let mut resp = Response::new(ProxyBody::Full(Some(Bytes::from(a.body.clone())), unread));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in a.fields() {
        // `from_bytes` writes the name in lower case, as HTTP/2 requires.
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            resp.headers_mut().insert(n, HeaderValue::from_static(value));
        }
    }
    resp
}

/// A response body on its way to an HTTP/2 client.
// `Backend` is the common variant: boxing it would cost an allocation per
// response to shrink the rare one.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    /// finguard's own answer, and the request body it did not read.
    Full(Option<Bytes>, Option<Unread>),
    Backend(BackendBody),
    /// Read from the backend by a pump at the backend's speed (response
    /// buffering): the stream drains it as h2 asks.
    Spooled(SpooledBody),
}

type NextFut = Pin<Box<dyn Future<Output = (Reader, Option<Result<Bytes, &'static str>>)> + Send>>;

/// A response body drained from its spool ([`super::pump`]).
pub struct SpooledBody {
    reader: Option<Reader>,
    next: Option<NextFut>,
    /// Trailers to hand on after the last data; `done` once they went.
    trailers: Option<HeaderMap>,
    done: bool,
    _unread: Option<Unread>,
}

impl SpooledBody {
    pub(super) fn new(reader: Reader, unread: Option<Unread>) -> SpooledBody {
        SpooledBody {
            reader: Some(reader),
            next: None,
            trailers: None,
            done: false,
            _unread: unread,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Polled {
        if self.done {
            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        if self.next.is_none() {
            let Some(mut reader) = self.reader.take() else {
                return Poll::Ready(None);
            };
            self.next = Some(Box::pin(async move {
                let r = reader.next().await;
                (reader, r)
            }));
        }
        let Some(fut) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        let (mut reader, r) = std::task::ready!(fut.as_mut().poll(cx));
        self.next = None;
        match r {
            Some(Ok(b)) => {
                self.reader = Some(reader);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Some(Err(why)) => Poll::Ready(Some(Err(format!("{why} from the backend").into()))),
            None => {
                self.done = true;
                self.trailers = parse_trailers(&reader.take_trailer());
                Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }
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
    /// A chunked body's trailer section, as it arrives.
    trailer: Vec<u8>,
    /// Trailers to hand on after the last data.
    trailers: Option<HeaderMap>,
    _unread: Option<Unread>,
}

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

impl BackendBody {
    /// The body after the head, `buf` holding what was read past it; with
    /// no body, the connection goes back to `pool` at once (h2 sends the
    /// head with END_STREAM and never polls the body).
    pub(super) fn new(
        conn: RawConn,
        buf: BytesMut,
        rest: Rest,
        pool: Option<Arc<Upstream>>,
        reuse: ReuseHint,
        gap: Duration,
        unread: Option<Unread>,
    ) -> BackendBody {
        let mut body = BackendBody {
            conn: Some(conn),
            buf,
            rest,
            pool,
            reuse,
            gap,
            timer: None,
            trailer: Vec::new(),
            trailers: None,
            _unread: unread,
        };
        if body.rest.is_done() {
            body.finish();
        }
        body
    }

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
        if self.rest.is_done() {
            return None;
        }
        let chunked = self.rest.is_chunked();
        let mut data = BytesMut::new();
        let wire: &[u8] = &self.buf;
        let trailer = &mut self.trailer;
        let taken = self.rest.take(
            wire,
            |r| {
                if chunked {
                    data.extend_from_slice(&wire[r]);
                }
            },
            |b| trailer.push(b),
        );
        let (used, done) = match taken {
            Ok(t) => t,
            Err(why) => return Some(Err(format!("{why} from the backend").into())),
        };
        // A body with a length or to close goes on without a copy.
        let data = if chunked {
            self.buf.advance(used);
            data.freeze()
        } else {
            self.buf.split_to(used).freeze()
        };
        if done {
            if chunked {
                self.trailers = parse_trailers(&self.trailer);
            }
            self.finish();
        }
        (!data.is_empty()).then(|| Ok(Frame::data(data)))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Polled {
        loop {
            if let Some(f) = self.take_buffered() {
                return Poll::Ready(Some(f));
            }
            if self.rest.is_done() {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Some(Err("backend connection gone".into())));
            };
            self.buf.reserve(RESP_BUF);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) if self.rest.ends_at_close() => {
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
    let mut fields = [httparse::EMPTY_HEADER; crate::http1::head::MAX_HEADERS];
    let fields = match httparse::parse_headers(raw, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => {
            debug!(
                bytes = raw.len(),
                "backend's trailers not relayed: more than 100 fields, or malformed"
            );
            return None;
        }
    };
    let mut map = HeaderMap::new();
    for f in fields {
        // Connection-specific fields reset an HTTP/2 stream (RFC 9113
        // §8.2.2), and the others a trailer may not carry are not relayed.
        if forbidden_trailer(f.name.as_bytes()) {
            continue;
        }
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
            ProxyBody::Spooled(b) => b.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b, _) => b.is_none(),
            ProxyBody::Backend(b) => matches!(b.rest, Rest::Empty) && b.buf.is_empty() && b.trailers.is_none(),
            ProxyBody::Spooled(b) => b.done && b.trailers.is_none(),
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
            ProxyBody::Spooled(_) => SizeHint::default(),
        }
    }
}
