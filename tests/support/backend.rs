//! Test backends: HTTP/1.1 keep-alive servers that count connections and
//! record request heads ([`Backend`]), ports that refuse ([`DeadPort`]), and
//! backends that misbehave on purpose ([`raw_backend`]).

use super::wire::{fill, find, read_body, read_head, BodyFraming};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

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

    /// The request line each recorded head starts with.
    pub fn request_lines(&self) -> Vec<String> {
        self.heads()
            .iter()
            .map(|h| h.lines().next().unwrap_or("").to_string())
            .collect()
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

pub(super) fn body_framing(head: &str) -> BodyFraming {
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
/// `PROXY <src-ip> <src-port>`. Anything else is `None`: the connection is
/// dropped, as Apache's `RemoteIPProxyProtocol On` does.
fn read_proxy_header(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    const V2: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
    fill(s, buf, 16)?;
    if !buf.starts_with(b"PROXY ") && !buf.starts_with(&V2) {
        return None;
    }
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

/// Responses a cutting backend stops at any offset, by framing.
pub const CL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123456789abcdefghij";
pub const CHUNKED: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
pub const TO_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789";

pub fn response(framing: &str) -> &'static [u8] {
    match framing {
        "cl" => CL,
        "chunked" => CHUNKED,
        _ => TO_CLOSE,
    }
}

pub fn head_len(r: &[u8]) -> usize {
    find(r, b"\r\n\r\n").map_or(r.len(), |i| i + 4)
}

/// Answers `GET /cut/<framing>/<offset>/<fin|rst>` with the first `offset`
/// bytes of that framing's response, then closes that way.
pub fn cutting_backend(mut s: TcpStream) {
    let mut buf = Vec::new();
    let Some(head) = read_head(&mut s, &mut buf) else {
        return;
    };
    let path = head.split(' ').nth(1).unwrap_or("");
    let parts: Vec<&str> = path.split('/').collect();
    let (framing, offset, how) = (parts[2], parts[3].parse::<usize>().unwrap_or(0), parts[4]);
    let r = response(framing);
    let _ = s.write_all(&r[..offset.min(r.len())]);
    if how == "rst" {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    } else {
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = s.read(&mut [0u8; 64]); // until finguard lets go
    }
}
