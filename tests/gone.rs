//! Clients whose host went away (power cut, network gone) while finguard
//! still writes to them: their stack acknowledges and answers nothing
//! ([`go_deaf`]). What finguard writes goes into the kernel's buffer all the
//! same, so no write waits; without a look at the connection itself, such a
//! client would hold its exchange, its backend connection or tunnel, until
//! the kernel gave up its retransmissions (about 15 minutes). Each test
//! asserts that finguard's socket for the client is gone within seconds,
//! where it stayed ESTABLISHED (or an orphan) for minutes before.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

/// How long finguard may take: `body_timeout` (or `upgrade_idle_timeout`)
/// is 1 s in these tests, looked at every half of it.
const BOUND: Duration = Duration::from_secs(10);

/// A backend that answers `/ws` with 101 and then a byte every 100 ms, and
/// anything else with a chunked body trickling a chunk every 100 ms (for a
/// minute), unbuffered by finguard (`X-Accel-Buffering: no`) under
/// `/nobuf`. It stops at the first failed write.
fn trickle_backend(mut s: TcpStream) {
    let mut buf = Vec::new();
    let Some(head) = read_head(&mut s, &mut buf) else {
        return;
    };
    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
    let (start, tick): (String, &[u8]) = if path == "/ws" {
        (
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".into(),
            b".",
        )
    } else {
        let nobuf = if path == "/nobuf" {
            "X-Accel-Buffering: no\r\n"
        } else {
            ""
        };
        (
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{nobuf}\r\n"),
            b"5\r\nhello\r\n",
        )
    };
    if s.write_all(start.as_bytes()).is_err() {
        return;
    }
    for _ in 0..600 {
        if s.write_all(tick).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = s.write_all(b"0\r\n\r\n");
}

const CONFIG: &str = "[client]\nbody_timeout = \"1s\"\nupgrade_idle_timeout = \"1s\"\nkeepalive_timeout = \"60s\"\n\
                      [client.close]\nlinger_time = \"1s\"\nlinger_timeout = \"300ms\"\n";

/// finguard's socket for the client on `port` is gone within [`BOUND`];
/// and so is its backend connection (nothing ESTABLISHED to `backend`).
fn gone_soon(p: &Proxy, port: u16, backend: u16) {
    assert!(
        wait_until(BOUND, || tcp_sockets(p.port(), port).is_empty()),
        "finguard still holds the client whose host went away: {:?}",
        tcp_sockets(p.port(), port)
    );
    assert!(
        wait_until(BOUND, || !tcp_states(0, backend).contains(&"ESTABLISHED")),
        "finguard still holds the backend connection: {:?}",
        tcp_states(0, backend)
    );
}

/// finguard's socket for the client on `port` is gone within [`BOUND`].
fn closed_soon(p: &Proxy, port: u16) {
    assert!(
        wait_until(BOUND, || tcp_sockets(p.port(), port).is_empty()),
        "finguard's socket is still there: {:?}",
        tcp_sockets(p.port(), port)
    );
}

/// Connects to `p`, sends `request`, checks the response head begins with
/// `status`, and reads on until what came after the head satisfies `until`:
/// the client and what it got so far, the response flowing.
fn flowing(
    p: &Proxy,
    request: &[u8],
    status: &str,
    read_limit: Duration,
    until: fn(&[u8]) -> bool,
) -> (TcpStream, Vec<u8>) {
    let mut c = p.connect();
    c.set_read_timeout(Some(read_limit)).unwrap();
    c.write_all(request).unwrap();
    let mut got = Vec::new();
    let head = read_head(&mut c, &mut got).expect("a response head");
    assert!(head.starts_with(status), "{head}");
    while !until(&got) {
        let mut b = [0u8; 512];
        let n = c.read(&mut b).unwrap();
        assert!(n > 0, "the response ended early");
        got.extend_from_slice(&b[..n]);
    }
    (c, got)
}

/// A chunk of [`trickle_backend`]'s body has come.
fn a_chunk(got: &[u8]) -> bool {
    got.windows(5).any(|w| w == b"hello")
}

/// An HTTP/1 client takes the start of a trickling response, then its host
/// goes away.
fn plain_trickle(path: &str) {
    let (backend, _) = raw_backend(trickle_backend);
    let p = Proxy::start(CONFIG, backend);
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    let (c, _) = flowing(&p, request.as_bytes(), "HTTP/1.1 200", Duration::from_secs(10), a_chunk);
    let port = c.local_addr().unwrap().port();
    go_deaf(&c);
    gone_soon(&p, port, backend.port());
    reset_and_drop(c);
}

#[test]
fn a_client_gone_from_a_streamed_trickle_is_let_go() {
    plain_trickle("/nobuf");
}

#[test]
fn a_client_gone_from_a_buffered_trickle_is_let_go() {
    plain_trickle("/buffered");
}

/// The backend's heartbeats keep a tunnel moving, into the kernel's buffer
/// for a client that is gone.
#[test]
fn a_client_gone_from_a_tunnel_with_heartbeats_is_let_go() {
    let (backend, _) = raw_backend(trickle_backend);
    let p = Proxy::start(CONFIG, backend);
    let (c, _) = flowing(
        &p,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        "HTTP/1.1 101",
        Duration::from_secs(10),
        |got| !got.is_empty(),
    );
    let port = c.local_addr().unwrap().port();
    go_deaf(&c);
    gone_soon(&p, port, backend.port());
    reset_and_drop(c);
}

/// An HTTP/2 client takes the start of a trickling response, then its host
/// goes away: h2 keeps taking the frames (they go into the kernel's
/// buffer), so no stream waits.
#[test]
fn an_http2_client_gone_from_a_trickle_is_let_go() {
    let (backend, _) = raw_backend(trickle_backend);
    let s = h2_client::h2_proxy(CONFIG, backend);
    let tcp = TcpStream::connect(s.proxy.addr).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let deaf = tcp.try_clone().unwrap();
    tcp.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = s.client.clone();
    // The connection's task stays in `rt`, and the stream is kept open,
    // not read any more, until the end.
    let (first, _client, _body) = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("https://a.test/nobuf").body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        let mut body = resp.into_body();
        let first = body.data().await.map(|d| d.map(|b| b.len()));
        (first, client, body)
    });
    assert!(matches!(first, Some(Ok(n)) if n > 0), "no data came: {first:?}");
    go_deaf(&deaf);
    gone_soon(&s.proxy, port, backend.port());
    reset_and_drop(deaf);
    drop(rt);
}

/// A client connects to a TLS listener and its host goes away before its
/// handshake: `handshake_timeout` ends it with a reset, not a close that
/// leaves the kernel an orphan retransmitting finguard's FIN for minutes.
#[test]
fn a_client_gone_before_its_tls_handshake_leaves_no_orphan() {
    let (backend, _) = raw_backend(trickle_backend);
    let pki = tls::pki();
    let files = tls::files(&pki);
    let p = Proxy::start_raw(&tls::tls_config(&files, ""), &["--backend", &backend.to_string()]);
    let c = TcpStream::connect(p.addr).unwrap();
    let port = c.local_addr().unwrap().port();
    go_deaf(&c);
    closed_soon(&p, port);
    reset_and_drop(c);
}

/// SIGTERM while a client whose host went away is idle: the drain ends its
/// keep-alive wait and begins a lingering close, whose FIN nobody
/// acknowledges. When `shutdown_timeout` ends the process, that connection
/// is reset, not left to the kernel as an orphan retransmitting its FIN for
/// minutes.
#[test]
fn a_client_gone_when_the_process_exits_leaves_no_orphan() {
    let backend = Backend::start(Reply::Ok);
    let mut p = Proxy::start(
        "shutdown_timeout = \"1s\"\n[client]\nkeepalive_timeout = \"60s\"\n\
         [client.close]\nlinger_time = \"30s\"\nlinger_timeout = \"10s\"\n",
        backend.addr,
    );
    let mut c = p.connect();
    let port = c.local_addr().unwrap().port();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c, &mut Vec::new()).expect("a response").status, 200);
    go_deaf(&c);
    p.signal("TERM");
    assert!(p.wait_exit(BOUND).is_some(), "finguard did not exit");
    assert!(
        wait_until(BOUND, || tcp_sockets(p.port(), port).is_empty()),
        "the exit left the kernel finguard's socket: {:?}",
        tcp_sockets(p.port(), port)
    );
    reset_and_drop(c);
}

/// A client out of reach for longer than `body_timeout` in the middle of a
/// trickling response (a network outage): finguard lets go of the exchange
/// (its backend connection is freed while the client is away), but with a
/// plain close the kernel keeps trying to deliver: once back, within
/// `linger_time`, the client gets what was queued and then the end (a FIN:
/// the chunked body is seen cut short), where a reset, sent once while it
/// was away, would have left it waiting for bytes that never come.
#[test]
fn a_client_back_from_an_outage_learns_that_its_response_was_cut() {
    let (backend, _) = raw_backend(trickle_backend);
    let p = Proxy::start(
        "[client]\nbody_timeout = \"1s\"\n[client.close]\nlinger_time = \"8s\"\nlinger_timeout = \"300ms\"\n",
        backend,
    );
    let (mut c, mut got) = flowing(
        &p,
        b"GET /nobuf HTTP/1.1\r\nHost: t\r\n\r\n",
        "HTTP/1.1 200",
        Duration::from_secs(20),
        a_chunk,
    );
    go_deaf(&c);
    // Let go while the client is away: its backend connection is freed.
    assert!(
        wait_until(BOUND, || !tcp_states(0, backend.port()).contains(&"ESTABLISHED")),
        "finguard still holds the backend connection: {:?}",
        tcp_states(0, backend.port())
    );
    hear_again(&c);
    let end = loop {
        let mut b = [0u8; 4096];
        match c.read(&mut b) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => break Err(e.kind()),
        }
    };
    assert_eq!(end, Ok(()), "no end after {} bytes", got.len());
    assert!(!got.windows(5).any(|w| w == b"0\r\n\r\n"), "the cut body looks whole");
}

/// A client on `p` that has had one 200, its connection kept.
fn answered_once(p: &Proxy) -> TcpStream {
    let mut c = p.connect();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c, &mut Vec::new()).expect("a response").status, 200);
    c
}

/// `c`'s host goes away right after its FIN: finguard's close answers with
/// a FIN nobody acknowledges, and its socket for `c` must be gone within
/// [`BOUND`] all the same.
fn gone_after_fin(p: &Proxy, c: TcpStream) {
    let port = c.local_addr().unwrap().port();
    go_deaf(&c);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    closed_soon(p, port);
    reset_and_drop(c);
}

/// A client that got its response, closed its end (FIN) and whose host then
/// went away: finguard's close answers with a FIN nobody acknowledges. That
/// orphan (LAST_ACK) is dropped within `linger_time`, not left to the
/// kernel's retransmissions for minutes.
#[test]
fn a_client_gone_after_its_fin_leaves_no_orphan() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(CONFIG, backend.addr);
    gone_after_fin(&p, answered_once(&p));
}

/// An idle keep-alive client whose host went away is evicted to make room
/// for a newcomer: the eviction's FIN, which nobody acknowledges, leaves no
/// orphan past `linger_time`.
#[test]
fn an_evicted_client_that_is_gone_leaves_no_orphan() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        "[admin]\naddr = \"127.0.0.1:0\"\n\
         [client]\nmax_connections = 2\nkeepalive_timeout = \"60s\"\n\
         [client.pressure]\nmin_keepalive_timeout = \"60s\"\ngrace = \"100ms\"\n\
         [client.close]\nlinger_time = \"1s\"\nlinger_timeout = \"300ms\"\n",
        backend.addr,
    );
    let gone = answered_once(&p);
    let port = gone.local_addr().unwrap().port();
    go_deaf(&gone);
    // A second client fills the house; past their grace, the gone client is
    // the longest idle, and a newcomer makes it go.
    let _second = answered_once(&p);
    std::thread::sleep(Duration::from_millis(200));
    let _newcomer = answered_once(&p);
    assert!(
        wait_until(BOUND, || p
            .metric("finguard_client_evictions_total{reason=\"idle\",rule=\"none\"}")
            == 1.0),
        "the gone client was not evicted"
    );
    closed_soon(&p, port);
    reset_and_drop(gone);
}

/// A backend that takes a request head, answers it (`answer`) or not,
/// keeps the connection, and then goes away, its host no longer answering.
fn deaf_after(mut s: TcpStream, answer: bool) {
    let took = read_head(&mut s, &mut Vec::new()).is_some();
    if took && (!answer || s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_ok()) {
        go_deaf(&s);
        std::thread::sleep(Duration::from_secs(30));
    }
    reset_and_drop(s);
}

fn deaf_after_request(s: TcpStream) {
    deaf_after(s, false);
}

fn deaf_after_answer(s: TcpStream) {
    deaf_after(s, true);
}

/// finguard holds nothing to `backend` within [`BOUND`], not even an orphan.
fn backend_left_soon(backend: u16) {
    assert!(
        wait_until(BOUND, || tcp_sockets(0, backend).is_empty()),
        "finguard's backend socket is still there: {:?}",
        tcp_sockets(0, backend)
    );
}

/// A backend whose host goes away in the middle of an exchange: the client
/// gets its 504 at `response_timeout`, and the backend connection finguard
/// closes leaves no orphan retransmitting its FIN for minutes.
#[test]
fn a_backend_gone_mid_exchange_leaves_no_orphan() {
    let (backend, _) = raw_backend(deaf_after_request);
    let p = Proxy::start(
        "[[backend]]\nname = \"b\"\naddrs = [\"127.0.0.1:1\"]\nresponse_timeout = \"1s\"\n",
        backend,
    );
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 504, "{r:?}");
    backend_left_soon(backend.port());
}

/// A pooled backend connection whose host goes away while it is idle: the
/// pool's idle timeout closes it, and that close leaves no orphan.
#[test]
fn an_idle_backend_connection_that_is_gone_leaves_no_orphan() {
    let (backend, accepted) = raw_backend(deaf_after_answer);
    let p = Proxy::start(
        "[[backend]]\nname = \"b\"\naddrs = [\"127.0.0.1:1\"]\npool_idle_timeout = \"1s\"\n",
        backend,
    );
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{r:?}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    backend_left_soon(backend.port());
}

/// Body bytes of the response a half-closed client asks for.
const BIG: usize = 100_000;

/// What the bound on orphans must not cut: a client that sent its request
/// and its FIN at once (a half-close, as `nc -N` does) and sleeps with its
/// receive buffer full, part of its response still queued when finguard
/// answers its FIN with a close. Its stack answers the window probes, so
/// the kernel keeps the orphan, however long past `linger_time` the client
/// sleeps, and the whole response arrives when it reads.
#[test]
fn a_half_closed_client_asleep_keeps_its_queued_response() {
    let (backend, _) = raw_backend(sized_answers);
    let p = Proxy::start(CONFIG, backend);
    let mut c = connect_with_receive_buffer(p.addr, 4096);
    let port = c.local_addr().unwrap().port();
    write!(c, "GET /{BIG} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    // finguard has closed (an orphan, inode 0) with the response queued.
    assert!(
        wait_until(BOUND, || tcp_sockets(p.port(), port)
            .iter()
            .any(|&(_, inode)| inode == 0)),
        "finguard did not close: {:?}",
        tcp_sockets(p.port(), port)
    );
    // Asleep for three times `linger_time`.
    std::thread::sleep(Duration::from_secs(3));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("the response and then the end");
    let body = got.len() - find(&got, b"\r\n\r\n").expect("a head") - 4;
    assert_eq!(body, BIG, "the response was cut");
}

/// A backend that answers `GET /N` with an N-byte body, keeping the connection.
fn sized_answers(mut s: TcpStream) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf) {
        let n: usize = head.split(' ').nth(1).and_then(|p| p[1..].parse().ok()).unwrap_or(0);
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n{}", "x".repeat(n));
        if s.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// What the bound on orphans must not cut, when nothing is queued: a
/// keep-alive client whose response filled its receive buffer (all of it
/// acknowledged, its window shut) sends its FIN, then sleeps longer than
/// `linger_time`. finguard's FIN waits for the window like any byte; bounded,
/// the orphan would be dropped while the client sleeps, and the client
/// would find a reset where its end was due. The responses' sizes span its
/// buffer, so that some leave the window exactly shut.
#[test]
fn a_client_asleep_with_its_window_shut_gets_its_end_after_its_fin() {
    let (backend, _) = raw_backend(sized_answers);
    let p = Proxy::start(CONFIG, backend);
    let clients: Vec<_> = (3950..4150)
        .map(|n: usize| {
            let addr = p.addr;
            std::thread::spawn(move || {
                let mut c = connect_with_receive_buffer(addr, 4096);
                write!(c, "GET /{n} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                // finguard's response is out and acknowledged, its connection idle.
                std::thread::sleep(Duration::from_secs(1));
                c.shutdown(std::net::Shutdown::Write).unwrap();
                // Asleep for twice `linger_time`.
                std::thread::sleep(Duration::from_secs(2));
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut got = Vec::new();
                let end = c.read_to_end(&mut got).map(|_| ()).map_err(|e| e.kind());
                let body = find(&got, b"\r\n\r\n").map(|h| got.len() - h - 4);
                (n, body, end)
            })
        })
        .collect();
    for client in clients {
        let (n, body, end) = client.join().unwrap();
        assert_eq!((body, end), (Some(n), Ok(())), "the client asking for {n} bytes");
    }
}

/// [`a_client_gone_after_its_fin_leaves_no_orphan`] over TLS: finguard's
/// `close_notify` is still unacknowledged when it closes, and the orphan
/// is bounded all the same.
#[test]
fn a_tls_client_gone_after_its_fin_leaves_no_orphan() {
    let backend = Backend::start(Reply::Ok);
    let pki = tls::pki();
    let files = tls::files(&pki);
    let p = Proxy::start_raw(
        &tls::tls_config(&files, CONFIG),
        &["--backend", &backend.addr.to_string()],
    );
    let tcp = p.connect();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let side = tcp.try_clone().unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let conn = rustls::ClientConnection::new(tls::client(&pki), name).unwrap();
    let mut c = rustls::StreamOwned::new(conn, tcp);
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"hello\n") {
        let mut b = [0u8; 1024];
        let n = c.read(&mut b).unwrap();
        assert!(n > 0, "the response ended early");
        got.extend_from_slice(&b[..n]);
    }
    gone_after_fin(&p, side);
}

/// A WebSocket client whose host goes away after its FIN: the tunnel ends
/// both ways (the backend closes in turn), and finguard's FIN to the client
/// leaves no orphan past `linger_time`.
#[test]
fn a_tunnel_client_gone_after_its_fin_leaves_no_orphan() {
    let backend = Backend::start(Reply::UpgradeEcho);
    let p = Proxy::start(CONFIG, backend.addr);
    let (c, _) = flowing(
        &p,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "HTTP/1.1 101",
        Duration::from_secs(10),
        |_| true,
    );
    gone_after_fin(&p, c);
}
