//! The slow clients (`slow-read`, `slow-post`): a phone on a bad link or a
//! slow crawler downloading a large response a few KiB at a time, and a
//! slow-POST ("R-U-Dead-Yet") uploader trickling its body. Through a
//! buffering proxy neither holds a backend worker; straight to a prefork
//! server each holds one for its whole transfer. Every await is bounded by
//! the run's deadline or a step's pace.

use super::wire::{self, Cut};
use super::{ConnOutcome, End, Options};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A phone on a bad link: 4 KiB every 200 ms (20 KiB/s).
pub const DEFAULT_READ_STEP: (usize, Duration) = (4096, Duration::from_millis(200));
/// R-U-Dead-Yet's classic pace: a few hundred bytes every half second.
pub const DEFAULT_POST_STEP: (usize, Duration) = (200, Duration::from_millis(500));

/// Downloads `o.path`, reading `step` bytes at a time.
pub async fn slow_read(
    o: &Options,
    s: &mut TcpStream,
    out: &mut ConnOutcome,
    deadline: Instant,
    stop: &CancellationToken,
) {
    let (bytes, every) = o.step.unwrap_or(DEFAULT_READ_STEP);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: finguard-simulate slow-read\r\nConnection: close\r\n\r\n",
        o.path, o.target
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        out.end = End::Rst;
        return;
    }
    out.sent = 1;
    let mut got = Vec::new();
    let mut step = vec![0u8; bytes.max(1)];
    while Instant::now() < deadline && !stop.is_cancelled() {
        match tokio::time::timeout_at(deadline, s.read(&mut step)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                out.end = End::Fin;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&step[..n]),
            Ok(Err(e)) => {
                out.end = if wire::is_reset(&e) { End::Rst } else { End::Fin };
                break;
            }
        }
        if let Some(status) = whole(&got) {
            out.complete = 1;
            out.statuses.push(status);
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => break,
        }
    }
    if out.end == End::Fin && whole_to_close(&got) {
        out.complete = 1;
        out.statuses.push(status_of(&got));
    } else if out.end == End::Rst {
        out.lost_reset = 1;
    } else {
        out.missing = 1;
    }
}

/// The response in `got` is complete (by its length, or a chunked body's
/// last chunk): its status.
fn whole(got: &[u8]) -> Option<u16> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = r.parse(got) else {
        return None;
    };
    let body = &got[n..];
    let length = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
    let chunked = r
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let done = match length {
        Some(len) => body.len() >= len,
        None => chunked && body.ends_with(b"0\r\n\r\n"),
    };
    done.then(|| r.code.unwrap_or(0))
}

/// A body that ends at the close: a head was read.
fn whole_to_close(got: &[u8]) -> bool {
    wire_head_len(got).is_some()
}

fn wire_head_len(got: &[u8]) -> Option<usize> {
    got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn status_of(got: &[u8]) -> u16 {
    std::str::from_utf8(got.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Posts `o.body_bytes` to `o.path`, `step` bytes at a time, noticing an
/// early answer between steps.
pub async fn slow_post(
    o: &Options,
    s: &mut TcpStream,
    out: &mut ConnOutcome,
    deadline: Instant,
    stop: &CancellationToken,
) {
    let (bytes, every) = o.step.unwrap_or(DEFAULT_POST_STEP);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: finguard-simulate slow-post\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        o.path, o.target, o.body_bytes
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        out.end = End::Rst;
        return;
    }
    out.sent = 1;
    let step = vec![b'p'; bytes.max(1)];
    let mut left = o.body_bytes;
    let mut buf = Vec::new();
    while left > 0 && Instant::now() < deadline && !stop.is_cancelled() {
        let n = left.min(step.len());
        if s.write_all(&step[..n]).await.is_err() {
            out.end = End::Rst;
            out.lost_reset = 1;
            return;
        }
        left -= n;
        let pace = Instant::now() + every;
        match wire::read_response(s, &mut buf, pace.min(deadline)).await {
            Ok(r) => {
                out.complete = 1;
                out.statuses.push(r.status);
                return;
            }
            Err(Cut::Timeout) => {}
            Err(cut) => {
                out.end = if cut == Cut::Reset { End::Rst } else { End::Fin };
                out.missing = 1;
                return;
            }
        }
    }
    if left > 0 {
        // Cut by the end of the run: the body never went whole, no answer is owed.
        out.missing = 1;
        return;
    }
    let r = wire::read_response(s, &mut buf, deadline + Duration::from_secs(5)).await;
    match r {
        Ok(r) => {
            out.complete = 1;
            out.statuses.push(r.status);
        }
        Err(Cut::Reset) => out.lost_reset = 1,
        Err(_) => out.missing = 1,
    }
}
