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
    let body: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let mut buf = Vec::new();
    while read_head(&mut s, &mut buf).is_some() {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {MIB}\r\n\r\n");
        if s.write_all(head.as_bytes()).and_then(|()| s.write_all(&body)).is_err() {
            return;
        }
    }
}

/// The body of the one response in `got`, a head and what followed it.
fn body_of(got: &[u8]) -> &[u8] {
    let head_len = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    &got[head_len..]
}

/// A client of [`mib_backend`] through finguard started with `close` (plain,
/// or over TLS with `tls`), connected with a 64 KiB receive buffer, that
/// asked for the 1 MiB and read its first bytes (returned). `tcp` is the
/// client's socket, for what the tests do to it beside the stream.
struct BigClient {
    p: Proxy,
    c: Box<dyn ReadWrite>,
    tcp: std::net::TcpStream,
    _files: tls::Files,
}

fn big_client(close: &str, tls: bool) -> (BigClient, Vec<u8>) {
    use std::io::Read;
    let (backend, _) = raw_backend(mib_backend);
    let pki = tls::pki();
    let files = tls::files(&pki);
    let p = if tls {
        Proxy::start_raw(&tls::tls_config(&files, close), &["--backend", &backend.to_string()])
    } else {
        Proxy::start(&format!("{close}[admin]\naddr = \"127.0.0.1:0\"\n"), backend)
    };
    let tcp = connect_with_receive_buffer(p.addr, 64 * 1024);
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let side = tcp.try_clone().unwrap();
    let mut c: Box<dyn ReadWrite> = if tls {
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let conn = rustls::ClientConnection::new(tls::client(&pki), name).unwrap();
        Box::new(rustls::StreamOwned::new(conn, tcp))
    } else {
        Box::new(tcp)
    };
    c.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = vec![0u8; 16 * 1024];
    let n = c.read(&mut first).unwrap();
    assert!(n > 0, "no response began");
    first.truncate(n);
    let client = BigClient {
        p,
        c,
        tcp: side,
        _files: files,
    };
    (client, first)
}

/// How the sleeping client of [`asleep_with_response_queued`] talks.
#[derive(PartialEq)]
enum Sleeper {
    Plain,
    /// Sends a line end 1 s into its sleep.
    Pokes,
    /// Over TLS, and asleep past `body_timeout` (1 s) too.
    Tls,
}

/// A client whose program sleeps with its receive buffer full (as `curl
/// --limit-rate` does after a fast start) while its response still sits in
/// finguard's send queue: the lingering close times out with `on_timeout =
/// "reset"`, yet the client's stack answers, so the rest is not thrown away
/// by a reset: once awake, the client reads all of it, then the end (TLS:
/// `close_notify`). [`Sleeper::Pokes`] sends a line end 1 s into its sleep,
/// while finguard waits for the queue (the lingering read saw 300 ms of
/// silence 600 ms after the response; the wait lasts 3 s): read, it does
/// not turn the close into a reset either. Over TLS the response also
/// outlasts `body_timeout` in the queue, which aborted it before.
fn asleep_with_response_queued(how: Sleeper) {
    use std::io::Read;
    let close = "[client]\nkeepalive_timeout = \"300ms\"\nbody_timeout = \"1s\"\n[client.close]\n\
                 mode = \"lingering\"\nlinger_time = \"3s\"\nlinger_timeout = \"300ms\"\non_timeout = \"reset\"\n";
    let (BigClient { p, mut c, .. }, mut got) = big_client(close, how == Sleeper::Tls);
    if how == Sleeper::Pokes {
        std::thread::sleep(Duration::from_secs(1));
        c.write_all(b"\r\n").unwrap();
    }
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
        match c.read(&mut b) {
            Ok(0) => end = Some(Ok(())),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => end = Some(Err(e.kind())),
        }
    }
    let body = body_of(&got);
    assert_eq!(end, Some(Ok(())), "after {} body bytes", body.len());
    assert_eq!(body.len(), MIB);
    assert!(
        body.iter().enumerate().all(|(i, &v)| v == (i % 251) as u8),
        "the body changed on the way"
    );
}

trait ReadWrite: std::io::Read + Write {}
impl<T: std::io::Read + Write> ReadWrite for T {}

#[test]
fn a_client_asleep_with_its_response_queued_gets_all_of_it_after_the_close() {
    asleep_with_response_queued(Sleeper::Plain);
}

#[test]
fn a_client_that_sends_a_byte_while_its_response_is_queued_still_gets_all_of_it() {
    asleep_with_response_queued(Sleeper::Pokes);
}

#[test]
fn a_tls_client_asleep_past_body_timeout_with_its_response_queued_gets_all_of_it() {
    asleep_with_response_queued(Sleeper::Tls);
}

/// A client that reads its response steadily (64 KiB every 250 ms through a
/// 64 KiB receive buffer) well after finguard began closing: the close
/// waits for the send queue while it drains, past `linger_time` and the
/// reaper's limit (`linger_time` + `interval`), and the reaper leaves it
/// alone: not counted as stuck, and every byte arrives, then EOF.
#[test]
fn a_close_waiting_for_a_steady_reader_is_not_reaped_as_stuck() {
    use std::io::Read;
    let (backend, _) = raw_backend(mib_backend);
    let cfg = "[client]\nkeepalive_timeout = \"300ms\"\n[client.close]\nmode = \"lingering\"\n\
               linger_time = \"1s\"\nlinger_timeout = \"300ms\"\non_timeout = \"reset\"\n\
               [reaper]\ninterval = \"200ms\"\n[admin]\naddr = \"127.0.0.1:0\"\n";
    let p = Proxy::start(cfg, backend);
    let mut c = connect_with_receive_buffer(p.addr, 64 * 1024);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (mut got, mut b) = (Vec::new(), vec![0u8; 64 * 1024]);
    let started = std::time::Instant::now();
    loop {
        match c.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => panic!("{e} after {} bytes, {:?}", got.len(), started.elapsed()),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(body_of(&got).len(), MIB);
    assert!(
        started.elapsed() > Duration::from_millis(2500),
        "read too fast to outlast the reaper's limit: {:?}",
        started.elapsed()
    );
    let closes = || {
        ["client_fin", "linger_timeout", "linger_time", "reset", "error"]
            .iter()
            .map(|o| p.metric(&format!("finguard_lingering_closes_total{{outcome=\"{o}\"}}")))
            .sum::<f64>()
    };
    assert!(
        wait_until(Duration::from_secs(5), || closes() >= 1.0),
        "the close did not end"
    );
    assert_eq!(p.metric("finguard_client_reaped_total{reason=\"linger_expired\"}"), 0.0);
}

/// Whether finguard, with `on_timeout`, answers a client whose host goes
/// away ([`go_deaf`]) while 1 MiB of its response still sits in finguard's
/// send queue.
#[derive(PartialEq)]
enum Gone {
    /// Plain TCP, `on_timeout = "reset"`.
    Reset,
    /// Plain TCP, `on_timeout = "close"`.
    Close,
    /// TLS, `on_timeout = "reset"`.
    Tls,
}

/// A client that takes the first bytes of a 1 MiB response, then whose host
/// goes away: its stack no longer acknowledges or answers anything, so what
/// finguard queued will never be taken. With `on_timeout = "reset"` the
/// connection is reset once the close has waited for the queue (plain TCP:
/// at the end of the lingering close; TLS: before `close_notify`, the queue
/// having made no progress for `body_timeout`), and nothing is left of it in
/// the kernel. With `on_timeout = "close"` the kernel is left an orphan in
/// FIN_WAIT1 that retransmits to nobody for minutes: what the reset spares.
/// (A client whose stack still answers, asleep, keeps its response instead:
/// `asleep_with_response_queued`.)
fn gone_with_response_queued(how: Gone) {
    let on_timeout = if how == Gone::Close { "close" } else { "reset" };
    let close = format!(
        "[client]\nkeepalive_timeout = \"300ms\"\nbody_timeout = \"1s\"\n[client.close]\n\
         mode = \"lingering\"\nlinger_time = \"1s\"\nlinger_timeout = \"300ms\"\non_timeout = \"{on_timeout}\"\n"
    );
    let (
        BigClient {
            p, c, tcp: client_end, ..
        },
        _,
    ) = big_client(&close, how == Gone::Tls);
    let port = client_end.local_addr().unwrap().port();
    go_deaf(&client_end);
    // finguard's socket for this client, while it still has one.
    let finguards = || tcp_sockets(p.port(), port);
    assert!(
        !finguards().is_empty(),
        "finguard's socket is gone before the client went away"
    );
    if how == Gone::Close {
        // Let go by finguard (inode 0), still in the kernel, still sending.
        assert!(
            wait_until(Duration::from_secs(10), || finguards() == vec![("FIN_WAIT1", 0)]),
            "expected an orphan in FIN_WAIT1, found {:?}",
            finguards()
        );
    } else {
        assert!(
            wait_until(Duration::from_secs(10), || finguards().is_empty()),
            "finguard's socket is still there: {:?}",
            finguards()
        );
    }
    drop(c);
    reset_and_drop(client_end);
}

#[test]
fn a_client_whose_host_went_away_with_its_response_queued_is_reset() {
    gone_with_response_queued(Gone::Reset);
}

#[test]
fn a_client_whose_host_went_away_is_left_to_the_kernel_with_on_timeout_close() {
    gone_with_response_queued(Gone::Close);
}

#[test]
fn a_tls_client_whose_host_went_away_with_its_response_queued_is_reset() {
    gone_with_response_queued(Gone::Tls);
}
