//! Idle HTTP/1 keep-alive connections over TLS are parked without a task,
//! like plain ones (`downstream::parking`), with their rustls session: seen
//! from outside, a parked TLS connection behaves as one that kept its task —
//! its next requests are served (pipelined, split across records, after a
//! key update), it closes at its keep-alive timeout with `close_notify`, a
//! client's close is noticed at once (no CLOSE_WAIT), SIGTERM closes it and
//! eviction finds it. Real clients: rustls, and Python's `ssl` (OpenSSL).

mod support;

use rustls::pki_types::ServerName;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::tls::*;
use support::*;

const LIMIT: Duration = Duration::from_secs(10);

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// One worker (one idle set), a TLS listener, the admin listener.
fn config(f: &Files, client: &str) -> String {
    format!(
        "workers = 1\n[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [admin]\naddr = \"127.0.0.1:0\"\n[client]\n{client}",
        f.a_cert.0.display(),
        f.a_key.0.display(),
    )
}

fn start(f: &Files, client: &str, backend: &Backend) -> Proxy {
    Proxy::start_raw(&config(f, client), &["--backend", &backend.addr.to_string()])
}

fn connect(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Tls {
    let conn = rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("a.test").unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nUser-Agent: parker/1\r\n\r\n")
}

/// Reads one Content-Length response: (head, body). `buf` keeps what
/// follows it (a pipelined response).
fn read_response_tls(s: &mut Tls, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut b = [0u8; 4096];
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let len = content_length(&head);
            while buf.len() < i + 4 + len {
                let n = s.read(&mut b).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&b[..n]);
            }
            let body = buf[i + 4..i + 4 + len].to_vec();
            buf.drain(..i + 4 + len);
            return Some((head, body));
        }
        let n = s.read(&mut b).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    }
}

/// A GET of `path` encrypted into records, not sent.
fn sealed(s: &mut Tls, path: &str) -> Vec<u8> {
    s.conn.writer().write_all(get(path).as_bytes()).unwrap();
    let mut record = Vec::new();
    while s.conn.wants_write() {
        s.conn.write_tls(&mut record).unwrap();
    }
    record
}

/// A TLS keep-alive connection that has had one answer.
fn served_once(p: &Proxy, cfg: &Arc<rustls::ClientConfig>) -> Tls {
    let mut s = connect(cfg, p.addr);
    s.write_all(get("/first").as_bytes()).unwrap();
    let mut buf = Vec::new();
    let (head, _) = read_response_tls(&mut s, &mut buf).expect("first response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(buf.is_empty());
    s
}

fn connections(p: &Proxy) -> Vec<serde_json::Value> {
    let (_, body) = p.admin_get("/connections");
    serde_json::from_str(&body).unwrap()
}

fn is_parked_port(p: &Proxy, me: SocketAddr) -> bool {
    connections(p)
        .iter()
        .any(|c| c["peer"] == me.to_string().as_str() && c["state"] == "idle" && c["parked"] == true)
}

fn is_parked(p: &Proxy, s: &Tls) -> bool {
    is_parked_port(p, s.sock.local_addr().unwrap())
}

/// The connection's state in `/connections` (`idle`, `reading`, ...).
fn state_of(p: &Proxy, s: &Tls) -> Option<String> {
    let me = s.sock.local_addr().unwrap();
    connections(p)
        .iter()
        .find(|c| c["peer"].as_str() == Some(me.to_string().as_str()))
        .and_then(|c| c["state"].as_str().map(String::from))
}

/// Bytes the client sent that finguard's socket has not read yet (its
/// receive queue in /proc/net/tcp).
fn unread_by_finguard(p: &Proxy, s: &Tls) -> Option<u64> {
    let (local, remote) = (p.addr.port(), s.sock.local_addr().unwrap().port());
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
        if f.len() < 5 || port(f[1])? != local || port(f[2])? != remote {
            return None;
        }
        u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok()
    })
}

fn is_listed(p: &Proxy, s: &Tls) -> bool {
    let me = s.sock.local_addr().unwrap().to_string();
    connections(p).iter().any(|c| c["peer"] == me.as_str())
}

/// How the server ended a TLS connection, as its client sees it.
#[derive(Debug, PartialEq)]
enum TlsEnd {
    /// `close_notify`, then EOF.
    CloseNotify,
    /// EOF without `close_notify`.
    Unclean,
    Reset,
    Open,
}

fn tls_end(s: &mut Tls) -> TlsEnd {
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return TlsEnd::CloseNotify,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return TlsEnd::Unclean,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return TlsEnd::Reset,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return TlsEnd::Open,
            Err(e) => panic!("unexpected read error {e}"),
        }
    }
}

#[test]
fn a_parked_tls_connection_serves_its_next_requests_byte_exact() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::EchoHead);
    let p = start(&f, "keepalive_timeout = \"30s\"\n", &backend);
    let mut s = served_once(&p, &client(&pki));
    let mut buf = Vec::new();
    assert!(wait_until(LIMIT, || is_parked(&p, &s)), "{:?}", connections(&p));
    for i in 0..3 {
        let path = format!("/after-parking-{i}");
        s.write_all(get(&path).as_bytes()).unwrap();
        let (head, body) = read_response_tls(&mut s, &mut buf).expect("a response after parking");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let heads = backend.heads();
        let last = heads.last().expect("the backend saw the request");
        assert_eq!(String::from_utf8_lossy(&body), *last);
        assert!(last.starts_with(&format!("GET {path} HTTP/1.1\r\n")), "{last}");
        assert!(buf.is_empty(), "no stray bytes after the response");
        assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    }
    assert_eq!(p.metric("finguard_client_connections{state=\"idle\"}"), 1.0);
}

/// Three requests in one write (one TLS record) to a parked connection:
/// three answers, in order.
#[test]
fn pipelined_requests_to_a_parked_tls_connection_are_answered_in_order() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::EchoHead);
    let p = start(&f, "keepalive_timeout = \"30s\"\n", &backend);
    let mut s = served_once(&p, &client(&pki));
    assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    let all: String = (0..3).map(|i| get(&format!("/piped-{i}"))).collect();
    s.write_all(all.as_bytes()).unwrap();
    let mut buf = Vec::new();
    for i in 0..3 {
        let (head, body) = read_response_tls(&mut s, &mut buf).expect("a pipelined response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let body = String::from_utf8_lossy(&body).to_string();
        assert!(body.starts_with(&format!("GET /piped-{i} HTTP/1.1\r\n")), "{body}");
    }
    assert!(buf.is_empty());
    assert!(wait_until(LIMIT, || is_parked(&p, &s)));
}

/// A request whose TLS record arrives in pieces, the first while parked: the
/// woken connection reads it (finguard's socket has nothing unread) and
/// keeps the partial record in its session, reading a request (not parked
/// again, not idle); it answers once the record is whole, and parks after.
#[test]
fn a_record_split_after_a_park_is_reassembled() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::EchoHead);
    let p = start(&f, "keepalive_timeout = \"30s\"\n", &backend);
    let mut s = served_once(&p, &client(&pki));
    assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    // The record, encrypted but not sent.
    let record = sealed(&mut s, "/split");
    assert!(record.len() > 10);
    s.sock.write_all(&record[..3]).unwrap();
    // Read into the session, and not idle any more: a request is arriving
    // (an idle connection would be parked, and could be closed to make room).
    assert!(wait_until(LIMIT, || unread_by_finguard(&p, &s) == Some(0)
        && state_of(&p, &s).as_deref() == Some("reading")));
    assert!(!is_parked(&p, &s));
    s.sock.write_all(&record[3..]).unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_response_tls(&mut s, &mut buf).expect("the split request's answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).starts_with("GET /split HTTP/1.1\r\n"));
    assert!(wait_until(LIMIT, || is_parked(&p, &s)));
}

/// A client's `KeyUpdate` (asking for the server's) reaches a parked
/// connection: it is read and the connection parked again; the next
/// requests, under the client's new keys, are answered (rustls sends its
/// own `KeyUpdate` first), and the connection parks again in between.
#[test]
fn a_key_update_to_a_parked_tls_connection_is_answered() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::EchoHead);
    let p = start(&f, "keepalive_timeout = \"30s\"\n", &backend);
    let mut s = served_once(&p, &client(&pki));
    assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    s.conn.refresh_traffic_keys().unwrap();
    s.flush().unwrap();
    // Read, and parked again (no request came with it).
    assert!(wait_until(LIMIT, || unread_by_finguard(&p, &s) == Some(0) && is_parked(&p, &s)));
    let mut buf = Vec::new();
    for i in 0..2 {
        let path = format!("/rekeyed-{i}");
        s.write_all(get(&path).as_bytes()).unwrap();
        let (head, body) = read_response_tls(&mut s, &mut buf).expect("an answer after the key update");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(String::from_utf8_lossy(&body).starts_with(&format!("GET {path} HTTP/1.1\r\n")));
        assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    }
}

#[test]
fn a_parked_tls_connection_closes_at_its_keepalive_timeout_with_close_notify() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Ok);
    let p = start(&f, "keepalive_timeout = \"1s\"\n", &backend);
    let mut s = served_once(&p, &client(&pki));
    assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    assert_eq!(tls_end(&mut s), TlsEnd::CloseNotify);
    let (port, me) = (p.addr.port(), s.sock.local_addr().unwrap().port());
    drop(s);
    assert!(wait_until(LIMIT, || tcp_states(port, me)
        .iter()
        .all(|st| *st == "TIME_WAIT")));
    assert_eq!(p.metric("finguard_client_connections{state=\"idle\"}"), 0.0);
}

/// Parked clients that go away every way a client does: `close_notify` and
/// FIN, a FIN alone, a reset. finguard notices each at once: nothing left
/// in CLOSE_WAIT, nothing listed.
#[test]
fn a_client_leaving_a_parked_tls_connection_leaves_no_close_wait() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Ok);
    let p = start(&f, "keepalive_timeout = \"30s\"\n", &backend);
    let cfg = client(&pki);
    let conns: Vec<Tls> = (0..6).map(|_| served_once(&p, &cfg)).collect();
    assert!(wait_until(LIMIT, || conns.iter().all(|s| is_parked(&p, s))));
    let port = p.addr.port();
    let mut ports = Vec::new();
    for (i, mut s) in conns.into_iter().enumerate() {
        ports.push(s.sock.local_addr().unwrap().port());
        match i % 3 {
            0 => {
                s.conn.send_close_notify();
                s.flush().unwrap();
                s.sock.shutdown(std::net::Shutdown::Write).unwrap();
                // Answered with finguard's own `close_notify`.
                assert_eq!(tls_end(&mut s), TlsEnd::CloseNotify);
            }
            1 => {
                // A truncation: closed the configured way (`close_notify`,
                // lingering close).
                s.sock.shutdown(std::net::Shutdown::Write).unwrap();
                assert_eq!(tls_end(&mut s), TlsEnd::CloseNotify);
            }
            _ => {
                // SO_LINGER 0: the close is an RST.
                socket2::SockRef::from(&s.sock)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(s);
            }
        }
    }
    for me in ports {
        assert!(
            wait_until(LIMIT, || !tcp_states(port, me).contains(&"CLOSE_WAIT")),
            "{:?}",
            tcp_states(port, me)
        );
    }
    assert!(
        wait_until(LIMIT, || connections(&p).is_empty()),
        "{:?}",
        connections(&p)
    );
    assert_eq!(p.metric("finguard_client_connections{state=\"idle\"}"), 0.0);
}

#[test]
fn sigterm_closes_parked_tls_connections_with_close_notify() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Ok);
    let mut p = start(&f, "keepalive_timeout = \"30s\"\n", &backend);
    let cfg = client(&pki);
    let mut conns: Vec<Tls> = (0..4).map(|_| served_once(&p, &cfg)).collect();
    assert!(wait_until(LIMIT, || conns.iter().all(|s| is_parked(&p, s))));
    p.signal("TERM");
    for s in &mut conns {
        assert_eq!(tls_end(s), TlsEnd::CloseNotify);
    }
    drop(conns);
    assert_eq!(p.wait_exit(LIMIT), Some(0));
}

/// Eviction reaches parked TLS connections (through their idle set), the
/// reclaim-first crawler before the longest idle browser; each goes with
/// `close_notify`, and the survivors still answer. (A grace of 1 ms: all
/// four are past it when a newcomer comes, however slow the handshakes.)
#[test]
fn eviction_takes_parked_tls_connections_in_order() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Ok);
    let client_conf = "max_connections = 4\nkeepalive_timeout = \"60s\"\n[client.pressure]\n\
                       min_keepalive_timeout = \"60s\"\nhigh_water = 1.0\ngrace = \"1ms\"\n\
                       [[user_agent]]\nmatch = \"HoardBot\"\nreclaim_first = true\n";
    let p = start(&f, client_conf, &backend);
    let cfg = client(&pki);
    let mut held = Vec::new();
    for ua in ["Mozilla/5.0 old", "HoardBot/1", "Mozilla/5.0 b", "Mozilla/5.0 c"] {
        let mut s = connect(&cfg, p.addr);
        s.write_all(format!("GET / HTTP/1.1\r\nHost: a.test\r\nUser-Agent: {ua}\r\n\r\n").as_bytes())
            .unwrap();
        let mut buf = Vec::new();
        assert!(read_response_tls(&mut s, &mut buf).is_some());
        assert!(wait_until(LIMIT, || is_parked(&p, &s)));
        held.push(s);
    }
    let closed = |s: &Tls| !is_listed(&p, s);
    let first = served_once(&p, &cfg);
    assert!(
        wait_until(LIMIT, || closed(&held[1])),
        "{:?}\n{}",
        connections(&p),
        p.log()
    );
    assert!(!closed(&held[0]) && !closed(&held[2]) && !closed(&held[3]));
    let mut crawler = held.remove(1);
    assert_eq!(tls_end(&mut crawler), TlsEnd::CloseNotify);
    let second = served_once(&p, &cfg);
    assert!(wait_until(LIMIT, || closed(&held[0])));
    assert!(!closed(&held[1]) && !closed(&held[2]));
    let mut s = held.remove(0);
    assert_eq!(tls_end(&mut s), TlsEnd::CloseNotify);
    assert_eq!(
        p.metric("finguard_client_evictions_total{reason=\"reclaim_first\",rule=\"HoardBot\"}"),
        1.0
    );
    assert_eq!(
        p.metric("finguard_client_evictions_total{reason=\"idle\",rule=\"none\"}"),
        1.0
    );
    for s in &mut held {
        s.write_all(get("/still").as_bytes()).unwrap();
        let mut buf = Vec::new();
        let (head, _) = read_response_tls(s, &mut buf).expect("a survivor answers");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    drop((first, second));
}

/// A request whose first record has begun to arrive, and that rustls has
/// read in part (the socket has nothing unread), is not idle: when a
/// newcomer needs room, the next idle connection goes instead, though the
/// first is the longest idle, and the request is answered once whole.
#[test]
fn a_tls_connection_with_part_of_a_record_read_is_not_evicted() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::EchoHead);
    let client_conf = "max_connections = 2\nkeepalive_timeout = \"60s\"\n[client.pressure]\n\
                       min_keepalive_timeout = \"60s\"\nhigh_water = 1.0\ngrace = \"1ms\"\n";
    let p = start(&f, client_conf, &backend);
    let cfg = client(&pki);
    let mut arriving = served_once(&p, &cfg);
    assert!(wait_until(LIMIT, || is_parked(&p, &arriving)));
    let idle = served_once(&p, &cfg);
    assert!(wait_until(LIMIT, || is_parked(&p, &idle)));
    // The request's record, encrypted; its first 20 bytes sent and read.
    let record = sealed(&mut arriving, "/arriving");
    assert!(record.len() > 20);
    arriving.sock.write_all(&record[..20]).unwrap();
    assert!(wait_until(LIMIT, || unread_by_finguard(&p, &arriving) == Some(0)));
    let newcomer = served_once(&p, &cfg);
    assert!(
        wait_until(LIMIT, || !is_listed(&p, &idle)),
        "{:?}\n{}",
        connections(&p),
        p.log()
    );
    assert!(
        is_listed(&p, &arriving),
        "the connection whose request was arriving was closed"
    );
    arriving.sock.write_all(&record[20..]).unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_response_tls(&mut arriving, &mut buf).expect("the arriving request's answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).starts_with("GET /arriving HTTP/1.1\r\n"));
    drop(newcomer);
}

/// Python's `ssl` (OpenSSL): a request, a park (the script waits for a
/// line on stdin, sent once the connection is parked), then two pipelined
/// requests on the same connection, then a clean TLS shutdown (`unwrap`:
/// finguard's `close_notify` answers the client's). TLS 1.3 and 1.2.
#[test]
fn python_ssl_reuses_a_parked_tls_13_connection() {
    python_ssl_across_a_park("TLSv1_3");
}

#[test]
fn python_ssl_reuses_a_parked_tls_12_connection() {
    python_ssl_across_a_park("TLSv1_2");
}

fn python_ssl_across_a_park(version: &str) {
    if !have("python3") {
        return;
    }
    let pki = pki();
    let f = files(&pki);
    let ca = ca_file(&pki);
    let backend = Backend::start(Reply::EchoHead);
    let p = start(&f, "keepalive_timeout = \"30s\"\n", &backend);
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, sys.argv[3])
raw = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
raw.settimeout(10)
s = ctx.wrap_socket(raw, server_hostname="a.test")
CRLF = b"\r\n"
def req(path):
    return f"GET {path} HTTP/1.1\r\nHost: a.test\r\nUser-Agent: python-ssl\r\n\r\n".encode()
def responses(n):
    buf, out = b"", []
    while len(out) < n:
        while CRLF + CRLF not in buf:
            buf += s.recv(65536)
        head, rest = buf.split(CRLF + CRLF, 1)
        lines = head.split(CRLF)
        length = [int(l.split(b":")[1]) for l in lines if l.lower().startswith(b"content-length:")][0]
        while len(rest) < length:
            rest += s.recv(65536)
        out.append((lines[0].decode(), rest[:length].split(CRLF)[0].decode()))
        buf = rest[length:]
    return out
s.sendall(req("/py-1"))
print(*responses(1)[0], sep="|")
print("port", s.getsockname()[1], flush=True)
sys.stdin.readline()
s.sendall(req("/py-2") + req("/py-3"))
for r in responses(2):
    print(*r, sep="|")
v = s.version()
s = s.unwrap()
print("unwrapped", v, flush=True)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, &p.addr.port().to_string()])
        .arg(&ca.0)
        .arg(version)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "HTTP/1.1 200 OK|GET /py-1 HTTP/1.1");
    line.clear();
    out.read_line(&mut line).unwrap();
    let port: u16 = line.trim().strip_prefix("port ").unwrap().parse().unwrap();
    let me: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_until(LIMIT, || is_parked_port(&p, me)), "{:?}", connections(&p));
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let unwrapped = format!("unwrapped {}", version.replace('_', "."));
    assert_eq!(
        rest.lines().collect::<Vec<_>>(),
        [
            "HTTP/1.1 200 OK|GET /py-2 HTTP/1.1",
            "HTTP/1.1 200 OK|GET /py-3 HTTP/1.1",
            unwrapped.as_str()
        ]
    );
}

/// curl with two URLs on one connection, a pause between them long enough
/// to be parked (`--rate`): both answered, on one connection.
#[test]
fn curl_http1_reuses_a_tls_connection_across_a_pause() {
    if !have("curl") {
        return;
    }
    let pki = pki();
    let f = files(&pki);
    let ca = ca_file(&pki);
    let backend = Backend::start(Reply::Ok);
    let p = start(&f, "keepalive_timeout = \"30s\"\n", &backend);
    let port = p.addr.port();
    let url = format!("https://a.test:{port}/");
    let out = curl_to(port, &ca)
        .args([
            "--http1.1",
            "--rate",
            "4/s",
            "-w",
            "%{http_code} %{num_connects}\\n",
            "-o",
            "/dev/null",
        ])
        .arg(&url)
        .args(["-o", "/dev/null"])
        .arg(&url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().collect::<Vec<_>>(), ["200 1", "200 0"], "{text}");
    assert_eq!(backend.accepted(), 1);
}

const BIG: usize = 8 << 20;

fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

/// Keep-alive: every request gets the 8 MiB pattern.
fn big_backend(mut s: TcpStream) {
    let body = big_body();
    let mut buf = Vec::new();
    while read_head(&mut s, &mut buf).is_some() {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
        if s.write_all(head.as_bytes()).and_then(|()| s.write_all(&body)).is_err() {
            return;
        }
    }
}

/// 8 MiB responses (far more than the socket buffers hold: the TLS writes
/// wait on the socket) before and after a park arrive byte-exact.
#[test]
fn large_responses_before_and_after_a_park_arrive_whole() {
    let pki = pki();
    let f = files(&pki);
    let (addr, _) = raw_backend(big_backend);
    let p = Proxy::start_raw(
        &config(&f, "keepalive_timeout = \"30s\"\n"),
        &["--backend", &addr.to_string()],
    );
    let mut s = connect(&client(&pki), p.addr);
    let want = big_body();
    for i in 0..2 {
        s.write_all(get(&format!("/big-{i}")).as_bytes()).unwrap();
        let mut buf = Vec::new();
        let (head, body) = read_response_tls(&mut s, &mut buf).expect("a large response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body == want, "the body differs ({} bytes)", body.len());
        assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    }
}

/// Records that bring no request (an empty line each, every 250 ms) to a
/// parked TLS connection do not buy it a new keep-alive timeout at each
/// wake: it still ends about its 1 s one, with `close_notify`.
#[test]
fn empty_records_to_a_parked_tls_connection_do_not_extend_its_keepalive() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Ok);
    let p = start(&f, "keepalive_timeout = \"1s\"\n", &backend);
    let mut s = served_once(&p, &client(&pki));
    assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    // The read's timeout paces the trickle.
    s.sock.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
    let mut end = TlsEnd::Open;
    for _ in 0..24 {
        if s.write_all(b"\r\n").is_err() {
            end = TlsEnd::Reset;
            break;
        }
        end = tls_end(&mut s);
        if end != TlsEnd::Open {
            break;
        }
    }
    assert_eq!(
        end,
        TlsEnd::CloseNotify,
        "the connection outlived its keep-alive timeout by 5 s"
    );
}
