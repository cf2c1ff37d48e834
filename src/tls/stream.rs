//! An HTTP/1 client's TLS stream: a rustls server session over a tokio
//! `TcpStream`, owned here rather than inside tokio-rustls's `TlsStream` so
//! that an idle connection can be parked without a task (its socket and its
//! boxed session, `downstream::parking`) and rebuilt when it wakes:
//! tokio-rustls's stream has no constructor from its parts.
//!
//! The handshake stays tokio-rustls's (`TlsAcceptor`); [`TlsConn::after_handshake`]
//! takes its parts. That is lossless: tokio-rustls keeps nothing of its own
//! once the handshake is done (its write buffer is flushed before `accept`
//! resolves, its read state is `Stream`), and every byte read from the socket
//! so far — plaintext that came with the client's `Finished`, a partial record
//! — is inside the `ServerConnection`.
//!
//! The reading and writing rules are tokio-rustls's (`common::Stream`): read
//! records while rustls wants them; plaintext first; a TCP EOF without
//! `close_notify` is an `UnexpectedEof` error once the plaintext is taken; a
//! `close_notify` is a clean EOF; writes are encrypted into the session and
//! pushed to the socket as far as it takes them; shutdown queues
//! `close_notify`, flushes it and shuts the TCP write half. One addition:
//! whatever rustls queues to send while reading (an alert) is written at
//! once, as far as the socket takes it, so that an idle session owes the
//! client nothing and can be parked (a session that does is not parked:
//! the idle set watches for readability only). rustls keeps its answer to
//! a client's `KeyUpdate` apart and sends it before its next record, so a
//! key update leaves nothing to write either.
//!
//! This module never decides anything about HTTP: it only moves bytes.

use rustls::ServerConnection;
use std::io::{self, BufRead as _, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TLS server session over its socket.
pub struct TlsConn {
    tcp: TcpStream,
    /// Boxed: moved whole when the connection is parked, and kept out of
    /// the size of every connection's task.
    session: Box<ServerConnection>,
    /// Where the client's record stream stands: whether a record has begun
    /// to arrive, which rustls keeps to itself.
    records: RecordCursor,
}

/// Follows the client's TLS record framing over the bytes read from the
/// socket (5-byte headers, `type`, `version`, 16-bit length), so that a
/// record rustls holds in part (a request on its way) is known: the kernel's
/// count of unread bytes no longer shows it once rustls has read it.
///
/// It starts at a record boundary. The one place that may not be one is the
/// end of the handshake (tokio-rustls may have read part of the record after
/// the client's `Finished`): a header that cannot be one (not a known
/// content type, not version 3.x) then says so, and the cursor stays
/// `lost`, which counts as a record begun: such a connection is not closed
/// to make room while idle, only at its keep-alive timeout.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordCursor {
    /// Header bytes seen of the next record (0 to 4).
    head: u8,
    /// A header was not one: where records begin is unknown.
    lost: bool,
    /// The header's length, high byte.
    len_hi: u8,
    /// Body bytes still to come of the current record.
    left: u16,
}

impl RecordCursor {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.left > 0 {
                let take = usize::from(self.left).min(bytes.len());
                // `take` is at most `left`, a u16.
                self.left -= u16::try_from(take).unwrap_or(self.left);
                bytes = &bytes[take..];
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            match self.head {
                // change_cipher_spec, alert, handshake, application_data, heartbeat
                0 if !(20..=24).contains(&b) => self.lost = true,
                1 if b != 3 => self.lost = true,
                3 => self.len_hi = b,
                4 => {
                    self.left = u16::from_be_bytes([self.len_hi, b]);
                    self.head = 0;
                    continue;
                }
                _ => {}
            }
            self.head += 1;
        }
    }

    /// A record has begun to arrive and is not whole yet (or the framing
    /// was lost: see the type's doc).
    pub fn mid_record(&self) -> bool {
        self.lost || self.head > 0 || self.left > 0
    }
}

impl TlsConn {
    /// The stream of a finished tokio-rustls handshake (see the module doc
    /// for why nothing is lost).
    pub fn after_handshake(s: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        let (tcp, session) = s.into_inner();
        Self::from_parts(tcp, Box::new(session), RecordCursor::default())
    }

    pub fn from_parts(tcp: TcpStream, session: Box<ServerConnection>, records: RecordCursor) -> Self {
        Self { tcp, session, records }
    }

    pub fn into_parts(self) -> (TcpStream, Box<ServerConnection>, RecordCursor) {
        (self.tcp, self.session, self.records)
    }

    /// The client has begun to send something rustls holds but cannot give
    /// yet (part of a record), or gave something not read yet (plaintext,
    /// or its `close_notify`).
    pub fn input_begun(&self) -> bool {
        self.records.mid_record() || !self.session.wants_read()
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn session(&self) -> &ServerConnection {
        &self.session
    }

    /// Writes what the session has to send as far as the socket takes it
    /// without waiting; `true` when nothing is left.
    pub fn try_flush(&mut self) -> bool {
        while self.session.wants_write() {
            let mut w = TryWrite(&self.tcp);
            match self.session.write_tls(&mut w) {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    }

    /// Reads records from the socket into the session and processes them.
    /// `Ok(0)`: TCP EOF (or `close_notify` seen before).
    fn read_records(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut r = PollRead {
            tcp: &mut self.tcp,
            cx,
            records: &mut self.records,
        };
        let n = match self.session.read_tls(&mut r) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Err(e) = self.session.process_new_packets() {
            // The alert describing the error, if rustls queued one: a last
            // try, without hiding the error itself.
            let _ = self.write_records(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        if self.session.wants_write() {
            // Queued while reading: sent now, so an idle session owes
            // nothing (see the module doc).
            let _ = self.write_records(cx);
        }
        Poll::Ready(Ok(n))
    }

    /// Writes queued records to the socket, once.
    fn write_records(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut w = PollWrite { tcp: &mut self.tcp, cx };
        match self.session.write_tls(&mut w) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            r => Poll::Ready(r),
        }
    }

    /// Ready when plaintext is buffered or the stream has ended (cleanly:
    /// `Ok`, no plaintext; uncleanly or on a TLS error: `Err`).
    fn poll_plaintext(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io_pending = false;
        while self.session.wants_read() {
            match self.read_records(cx) {
                Poll::Ready(Ok(0)) => break,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => {
                    io_pending = true;
                    break;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        match self.session.reader().into_first_chunk() {
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !io_pending {
                    // Records were read but none carried data and the socket
                    // did not say it would block: no waker is registered, so
                    // try again (as tokio-rustls does; the task budget stops
                    // a loop).
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush_records(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.session.wants_write() {
            if ready!(self.write_records(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Hands the records of the `written` bytes just put into the session to
    /// the socket; pending only when the session took none of them.
    fn push_written(&mut self, cx: &mut Context<'_>, written: usize) -> Poll<io::Result<usize>> {
        while self.session.wants_write() {
            match self.write_records(cx) {
                Poll::Ready(Ok(0)) | Poll::Pending => {
                    // The socket is full: what the session took is written
                    // as far as the caller is concerned (it is flushed by the
                    // next write or flush).
                    return if written == 0 {
                        Poll::Pending
                    } else {
                        Poll::Ready(Ok(written))
                    };
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(written))
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_plaintext(cx))?;
        // Every chunk already decrypted, as far as `buf` takes them.
        while buf.remaining() > 0 {
            let mut reader = this.session.reader();
            let n = match reader.fill_buf() {
                Ok(chunk) if !chunk.is_empty() => {
                    let n = chunk.len().min(buf.remaining());
                    buf.put_slice(&chunk[..n]);
                    n
                }
                _ => break,
            };
            reader.consume(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Records the socket did not take last time go first: the session's
        // buffer is bounded, and a full one takes nothing.
        if this.session.wants_write() {
            match this.write_records(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) | Poll::Pending => {}
            }
        }
        let written = this.session.writer().write(buf)?;
        this.push_written(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        if this.session.wants_write() {
            match this.write_records(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) | Poll::Pending => {}
            }
        }
        let written = this.session.writer().write_vectored(bufs)?;
        this.push_written(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.session.writer().flush()?;
        ready!(this.poll_flush_records(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Idempotent in rustls: queued once however often this is polled.
        this.session.send_close_notify();
        ready!(this.poll_flush_records(cx))?;
        Poll::Ready(match ready!(Pin::new(&mut this.tcp).poll_shutdown(cx)) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}

/// The socket as a `Read` for rustls: `WouldBlock` when it would wait (the
/// task is then woken by its readiness).
struct PollRead<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
    records: &'a mut RecordCursor,
}

impl Read for PollRead<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.tcp).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                self.records.feed(rb.filled());
                Ok(rb.filled().len())
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// The socket as a `Write` for rustls, in the same way.
struct PollWrite<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl PollWrite<'_, '_> {
    fn poll(&mut self, r: Poll<io::Result<usize>>) -> io::Result<usize> {
        match r {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for PollWrite<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = Pin::new(&mut *self.tcp).poll_write(self.cx, buf);
        self.poll(r)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let r = Pin::new(&mut *self.tcp).poll_write_vectored(self.cx, bufs);
        self.poll(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket as a `Write` that never waits (no task to wake: parking).
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::RecordCursor;

    fn record(len: u16) -> Vec<u8> {
        let mut r = vec![23, 3, 3];
        r.extend_from_slice(&len.to_be_bytes());
        r.extend(std::iter::repeat_n(0xAB, usize::from(len)));
        r
    }

    #[test]
    fn the_cursor_knows_a_record_begun_at_every_split() {
        let mut bytes = record(40);
        bytes.extend(record(300));
        let whole = [45];
        for cut in 1..bytes.len() {
            let mut c = RecordCursor::default();
            c.feed(&bytes[..cut]);
            assert_eq!(c.mid_record(), !whole.contains(&cut), "cut at {cut}");
            c.feed(&bytes[cut..]);
            assert!(!c.mid_record(), "whole after the cut at {cut}");
        }
    }

    #[test]
    fn a_cursor_that_starts_inside_a_record_says_it_is_lost() {
        let mut c = RecordCursor::default();
        // The tail of a record's ciphertext, then a whole record.
        c.feed(&[0x9c, 0x41, 0x07]);
        c.feed(&record(10));
        assert!(c.mid_record());
    }
}
