//! The *naive* backend of `finguard demo` and of the tests: it answers
//! early and closes outright (no lingering close), closes idle keep-alive
//! connections after a second, and is slow to close after a client's FIN
//! (the CLOSE_WAIT leak of the field report). Loopback only, ends when
//! dropped.
//!
//! [`Naive::limited`] is a small front of its own kind (a prefork server,
//! or any front at its connection limit): at most a few connections at a
//! time, Apache's 5 s keep-alive, the rest waiting in the backlog.
//!
//! [`Naive::start_workers`] is a small prefork server: a connection holds a
//! worker for its whole life (keep-alive waits included), the others wait
//! in the listen queue. `GET /big` answers [`BIG_BYTES`] and `POST /upload`
//! reads its whole body before answering, so a slow reader or uploader
//! holds its worker as long as it likes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The naive backend's keep-alive timeout.
const NAIVE_KEEPALIVE: Duration = Duration::from_secs(1);
/// How long the naive backend leaves a socket in CLOSE_WAIT after the client's FIN.
const NAIVE_CLOSE_DELAY: Duration = Duration::from_secs(20);
/// `GET /big`: more than the socket buffers between a worker and a client.
pub const BIG_BYTES: usize = 4 << 20;
/// A worker-limited backend's send buffer, fixed (as a server that sets
/// `SO_SNDBUF` has): what the kernel takes off a worker's hands is known.
const SEND_BUFFER: u32 = 64 * 1024;
/// The longest wait for the next piece of a request body (Apache's `Timeout`).
const BODY_WAIT: Duration = Duration::from_secs(30);

/// How a naive server treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct NaiveOpts {
    /// At most this many connections at a time; the rest wait in the backlog.
    pub slots: Option<usize>,
    pub keepalive: Duration,
    /// How long it leaves a socket in CLOSE_WAIT after the client's FIN.
    pub close_delay: Duration,
    /// A fixed send buffer (as a server that sets `SO_SNDBUF` has).
    pub send_buffer: Option<u32>,
}

impl Default for NaiveOpts {
    fn default() -> Self {
        NaiveOpts {
            slots: None,
            keepalive: NAIVE_KEEPALIVE,
            close_delay: NAIVE_CLOSE_DELAY,
            send_buffer: None,
        }
    }
}

/// The embedded naive backend.
pub struct Naive {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Naive {
    /// Listens on 127.0.0.1, an ephemeral port; no limit on connections.
    pub async fn start() -> std::io::Result<Naive> {
        Naive::start_with(NaiveOpts::default()).await
    }

    /// A front with `slots` connections at a time and Apache's 5 s
    /// keep-alive, which closes promptly after a client's FIN.
    pub async fn limited(slots: usize) -> std::io::Result<Naive> {
        Naive::start_with(NaiveOpts {
            slots: Some(slots),
            keepalive: Duration::from_secs(5),
            close_delay: Duration::ZERO,
            send_buffer: None,
        })
        .await
    }

    /// As a prefork server with `workers` workers (at least one), each
    /// connection with a fixed 64 KiB send buffer.
    ///
    /// Like Apache prefork, it keeps a connection 5 s between requests and
    /// closes at once after a client's FIN (the slow rows are about slow
    /// clients, not about the CLOSE_WAIT leak of the other rows).
    pub async fn start_workers(workers: usize) -> std::io::Result<Naive> {
        Naive::start_with(NaiveOpts {
            slots: Some(workers.max(1)),
            send_buffer: Some(SEND_BUFFER),
            keepalive: Duration::from_secs(5),
            close_delay: Duration::ZERO,
        })
        .await
    }

    pub async fn start_with(opts: NaiveOpts) -> std::io::Result<Naive> {
        let sock = TcpSocket::new_v4()?;
        if let Some(size) = opts.send_buffer {
            sock.set_send_buffer_size(size)?;
        }
        sock.bind(([127, 0, 0, 1], 0).into())?;
        let l = sock.listen(1024)?;
        let addr = l.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (count, st) = (accepted.clone(), stop.clone());
        let slots = Arc::new(Semaphore::new(opts.slots.unwrap_or(Semaphore::MAX_PERMITS)));
        tokio::spawn(async move {
            loop {
                // A slot (a worker) first: without one, clients wait in the backlog.
                let slot = tokio::select! {
                    s = slots.clone().acquire_owned() => s,
                    () = st.cancelled() => return,
                };
                let Ok(slot) = slot else { return };
                let conn = tokio::select! {
                    c = l.accept() => c,
                    () = st.cancelled() => return,
                };
                if let Ok((s, _)) = conn {
                    count.fetch_add(1, Ordering::Relaxed);
                    let st = st.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = naive_conn(s, opts) => {}
                            () = st.cancelled() => {}
                        }
                        drop(slot);
                    });
                }
            }
        });
        Ok(Naive { addr, accepted, stop })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Naive {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A server without lingering close and with a slow close after the peer's FIN.
async fn naive_conn(mut s: TcpStream, opts: NaiveOpts) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(opts.keepalive, s.read(&mut chunk)).await {
                Err(_) => return, // keep-alive timeout: close outright
                Ok(Ok(0)) => {
                    // The client's FIN: this server gets round to closing much later.
                    tokio::time::sleep(opts.close_delay).await;
                    return;
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(Err(_)) => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let malformed = head.lines().skip(1).any(|l| !l.is_empty() && !l.contains(':'));
        if !malformed && head.starts_with("GET /big ") {
            if send_big(&mut s).await.is_err() {
                return;
            }
            continue;
        }
        if !malformed && head.starts_with("POST /upload ") {
            // The whole body first, however slowly it comes (a CGI reading stdin).
            let mut left = content_length(&head).saturating_sub(buf.len());
            buf.clear();
            let mut chunk = [0u8; 8192];
            while left > 0 {
                match tokio::time::timeout(BODY_WAIT, s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                    _ => return,
                }
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let reply: &[u8] = if malformed {
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n"
        } else if head.starts_with("POST") {
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\nConnection: close\r\n\r\nunauthorized\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"
        };
        if s.write_all(reply).await.is_err() || reply.starts_with(b"HTTP/1.1 4") {
            return; // closes at once, unread request bytes and all
        }
    }
}

/// The request head's `Content-Length` (0 when absent or unreadable).
fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `GET /big`: [`BIG_BYTES`], written as fast as the peer takes them.
async fn send_big(s: &mut TcpStream) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG_BYTES}\r\n\r\n");
    s.write_all(head.as_bytes()).await?;
    let block = [b'b'; 64 * 1024];
    let mut left = BIG_BYTES;
    while left > 0 {
        let n = left.min(block.len());
        s.write_all(&block[..n]).await?;
        left -= n;
    }
    Ok(())
}
