//! The access log, one line per request on stdout: Apache's `combined`
//! format, or JSON with finguard's own fields (matched User-Agent rules,
//! backend address and time, and a line per closed connection with its
//! close outcome).
//!
//! Lines are formatted by the connection task and handed to one writer
//! thread over a bounded channel: a slow stdout never blocks a request; when
//! the channel is full the line is dropped and counted.

use crate::config::AccessLog;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

/// Lines that may wait for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

pub struct Logger {
    format: AccessLog,
    tx: Option<SyncSender<String>>,
    pub dropped: AtomicU64,
}

/// What one request line says.
pub struct Record<'a> {
    pub peer: SocketAddr,
    pub request_line: &'a str,
    pub status: u16,
    pub bytes_out: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub rules: &'a [String],
    pub backend: Option<(SocketAddr, Duration)>,
}

#[derive(Serialize)]
struct JsonRequest<'a> {
    time: String,
    peer: String,
    request: &'a str,
    status: u16,
    bytes_out: u64,
    referer: Option<&'a str>,
    user_agent: Option<&'a str>,
    rules: &'a [String],
    backend: Option<String>,
    upstream_ms: Option<f64>,
}

#[derive(Serialize)]
struct JsonClose<'a> {
    time: String,
    peer: String,
    event: &'static str,
    outcome: &'a str,
    requests: u32,
    drained_bytes: u64,
}

impl Logger {
    pub fn new(format: AccessLog) -> Self {
        let tx = (format != AccessLog::Off).then(|| {
            let (tx, rx) = sync_channel::<String>(QUEUE);
            std::thread::Builder::new()
                .name("finguard-access-log".into())
                .spawn(move || {
                    let stdout = std::io::stdout();
                    let mut out = std::io::BufWriter::new(stdout.lock());
                    while let Ok(line) = rx.recv() {
                        let _ = out.write_all(line.as_bytes());
                        while let Ok(more) = rx.try_recv() {
                            let _ = out.write_all(more.as_bytes());
                        }
                        let _ = out.flush();
                    }
                })
                .ok()
                .map(|_| tx)
        });
        Logger {
            format,
            tx: tx.flatten(),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    fn send(&self, line: String) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn request(&self, r: &Record<'_>) {
        let line = match self.format {
            AccessLog::Off => return,
            AccessLog::Combined => format!(
                "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\"\n",
                r.peer.ip(),
                clf_time(),
                escape(r.request_line),
                r.status,
                r.bytes_out,
                escape(r.referer.unwrap_or("-")),
                escape(r.user_agent.unwrap_or("-")),
            ),
            AccessLog::Json => {
                let j = JsonRequest {
                    time: rfc3339(),
                    peer: r.peer.to_string(),
                    request: r.request_line,
                    status: r.status,
                    bytes_out: r.bytes_out,
                    referer: r.referer,
                    user_agent: r.user_agent,
                    rules: r.rules,
                    backend: r.backend.map(|(a, _)| a.to_string()),
                    upstream_ms: r.backend.map(|(_, d)| d.as_secs_f64() * 1000.0),
                };
                serde_json::to_string(&j).unwrap_or_default() + "\n"
            }
        };
        self.send(line);
    }

    /// JSON only: how a connection ended.
    pub fn close(&self, peer: SocketAddr, outcome: &str, requests: u32, drained_bytes: u64) {
        if self.format != AccessLog::Json {
            return;
        }
        let j = JsonClose {
            time: rfc3339(),
            peer: peer.to_string(),
            event: "close",
            outcome,
            requests,
            drained_bytes,
        };
        self.send(serde_json::to_string(&j).unwrap_or_default() + "\n");
    }
}

/// Quotes and control bytes escaped, as Apache does.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn clf_time() -> String {
    let f = time::macros::format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
    time::OffsetDateTime::now_utc().format(&f).unwrap_or_default()
}

fn rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_apache() {
        assert_eq!(escape("a\"b\\c\x01"), "a\\\"b\\\\c\\x01");
        assert_eq!(clf_time().len(), "24/Nov/2026:06:32:18 +0000".len());
    }
}
