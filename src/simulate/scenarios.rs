//! One connection of each scenario. Every await is bounded by the run's
//! deadline (plus a short grace for the final read), or ends on `stop`.

use super::wire::{self, Cut};
use super::{ConnOutcome, End, Options, Scenario};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest wait for a response the scenario expects.
const RESPONSE_WAIT: Duration = Duration::from_secs(5);
/// How long past the run's end a well-behaved client waits for its last answer.
const LAST_ANSWER_GRACE: Duration = Duration::from_secs(1);
/// A slowloris client's pace.
const DRIP: Duration = Duration::from_millis(100);

pub async fn one(o: &Options, i: usize, deadline: Instant, stop: CancellationToken) -> ConnOutcome {
    let mut out = ConnOutcome::default();
    let connect = tokio::time::timeout(RESPONSE_WAIT, TcpStream::connect(o.target)).await;
    let Ok(Ok(mut s)) = connect else {
        out.end = End::Rst;
        return out;
    };
    let _ = s.set_nodelay(true);
    match o.scenario {
        Scenario::NeverClose => never_close(o, &mut s, &mut out).await,
        Scenario::HalfClose => half_close(o, &mut s, &mut out).await,
        Scenario::PostUnauthorized => post_unauthorized(o, &mut s, &mut out).await,
        Scenario::PipelineError => pipeline_error(o, &mut s, &mut out).await,
        Scenario::Slowloris => slowloris(o, i, &mut s, &mut out, deadline, &stop).await,
        Scenario::IdleHold => idle_hold(o, &mut s, &mut out, deadline, &stop).await,
        Scenario::WellBehaved => return well_behaved(o, s, out, deadline, &stop).await,
        Scenario::Hoard => return super::hoard::hoard(o, i, s, deadline, &stop).await,
        Scenario::SlowRead => super::slow::slow_read(o, &mut s, &mut out, deadline, &stop).await,
        Scenario::SlowPost => super::slow::slow_post(o, &mut s, &mut out, deadline, &stop).await,
    }
    if out.end == End::Open {
        // Every client keeps its socket to the end of the run, so the census
        // sees what the server left behind, not what it was still doing.
        hold(deadline, &stop).await;
        out.end = wire::probe_end(&mut s).await;
    }
    out.socket = Some(s);
    out
}

fn get(o: &Options, close: bool) -> String {
    let conn = if close { "close" } else { "keep-alive" };
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: finguard-simulate\r\nConnection: {conn}\r\n\r\n",
        o.path, o.target
    )
}

/// Sends one request and reads one response into `out`.
async fn exchange(s: &mut TcpStream, req: &[u8], out: &mut ConnOutcome, buf: &mut Vec<u8>) -> Result<wire::Resp, Cut> {
    if let Err(e) = s.write_all(req).await {
        return Err(if wire::is_reset(&e) { Cut::Reset } else { Cut::Eof });
    }
    out.sent += 1;
    let started = Instant::now();
    let r = wire::read_response(s, buf, Instant::now() + RESPONSE_WAIT).await;
    record(out, &r);
    if r.is_ok() {
        out.latencies.push(started.elapsed());
    }
    r
}

fn record(out: &mut ConnOutcome, r: &Result<wire::Resp, Cut>) {
    match r {
        Ok(resp) => {
            out.complete += 1;
            out.statuses.push(resp.status);
        }
        Err(Cut::Reset) => out.lost_reset += 1,
        Err(_) => out.missing += 1,
    }
}

/// Waits until the deadline or `stop`, without touching the socket.
async fn hold(deadline: Instant, stop: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep_until(deadline) => {}
        () = stop.cancelled() => {}
    }
}

/// Asks the server to close, then neither reads nor closes again (the caller
/// holds the socket to the end of the run).
async fn never_close(o: &Options, s: &mut TcpStream, out: &mut ConnOutcome) {
    let mut buf = Vec::new();
    if let Err(Cut::Reset) = exchange(s, get(o, true).as_bytes(), out, &mut buf).await {
        out.end = End::Rst;
    }
}

async fn half_close(o: &Options, s: &mut TcpStream, out: &mut ConnOutcome) {
    if s.write_all(get(o, false).as_bytes()).await.is_err() {
        out.end = End::Rst;
        return;
    }
    out.sent += 1;
    let _ = s.shutdown().await;
    let r = wire::read_response(s, &mut Vec::new(), Instant::now() + RESPONSE_WAIT).await;
    record(out, &r);
}

async fn post_unauthorized(o: &Options, s: &mut TcpStream, out: &mut ConnOutcome) {
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: finguard-simulate\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        o.path, o.target, o.body_bytes
    );
    out.sent += 1;
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = o.body_bytes;
    let mut write_reset = false;
    // Like most simple clients: send the whole request, then read.
    if s.write_all(head.as_bytes()).await.is_err() {
        write_reset = true;
    }
    while left > 0 && !write_reset {
        let n = left.min(chunk.len());
        match tokio::time::timeout(RESPONSE_WAIT, s.write_all(&chunk[..n])).await {
            Ok(Ok(())) => left -= n,
            Ok(Err(_)) => write_reset = true,
            Err(_) => break, // the server stopped reading without closing
        }
    }
    if write_reset {
        // Where a simple client stops: its send failed with a reset, so it
        // never reads the response the server sent (curl: error 55).
        out.lost_reset += 1;
        out.end = End::Rst;
        return;
    }
    let r = wire::read_response(s, &mut Vec::new(), Instant::now() + RESPONSE_WAIT).await;
    record(out, &r);
    if let Err(Cut::Reset) = r {
        out.end = End::Rst;
    }
}

async fn pipeline_error(o: &Options, s: &mut TcpStream, out: &mut ConnOutcome) {
    let good = get(o, false);
    let batch = format!("{good}{good}GET /bad HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n{good}");
    if s.write_all(batch.as_bytes()).await.is_err() {
        out.end = End::Rst;
        return;
    }
    out.sent = 4;
    // A client that reads a moment later, as a busy one would.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut buf = Vec::new();
    // The two good requests before the bad one are owed a response, then the error.
    for _ in 0..3 {
        let r = wire::read_response(s, &mut buf, Instant::now() + RESPONSE_WAIT).await;
        match r {
            Ok(_) => record(out, &r),
            Err(cut) => {
                let owed = 3 - (out.complete as usize);
                if cut == Cut::Reset {
                    out.lost_reset += owed as u64;
                } else {
                    out.missing += owed as u64;
                }
                out.end = if cut == Cut::Reset { End::Rst } else { End::Fin };
                return;
            }
        }
    }
}

async fn slowloris(
    o: &Options,
    i: usize,
    s: &mut TcpStream,
    out: &mut ConnOutcome,
    deadline: Instant,
    stop: &CancellationToken,
) {
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nX-Slow-{i}: {}\r\n\r\n",
        o.path,
        o.target,
        "a".repeat(200)
    );
    out.sent = 1;
    let mut buf = Vec::new();
    for b in head.bytes() {
        if Instant::now() >= deadline || stop.is_cancelled() {
            break;
        }
        if s.write_all(&[b]).await.is_err() {
            out.end = End::Rst;
            out.missing += 1;
            return;
        }
        // Between bytes, notice an answer or a close at once.
        match tokio::time::timeout(DRIP, wire::read_response(s, &mut buf, Instant::now() + DRIP)).await {
            Ok(Ok(r)) => {
                out.complete += 1;
                out.statuses.push(r.status);
                return;
            }
            Ok(Err(Cut::Timeout)) | Err(_) => {}
            Ok(Err(Cut::Reset)) => {
                out.end = End::Rst;
                out.missing += 1;
                return;
            }
            Ok(Err(_)) => {
                out.end = End::Fin;
                out.missing += 1;
                return;
            }
        }
    }
    out.missing += 1;
}

async fn idle_hold(o: &Options, s: &mut TcpStream, out: &mut ConnOutcome, deadline: Instant, stop: &CancellationToken) {
    let mut buf = Vec::new();
    if exchange(s, get(o, false).as_bytes(), out, &mut buf).await.is_err() {
        out.end = End::Rst;
        return;
    }
    // Idle: send nothing, but notice the server's close.
    let mut b = [0u8; 1024];
    let read = async {
        loop {
            match tokio::io::AsyncReadExt::read(s, &mut b).await {
                Ok(0) => return End::Fin,
                Ok(_) => continue,
                Err(_) => return End::Rst,
            }
        }
    };
    out.end = tokio::select! {
        e = read => e,
        () = hold(deadline, stop) => End::Open,
    };
    // Closed by the server: keep the socket to the end of the run anyway, so
    // the census sees where the server's side settles, not its first FIN_WAIT1.
    hold(deadline, stop).await;
}

async fn well_behaved(
    o: &Options,
    mut s: TcpStream,
    mut out: ConnOutcome,
    deadline: Instant,
    stop: &CancellationToken,
) -> ConnOutcome {
    let req = get(o, false);
    let mut buf = Vec::new();
    while Instant::now() < deadline && !stop.is_cancelled() {
        // A server that has stopped answering does not keep the run going.
        let answer = tokio::time::timeout_at(
            deadline + LAST_ANSWER_GRACE,
            exchange(&mut s, req.as_bytes(), &mut out, &mut buf),
        );
        match answer.await {
            Err(_) => {
                out.missing += 1;
                break;
            }
            Ok(Ok(r)) if !r.closes => continue,
            Ok(_) => {
                // The server closed: a well-behaved client reconnects.
                let Ok(Ok(n)) = tokio::time::timeout(RESPONSE_WAIT, TcpStream::connect(o.target)).await else {
                    break;
                };
                let _ = n.set_nodelay(true);
                s = n;
                buf.clear();
            }
        }
    }
    out.end = End::Open;
    out.socket = Some(s);
    out
}
