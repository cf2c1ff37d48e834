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
    assert!(
        wait_until(BOUND, || tcp_sockets(p.port(), port).is_empty()),
        "finguard's socket is still there: {:?}",
        tcp_sockets(p.port(), port)
    );
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
