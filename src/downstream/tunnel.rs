//! Upgraded connections (WebSocket and any other `Upgrade`): after the
//! backend's 101, bytes are copied both ways on a backend connection of their
//! own. The two directions progress independently: a side blocked writing to
//! one peer never stops the other direction from being read (an echo peer
//! that stops reading while its own writes wait would otherwise deadlock the
//! pair). A FIN from either side is passed on as a half-close to the other,
//! so neither side is left in CLOSE_WAIT. The tunnel ends when both sides
//! have closed, when neither direction moved for `upgrade_idle_timeout`, or
//! when a side stops reading: a write that makes no progress for that same
//! time ends it, so a peer that floods one that does not read cannot pin the
//! task and both sockets; or when a side's host went away (its stack
//! acknowledges nothing), which heartbeats from the other side would hide.

use crate::metrics::TunnelEnd;
use crate::registry::Entry;
use crate::stream::ClientStream;
use crate::upstream::RawConn;
use bytes::BytesMut;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

const CHUNK: usize = 8 * 1024;

/// Tunnels until both sides closed, one failed or stalled, or neither
/// direction moved for `idle`. `conn` keeps its backend pool slot until the
/// tunnel ends; a tunnel that did not end cleanly resets both sockets, but
/// for a side whose host stopped answering: that one is let go
/// (`linger::let_go`, for `idle` and `grace` from its silence on). A tunnel
/// closed both ways bounds the client's orphan by `grace`
/// ([`crate::sys::bound_orphan`]).
pub async fn run<S: ClientStream>(
    mut client: S,
    mut conn: RawConn,
    pending: BytesMut,
    idle: Duration,
    grace: Duration,
    entry: &Entry,
) -> TunnelEnd {
    let peers = [client.tcp().as_raw_fd(), conn.stream.as_raw_fd()];
    let backend = &mut *conn.stream;
    let (end, gone) = match tokio::time::timeout(idle, backend.write_all(&pending)).await {
        Ok(Ok(())) => pump(&mut client, backend, idle, peers, entry).await,
        Ok(Err(_)) => (TunnelEnd::Error, [false; 2]),
        Err(_) => (TunnelEnd::Stalled, [false; 2]),
    };
    if end != TunnelEnd::Closed {
        // Idle, stalled or broken: no orphan left behind on either side,
        // but what the kernel still tries to deliver to a side out of reach.
        let within = idle + grace;
        if gone[Side::Client as usize] {
            super::linger::let_go(client.into_tcp_abort(), within);
        } else {
            super::linger::abort(client.into_tcp_abort());
        }
        if gone[Side::Backend as usize] {
            conn.let_go(within);
        } else {
            conn.abort();
        }
        return end;
    }
    // Both sides closed: a client whose host went away after its FIN never
    // acknowledges finguard's (TLS: nor its `close_notify`).
    super::close_bounded(client, grace).await;
    end
}

/// Copies both ways, each direction on its own, until both sides have
/// closed, one fails, or the watch says the tunnel is idle or stalled
/// (`peers`: the two sockets, client first, whose hosts it looks after).
/// Also returns which sides' hosts stopped answering.
async fn pump<A, B>(
    client: &mut A,
    backend: &mut B,
    idle: Duration,
    peers: [RawFd; 2],
    entry: &Entry,
) -> (TunnelEnd, [bool; 2])
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Clock::new();
    let mut a = Watched::new(client, Side::Client, &clock, &entry.bytes_in);
    let mut b = Watched::new(backend, Side::Backend, &clock, &entry.bytes_out);
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, CHUNK, CHUNK) => match r {
            Ok(_) => (TunnelEnd::Closed, [false; 2]),
            Err(_) if clock.client_reset.load(Ordering::Relaxed) => (TunnelEnd::ClientReset, [false; 2]),
            Err(_) => (TunnelEnd::Error, [false; 2]),
        },
        end = clock.watch(idle, peers) => end,
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Client = 0,
    Backend = 1,
}

/// When the tunnel last moved and which writes are waiting, shared by both
/// directions and the watch. One task polls them all: the atomics are there
/// to keep the future `Send`, not for contention.
struct Clock {
    start: Instant,
    /// The last byte (or FIN) read or written either way, as nanoseconds
    /// since `start`.
    moved: AtomicU64,
    /// Per side, since when a write to it has made no progress (nanoseconds
    /// since `start`, plus one; 0: none waiting).
    blocked: [AtomicU64; 2],
    /// The client reset its connection (as opposed to any other failure).
    client_reset: AtomicBool,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            moved: AtomicU64::new(0),
            blocked: [AtomicU64::new(0), AtomicU64::new(0)],
            client_reset: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.start + Duration::from_nanos(nanos)
    }

    fn moved(&self) {
        self.moved.store(self.now(), Ordering::Relaxed);
    }

    /// A write to `side` returned: `Pending` starts (or continues) its wait,
    /// anything else ends it.
    fn write_polled<T>(&self, side: Side, poll: &Poll<io::Result<T>>) {
        let blocked = &self.blocked[side as usize];
        if poll.is_pending() {
            if blocked.load(Ordering::Relaxed) == 0 {
                blocked.store(self.now() + 1, Ordering::Relaxed);
            }
        } else {
            blocked.store(0, Ordering::Relaxed);
        }
    }

    /// Ends the tunnel when a write waited `idle` (stalled) or, with no write
    /// waiting, when nothing moved for `idle`; and when the host of either
    /// side went away (looked at every half `idle`: [`crate::sys::peer_gone`]
    /// with `idle` of silence): the other side's messages (a backend's
    /// heartbeats) still go into the kernel's buffer for it, so neither a
    /// write waits nor the tunnel falls silent, and it would be held until
    /// the kernel gave up its retransmissions, about 15 minutes.
    async fn watch(&self, idle: Duration, peers: [RawFd; 2]) -> (TunnelEnd, [bool; 2]) {
        let mut look = Instant::now() + idle / 2;
        loop {
            let oldest_write = self
                .blocked
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .filter(|&b| b != 0)
                .min();
            // A write that waits is the peer's doing, not silence: it has the
            // same time to make progress, counted from when it started waiting.
            let (due, end) = match oldest_write {
                Some(since) => (self.at(since - 1) + idle, TunnelEnd::Stalled),
                None => (
                    self.at(self.moved.load(Ordering::Relaxed)) + idle,
                    TunnelEnd::IdleTimeout,
                ),
            };
            let now = Instant::now();
            if now >= due {
                return (end, [false; 2]);
            }
            if now >= look {
                let gone = peers.map(|fd| crate::sys::peer_gone(&fd, idle));
                if gone.contains(&true) {
                    return (TunnelEnd::Stalled, gone);
                }
                look = now + idle / 2;
            }
            // Whatever moves meanwhile only pushes the deadline later: waking
            // at `due` and looking again never oversleeps one.
            tokio::time::sleep_until(due.min(look)).await;
        }
    }
}

/// One side of the tunnel, reporting its reads and writes to the clock and
/// counting the bytes read from it.
struct Watched<'a, T> {
    io: &'a mut T,
    side: Side,
    clock: &'a Clock,
    read: &'a AtomicU64,
}

impl<'a, T> Watched<'a, T> {
    fn new(io: &'a mut T, side: Side, clock: &'a Clock, read: &'a AtomicU64) -> Self {
        Watched { io, side, clock, read }
    }

    /// Notes a client reset, which the tunnel reports apart from other errors.
    fn failed<R>(&self, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if let (Side::Client, Poll::Ready(Err(e))) = (self.side, &poll) {
            if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) {
                self.clock.client_reset.store(true, Ordering::Relaxed);
            }
        }
        poll
    }

    /// A write, flush or shutdown to this side: its wait is timed. Bytes or
    /// a FIN handed over are movement; a flush with nothing to do is not.
    fn wrote<R>(&self, poll: Poll<io::Result<R>>, moved: bool) -> Poll<io::Result<R>> {
        self.clock.write_polled(self.side, &poll);
        if moved && matches!(poll, Poll::Ready(Ok(_))) {
            self.clock.moved();
        }
        self.failed(poll)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut *self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let n = buf.filled().len() - before;
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            // A FIN (n = 0) moves the tunnel too.
            self.clock.moved();
        }
        self.failed(poll)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut *self.io).poll_write(cx, buf);
        self.wrote(poll, true)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.io).poll_flush(cx);
        self.wrote(poll, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.io).poll_shutdown(cx);
        self.wrote(poll, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use std::sync::Arc;
    use tokio::io::{duplex, AsyncReadExt, DuplexStream};

    const IDLE: Duration = Duration::from_secs(1);

    /// A tunnel between two in-memory pipes of `buf` bytes; returns the far
    /// ends (the client's, the backend's) and the running tunnel.
    fn tunnel(
        buf: usize,
    ) -> (
        DuplexStream,
        DuplexStream,
        tokio::task::JoinHandle<(TunnelEnd, Duration)>,
    ) {
        let (client, mut near_client) = duplex(buf);
        let (backend, mut near_backend) = duplex(buf);
        let track = Arc::new(Registry::new()).open("127.0.0.1:1".parse().unwrap());
        let run = tokio::spawn(async move {
            let start = Instant::now();
            // In-memory pipes: no socket whose host could go away.
            let (end, _) = pump(&mut near_client, &mut near_backend, IDLE, [-1, -1], &track.entry).await;
            (end, start.elapsed())
        });
        (client, backend, run)
    }

    #[tokio::test(start_paused = true)]
    async fn one_way_traffic_is_not_idle_and_silence_both_ways_is() {
        let (mut client, mut backend, run) = tunnel(1024);
        // The backend speaks every 600 ms for 3 s; the client only listens.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            backend.write_all(b"tick").await.unwrap();
            let mut b = [0u8; 4];
            client.read_exact(&mut b).await.unwrap();
        }
        let (end, lasted) = run.await.unwrap();
        assert_eq!(end, TunnelEnd::IdleTimeout);
        assert_eq!(lasted, Duration::from_millis(3000) + IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_that_stops_reading_stalls_the_tunnel_while_the_other_way_moves() {
        let (client, mut backend, run) = tunnel(1024);
        // The backend sends every 300 ms and never reads; the client reads
        // all it gets and sends more than the pipe holds.
        let talk = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if backend.write_all(b"tick").await.is_err() {
                    return;
                }
            }
        });
        let (mut from_tunnel, mut to_tunnel) = tokio::io::split(client);
        let listen =
            tokio::spawn(async move { while matches!(from_tunnel.read(&mut [0u8; 64]).await, Ok(n) if n > 0) {} });
        let flood = tokio::spawn(async move { while to_tunnel.write_all(&[b'x'; 1024]).await.is_ok() {} });
        let (end, lasted) = run.await.unwrap();
        for task in [talk, listen, flood] {
            task.abort();
        }
        assert_eq!(end, TunnelEnd::Stalled);
        assert_eq!(lasted, IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn each_fin_is_passed_on_and_the_tunnel_closes() {
        let (mut client, mut backend, run) = tunnel(1024);
        client.write_all(b"bye").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        backend.shutdown().await.unwrap();
        assert_eq!(client.read(&mut [0u8; 8]).await.unwrap(), 0);
        assert_eq!(run.await.unwrap().0, TunnelEnd::Closed);
    }
}
