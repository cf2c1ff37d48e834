//! `hoard`: clients that keep a pool of keep-alive connections and send a
//! request on each every few seconds, as crawlers do; a closed connection
//! is replaced at once. Against a server with a connection limit and no
//! way to take idle slots back, they lock everyone else out: the
//! *newcomers* (one new connection, one GET, answered within
//! [`NEWCOMER_DEADLINE`] or failed) measure that.
//!
//! A request on a reused connection that the server had closed, answered
//! by nothing at all, is sent again once on a new connection (RFC 9112
//! §9.3.1, what browsers and crawlers do): it counts as retried, not lost.
//! Every await is bounded by the run's deadline or a response wait.

use super::wire::{self, Cut};
use super::{ConnOutcome, End, Options};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Connections each hoarding client keeps.
pub const DEFAULT_POOL: usize = 4;
pub const MAX_POOL: usize = 256;
/// A crawler's pace on each connection (the measurement: 3 s).
pub const DEFAULT_EVERY: Duration = Duration::from_secs(3);
/// How long a newcomer waits for its answer before it counts as locked out.
pub const NEWCOMER_DEADLINE: Duration = Duration::from_secs(2);
/// At most this many newcomers per second.
pub const MAX_NEWCOMER_RATE: f64 = 1000.0;
/// Longest wait for one hoarder response.
const RESPONSE_WAIT: Duration = Duration::from_secs(5);

fn get(o: &Options, close: bool) -> String {
    let conn = if close { "close" } else { "keep-alive" };
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: finguard-simulate hoard\r\nConnection: {conn}\r\n\r\n",
        o.path, o.target
    )
}

async fn connect(target: SocketAddr) -> Option<TcpStream> {
    let s = tokio::time::timeout(RESPONSE_WAIT, TcpStream::connect(target))
        .await
        .ok()?
        .ok()?;
    let _ = s.set_nodelay(true);
    Some(s)
}

/// One request; `Err` with `true` when nothing at all came back.
async fn ask(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<wire::Resp, (Cut, bool)> {
    buf.clear();
    if let Err(e) = s.write_all(req).await {
        let cut = if wire::is_reset(&e) { Cut::Reset } else { Cut::Eof };
        return Err((cut, true));
    }
    match wire::read_response(s, buf, Instant::now() + RESPONSE_WAIT).await {
        Ok(r) => Ok(r),
        Err(cut) => Err((cut, buf.is_empty() && cut != Cut::Timeout)),
    }
}

/// One connection of a hoarding client's pool, from its first request to
/// the end of the run; `i` staggers it within the pace.
pub async fn hoard(
    o: &Options,
    i: usize,
    first: TcpStream,
    deadline: Instant,
    stop: &CancellationToken,
) -> ConnOutcome {
    let mut out = ConnOutcome::default();
    let every = o.every.max(Duration::from_millis(10));
    let req = get(o, false);
    let mut buf = Vec::new();
    let mut conn = Some(first);
    // Spread over the pace, so that the requests do not come in waves.
    let offset = every.mul_f64((i % 16) as f64 / 16.0);
    let mut next = Instant::now();
    let mut fresh = true;
    loop {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match connect(o.target).await {
                Some(s) => {
                    fresh = true;
                    conn.insert(s)
                }
                None => {
                    out.end = End::Rst;
                    break;
                }
            },
        };
        out.sent += 1;
        let mut r = ask(s, req.as_bytes(), &mut buf).await;
        if let Err((_, true)) = r {
            if !fresh {
                // The server had closed it while idle: a new connection.
                out.retried += 1;
                match connect(o.target).await {
                    Some(n) => r = ask(conn.insert(n), req.as_bytes(), &mut buf).await,
                    None => r = Err((Cut::Eof, true)),
                }
            }
        }
        let closes = match &r {
            Ok(resp) => {
                out.complete += 1;
                out.statuses.push(resp.status);
                resp.closes
            }
            Err((Cut::Reset, _)) => {
                out.lost_reset += 1;
                true
            }
            Err(_) => {
                out.missing += 1;
                true
            }
        };
        if closes {
            conn = None;
        }
        fresh = false;
        next = if out.sent == 1 { next + offset } else { next + every };
        // Idle until the next request, noticing a close from the server
        // (a client pool closes its end then, and opens anew when needed).
        // The pool is kept, and watched, until the last newcomer is done.
        let last = next >= deadline;
        if last {
            next = if o.newcomers > 0.0 {
                deadline + NEWCOMER_DEADLINE
            } else {
                deadline
            };
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                () = stop.cancelled() => break,
                end = server_closed(conn.as_mut()) => if end { conn = None },
            }
        }
        if last || stop.is_cancelled() {
            break;
        }
    }
    if let Some(mut s) = conn {
        if out.end == End::Open {
            out.end = wire::probe_end(&mut s).await;
        }
        out.socket = Some(s);
    }
    out
}

/// Resolves when the server ends an idle connection (`true`) or sends
/// something unasked (`false`, discarded); never without a connection.
async fn server_closed(conn: Option<&mut TcpStream>) -> bool {
    let Some(s) = conn else {
        return std::future::pending().await;
    };
    let mut b = [0u8; 512];
    !matches!(tokio::io::AsyncReadExt::read(s, &mut b).await, Ok(n) if n > 0)
}

/// Newcomers' fate: how many came, how many were answered in time.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Newcomers {
    pub sent: u64,
    /// Answered (any status) within [`NEWCOMER_DEADLINE`].
    pub answered: u64,
    /// Of the answered: connect to the whole response, 50th and 99th percentile.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// New clients at `rate` per second from `from` to `until`: each a new
/// connection with one GET (`Connection: close`).
pub async fn newcomers(o: &Options, from: Instant, until: Instant, stop: &CancellationToken) -> Newcomers {
    let rate = o.newcomers.clamp(0.0, MAX_NEWCOMER_RATE);
    let mut result = Newcomers::default();
    if rate <= 0.0 {
        return result;
    }
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut set = tokio::task::JoinSet::new();
    let mut at = from;
    while at < until && !stop.is_cancelled() {
        tokio::time::sleep_until(at).await;
        let (target, req) = (o.target, get(o, true));
        set.spawn(async move {
            let began = Instant::now();
            let give_up = began + NEWCOMER_DEADLINE;
            let answered = tokio::time::timeout_at(give_up, async {
                let mut s = TcpStream::connect(target).await.ok()?;
                s.write_all(req.as_bytes()).await.ok()?;
                wire::read_response(&mut s, &mut Vec::new(), give_up).await.ok()
            })
            .await;
            matches!(answered, Ok(Some(_))).then(|| began.elapsed())
        });
        result.sent += 1;
        at += gap;
    }
    let mut took = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(t)) = r {
            took.push(t);
        }
    }
    took.sort_unstable();
    result.answered = took.len() as u64;
    let pct = |q: f64| {
        let i = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1;
        took[i].as_secs_f64() * 1000.0
    };
    if !took.is_empty() {
        result.p50_ms = Some(pct(0.50));
        result.p99_ms = Some(pct(0.99));
    }
    result
}
