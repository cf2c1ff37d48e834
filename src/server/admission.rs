//! Who may hold a connection: the count of each client IP's open
//! connections (`max_connections_per_ip`), and the answer to a connection
//! refused before its first request. A refusal must never hold what other
//! clients need: it takes no connection slot, and closes promptly.

use crate::downstream;
use crate::shared::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The longest a refused connection's answer may take to write, and its
/// lingering close's `linger_time` and `linger_timeout`. The answer is a few
/// bytes that a reading client has at once; the cut keeps a client that never
/// falls silent for `linger_timeout` (a byte a second) from holding the
/// socket for `linger_time`.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

pub(super) use crate::shared::IpGuard;

/// Answers a connection refused before any request is read (503 over
/// `max_connections_per_ip`, 400 for a bad PROXY header), then closes it the
/// configured way with `linger_time` and `linger_timeout` cut to
/// [`REFUSAL_LINGER`]. It holds no connection slot (the caller has none, or
/// dropped it), only one of `refusals`: past those, and on a TLS listener
/// (no plaintext answer there), a reset at once.
pub(super) async fn refuse(
    mut stream: TcpStream,
    status: u16,
    shared: Arc<Shared>,
    tls: bool,
    refusals: Arc<Semaphore>,
) {
    use tokio::io::AsyncWriteExt;
    if tls {
        return downstream::linger::abort(stream);
    }
    let Ok(_closing) = refusals.try_acquire_owned() else {
        return downstream::linger::abort(stream);
    };
    let configured = shared.policies.base().settings.close;
    let close = crate::config::CloseSettings {
        linger_time: configured.linger_time.min(REFUSAL_LINGER),
        linger_timeout: configured.linger_timeout.min(REFUSAL_LINGER),
        ..configured
    };
    let bytes = crate::exchange::error_response(status, false, false, false);
    if tokio::time::timeout(REFUSAL_LINGER, stream.write_all(&bytes))
        .await
        .is_ok()
    {
        downstream::linger::close(stream, &close, std::future::pending(), |_| ()).await;
    }
}
