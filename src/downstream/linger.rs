//! Closing a client connection: lingering close, SO_LINGER, or immediate.
//!
//! Lingering close (Apache's `lingering_close`, nginx's `lingering_close`):
//! the response is already flushed; shut down the write half (FIN), then read
//! and discard whatever the client still sends until it closes, goes silent for
//! `linger_timeout`, or `linger_time` has passed. Closing without this while
//! the client is still sending makes the kernel answer with RST, and the
//! client's stack throws away the response it had not read yet.
//!
//! On a timeout, `on_timeout = "reset"` aborts with RST (`SO_LINGER {on, 0}`):
//! no orphaned FIN_WAIT_2 is left to the kernel's `tcp_fin_timeout`. The
//! exception: response bytes still queued for a client whose stack answers
//! go to the kernel with a plain close, never thrown away by a reset.
//! User-space lingering and SO_LINGER are never both applied to one socket.
//! When the client's FIN came first, the close is at once, its orphan
//! bounded by `linger_time` ([`crate::sys::bound_orphan`]): a client whose
//! host went away after its FIN never acknowledges finguard's.

use crate::config::{CloseMode, CloseSettings, OnTimeout};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use crate::metrics::CloseOutcome;

/// Bytes drained per read; one small buffer per lingering connection.
const DRAIN_CHUNK: usize = 2048;

/// Closes `stream` the way `settings` says. Returns how it ended and how many
/// bytes were drained and discarded.
/// `kill` ends the lingering early (the reaper's safety net): it counts as
/// `linger_time` and follows `on_timeout`. `sending` is told when the close
/// begins to wait for the send queue (`true`) and when that wait is over.
pub async fn close(
    mut stream: TcpStream,
    settings: &CloseSettings,
    kill: impl std::future::Future<Output = ()>,
    sending: impl Fn(bool),
) -> (CloseOutcome, u64) {
    match settings.mode {
        CloseMode::Immediate => (CloseOutcome::Immediate, 0),
        CloseMode::SoLinger => {
            close_so_linger(stream, settings.linger_time).await;
            (CloseOutcome::Immediate, 0)
        }
        CloseMode::Lingering => {
            // Already done after a TLS close_notify; the drain tells the rest.
            let _ = stream.shutdown().await;
            let early = match read_at_once(&mut stream) {
                Some(0) => {
                    // The client's FIN came first: finguard's goes out last,
                    // and a client whose host went away after sending its
                    // own never acknowledges it (LAST_ACK).
                    crate::sys::bound_orphan(&stream, settings.linger_time);
                    return (CloseOutcome::ClientFin, 0);
                }
                Some(n) => n as u64,
                None => 0,
            };
            let (outcome, mut drained) = tokio::select! {
                r = drain(&mut stream, settings) => r,
                () = kill => (CloseOutcome::LingerTime, 0),
            };
            drained += early;
            let timed_out = matches!(outcome, CloseOutcome::LingerTimeout | CloseOutcome::LingerTime);
            if timed_out && settings.on_timeout == OnTimeout::Reset {
                // A reset throws away what the client has not received yet. A
                // slow reader still taking the response is waited for while
                // its send queue drains, then given one more `linger_timeout`
                // to read what its own receive buffer holds. One that took
                // nothing for `linger_time` but whose stack still answers (a
                // program asleep with its buffer full: `curl --limit-rate`
                // sleeping off a fast start) is closed without a reset: the
                // kernel delivers the rest, or ends the orphan by its own
                // limits (`tcp_orphan_retries`, `tcp_max_orphans`), as nginx's
                // close does. Only a client whose stack is gone is reset with
                // response bytes still queued. Looked at only here: the
                // common close, ended by the client's FIN, makes no system
                // call for it.
                let queued = crate::sys::unsent_bytes(&stream).is_some_and(|q| q > 0);
                if queued {
                    sending(true);
                    let (queue_sent, more) = wait_sent_reading(&stream, settings.linger_time).await;
                    sending(false);
                    drained += more;
                    if queue_sent {
                        let grace = CloseSettings {
                            linger_time: settings.linger_timeout,
                            ..*settings
                        };
                        if let (CloseOutcome::ClientFin, more) = drain(&mut stream, &grace).await {
                            return (CloseOutcome::ClientFin, drained + more);
                        }
                    } else if crate::sys::peer_answers(&stream) {
                        return (outcome, drained);
                    }
                }
                abort(stream);
            }
            (outcome, drained)
        }
    }
}

/// What a read of `stream` gives at once, from the readiness finguard
/// already has (no system call when it has none): `Some(0)`, the client's
/// FIN is in; `Some(n)`, bytes read and discarded; `None`, it would wait.
fn read_at_once(stream: &mut TcpStream) -> Option<usize> {
    use tokio::io::AsyncRead;
    let mut b = [0u8; DRAIN_CHUNK];
    let mut buf = tokio::io::ReadBuf::new(&mut b);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf) {
        std::task::Poll::Ready(Ok(())) => Some(buf.filled().len()),
        _ => None,
    }
}

/// Reads and discards until EOF, silence or the overall cap.
async fn drain(stream: &mut TcpStream, s: &CloseSettings) -> (CloseOutcome, u64) {
    let deadline = Instant::now() + s.linger_time;
    let mut buf = [0u8; DRAIN_CHUNK];
    let mut drained = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (CloseOutcome::LingerTime, drained);
        }
        let wait = s.linger_timeout.min(deadline - now);
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) => return (CloseOutcome::ClientFin, drained),
            Ok(Ok(n)) => drained += n as u64,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return (CloseOutcome::Reset, drained),
            Ok(Err(_)) => return (CloseOutcome::Error, drained),
            Err(_) if Instant::now() >= deadline => return (CloseOutcome::LingerTime, drained),
            Err(_) => return (CloseOutcome::LingerTimeout, drained),
        }
    }
}

/// Longest pause between two looks at a send queue that is draining.
const SENT_POLL_MAX: Duration = Duration::from_millis(100);

/// Waits until everything written to `stream` has been acknowledged by the
/// client (the kernel's send queue is empty), so that no close timer runs
/// while a slow reader is still taking the response, and a reset on timeout
/// never discards response bytes. The kernel offers no event for this, so the
/// queue is looked at with a growing pause (2 ms up to 100 ms). Returns
/// `false` when the queue made no progress for `stall` (a client that stopped
/// reading) or never will: the client reset the connection, and what it had
/// not acknowledged stays counted.
pub async fn wait_sent(stream: &TcpStream, stall: Duration) -> bool {
    let mut last = match crate::sys::unsent_bytes(stream) {
        None | Some(0) => return true,
        Some(_) if crate::sys::tcp_closed(stream) => return false,
        Some(n) => n,
    };
    let mut since = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(SENT_POLL_MAX);
        match crate::sys::unsent_bytes(stream) {
            None | Some(0) => return true,
            Some(_) if crate::sys::tcp_closed(stream) => return false,
            Some(n) if n < last => {
                last = n;
                since = Instant::now();
            }
            Some(_) if since.elapsed() >= stall => return false,
            Some(_) => {}
        }
    }
}

/// [`wait_sent`], reading and discarding what the client sends meanwhile
/// (unread input would turn the close into a reset, and the queued
/// response with it). Returns `wait_sent`'s answer and the bytes read.
async fn wait_sent_reading(stream: &TcpStream, stall: Duration) -> (bool, u64) {
    let sent = wait_sent(stream, stall);
    tokio::pin!(sent);
    let mut buf = [0u8; DRAIN_CHUNK];
    let (mut drained, mut open) = (0u64, true);
    loop {
        tokio::select! {
            biased;
            done = &mut sent => return (done, drained),
            r = stream.readable(), if open => match r.and_then(|()| stream.try_read(&mut buf)) {
                Ok(0) => open = false,
                Ok(n) => drained += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => open = false,
            },
        }
    }
}

/// Closes with RST: `SO_LINGER {on, 0}` then close.
pub fn abort(stream: TcpStream) {
    // Linger 0 never blocks: close() sends RST and returns at once.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Closes `stream` to a peer whose host stopped answering
/// ([`crate::sys::peer_gone`]): a plain close, so that the kernel keeps
/// retransmitting what is queued, and the FIN, to a peer that was only out
/// of reach (a network outage) and comes back; bounded by
/// `TCP_USER_TIMEOUT` (`within`, counted from the first unanswered
/// retransmission), past which the kernel drops the orphan without a word.
/// A reset would go out once, be lost while the peer is out of reach, and
/// leave a client that comes back waiting for bytes that never come.
pub fn let_go(stream: TcpStream, within: Duration) {
    let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(within));
    drop(stream);
}

/// `SO_LINGER {on, t}` makes `close()` block up to `t` even on a non-blocking
/// socket, so the close runs on the blocking pool, never on a reactor thread.
async fn close_so_linger(stream: TcpStream, t: Duration) {
    let Ok(std) = stream.into_std() else { return };
    let _ = socket2::SockRef::from(&std).set_linger(Some(t));
    let _ = tokio::task::spawn_blocking(move || drop(std)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const SETTINGS: CloseSettings = CloseSettings {
        mode: CloseMode::Lingering,
        linger_time: Duration::from_secs(30),
        linger_timeout: Duration::from_secs(2),
        on_timeout: OnTimeout::Close,
    };

    /// A connected pair on loopback: (finguard's side, the client's side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (server, client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_let_go_after_linger_timeout() {
        let (server, _client) = pair().await;
        let started = Instant::now();
        let (outcome, drained) = close(server, &SETTINGS, std::future::pending(), |_| ()).await;
        assert_eq!((outcome, drained), (CloseOutcome::LingerTimeout, 0));
        assert_eq!(started.elapsed(), SETTINGS.linger_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_sending_is_let_go_at_linger_time() {
        let (server, mut client) = pair().await;
        let sender = tokio::spawn(async move {
            // One write a second: never silent for linger_timeout.
            while client.write_all(&[b'x'; 100]).await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = Instant::now();
        let (outcome, drained) = close(server, &SETTINGS, std::future::pending(), |_| ()).await;
        assert_eq!(outcome, CloseOutcome::LingerTime);
        assert_eq!(started.elapsed(), SETTINGS.linger_time);
        assert!(drained >= 2900, "{drained}");
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_reapers_kill_ends_lingering_at_once() {
        let (server, _client) = pair().await;
        let started = Instant::now();
        let (outcome, _) = close(server, &SETTINGS, std::future::ready(()), |_| ()).await;
        assert_eq!(outcome, CloseOutcome::LingerTime);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// A pair whose server side has a full send queue: the client reads nothing.
    async fn stuck_queue() -> (TcpStream, TcpStream) {
        let (server, client) = pair().await;
        let chunk = [b'q'; 65536];
        loop {
            server.writable().await.unwrap();
            match server.try_write(&chunk) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(crate::sys::unsent_bytes(&server).is_some_and(|n| n > 0));
        (server, client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stopped_reading_is_given_up_after_the_stall_time() {
        let (server, _client) = stuck_queue().await;
        let started = Instant::now();
        assert!(!wait_sent(&server, Duration::from_secs(5)).await);
        assert!(started.elapsed() >= Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reset_is_given_up_at_once() {
        let (server, client) = stuck_queue().await;
        abort(client);
        // The reset arrives over loopback: seen as the socket's read error.
        let mut b = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                server.readable().await?;
                match server.try_read(&mut b) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    r => return r,
                }
            }
        })
        .await;
        assert!(matches!(read, Ok(Err(_))), "no reset seen: {read:?}");
        let started = Instant::now();
        assert!(!wait_sent(&server, Duration::from_secs(30)).await);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "waited on a queue that can never drain"
        );
    }

    #[tokio::test]
    async fn a_client_that_reads_everything_is_waited_for() {
        let (server, mut client) = stuck_queue().await;
        let reader = tokio::spawn(async move {
            let mut b = vec![0u8; 65536];
            while client.read(&mut b).await.is_ok_and(|n| n > 0) {}
        });
        assert!(wait_sent(&server, Duration::from_secs(5)).await);
        drop(server);
        reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_fin_ends_lingering_with_what_it_sent_counted() {
        let (server, mut client) = pair().await;
        client.write_all(b"pipelined rest").await.unwrap();
        client.shutdown().await.unwrap();
        let (outcome, drained) = close(server, &SETTINGS, std::future::pending(), |_| ()).await;
        assert_eq!((outcome, drained), (CloseOutcome::ClientFin, 14));
    }
}
