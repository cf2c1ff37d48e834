//! Upgraded connections (WebSocket and any other `Upgrade`): after the
//! backend's 101, bytes are copied both ways on a backend connection of their
//! own. A FIN from either side is passed on as a half-close to the other, so
//! neither side is left in CLOSE_WAIT. The tunnel ends when both sides have
//! closed, when both were silent for `upgrade_idle_timeout`, or when a side
//! stops reading: every write has that same deadline, so a peer that floods
//! one that does not read cannot pin the task and both sockets.

use crate::metrics::TunnelEnd;
use crate::registry::Entry;
use crate::stream::ClientStream;
use crate::upstream::RawConn;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CHUNK: usize = 8 * 1024;

/// Tunnels until both sides closed, one failed or stalled, or both were
/// silent for `idle`. `conn` keeps its backend pool slot until the tunnel
/// ends; a tunnel that did not end cleanly resets both sockets.
pub async fn run<S: ClientStream>(
    mut client: S,
    mut conn: RawConn,
    pending: BytesMut,
    idle: Duration,
    entry: &Entry,
) -> TunnelEnd {
    let backend = &mut conn.stream;
    let end = match deadline(idle, backend.write_all(&pending)).await {
        Ok(()) => pump(&mut client, backend, idle, entry).await,
        Err(end) => end,
    };
    if end != TunnelEnd::Closed {
        // Idle, stalled or broken: no orphan left behind on either side.
        super::linger::abort(client.into_tcp_abort());
        super::linger::abort(conn.stream);
        return end;
    }
    drop(client.into_tcp().await);
    end
}

/// Runs one write with the tunnel's deadline.
async fn deadline(
    idle: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), TunnelEnd> {
    match tokio::time::timeout(idle, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(TunnelEnd::Error),
        Err(_) => Err(TunnelEnd::Stalled),
    }
}

/// Copies both ways until both sides have closed, one fails or stalls, or
/// both are silent for `idle`.
async fn pump<A, B>(a: &mut A, b: &mut B, idle: Duration, entry: &Entry) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_buf, mut b_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let step = tokio::select! {
            r = a.read(&mut a_buf), if a_open => {
                let r = r.map_err(|e| match e.kind() {
                    std::io::ErrorKind::ConnectionReset => TunnelEnd::ClientReset,
                    _ => TunnelEnd::Error,
                });
                pass_on(r, &a_buf, &mut a_open, b, &entry.bytes_in, idle).await
            }
            r = b.read(&mut b_buf), if b_open => {
                pass_on(r.map_err(|_| TunnelEnd::Error), &b_buf, &mut b_open, a, &entry.bytes_out, idle).await
            }
            () = tokio::time::sleep(idle) => Err(TunnelEnd::IdleTimeout),
        };
        if let Err(end) = step {
            return end;
        }
    }
    TunnelEnd::Closed
}

/// One read from one side, passed to the other within `idle`: its bytes, or
/// its FIN as a half-close.
async fn pass_on<W: AsyncWrite + Unpin>(
    read: Result<usize, TunnelEnd>,
    buf: &[u8],
    open: &mut bool,
    to: &mut W,
    counter: &AtomicU64,
    idle: Duration,
) -> Result<(), TunnelEnd> {
    match read? {
        0 => {
            *open = false;
            deadline(idle, to.shutdown()).await
        }
        n => {
            counter.fetch_add(n as u64, Ordering::Relaxed);
            deadline(idle, to.write_all(&buf[..n])).await
        }
    }
}
