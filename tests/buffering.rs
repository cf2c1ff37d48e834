//! Request and response buffering: a slow client never holds a backend
//! connection. Backends here are the test's own threads, so what they saw
//! (the whole response written, the next request) is the oracle, beside
//! finguard's metrics; nothing waits on a clock to decide an outcome.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(20);

/// The byte at offset `i` of a test body: a pattern that shows any
/// reordering or loss.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ ((i / 251) % 256) as u8).collect()
}

/// A backend that answers every request on every connection with `body`
/// (keep-alive), and notes when a response was written whole.
struct BodyBackend {
    addr: SocketAddr,
    written: Arc<AtomicUsize>,
}

fn body_backend(body: Arc<Vec<u8>>) -> BodyBackend {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            let (body, w) = (body.clone(), w.clone());
            thread::spawn(move || serve_body(s, &body, &w));
        }
    });
    BodyBackend { addr, written }
}

fn serve_body(mut s: TcpStream, body: &[u8], written: &AtomicUsize) {
    let mut buf = Vec::new();
    while read_head(&mut s, &mut buf).is_some() {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        if s.write_all(head.as_bytes()).is_err() || s.write_all(body).is_err() {
            return;
        }
        written.fetch_add(1, Ordering::SeqCst);
    }
}

/// A directory of the test's own for temporary files.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("finguard-buf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[buffer]\ndir = \"{}\"\n{extra}\n",
        dir.display()
    )
}

/// Sends a GET and reads the head and `n` bytes of body at most.
fn get_start(p: &Proxy, n: usize) -> (TcpStream, Vec<u8>) {
    let mut c = p.connect();
    c.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut c, &mut buf).expect("response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    while buf.len() < n {
        let mut chunk = [0u8; 4096];
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    (c, buf)
}

fn read_rest(c: &mut TcpStream, buf: &mut Vec<u8>, len: usize) {
    let mut chunk = vec![0u8; 65536];
    while buf.len() < len {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// Larger than the loopback socket buffers on both of finguard's sides.
const BIG: usize = 24 * 1024 * 1024;

#[test]
fn a_slow_reader_gets_the_whole_file_while_the_backend_is_released_early() {
    let body = Arc::new(pattern(BIG));
    let b = body_backend(body.clone());
    let dir = temp_dir("slow-read");
    let p = Proxy::start(&config(&dir, ""), b.addr);
    // The client takes 64 KiB and then nothing.
    let (mut c, mut got) = get_start(&p, 64 * 1024);
    // The backend wrote the whole response although the client holds
    // almost all of it unread: finguard took it.
    assert!(
        wait_until(LIMIT, || b.written.load(Ordering::SeqCst) == 1),
        "the backend could not write its response while the client was slow"
    );
    // And its connection went back to the pool: the exchange's hold ended.
    assert!(wait_until(LIMIT, || p.metric("finguard_backend_hold_seconds_count") >= 1.0));
    assert!(p.metric("finguard_buffer_spills_total") >= 1.0);
    assert!(p.metric("finguard_buffered_bytes{where=\"disk\"}") > 0.0);
    // The spill lives in an unlinked file: the directory is empty, the
    // descriptor points at a deleted file in it.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let fds = deleted_files_in(p.child.id(), &dir);
    assert!(fds >= 1, "no unlinked temporary file open in {}", dir.display());
    // The whole body arrives, in order.
    read_rest(&mut c, &mut got, BIG);
    assert_eq!(got.len(), BIG);
    assert!(got == *body, "the body arrived altered");
    // The pooled connection serves the next request.
    let (mut c2, mut got2) = get_start(&p, 0);
    read_rest(&mut c2, &mut got2, BIG);
    assert!(got2 == *body);
    assert!(wait_until(LIMIT, || p.metric("finguard_buffered_bytes{where=\"disk\"}") == 0.0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Open descriptors of `pid` that point at deleted files in `dir`.
fn deleted_files_in(pid: u32, dir: &std::path::Path) -> usize {
    let prefix = dir.display().to_string();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .filter(|t| t.starts_with(&prefix) && t.ends_with("(deleted)"))
        .count()
}

#[test]
fn without_response_buffering_the_slow_reader_holds_the_backend() {
    // The control: the same exchange with buffering off keeps the backend
    // writing at the client's pace.
    let body = Arc::new(pattern(BIG));
    let b = body_backend(body.clone());
    let dir = temp_dir("control");
    let p = Proxy::start(&config(&dir, "responses = false"), b.addr);
    let (mut c, mut got) = get_start(&p, 64 * 1024);
    assert!(!wait_until(Duration::from_secs(2), || b.written.load(Ordering::SeqCst) == 1));
    assert_eq!(p.metric("finguard_buffer_spills_total"), 0.0);
    read_rest(&mut c, &mut got, BIG);
    assert!(got == *body);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_temporary_file_remains_after_sigkill_mid_transfer() {
    let body = Arc::new(pattern(BIG));
    let b = body_backend(body);
    let dir = temp_dir("sigkill");
    let mut p = Proxy::start(&config(&dir, ""), b.addr);
    let (_c, _) = get_start(&p, 64 * 1024);
    assert!(wait_until(LIMIT, || p.metric("finguard_buffer_spills_total") >= 1.0));
    assert!(deleted_files_in(p.child.id(), &dir) >= 1);
    p.signal("KILL");
    let _ = p.wait_exit(LIMIT);
    assert!(p.child.try_wait().unwrap().is_some(), "finguard outlived SIGKILL");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn when_the_budgets_run_out_exchanges_stream_and_nothing_fails() {
    const LEN: usize = 3 * 1024 * 1024;
    let body = Arc::new(pattern(LEN));
    let b = body_backend(body.clone());
    let dir = temp_dir("budget");
    let p = Proxy::start(&config(&dir, "memory_total = 1\nfile_total = 1"), b.addr);
    for _ in 0..3 {
        let (mut c, mut got) = get_start(&p, 0);
        read_rest(&mut c, &mut got, LEN);
        assert!(got == *body, "a body arrived altered or short: {} bytes", got.len());
    }
    assert!(p.metric("finguard_buffer_fallbacks_total{reason=\"memory_total\"}") >= 1.0);
    assert_eq!(p.metric("finguard_requests_total{code=\"5xx\"}"), 0.0);
    assert_eq!(p.metric("finguard_buffer_spills_total"), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_streamed_response_reaches_the_client_event_by_event() {
    // The backend sends event N+1 only once the client has seen event N:
    // a buffer that held bytes back would stop the stream here.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (ack_tx, ack_rx) = mpsc::channel::<usize>();
    let stalled = Arc::new(AtomicBool::new(false));
    let st = stalled.clone();
    thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = Vec::new();
        read_head(&mut s, &mut buf).unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        for i in 0..5 {
            let ev = format!("data: event {i}\n\n");
            s.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes()).unwrap();
            if ack_rx.recv_timeout(LIMIT) != Ok(i) {
                st.store(true, Ordering::SeqCst);
                return;
            }
        }
        s.write_all(b"0\r\n\r\n").unwrap();
        let _ = s.read(&mut [0u8; 64]);
    });
    let dir = temp_dir("stream");
    let p = Proxy::start(&config(&dir, ""), addr);
    let mut c = p.connect();
    c.write_all(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut c, &mut buf).expect("head");
    assert!(head.contains("chunked"), "{head}");
    for i in 0..5 {
        let want = format!("data: event {i}\n");
        while find(&buf, want.as_bytes()).is_none() {
            let mut chunk = [0u8; 1024];
            let n = c.read(&mut chunk).expect("event {i} never arrived");
            assert!(n > 0, "closed before event {i}");
            buf.extend_from_slice(&chunk[..n]);
        }
        ack_tx.send(i).unwrap();
    }
    assert!(!stalled.load(Ordering::SeqCst));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn x_accel_buffering_no_is_honoured_and_not_relayed() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let written = Arc::new(AtomicBool::new(false));
    let w = written.clone();
    thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = Vec::new();
        read_head(&mut s, &mut buf).unwrap();
        let body = pattern(BIG);
        let head = format!("HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\nContent-Length: {BIG}\r\n\r\n");
        let _ = s.write_all(head.as_bytes());
        if s.write_all(&body).is_ok() {
            w.store(true, Ordering::SeqCst);
        }
    });
    let dir = temp_dir("accel");
    let p = Proxy::start(&config(&dir, ""), addr);
    let mut c = p.connect();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut c, &mut buf).expect("head");
    assert!(!head.to_ascii_lowercase().contains("x-accel-buffering"), "{head}");
    // A slow reader: the backend was told to wait for it, so it does.
    read_rest(&mut c, &mut buf, 64 * 1024);
    assert!(!wait_until(Duration::from_secs(2), || written.load(Ordering::SeqCst)));
    read_rest(&mut c, &mut buf, BIG);
    assert_eq!(buf.len(), BIG);
    assert_eq!(p.metric("finguard_buffer_spills_total"), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
