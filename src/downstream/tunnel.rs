//! Upgraded connections (WebSocket and any other `Upgrade`): after the
//! backend's 101, bytes are copied both ways on a backend connection of their
//! own. A FIN from either side is passed on as a half-close to the other, so
//! neither side is left in CLOSE_WAIT; silence in both directions for
//! `upgrade_idle_timeout` ends the tunnel.

use super::linger::CloseOutcome;
use crate::registry::Entry;
use crate::stream::ClientStream;
use crate::upstream::RawConn;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CHUNK: usize = 8 * 1024;

/// Tunnels until both sides closed, one failed, or both were silent for
/// `idle`. `conn` keeps its backend pool slot until the tunnel ends.
pub async fn run<S: ClientStream>(
    mut client: S,
    mut conn: RawConn,
    pending: BytesMut,
    idle: Duration,
    entry: &Entry,
) -> CloseOutcome {
    let backend = &mut conn.stream;
    if !pending.is_empty() && tokio::time::timeout(idle, backend.write_all(&pending)).await.is_err() {
        super::linger::abort(client.into_tcp_abort());
        return CloseOutcome::Error;
    }
    let outcome = pump(&mut client, backend, idle, entry).await;
    let tcp = client.into_tcp().await;
    if outcome != CloseOutcome::ClientFin {
        super::linger::abort(tcp); // idle or broken: no orphan left behind
    }
    outcome
}

/// Copies both ways until both sides have closed, one fails, or both are silent for `idle`.
async fn pump<A, B>(a: &mut A, b: &mut B, idle: Duration, entry: &Entry) -> CloseOutcome
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_buf, mut b_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let step = tokio::select! {
            r = a.read(&mut a_buf), if a_open => {
                pass_on(r, &a_buf, &mut a_open, b, &entry.bytes_in, CloseOutcome::Reset).await
            }
            r = b.read(&mut b_buf), if b_open => {
                pass_on(r, &b_buf, &mut b_open, a, &entry.bytes_out, CloseOutcome::Error).await
            }
            () = tokio::time::sleep(idle) => Err(CloseOutcome::LingerTimeout),
        };
        if let Err(outcome) = step {
            return outcome;
        }
    }
    CloseOutcome::ClientFin
}

/// One read from one side, passed to the other: its bytes, or its FIN as a
/// half-close. `on_read_error` is how a failed read ends the tunnel.
async fn pass_on<W: AsyncWrite + Unpin>(
    read: std::io::Result<usize>,
    buf: &[u8],
    open: &mut bool,
    to: &mut W,
    counter: &AtomicU64,
    on_read_error: CloseOutcome,
) -> Result<(), CloseOutcome> {
    match read {
        Ok(0) => {
            *open = false;
            let _ = to.shutdown().await;
            Ok(())
        }
        Ok(n) => {
            counter.fetch_add(n as u64, Ordering::Relaxed);
            to.write_all(&buf[..n]).await.map_err(|_| CloseOutcome::Error)
        }
        Err(_) => Err(on_read_error),
    }
}
