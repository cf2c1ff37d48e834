//! The well-behaved load: keep-alive GETs at a constant arrival rate.
//!
//! Open loop, as wrk2 does it: request `k` is due at `start + k / rate`
//! whatever happened to the ones before, and its latency runs from that
//! intended time, so a server that stalls is charged for every request it
//! held back (coordinated omission corrected). A fixed pool of connections
//! takes the due requests in turn from one counter; none waits in a queue
//! that could grow without bound. Every await has a deadline.

use super::{Requests, Tick, CONNECT_WAIT};
use crate::simulate::wire::{self, Cut};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest wait for one response.
const RESPONSE_WAIT: Duration = Duration::from_secs(5);
/// After the run's duration, how long late requests may still be sent and
/// answered; the rest count as not sent.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// The histogram's range: 1 µs to a minute, 3 significant digits.
const HIST_MAX_US: u64 = 60_000_000;

pub struct LoadOptions {
    pub target: SocketAddr,
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    pub path: String,
}

impl LoadOptions {
    pub fn new(o: &super::Options, target: SocketAddr) -> Self {
        LoadOptions {
            target,
            rate: o.rate,
            duration: o.duration,
            connections: o.connections,
            path: o.path.clone(),
        }
    }
}

/// Counters read by the progress line while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
}

impl Live {
    pub fn tick<'a>(&self, index: usize, name: &'a str, elapsed: Duration, duration: Duration) -> Tick<'a> {
        Tick {
            index,
            name,
            elapsed,
            duration,
            sent: self.sent.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// What the load saw.
#[derive(Debug)]
pub struct Stats {
    pub requests: Requests,
    pub statuses: BTreeMap<u16, u64>,
    /// Microseconds from intended send to the end of the response.
    pub histogram: Histogram<u64>,
    pub per_second: Vec<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: Requests::default(),
            statuses: BTreeMap::new(),
            histogram: new_histogram(),
            per_second: Vec::new(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that the constructor accepts.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).unwrap_or_else(|_| Histogram::new(3).expect("3 sigfig"))
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        let (a, b) = (&mut self.requests, o.requests);
        a.sent += b.sent;
        a.answered += b.answered;
        a.errors += b.errors;
        a.lost_to_reset += b.lost_to_reset;
        a.retried += b.retried;
        for (s, n) in o.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        let _ = self.histogram.add(&o.histogram);
        if self.per_second.len() < o.per_second.len() {
            self.per_second.resize(o.per_second.len(), 0);
        }
        for (i, n) in o.per_second.into_iter().enumerate() {
            self.per_second[i] += n;
        }
    }
}

/// The shared schedule: which request is next, and when each is due.
struct Schedule {
    start: Instant,
    next: AtomicU64,
    total: u64,
    rate: f64,
    /// No request is sent or waited for past this.
    hard_end: Instant,
}

impl Schedule {
    fn due(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(k as f64 / self.rate)
    }
}

/// Runs the load from `start` for the duration (or until `stop`); hands
/// back the numbers and the connections, still open for the census.
pub async fn run(o: LoadOptions, start: Instant, live: Arc<Live>, stop: CancellationToken) -> (Stats, Vec<TcpStream>) {
    let total = (o.duration.as_secs_f64() * o.rate).floor() as u64;
    let sched = Arc::new(Schedule {
        start,
        next: AtomicU64::new(0),
        total,
        rate: o.rate,
        hard_end: start + o.duration + DRAIN_GRACE,
    });
    let req: Arc<[u8]> = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: finguard-compare\r\n\r\n",
        o.path, o.target
    )
    .into_bytes()
    .into();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..o.connections.min(total.max(1) as usize) {
        let w = Worker {
            target: o.target,
            req: req.clone(),
            sched: sched.clone(),
            live: live.clone(),
            stop: stop.clone(),
        };
        set.spawn(w.run());
    }
    let mut stats = Stats::default();
    let mut held = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok((s, conn)) = r {
            stats.merge(s);
            held.extend(conn);
        }
    }
    let ended = Instant::now().min(sched.hard_end);
    let due = ((ended - start).as_secs_f64() * o.rate).ceil() as u64;
    stats.requests.intended = due.min(total).max(stats.requests.sent);
    stats.requests.not_sent = stats.requests.intended - stats.requests.sent;
    (stats, held)
}

struct Worker {
    target: SocketAddr,
    req: Arc<[u8]>,
    sched: Arc<Schedule>,
    live: Arc<Live>,
    stop: CancellationToken,
}

/// One request's fate.
enum Fate {
    Answered { status: u16, closes: bool },
    Reset,
    Failed,
}

impl Worker {
    async fn run(self) -> (Stats, Option<TcpStream>) {
        let mut stats = Stats::default();
        let mut conn: Option<(TcpStream, Vec<u8>)> = None;
        loop {
            let k = self.sched.next.fetch_add(1, Ordering::Relaxed);
            if k >= self.sched.total {
                break;
            }
            let due = self.sched.due(k);
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = self.stop.cancelled() => break,
            }
            if Instant::now() >= self.sched.hard_end {
                break;
            }
            let fate = self.one(&mut conn, &mut stats).await;
            self.record(fate, due, &mut conn, &mut stats);
        }
        (stats, conn.map(|(s, _)| s))
    }

    fn record(&self, fate: Fate, due: Instant, conn: &mut Option<(TcpStream, Vec<u8>)>, stats: &mut Stats) {
        match fate {
            Fate::Answered { status, closes } => {
                let now = Instant::now();
                let us = (now - due).as_micros().min(u128::from(HIST_MAX_US)) as u64;
                stats.histogram.saturating_record(us.max(1));
                let second = (now - self.sched.start).as_secs() as usize;
                if stats.per_second.len() <= second {
                    stats.per_second.resize(second + 1, 0);
                }
                stats.per_second[second] += 1;
                *stats.statuses.entry(status).or_default() += 1;
                stats.requests.answered += 1;
                self.live.answered.fetch_add(1, Ordering::Relaxed);
                if closes {
                    *conn = None;
                }
            }
            Fate::Reset => {
                stats.requests.lost_to_reset += 1;
                self.live.failed.fetch_add(1, Ordering::Relaxed);
                *conn = None;
            }
            Fate::Failed => {
                stats.requests.errors += 1;
                self.live.failed.fetch_add(1, Ordering::Relaxed);
                *conn = None;
            }
        }
    }

    /// Sends one request; resends once on a fresh connection when a reused
    /// one turns out closed before any byte of the answer came back.
    async fn one(&self, conn: &mut Option<(TcpStream, Vec<u8>)>, stats: &mut Stats) -> Fate {
        let reused = conn.is_some();
        stats.requests.sent += 1;
        self.live.sent.fetch_add(1, Ordering::Relaxed);
        match self.exchange(conn).await {
            Err((Cut::Eof | Cut::Reset, true)) if reused => {
                stats.requests.retried += 1;
                *conn = None;
                self.exchange(conn).await.unwrap_or_else(|(cut, _)| fate_of(cut))
            }
            Err((cut, _)) => fate_of(cut),
            Ok(f) => f,
        }
    }

    /// One request and its response; on failure, the cut and whether
    /// nothing at all came back.
    async fn exchange(&self, conn: &mut Option<(TcpStream, Vec<u8>)>) -> Result<Fate, (Cut, bool)> {
        let limit = (Instant::now() + RESPONSE_WAIT).min(self.sched.hard_end);
        if conn.is_none() {
            let c = tokio::time::timeout_at(
                limit.min(Instant::now() + CONNECT_WAIT),
                TcpStream::connect(self.target),
            );
            match c.await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    *conn = Some((s, Vec::new()));
                }
                _ => return Err((Cut::Timeout, false)),
            }
        }
        let Some((s, buf)) = conn.as_mut() else {
            return Err((Cut::Timeout, false));
        };
        match tokio::time::timeout_at(limit, s.write_all(&self.req)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if wire::is_reset(&e) => return Err((Cut::Reset, true)),
            _ => return Err((Cut::Timeout, false)),
        }
        buf.clear();
        match wire::read_response(s, buf, limit).await {
            Ok(r) => Ok(Fate::Answered {
                status: r.status,
                closes: r.closes,
            }),
            Err(cut) => Err((cut, buf.is_empty())),
        }
    }
}

fn fate_of(cut: Cut) -> Fate {
    if cut == Cut::Reset {
        Fate::Reset
    } else {
        Fate::Failed
    }
}
