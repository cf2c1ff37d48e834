//! The client socket as hyper sees it for one request.
//!
//! `ClientIo` borrows the connection's `TcpStream` (so hyper can never close
//! it: the close is ours), hands hyper the already-read head first, then reads
//! the body from the socket, but never a byte past the end of this request:
//! anything beyond is kept aside as the start of the next request. Every read
//! and write that stalls longer than the stall timeout fails, so no client can
//! hold a task forever by not sending or not reading.

use super::framing::{BodyFault, Framing};
use super::stream::ClientStream;
use super::track::Entry;
use super::Exchange;
use bytes::{Buf, Bytes, BytesMut};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct ClientIo<'a, S> {
    stream: &'a mut S,
    prefix: Bytes,
    framing: Framing,
    /// Bytes read past the end of this request.
    pub leftover: BytesMut,
    stall: Duration,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    exchange: Arc<Exchange>,
    entry: &'a Entry,
}

impl<'a, S: ClientStream> ClientIo<'a, S> {
    pub fn new(
        stream: &'a mut S,
        prefix: Bytes,
        framing: Framing,
        stall: Duration,
        exchange: Arc<Exchange>,
        entry: &'a Entry,
    ) -> Self {
        exchange.set_request_complete(framing.is_done());
        ClientIo {
            stream,
            prefix,
            framing,
            leftover: BytesMut::new(),
            stall,
            read_timer: None,
            write_timer: None,
            exchange,
            entry,
        }
    }

    pub fn request_complete(&self) -> bool {
        self.framing.is_done()
    }

    fn fail(&mut self, fault: BodyFault) -> io::Error {
        self.exchange.set_fault(fault);
        let kind = match fault {
            BodyFault::Timeout => io::ErrorKind::TimedOut,
            BodyFault::Truncated => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, format!("request body: {fault:?}"))
    }
}

/// Polls a stall timer, arming it on first use. Ready means the stall timed out.
fn stalled(timer: &mut Option<Pin<Box<Sleep>>>, stall: Duration, cx: &mut Context<'_>) -> bool {
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
    t.as_mut().poll(cx).is_ready()
}

/// Re-arms a timer after progress (keeps the allocation).
fn progressed(timer: &mut Option<Pin<Box<Sleep>>>, stall: Duration) {
    if let Some(t) = timer.as_mut() {
        t.as_mut().reset(Instant::now() + stall);
    }
}

impl<S: ClientStream> AsyncRead for ClientIo<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        if this.framing.is_done() {
            // hyper is waiting for a next request that it must not read: the
            // connection loop takes over once this response is out.
            return Poll::Pending;
        }
        if let Some(f) = this.exchange.fault() {
            return Poll::Ready(Err(this.fail(f)));
        }
        let unfilled = buf.initialize_unfilled();
        let mut rb = ReadBuf::new(unfilled);
        match Pin::new(&mut *this.stream).poll_read(cx, &mut rb) {
            Poll::Pending => {
                if stalled(&mut this.read_timer, this.stall, cx) {
                    return Poll::Ready(Err(this.fail(BodyFault::Timeout)));
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                progressed(&mut this.read_timer, this.stall);
                if n == 0 {
                    this.exchange.set_fault(BodyFault::Truncated);
                    return Poll::Ready(Ok(()));
                }
                this.entry.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                let used = match this.framing.consume(&unfilled[..n]) {
                    Ok(used) => used,
                    Err(f) => return Poll::Ready(Err(this.fail(f))),
                };
                this.leftover.extend_from_slice(&unfilled[used..n]);
                if this.framing.is_done() {
                    this.exchange.set_request_complete(true);
                }
                buf.advance(used);
                if used == 0 {
                    // Nothing of this request in the read: a zero-length read
                    // would look like EOF to hyper, so wait for the next wakeup.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<S: ClientStream> ClientIo<'_, S> {
    /// Counts written bytes and fails a write that stalls past the timeout.
    fn guard_write(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Pending if stalled(&mut self.write_timer, self.stall, cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                progressed(&mut self.write_timer, self.stall);
                if let Ok(n) = r {
                    self.entry.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                Poll::Ready(r)
            }
        }
    }
}

impl<S: ClientStream> AsyncWrite for ClientIo<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.stream).poll_write(cx, buf);
        self.guard_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.stream).poll_write_vectored(cx, bufs);
        self.guard_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_flush(cx)
    }

    /// The close belongs to the connection loop, never to hyper.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Unused bytes that hyper had buffered plus what `ClientIo` set aside.
pub fn take_leftover<S: ClientStream>(read_buf: Bytes, io: &mut ClientIo<'_, S>) -> BytesMut {
    let mut out = BytesMut::with_capacity(read_buf.len() + io.prefix.len() + io.leftover.len());
    out.extend_from_slice(&read_buf);
    out.extend_from_slice(&io.prefix);
    out.extend_from_slice(&io.leftover);
    out
}
