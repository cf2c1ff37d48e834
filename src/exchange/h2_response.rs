//! The response an HTTP/2 stream gets: its body drained from the spool a
//! pump fills from the backend connection ([`SpooledBody`], trailers handed
//! on as HTTP/2 trailers), or finguard's own answer ([`error_response`]); and the request body left
//! unread by an early answer, drained while the answer goes out ([`Unread`]).

use crate::http1::framing::forbidden_trailer;
use crate::spool::Reader;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tracing::debug;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
pub enum ProxyBody {
    /// finguard's own answer, and the request body it did not read.
    Full(Option<Bytes>, Option<Unread>),
    /// Read from the backend by a pump ([`super::pump`]), at the backend's
    /// speed into a spool (response buffering) or a chunk at a time: the
    /// stream drains it as h2 asks.
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
    /// More data is held already after the data taken last.
    more: bool,
    _unread: Option<Unread>,
}

impl SpooledBody {
    pub(super) fn new(reader: Reader, unread: Option<Unread>) -> SpooledBody {
        SpooledBody {
            reader: Some(reader),
            next: None,
            trailers: None,
            done: false,
            more: false,
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
                match reader.after() {
                    // Known to be the last data now (the usual case: the
                    // pump read the end before this was taken): said with
                    // it, so that h2 can end the stream on it.
                    Some(false) => {
                        self.done = true;
                        self.trailers = parse_trailers(&reader.take_trailer());
                    }
                    after => {
                        self.more = after.is_some();
                        self.reader = Some(reader);
                    }
                }
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

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

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

impl ProxyBody {
    /// More data is known to follow the data taken last (else it may
    /// have been the last).
    pub fn more_follows(&self) -> bool {
        match self {
            ProxyBody::Full(b, _) => b.is_some(),
            ProxyBody::Spooled(b) => !b.done && b.more,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        match &mut *self {
            ProxyBody::Full(b, _) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Spooled(b) => b.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b, _) => b.is_none(),
            ProxyBody::Spooled(b) => b.done && b.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b), _) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None, _) => SizeHint::with_exact(0),
            ProxyBody::Spooled(_) => SizeHint::default(),
        }
    }
}
