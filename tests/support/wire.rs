//! The raw wire, as tests see it: reading heads and responses off a
//! `TcpStream` without an HTTP library's framing, what the peer did at the
//! end, and TCP states from `/proc/net/tcp{,6}`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub(super) enum BodyFraming {
    Length(usize),
    Chunked,
}

/// A connection to `addr` whose receive buffer is `size` bytes (set before
/// the connect, so the window it announces is small from the start): a
/// client that can hold only that much of a response it has not read.
pub fn connect_with_receive_buffer(addr: SocketAddr, size: usize) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(size).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.into()
}

/// The client's host goes away: from now on its stack drops every segment
/// that arrives for `s` (a socket filter that accepts nothing), so nothing
/// finguard sends is acknowledged or answered, as after a power cut or a
/// broken network. [`reset_and_drop`] ends such a socket without leaving
/// the test's own kernel an orphan.
pub fn go_deaf(s: &TcpStream) {
    // Classic BPF `ret #0`: accept zero bytes of every packet.
    let drop_all = libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    };
    socket2::SockRef::from(s).attach_filter(&[drop_all]).unwrap();
}

/// The client's host is back ([`go_deaf`] undone): its stack takes and
/// answers segments again.
pub fn hear_again(s: &TcpStream) {
    socket2::SockRef::from(s).detach_filter().unwrap();
}

/// Closes `s` with a reset (`SO_LINGER` 0): the socket is gone at once,
/// whatever its peer did or did not acknowledge.
pub fn reset_and_drop(s: TcpStream) {
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
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

/// The `Content-Length` of a request or response head (0 without one).
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

pub(super) fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<()> {
    while buf.len() < n {
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    Some(())
}

pub(super) fn read_body(s: &mut TcpStream, buf: &mut Vec<u8>, f: BodyFraming) -> Option<usize> {
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

/// Bytes received and not yet read by the socket whose local port is
/// `local` and remote port `remote` (`rx_queue` in `/proc/net/tcp{,6}`).
pub fn unread_bytes(local: u16, remote: u16) -> Option<usize> {
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0);
            if f.len() < 5 || port(f[1]) != local || port(f[2]) != remote {
                continue;
            }
            let rx = f[4].split(':').nth(1)?;
            return usize::from_str_radix(rx, 16).ok();
        }
    }
    None
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
