//! A client connection's byte stream: plain TCP or TLS over TCP. The keep-alive
//! loop is written once over this trait; the close is always done on the TCP
//! socket itself (after TLS's `close_notify`).

use crate::tls::stream::TlsConn;
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Longest wait for TLS's `close_notify` to be written before the TCP close.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// Reads what `tcp` holds into `buf`'s spare room without waiting, as
/// [`TcpStream::try_read_buf`] does, and leaves the read readiness cleared
/// when the read drained the receive queue, so that the next wait for the
/// socket goes straight to epoll instead of first making a `recv` that
/// fails with `EAGAIN` (one system call per keep-alive request).
///
/// A read that fills less than the room it was given took everything the
/// kernel held for this stream socket: nginx's `ngx_unix_recv` clears
/// `rev->ready` on such a short read, and tokio's own `poll_read` (behind
/// `read_buf`) does the same; only its `try_read*` calls wait for the
/// `EAGAIN`. Why no wakeup is lost:
/// - tokio registers sockets edge-triggered (`EPOLLET`): bytes that arrive
///   after the `recv` raise a new event, which sets the readiness again;
/// - the readiness cleared is the one seen before the `recv` (`try_io`
///   takes it before calling the closure), and tokio clears only when no
///   event arrived since (its tick): an event that came in between, for
///   bytes the `recv` may not have taken, survives;
/// - a FIN (`READ_CLOSED`) is never cleared: the next read sees it.
///
/// (A read also stops short at TCP urgent data with bytes behind it, for
/// tokio's `poll_read` as here: those bytes wait for the client's next
/// segment or, on an idle connection, for the idle set, which sees them
/// when it takes the connection.)
pub fn try_read_draining(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut got = 0;
    let read = tcp.try_io(Interest::READABLE, || {
        got = tcp.try_read_buf(buf)?;
        if 0 < got && got < room {
            // `try_io` clears the readiness it saw on `WouldBlock` alone.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        r => r,
    }
}

pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// `https` or `http`, for `X-Forwarded-Proto` / `Forwarded: proto=`.
    const SCHEME: &'static str;
    /// Has a protocol of its own to end before the TCP close (TLS).
    const ENCRYPTED: bool;

    fn tcp(&self) -> &TcpStream;

    /// Ready when a read may make progress, without holding a buffer (or a
    /// future's state: an idle connection waits here). TLS: at once when
    /// rustls holds decrypted bytes or the peer's `close_notify`, else when
    /// the socket is readable (a stale readiness costs one read that waits).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ends the stream's own protocol (TLS: `close_notify`, which also shuts
    /// down the write half) and hands back the socket for the configured close.
    fn into_tcp(self) -> impl Future<Output = TcpStream> + Send;

    /// The socket, without ending the stream's own protocol: for an abort,
    /// where a TLS `close_notify` would tell the client all was well.
    fn into_tcp_abort(self) -> TcpStream;

    /// The ALPN protocol the client chose, if any.
    fn alpn(&self) -> Option<&[u8]> {
        None
    }

    /// The client's next bytes have begun to arrive inside the stream's own
    /// protocol, where the socket's unread count does not show them (TLS:
    /// part of a record that rustls holds).
    fn input_begun(&self) -> bool {
        false
    }

    /// Whether an idle connection may be parked outside its task
    /// (`downstream::parking`): its whole state is [`Unhooked`].
    const PARKABLE: bool = false;

    /// The stream out of tokio's reactor, for parking: `Err(Ok(self))` when
    /// it cannot be parked (now), `Err(Err(_))` when it was lost trying.
    fn into_std(self) -> Result<Unhooked, io::Result<Self>>
    where
        Self: Sized,
    {
        Err(Ok(self))
    }

    /// A parked stream back in tokio's reactor.
    fn from_std(parts: Unhooked) -> io::Result<Self>
    where
        Self: Sized,
    {
        drop(parts);
        Err(io::Error::other("this stream cannot be parked"))
    }
}

/// A parked client stream: its socket, out of tokio's reactor, and its TLS
/// session if it has one (nothing else: no buffer, no task).
pub struct Unhooked {
    pub sock: std::net::TcpStream,
    pub tls: Option<Box<rustls::ServerConnection>>,
    /// Where the TLS client's records stand (`TlsConn`).
    pub records: crate::tls::stream::RecordCursor,
}

impl ClientStream for TcpStream {
    const SCHEME: &'static str = "http";
    const ENCRYPTED: bool = false;

    fn tcp(&self) -> &TcpStream {
        self
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn into_tcp(self) -> impl Future<Output = TcpStream> + Send {
        std::future::ready(self)
    }

    fn into_tcp_abort(self) -> TcpStream {
        self
    }

    const PARKABLE: bool = true;

    fn into_std(self) -> Result<Unhooked, io::Result<Self>> {
        let sock = TcpStream::into_std(self).map_err(Err)?;
        Ok(Unhooked {
            sock,
            tls: None,
            records: Default::default(),
        })
    }

    fn from_std(parts: Unhooked) -> io::Result<Self> {
        if parts.tls.is_some() {
            return Err(io::Error::other("a TLS connection cannot resume as plain TCP"));
        }
        TcpStream::from_std(parts.sock)
    }
}

/// tokio-rustls's stream, for HTTP/2 (hyper keeps it for the connection's
/// life; never parked). HTTP/1 over TLS runs on [`TlsConn`].
impl ClientStream for TlsStream<TcpStream> {
    const SCHEME: &'static str = "https";
    const ENCRYPTED: bool = true;

    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_ref();
        if !tls.wants_read() {
            return Poll::Ready(Ok(()));
        }
        tcp.poll_read_ready(cx)
    }

    async fn into_tcp(mut self) -> TcpStream {
        let _ = tokio::time::timeout(CLOSE_NOTIFY_WAIT, self.shutdown()).await;
        self.into_inner().0
    }

    fn into_tcp_abort(self) -> TcpStream {
        self.into_inner().0
    }

    fn alpn(&self) -> Option<&[u8]> {
        self.get_ref().1.alpn_protocol()
    }
}

/// An HTTP/1 TLS connection: parked while idle like a plain one, with its
/// session (`crate::tls::stream`).
impl ClientStream for TlsConn {
    const SCHEME: &'static str = "https";
    const ENCRYPTED: bool = true;

    fn tcp(&self) -> &TcpStream {
        TlsConn::tcp(self)
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.session().wants_read() {
            return Poll::Ready(Ok(()));
        }
        self.tcp().poll_read_ready(cx)
    }

    async fn into_tcp(mut self) -> TcpStream {
        let _ = tokio::time::timeout(CLOSE_NOTIFY_WAIT, self.shutdown()).await;
        self.into_parts().0
    }

    fn into_tcp_abort(self) -> TcpStream {
        self.into_parts().0
    }

    fn input_begun(&self) -> bool {
        TlsConn::input_begun(self)
    }

    fn alpn(&self) -> Option<&[u8]> {
        self.session().alpn_protocol()
    }

    const PARKABLE: bool = true;

    /// Only a session that owes the client nothing: records it could not
    /// write now would need a writable socket, which the idle set does not
    /// watch for. Nor one whose client has begun to send a record: a request is
    /// arriving, and the connection is not idle.
    fn into_std(mut self) -> Result<Unhooked, io::Result<Self>> {
        if self.input_begun() || !self.try_flush() {
            return Err(Ok(self));
        }
        let (tcp, session, records) = self.into_parts();
        let sock = TcpStream::into_std(tcp).map_err(Err)?;
        Ok(Unhooked {
            sock,
            tls: Some(session),
            records,
        })
    }

    fn from_std(parts: Unhooked) -> io::Result<Self> {
        let Some(session) = parts.tls else {
            return Err(io::Error::other("a plain connection cannot resume as TLS"));
        };
        Ok(TlsConn::from_parts(
            TcpStream::from_std(parts.sock)?,
            session,
            parts.records,
        ))
    }
}
