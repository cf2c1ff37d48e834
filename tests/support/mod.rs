//! Test support: the real `finguard` binary on 127.0.0.1 port 0, test
//! backends that count what they see, raw TCP clients, and `/proc/net/tcp`.
//! Nothing here sleeps to synchronise: waits poll observable state against a
//! deadline.

#![allow(dead_code)]

pub mod apache;
pub mod tls;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_finguard");

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A temp file that lives as long as the value.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, text: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("finguard-test-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running `finguard run`.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the config or arguments enable it.
    pub admin: Option<SocketAddr>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub config: TempFile,
}

impl Proxy {
    /// Starts finguard with `config` (TOML; listener and backend come from the
    /// command line) in front of `backend`.
    pub fn start(config: &str, backend: SocketAddr) -> Proxy {
        Self::start_args(config, &["--backend", &backend.to_string()])
    }

    pub fn start_args(config: &str, extra: &[&str]) -> Proxy {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start_raw(config, &args)
    }

    /// Starts finguard with exactly these arguments after `run -c FILE`
    /// (the file's own listeners apply unless `--listen` is among them).
    pub fn start_raw(config: &str, extra: &[&str]) -> Proxy {
        let file = TempFile::new("proxy.toml", config);
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(&file.0)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "finguard=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn finguard");
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out_lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("finguard: listening on ") {
                    let _ = tx.send((true, a.parse::<SocketAddr>().expect("listen addr")));
                }
                if let Some(a) = line.strip_prefix("finguard: admin on ") {
                    let _ = tx.send((false, a.parse::<SocketAddr>().expect("admin addr")));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let out_sink = out_lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out_sink.lock().unwrap().push(line);
            }
        });
        let mut admin = None;
        let addr = loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok((true, a)) => break a,
                Ok((false, a)) => admin = Some(a),
                Err(_) => {
                    let _ = child.kill();
                    panic!("finguard did not start: {:?}", lines.lock().unwrap());
                }
            }
        };
        Proxy {
            child,
            addr,
            admin,
            stderr: lines,
            stdout: out_lines,
            config: file,
        }
    }

    /// GET on the admin listener; returns (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let admin = self.admin.expect("admin listener enabled");
        let r = request(
            admin,
            &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
        );
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The value of one metric sample (`name{labels}` exactly as exported), 0 if absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to finguard");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Sends a signal with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a test backend does with each request.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    /// 200 with a short body, keep-alive.
    Ok,
    /// 200 whose body is the request head it received (for header tests).
    EchoHead,
    /// 200 whose body says how many body bytes arrived.
    CountBody,
    /// 401 at once, without reading the body; then drain and close.
    Unauthorized,
    /// 200 with a chunked body and no Content-Length.
    Chunked,
    /// Wait, then 200.
    Slow(Duration),
    /// 200 with no length, the body ending when the backend closes.
    CloseDelimited,
    /// Announces 1000 bytes, sends 10, then resets the connection.
    ResetMidBody,
    /// Switches protocols (101) on an upgrade request, then echoes bytes
    /// until the peer's FIN, then closes.
    UpgradeEcho,
}

/// A test backend: HTTP/1.1 keep-alive, one thread per connection, counting
/// connections (total and concurrent) and recording request heads.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    pub max_open: Arc<AtomicUsize>,
    pub heads: Arc<Mutex<Vec<String>>>,
}

/// How a test backend treats its connections.
#[derive(Clone, Copy, Debug, Default)]
pub struct BackendOpts {
    /// Close a connection idle this long (a backend keep-alive timeout).
    pub keepalive: Option<Duration>,
    /// Expect a PROXY protocol header first and record it.
    pub proxy_protocol: bool,
}

impl Backend {
    pub fn start(reply: Reply) -> Backend {
        Self::start_with(reply, BackendOpts::default())
    }

    pub fn start_with(reply: Reply, opts: BackendOpts) -> Backend {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap(), reply, opts)
    }

    /// Serves on a listener the test bound itself.
    pub fn on(listener: TcpListener, reply: Reply, opts: BackendOpts) -> Backend {
        let addr = listener.local_addr().unwrap();
        let b = Backend {
            addr,
            accepted: Arc::default(),
            open: Arc::default(),
            max_open: Arc::default(),
            heads: Arc::default(),
        };
        let (accepted, open, max_open, heads) =
            (b.accepted.clone(), b.open.clone(), b.max_open.clone(), b.heads.clone());
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                max_open.fetch_max(now, Ordering::SeqCst);
                let (open, heads) = (open.clone(), heads.clone());
                thread::spawn(move || {
                    serve_backend_conn(s, reply, opts, &heads);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        b
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// A port where connections are refused, reserved for as long as the value
/// lives: a bound, non-listening socket without SO_REUSEADDR, so that no
/// parallel test can take the port meanwhile.
pub struct DeadPort {
    pub addr: SocketAddr,
    sock: socket2::Socket,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        DeadPort { addr, sock }
    }

    /// The port comes to life: the same socket starts listening.
    pub fn revive(self) -> TcpListener {
        self.sock.listen(128).unwrap();
        self.sock.into()
    }
}

fn serve_backend_conn(mut s: TcpStream, reply: Reply, opts: BackendOpts, heads: &Mutex<Vec<String>>) {
    s.set_read_timeout(Some(opts.keepalive.unwrap_or(Duration::from_secs(30))))
        .unwrap();
    let mut buf = Vec::new();
    if opts.proxy_protocol {
        let Some(line) = read_proxy_header(&mut s, &mut buf) else {
            return;
        };
        heads.lock().unwrap().push(line);
    }
    loop {
        let Some(head) = read_head(&mut s, &mut buf) else {
            return;
        };
        heads.lock().unwrap().push(head.clone());
        let framing = body_framing(&head);
        if let Reply::UpgradeEcho = reply {
            let _ =
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
            let _ = s.write_all(&std::mem::take(&mut buf));
            let mut b = [0u8; 4096];
            loop {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&b[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if let Reply::Unauthorized = reply {
            let _ = s.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\nConnection: close\r\n\r\nunauthorized\n",
            );
            let _ = s.shutdown(Shutdown::Write);
            let mut sink = [0u8; 65536];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            return;
        }
        let Some(n) = read_body(&mut s, &mut buf, framing) else {
            return;
        };
        let body = match reply {
            Reply::Ok | Reply::Unauthorized | Reply::UpgradeEcho => "hello\n".to_string(),
            Reply::EchoHead => head.clone(),
            Reply::CountBody => format!("{n}\n"),
            Reply::Chunked => {
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nchunk-\r\n4\r\ned!\n\r\n0\r\n\r\n",
                );
                continue;
            }
            Reply::Slow(d) => {
                thread::sleep(d);
                "slow\n".to_string()
            }
            Reply::CloseDelimited => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end\n");
                return;
            }
            Reply::ResetMidBody => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                return;
            }
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Backend: test\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

enum BodyFraming {
    Length(usize),
    Chunked,
}

fn body_framing(head: &str) -> BodyFraming {
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        return BodyFraming::Chunked;
    }
    let len = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    BodyFraming::Length(len)
}

/// Reads a PROXY protocol header (v1 line or v2 binary) and renders it as
/// `PROXY <src-ip> <src-port>`.
fn read_proxy_header(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    fill(s, buf, 16)?;
    if buf.starts_with(b"PROXY ") {
        let end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            let need = buf.len() + 1;
            fill(s, buf, need)?;
        };
        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 2);
        let f: Vec<&str> = line.split(' ').collect();
        return Some(format!("PROXY {} {}", f.get(2)?, f.get(4)?));
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    fill(s, buf, 16 + len)?;
    let fam = buf[13];
    let text = if fam == 0x11 {
        let ip = std::net::Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
        format!("PROXY {ip} {}", u16::from_be_bytes([buf[24], buf[25]]))
    } else {
        let mut o = [0u8; 16];
        o.copy_from_slice(&buf[16..32]);
        format!(
            "PROXY {} {}",
            std::net::Ipv6Addr::from(o),
            u16::from_be_bytes([buf[48], buf[49]])
        )
    };
    buf.drain(..16 + len);
    Some(text)
}

/// Reads a head (through CRLF CRLF) from `s`, keeping extra bytes in `buf`.
pub fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            buf.drain(..i + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<()> {
    while buf.len() < n {
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    Some(())
}

fn read_body(s: &mut TcpStream, buf: &mut Vec<u8>, f: BodyFraming) -> Option<usize> {
    match f {
        BodyFraming::Length(n) => {
            fill(s, buf, n)?;
            buf.drain(..n);
            Some(n)
        }
        BodyFraming::Chunked => {
            let mut total = 0;
            loop {
                let line_end = line(s, buf)?;
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).split(';').next()?.trim(), 16)
                        .ok()?;
                buf.drain(..line_end + 2);
                if size == 0 {
                    fill(s, buf, 2)?;
                    buf.drain(..2);
                    return Some(total);
                }
                fill(s, buf, size + 2)?;
                buf.drain(..size + 2);
                total += size;
            }
        }
    }
}

/// Reads until `buf` holds a CRLF; returns where it starts.
fn line(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            return Some(i);
        }
        let need = buf.len() + 1;
        fill(s, buf, need)?;
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status_line: String,
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        let want = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&want))
            .map(|l| l[want.len()..].trim().to_string())
    }
}

/// Reads one response (Content-Length, chunked, or to EOF) from `s`.
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Response> {
    let head = read_head(s, buf)?;
    let status_line = head.lines().next()?.to_string();
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let r = Response {
        status_line,
        status,
        head: head.clone(),
        body: Vec::new(),
    };
    let lower = head.to_ascii_lowercase();
    let body = if lower.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        loop {
            let line_end = line(s, buf)?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            fill(s, buf, size + 2)?;
            out.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break out;
            }
        }
    } else if let Some(n) = r.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        fill(s, buf, n)?;
        buf.drain(..n).collect()
    } else {
        let mut out = std::mem::take(buf);
        let _ = s.read_to_end(&mut out);
        out
    };
    Some(Response { body, ..r })
}

/// Sends one request and reads one response on a fresh connection.
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    read_response(&mut s, &mut Vec::new()).expect("a response")
}

/// What the peer did after we stopped: `Eof` (FIN), `Reset`, or nothing
/// within the limit.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerEnd {
    Eof,
    Reset,
    Open,
}

pub fn peer_end(s: &mut TcpStream, limit: Duration) -> PeerEnd {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return PeerEnd::Eof,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return PeerEnd::Reset,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return PeerEnd::Open,
            Err(e) => panic!("unexpected read error {e}"),
        }
    }
}

/// TCP states from `/proc/net/tcp{,6}` for sockets whose local port is
/// `local` and remote port is `remote` (0: any).
pub fn tcp_states(local: u16, remote: u16) -> Vec<&'static str> {
    tcp_sockets(local, remote).into_iter().map(|(s, _)| s).collect()
}

/// Like `tcp_states`, with each socket's inode: 0 for an orphan that no
/// process holds any more (the kernel alone decides when it goes).
pub fn tcp_sockets(local: u16, remote: u16) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0);
            if (local != 0 && port(f[1]) != local) || (remote != 0 && port(f[2]) != remote) {
                continue;
            }
            let inode = f[9].parse().unwrap_or(0);
            out.push((
                match f[3] {
                    "01" => "ESTABLISHED",
                    "02" => "SYN_SENT",
                    "03" => "SYN_RECV",
                    "04" => "FIN_WAIT1",
                    "05" => "FIN_WAIT2",
                    "06" => "TIME_WAIT",
                    "07" => "CLOSE",
                    "08" => "CLOSE_WAIT",
                    "09" => "LAST_ACK",
                    "0A" => "LISTEN",
                    "0B" => "CLOSING",
                    _ => "UNKNOWN",
                },
                inode,
            ));
        }
    }
    out
}

/// A backend whose every connection is handled by `f` on its own thread:
/// for peers that misbehave in ways `Reply` does not cover. Returns its
/// address and the count of connections it accepted.
pub fn raw_backend(f: fn(TcpStream)) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || f(s));
        }
    });
    (addr, accepted)
}

/// Reads from `s` until EOF or an error: the bytes, and whether it ended in a
/// reset (an abort) rather than a clean FIN.
pub fn read_to_end_or_reset(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 65536];
    loop {
        match s.read(&mut b) {
            Ok(0) => return (out, false),
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (out, true),
            Err(e) => panic!("read: {e} after {} bytes", out.len()),
        }
    }
}

/// Sends a 10,000-byte body's head and first 5,000 bytes, then resets.
pub fn cut_mid_body(mut s: TcpStream) {
    let mut buf = Vec::new();
    if read_head(&mut s, &mut buf).is_none() {
        return;
    }
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n");
    let _ = s.write_all(&[b'x'; 5000]);
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

/// A test whose external peer (Apache, a Python package, ...) is missing
/// skips with a line saying so, unless `FINGUARD_REQUIRE_PEERS` is set (CI
/// sets it): then a missing peer fails the test.
pub fn require_peer(what: &str) {
    if std::env::var_os("FINGUARD_REQUIRE_PEERS").is_some() {
        panic!("{what} is required (FINGUARD_REQUIRE_PEERS is set) but missing");
    }
    eprintln!("SKIPPED: {what} not installed");
}
