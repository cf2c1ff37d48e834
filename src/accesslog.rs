//! The access log, one line per request, on stdout or in `log.access_file`:
//! Apache's `combined` format, or JSON with finguard's own fields (matched
//! User-Agent rules, backend address and time, and a line per closed
//! connection with its close outcome).
//!
//! Lines are formatted by the connection task and handed to one writer
//! thread for the whole process (every config generation writes through it)
//! over a bounded channel: a slow disk never blocks a request; when the
//! channel is full the line is dropped and counted. Each line goes out in
//! one `write` to a file opened with `O_APPEND`, so a line is never split.
//! SIGUSR1 reopens the file (logrotate's `postrotate`, as nginx does): lines
//! queued before the signal may land in either file, none is lost.

use crate::config::AccessLog;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines that may wait for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// What the writer thread receives.
enum Msg {
    Line(String),
    /// Look at the pending reopen.
    Wake,
}

/// The process's one access-log writer.
pub struct Writer {
    tx: SyncSender<Msg>,
    /// A reopen asked for and not yet done: the file to write to (`None`:
    /// stdout). Set without blocking, done by the writer thread.
    pending: Arc<Mutex<Option<Option<PathBuf>>>>,
    /// Lines dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// An open destination.
type Sink = Box<dyn Write + Send>;

fn open(target: Option<&Path>) -> std::io::Result<Sink> {
    Ok(match target {
        None => Box::new(std::io::stdout()),
        Some(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
    })
}

impl Writer {
    /// Opens `target` (stdout when `None`) and starts the writer thread.
    pub fn start(target: Option<&Path>) -> std::io::Result<Arc<Writer>> {
        let sink = open(target)?;
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let pending = Arc::new(Mutex::new(None));
        let seen = pending.clone();
        std::thread::Builder::new()
            .name("finguard-access-log".into())
            .spawn(move || write_loop(rx, sink, &seen))?;
        Ok(Arc::new(Writer {
            tx,
            pending,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Asks the writer to reopen (SIGUSR1) or switch to `target`; never blocks.
    pub fn reopen(&self, target: Option<PathBuf>) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
        // A full queue means the writer is busy: it looks after its batch.
        let _ = self.tx.try_send(Msg::Wake);
    }

    fn send(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes lines as they come, a batch at a time; reopens between batches.
fn write_loop(rx: Receiver<Msg>, mut sink: Sink, pending: &Mutex<Option<Option<PathBuf>>>) {
    // Lines are gathered and written whole: one `write` per batch that
    // ends on a line boundary, so an O_APPEND file never gets a split line.
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            if let Msg::Line(l) = msg {
                batch.extend_from_slice(l.as_bytes());
            }
            next = if batch.len() < 60 * 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !batch.is_empty() {
            if let Err(e) = sink.write_all(&batch).and_then(|_| sink.flush()) {
                tracing::error!("access log write failed: {e}");
            }
            batch.clear();
        }
        let reopen = pending.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(target) = reopen {
            let name = target.as_deref().map_or("stdout".into(), |p| p.display().to_string());
            match open(target.as_deref()) {
                Ok(s) => {
                    sink = s;
                    tracing::info!(file = %name, "access log reopened");
                }
                Err(e) => {
                    tracing::error!(file = %name, "cannot reopen the access log, still writing to the old one: {e}")
                }
            }
        }
    }
}

/// One config generation's view of the access log: its format, and the writer.
pub struct Logger {
    format: AccessLog,
    writer: Arc<Writer>,
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
    /// How long the exchange held its backend connections (buffering lets
    /// them go before the client has the response).
    pub backend_hold: Option<Duration>,
    /// Request head read to the response's last byte taken by the client.
    pub client_time: Option<Duration>,
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
    backend_hold_ms: Option<f64>,
    client_ms: Option<f64>,
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
    pub fn new(format: AccessLog, writer: Arc<Writer>) -> Self {
        Logger { format, writer }
    }

    pub fn enabled(&self) -> bool {
        self.format != AccessLog::Off
    }

    /// JSON lines (they carry finguard's own fields).
    pub fn json(&self) -> bool {
        self.format == AccessLog::Json
    }

    pub fn writer(&self) -> &Arc<Writer> {
        &self.writer
    }

    fn send(&self, line: String) {
        if self.enabled() {
            self.writer.send(line);
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
                    upstream_ms: r.backend.map(|(_, d)| ms(d)),
                    backend_hold_ms: r.backend_hold.map(ms),
                    client_ms: r.client_time.map(ms),
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
