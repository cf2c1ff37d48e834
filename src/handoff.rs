//! Binary upgrade without a refused connection: the listening sockets are
//! handed to the new process over a Unix socket (`--upgrade-socket`), as
//! nginx's `USR2` hands them to its new master by inheritance and HAProxy's
//! `-x` fetches them from the old one.
//!
//! 1. The running finguard listens on the upgrade socket.
//! 2. A new finguard started with the same `--upgrade-socket` connects to it
//!    and receives every listening socket (each worker's, in order) as file
//!    descriptors (`SCM_RIGHTS`): the same kernel sockets, accept queues
//!    included, so no connection is refused or reset in between. They go in
//!    messages of at most [`BATCH`] descriptors (the kernel takes no more
//!    than 253 in one), the first one led by the layout.
//! 3. It starts serving on them and says `ready`; only then does the old
//!    process stop accepting and drain, as on SIGTERM. If the new process
//!    fails before `ready`, the old one goes on serving as if nothing
//!    happened.
//!
//! Both sides talk over blocking std sockets on a blocking thread: this is
//! one short exchange per upgrade.

use sendfd::{RecvWithFd, SendWithFd};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Listening sockets received from the old process: `[listener][k]`.
pub type Inherited = Vec<Vec<std::net::TcpListener>>;

/// How long each side waits for the other during the exchange.
const STEP: Duration = Duration::from_secs(10);

/// Descriptors per message: Linux refuses an `SCM_RIGHTS` message of more
/// than `SCM_MAX_FD` (253), and 64 workers with 4 listeners are 256 sockets.
/// Every message carries descriptors, so the receiver reads one per call
/// (the kernel ends a read after a message with descriptors).
const BATCH: usize = 250;

/// More listening sockets than a real layout has: a garbled one is refused
/// at once.
const MAX_SOCKETS: usize = 1 << 16;

/// The new process's side: takes the sockets of the finguard running on
/// `path`, if one is. `Ok(None)`: nobody there (a first start).
pub fn take(path: &Path) -> Result<Option<(Inherited, UnixStream)>, String> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let fail = |e: std::io::Error| format!("taking the sockets over {}: {e}", path.display());
    stream.set_read_timeout(Some(STEP)).map_err(fail)?;
    let mut head = [0u8; 64];
    let mut fds = [0; BATCH];
    let (n, nfds) = stream.recv_with_fd(&mut head, &mut fds).map_err(fail)?;
    let mut socks = adopt(&fds[..nfds]).map_err(fail)?;
    // The layout: "<listeners> <sockets per listener>\n".
    let text = String::from_utf8_lossy(&head[..n]).into_owned();
    let mut f = text.split_whitespace().map(|v| v.parse::<usize>().unwrap_or(0));
    let (listeners, per) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
    let total = listeners.checked_mul(per).filter(|&t| t <= MAX_SOCKETS && per > 0);
    let Some(total) = total else {
        return Err(format!("the running finguard sent a layout of {text:?}"));
    };
    while socks.len() < total {
        let mut mark = [0u8; 16];
        let (n, nfds) = stream.recv_with_fd(&mut mark, &mut fds).map_err(fail)?;
        if n == 0 || nfds == 0 {
            break;
        }
        socks.extend(adopt(&fds[..nfds]).map_err(fail)?);
    }
    if socks.len() != total {
        return Err(format!(
            "the running finguard sent {} sockets for a layout of {text:?}",
            socks.len()
        ));
    }
    let mut it = socks.into_iter();
    let inherited = (0..listeners).map(|_| it.by_ref().take(per).collect()).collect();
    Ok(Some((inherited, stream)))
}

/// Takes ownership of every received descriptor before judging any, so that
/// none is left open unowned when one is not a listening socket.
fn adopt(fds: &[RawFd]) -> std::io::Result<Vec<std::net::TcpListener>> {
    let adopted: Vec<_> = fds.iter().map(|&fd| crate::sys::inherited_listener(fd)).collect();
    adopted.into_iter().collect()
}

/// The new process is serving: the old one may stop.
pub fn confirm(mut stream: UnixStream) {
    if let Err(e) = stream.write_all(b"ready\n") {
        warn!("upgrade: cannot tell the old process to stop: {e}");
    }
}

/// The running process's side: serves upgrade requests on `path` until one
/// succeeds, then cancels `upgraded` (the caller drains and exits).
/// `sockets` are duplicates of every listening socket, `[listener][k]`.
pub fn serve(path: PathBuf, sockets: Inherited, upgraded: CancellationToken) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::thread::Builder::new()
        .name("finguard-upgrade".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                match hand_over(&conn, &sockets) {
                    Ok(()) => {
                        info!(socket = %path.display(), "upgrade: a new process took the listening sockets; draining");
                        upgraded.cancel();
                        return;
                    }
                    Err(e) => warn!("upgrade: the new process did not take over, serving on: {e}"),
                }
            }
        })?;
    Ok(())
}

fn hand_over(conn: &UnixStream, sockets: &Inherited) -> std::io::Result<()> {
    let per = sockets.first().map_or(0, Vec::len);
    let fds: Vec<_> = sockets.iter().flatten().map(|s| s.as_raw_fd()).collect();
    let mut batches = fds.chunks(BATCH);
    let layout = format!("{} {per}\n", sockets.len());
    conn.send_with_fd(layout.as_bytes(), batches.next().unwrap_or(&[]))?;
    for batch in batches {
        conn.send_with_fd(b"+", batch)?;
    }
    conn.set_read_timeout(Some(STEP))?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    if line.trim() == "ready" {
        Ok(())
    } else {
        Err(std::io::Error::other("it closed before saying ready"))
    }
}
