//! Lingering close, observed on the wire and in /proc/net/tcp.

mod support;

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;
use support::*;

fn config(close: &str) -> String {
    config_with("", close)
}

fn config_with(client: &str, close: &str) -> String {
    format!(
        r#"
[client]
keepalive_timeout = "10s"
header_timeout = "5s"
body_timeout = "5s"
{client}
[client.close]
{close}
"#
    )
}

/// A client that POSTs 4 MiB, writing all of it before it reads, the way
/// simple HTTP clients do. Returns (status it read, whether it saw a reset).
fn post_4mib(addr: SocketAddr) -> (Option<u16>, bool) {
    post(addr, 4 << 20)
}

fn post(addr: SocketAddr, len: usize) -> (Option<u16>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: {len}\r\n\r\n");
    let mut reset = false;
    let mut sent = s.write_all(head.as_bytes()).is_ok();
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = len;
    while sent && left > 0 {
        match s.write_all(&chunk[..left.min(chunk.len())]) {
            Ok(()) => left -= chunk.len().min(left),
            Err(e) => {
                reset |= matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe);
                sent = false;
            }
        }
    }
    let mut buf = Vec::new();
    let status = match read_response(&mut s, &mut buf) {
        Some(r) => Some(r.status),
        None => {
            reset |= peer_end(&mut s, Duration::from_millis(100)) == PeerEnd::Reset;
            None
        }
    };
    (status, reset)
}

#[test]
fn early_401_reaches_a_client_still_sending() {
    let backend = Backend::start(Reply::Unauthorized);
    let lingering = Proxy::start(&config(r#"mode = "lingering""#), backend.addr);
    for i in 0..30 {
        let (status, reset) = post_4mib(lingering.addr);
        assert_eq!(
            status,
            Some(401),
            "run {i}: the 401 was lost (reset seen: {reset})\n{}",
            lingering.log()
        );
        assert!(!reset, "run {i}: connection reset");
    }
}

#[test]
fn early_413_is_read_with_lingering_close_and_lost_with_immediate_close() {
    // finguard answers 413 from the announced length, before reading a byte
    // of the body, while the client is still sending 4 MiB.
    let backend = Backend::start(Reply::Ok);
    let limit = "max_body_bytes = \"1MiB\"";
    let lingering = Proxy::start(&config_with(limit, r#"mode = "lingering""#), backend.addr);
    for i in 0..30 {
        let (status, reset) = post_4mib(lingering.addr);
        assert_eq!(status, Some(413), "run {i}: the 413 was lost (reset seen: {reset})");
        assert!(!reset, "run {i}: connection reset");
    }
    // The control: closing at once turns the unread upload into a reset. 64 MiB
    // is more than loopback's socket buffers can swallow before the close.
    let immediate = Proxy::start(&config_with(limit, r#"mode = "immediate""#), backend.addr);
    let resets = (0..5).filter(|_| post(immediate.addr, 64 << 20).1).count();
    assert!(resets > 0, "immediate close never reset a client still sending");
    assert_eq!(backend.accepted(), 0);
}

/// A client that reads its response and then neither reads nor closes.
fn never_closing_client(proxy: &Proxy) -> (TcpStream, u16) {
    let mut s = proxy.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new()).expect("response");
    assert_eq!(r.status, 200);
    let port = s.local_addr().unwrap().port();
    (s, port)
}

#[test]
fn a_client_that_never_closes_is_reset_after_linger_time() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        &config(
            r#"mode = "lingering"
linger_time = "600ms"
linger_timeout = "300ms"
on_timeout = "reset""#,
        ),
        backend.addr,
    );
    let (_client, port) = never_closing_client(&p);
    // finguard sent FIN and holds the socket in FIN_WAIT_2 while it lingers...
    assert!(wait_until(Duration::from_secs(2), || tcp_states(p.port(), port)
        .contains(&"FIN_WAIT2")));
    // ...then aborts it: nothing is left for the kernel's tcp_fin_timeout.
    assert!(
        wait_until(Duration::from_millis(600 + 1500), || tcp_states(p.port(), port)
            .is_empty()),
        "finguard's socket is still there: {:?}",
        tcp_states(p.port(), port)
    );
}

#[test]
fn plain_close_on_timeout_leaves_the_orphan_that_reset_avoids() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        &config(
            r#"mode = "lingering"
linger_time = "300ms"
linger_timeout = "200ms"
on_timeout = "close""#,
        ),
        backend.addr,
    );
    let (mut client, port) = never_closing_client(&p);
    // After finguard lets go, the kernel keeps the orphan in FIN_WAIT_2 until
    // tcp_fin_timeout (60 s by default): that is what "reset" is for.
    assert!(
        wait_until(Duration::from_secs(3), || tcp_sockets(p.port(), port)
            == vec![("FIN_WAIT2", 0)]),
        "expected an orphaned FIN_WAIT2, found {:?}",
        tcp_sockets(p.port(), port)
    );
    assert_eq!(peer_end(&mut client, Duration::from_millis(200)), PeerEnd::Eof);
}

#[test]
fn an_idle_client_that_half_closes_is_closed_at_once() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(&config(r#"mode = "lingering""#), backend.addr);
    let mut s = p.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut Vec::new()).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("connection").is_none(), "keep-alive expected: {}", r.head);
    let port = s.local_addr().unwrap().port();
    s.shutdown(Shutdown::Write).unwrap();
    // No CLOSE_WAIT on finguard's side, well within keepalive_timeout (10 s).
    assert!(wait_until(Duration::from_secs(1), || !tcp_states(p.port(), port)
        .contains(&"CLOSE_WAIT")
        && !tcp_states(p.port(), port).contains(&"ESTABLISHED")));
    assert_eq!(peer_end(&mut s, Duration::from_secs(1)), PeerEnd::Eof);
}

#[test]
fn a_request_followed_by_fin_is_answered() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(&config(r#"mode = "lingering""#), backend.addr);
    for _ in 0..5 {
        let mut s = p.connect();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let r = read_response(&mut s, &mut Vec::new()).expect("answered despite the FIN");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello\n");
    }
}

#[test]
fn so_linger_mode_closes_without_user_space_lingering() {
    let backend = Backend::start(Reply::Ok);
    let cfg = config(
        r#"mode = "so_linger"
linger_time = "1s""#,
    ) + "[admin]\naddr = \"127.0.0.1:0\"\n";
    let p = Proxy::start(&cfg, backend.addr);
    let (mut client, port) = never_closing_client(&p);
    assert_eq!(peer_end(&mut client, Duration::from_secs(3)), PeerEnd::Eof);
    // Closed by the kernel's SO_LINGER, not lingered in user space: counted
    // `immediate`, and no finguard-held socket waits for the client (a
    // lingering close would hold it, FIN_WAIT2 with an inode, for linger_time).
    assert!(
        wait_until(Duration::from_millis(500), || p
            .metric("finguard_lingering_closes_total{outcome=\"immediate\"}")
            == 1.0),
        "{}",
        p.admin_get("/metrics").1
    );
    let held: Vec<_> = tcp_sockets(p.port(), port)
        .into_iter()
        .filter(|&(_, inode)| inode != 0)
        .collect();
    assert!(held.is_empty(), "finguard still holds the socket: {held:?}");
}

/// 1 MiB after any request head, on a connection kept open.
const MIB: usize = 1024 * 1024;

fn mib_backend(mut s: TcpStream) {
    use std::io::Read;
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let body: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {MIB}\r\n\r\n").as_bytes());
    let _ = s.write_all(&body);
    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
}

/// A client whose program sleeps with its receive buffer full (as `curl
/// --limit-rate` does after a fast start) while its response still sits in
/// finguard's send queue: the lingering close times out with `on_timeout =
/// "reset"`, yet the client's stack answers, so the rest is not thrown away
/// by a reset: once awake, the client reads all of it, then EOF.
#[test]
fn a_client_asleep_with_its_response_queued_gets_all_of_it_after_the_close() {
    let (backend, _) = raw_backend(mib_backend);
    let cfg = "[client]\nkeepalive_timeout = \"300ms\"\n[client.close]\nmode = \"lingering\"\n\
               linger_time = \"1s\"\nlinger_timeout = \"300ms\"\non_timeout = \"reset\"\n\
               [admin]\naddr = \"127.0.0.1:0\"\n";
    let p = Proxy::start(cfg, backend);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.connect(&p.addr.into()).unwrap();
    let mut c: TcpStream = sock.into();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = vec![0u8; 16 * 1024];
    let first = std::io::Read::read(&mut c, &mut got).unwrap();
    got.truncate(first);
    // Asleep until finguard's close has timed out and been decided.
    let timed_out = || {
        p.metric("finguard_lingering_closes_total{outcome=\"linger_timeout\"}")
            + p.metric("finguard_lingering_closes_total{outcome=\"linger_time\"}")
    };
    assert!(
        wait_until(Duration::from_secs(10), || timed_out() >= 1.0),
        "the lingering close did not time out"
    );
    let mut end = None;
    let mut b = [0u8; 65536];
    while end.is_none() {
        match std::io::Read::read(&mut c, &mut b) {
            Ok(0) => end = Some(Ok(())),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => end = Some(Err(e.kind())),
        }
    }
    let head_len = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    assert_eq!(end, Some(Ok(())), "after {} body bytes", got.len() - head_len);
    let body = &got[head_len..];
    assert_eq!(body.len(), MIB);
    assert!(
        body.iter().enumerate().all(|(i, &v)| v == (i % 251) as u8),
        "the body changed on the way"
    );
}
