//! Sending a request to the backend while listening to it, for both
//! protocols: the head and what was held of the body go first, then the
//! rest of the body as the client side yields it ([`RequestBody`]: bytes
//! read from an HTTP/1 socket by their framing, or HTTP/2 DATA frames
//! encoded for HTTP/1.1). The backend is read all along, so an early answer
//! (401/413 before the body's end) stops the upload and is heard, even when
//! the backend closed after it; what it sends meanwhile is bounded.

use crate::error::ProxyError;
use crate::http1::response;
use crate::timeouts::{self, Timeouts};
use bytes::{Buf, Bytes, BytesMut};
use std::future::Future;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;

/// The backend's response is read in steps of this much.
pub const RESP_BUF: usize = 32 * 1024;

/// The rest of a request body, as the client side yields it.
pub trait RequestBody {
    /// Nothing more to send after what was yielded.
    fn is_done(&self) -> bool;
    /// The next bytes as the backend is to get them (empty when a read
    /// yielded nothing to send); an error is the client's fault.
    fn next(&mut self) -> impl Future<Output = Result<Bytes, ProxyError>> + Send;
}

/// How an upload ended.
pub enum Sent {
    /// The whole request reached the backend.
    Complete,
    /// A final response head arrived (or the backend answered and closed)
    /// before the body's end: the rest of the body is not sent.
    Early,
}

/// Why an upload failed.
pub enum Failure {
    /// The client's fault: finguard answers, the backend connection is dropped.
    Client(ProxyError),
    /// The backend's; `wrote` says whether any byte of the request was written.
    Backend { err: ProxyError, wrote: bool },
}

/// Sends `pending` (the head and the body held so far) and the rest of
/// `body`, reading the backend into `resp` meanwhile.
pub async fn upload<B: RequestBody + Send>(
    backend: &mut TcpStream,
    mut pending: Bytes,
    body: &mut B,
    resp: &mut BytesMut,
    t: &Timeouts,
) -> Result<Sent, Failure> {
    // Whether any byte of the request reached the backend: a failure after
    // that is not one a retry may hide.
    let mut wrote = false;
    // The common case: a request that fits one write, sent whole.
    if body.is_done() && send_whole(backend, &mut pending, &mut wrote)? {
        return Ok(Sent::Complete);
    }
    let (mut rd, mut wr) = backend.split();
    loop {
        if pending.is_empty() && body.is_done() {
            return Ok(Sent::Complete);
        }
        resp.reserve(RESP_BUF);
        if pending.is_empty() {
            tokio::select! {
                biased;
                r = rd.read_buf(resp) => {
                    if let Some(end) = heard(r, resp, wrote) {
                        return end;
                    }
                }
                r = body.next() => pending = r.map_err(Failure::Client)?,
            }
        } else {
            tokio::select! {
                biased;
                r = rd.read_buf(resp) => {
                    if let Some(end) = heard(r, resp, wrote) {
                        return end;
                    }
                }
                r = tokio::time::timeout(t.response, wr.write(&pending)) => match r {
                    Ok(Ok(n)) => {
                        pending.advance(n);
                        wrote = true;
                    }
                    Ok(Err(e)) => return refused_mid_upload(&mut rd, resp, e, wrote).await,
                    Err(_) => {
                        return Err(Failure::Backend { err: ProxyError::BackendWriteTimeout, wrote: true });
                    }
                },
            }
        }
    }
}

/// Tries to send `pending` in one write; `true` when it all went. `wrote`
/// is set when some of it did.
fn send_whole(backend: &TcpStream, pending: &mut Bytes, wrote: &mut bool) -> Result<bool, Failure> {
    match backend.try_write(pending) {
        Ok(n) if n == pending.len() => Ok(true),
        Ok(n) => {
            pending.advance(n);
            *wrote |= n > 0;
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(Failure::Backend {
            err: ProxyError::BackendIo(e),
            wrote: false,
        }),
    }
}

/// What a backend read during the upload means: `None` to go on.
fn heard(r: std::io::Result<usize>, resp: &BytesMut, wrote: bool) -> Option<Result<Sent, Failure>> {
    match r {
        Ok(0) | Err(_) if !resp.is_empty() => Some(Ok(Sent::Early)),
        Ok(0) => Some(Err(Failure::Backend {
            err: ProxyError::BackendClosed,
            wrote,
        })),
        Err(e) => Some(Err(Failure::Backend {
            err: ProxyError::BackendIo(e),
            wrote,
        })),
        Ok(_) if response::final_head_ready(resp) => Some(Ok(Sent::Early)),
        Ok(_) => too_much(resp).map(|err| Err(Failure::Backend { err, wrote })),
    }
}

/// A backend that sends more than a response head's worth (an endless
/// header line, endless 1xx) while the request still goes up is a bad
/// response: what it sends is held, so it must be bounded.
fn too_much(resp: &[u8]) -> Option<ProxyError> {
    (resp.len() > response::MAX_HEAD_BYTES).then_some(ProxyError::BadResponse("response head too large"))
}

/// The backend refused the rest of the upload: it may have answered and
/// closed, its answer still in our queue.
async fn refused_mid_upload(
    rd: &mut ReadHalf<'_>,
    resp: &mut BytesMut,
    e: std::io::Error,
    wrote: bool,
) -> Result<Sent, Failure> {
    collect(rd, resp).await;
    if response::final_head_ready(resp) {
        return Ok(Sent::Early);
    }
    Err(Failure::Backend {
        err: ProxyError::BackendIo(e),
        wrote,
    })
}

/// Reads what the backend left in the socket before it went away, within
/// the bound on a head.
async fn collect(rd: &mut ReadHalf<'_>, resp: &mut BytesMut) {
    for _ in 0..timeouts::LEFTOVER_READS {
        if resp.len() > response::MAX_HEAD_BYTES {
            return;
        }
        resp.reserve(RESP_BUF);
        match tokio::time::timeout(timeouts::LEFTOVER_READ, rd.read_buf(resp)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}
