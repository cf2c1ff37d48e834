//! Upgraded connections (WebSocket): a dedicated backend connection, bytes
//! both ways, closes propagated, no CLOSE_WAIT left on finguard's side.

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;
use support::*;

const UPGRADE: &[u8] =
    b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn no_close_wait(p: &Proxy, backend: &Backend, client_port: u16) -> bool {
    !tcp_states(p.port(), client_port).contains(&"CLOSE_WAIT")
        && !tcp_states(0, backend.addr.port()).contains(&"CLOSE_WAIT")
}

#[test]
fn a_websocket_round_trip_works_and_a_client_close_leaves_no_close_wait() {
    let backend = Backend::start(Reply::UpgradeEcho);
    let p = Proxy::start("", backend.addr);
    let mut s = p.connect();
    let port = s.local_addr().unwrap().port();
    // The first frame rides with the request, as eager clients send it.
    let mut first = UPGRADE.to_vec();
    first.extend_from_slice(b"early");
    s.write_all(&first).unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("connection: upgrade") && lower.contains("upgrade: websocket"),
        "{head}"
    );
    for msg in [&b"ping"[..], b"a longer message"] {
        s.write_all(msg).unwrap();
    }
    let want = b"earlypinga longer message";
    while buf.len() < want.len() {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "tunnel closed early");
        buf.extend_from_slice(&b[..n]);
    }
    assert_eq!(&buf[..], want);
    // The backend never saw the upgrade on a pooled connection, and it saw the headers.
    assert!(backend.heads()[0].to_ascii_lowercase().contains("upgrade: websocket"));
    // The client half-closes: the backend gets the FIN, closes, and so does finguard.
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(peer_end(&mut s, Duration::from_secs(3)), PeerEnd::Eof);
    drop(s);
    assert!(
        wait_until(Duration::from_secs(2), || no_close_wait(&p, &backend, port)),
        "{:?}",
        tcp_states(p.port(), port)
    );
    // A backend that switches protocols unasked is a broken backend: 502.
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 502);
}

#[test]
fn an_idle_tunnel_is_ended_after_upgrade_idle_timeout() {
    let backend = Backend::start(Reply::UpgradeEcho);
    let p = Proxy::start(
        "[admin]\naddr = \"127.0.0.1:0\"\n[client]\nupgrade_idle_timeout = \"400ms\"\n",
        backend.addr,
    );
    let mut s = p.connect();
    let port = s.local_addr().unwrap().port();
    // Taken before the request: finguard's idle clock starts after it, so
    // the bound below holds however late this thread reads the 101.
    let upgraded = std::time::Instant::now();
    s.write_all(UPGRADE).unwrap();
    let head = read_head(&mut s, &mut Vec::new()).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "));
    assert_ne!(
        peer_end(&mut s, Duration::from_secs(3)),
        PeerEnd::Open,
        "the idle tunnel was kept"
    );
    // Ended by the idle timer, not by a failure at once.
    assert!(
        upgraded.elapsed() >= Duration::from_millis(400),
        "{:?}",
        upgraded.elapsed()
    );
    assert_eq!(p.metric("finguard_tunnels_closed_total{outcome=\"idle_timeout\"}"), 1.0);
    assert!(wait_until(Duration::from_secs(2), || tcp_states(p.port(), port).is_empty()));
    assert!(wait_until(Duration::from_secs(2), || no_close_wait(&p, &backend, port)));
}

/// After its 101, writes to the client as fast as it can until the
/// connection fails.
fn flooding_upgrade_backend(mut s: std::net::TcpStream) {
    if read_head(&mut s, &mut Vec::new()).is_none() {
        return;
    }
    let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let chunk = [b'f'; 65536];
    while s.write_all(&chunk).is_ok() {}
}

#[test]
fn a_tunnel_whose_client_stops_reading_is_ended_and_both_sockets_closed() {
    let (backend, accepted) = raw_backend(flooding_upgrade_backend);
    let p = Proxy::start(
        "[admin]\naddr = \"127.0.0.1:0\"\n[client]\nupgrade_idle_timeout = \"1s\"\n",
        backend,
    );
    let mut s = p.connect();
    let port = s.local_addr().unwrap().port();
    s.write_all(UPGRADE).unwrap();
    assert!(read_head(&mut s, &mut Vec::new()).unwrap().starts_with("HTTP/1.1 101 "));
    // The client reads nothing more; the backend keeps sending.
    let sample = "finguard_tunnels_closed_total{outcome=\"stalled\"}";
    assert!(
        wait_until(Duration::from_secs(10), || p.metric(sample) == 1.0),
        "the stuck tunnel was never ended: {}",
        p.admin_get("/metrics").1
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Neither of finguard's sockets is left: not the client's, not the backend's.
    assert!(
        wait_until(Duration::from_secs(2), || tcp_states(p.port(), port).is_empty()
            && tcp_states(0, backend.port()).is_empty()),
        "client side {:?}, backend side {:?}",
        tcp_states(p.port(), port),
        tcp_states(0, backend.port())
    );
    // Counted as a tunnel, not as a lingering close.
    assert!(!p
        .admin_get("/metrics")
        .1
        .contains("finguard_lingering_closes_total{outcome=\"error\"} 1"));
    drop(s);
}

/// The Python that has `websockets`, if one does.
fn python_websockets() -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import websockets"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

const WS_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/ws_roundtrip.py");

/// The `websockets` echo server of ws_roundtrip.py, killed when dropped.
struct EchoServer {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl EchoServer {
    fn start(python: &str) -> EchoServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new(python)
            .args([WS_SCRIPT, "server"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = format!("127.0.0.1:{}", line.trim()).parse().expect("server port");
        EchoServer { child, addr }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_python_websockets_client_round_trips_1000_echoes_and_closes_from_each_side() {
    let Some(python) = python_websockets() else {
        require_peer("python3-websockets");
        return;
    };
    let server = EchoServer::start(python);
    let backend = server.addr;
    let p = Proxy::start("[admin]\naddr = \"127.0.0.1:0\"\n", backend);
    let out = std::process::Command::new(python)
        .args([
            WS_SCRIPT,
            "client",
            &format!("ws://127.0.0.1:{}/echo", p.port()),
            "1000",
        ])
        .output()
        .expect("python");
    drop(server);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        r#"{"echoes": 1000, "client_close": 1000, "server_close": 1000}"#,
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log()
    );
    // Both tunnels ended as closed (each side's FIN passed on), none left behind.
    let closed = "finguard_tunnels_closed_total{outcome=\"closed\"}";
    assert!(
        wait_until(Duration::from_secs(3), || p.metric(closed) == 2.0),
        "{}",
        p.admin_get("/metrics").1
    );
    let left = || {
        let mut s = tcp_states(p.port(), 0);
        s.extend(tcp_states(0, backend.port()));
        s.retain(|st| *st != "LISTEN" && *st != "TIME_WAIT");
        s
    };
    assert!(wait_until(Duration::from_secs(3), || left().is_empty()), "{:?}", left());
}

#[test]
fn a_websocket_busy_both_ways_echoes_2000_messages_of_64_kib() {
    let Some(python) = python_websockets() else {
        require_peer("python3-websockets");
        return;
    };
    let server = EchoServer::start(python);
    // Short, so that a tunnel that stops both ways fails the test in seconds.
    let p = Proxy::start(
        "[admin]\naddr = \"127.0.0.1:0\"\n[client]\nupgrade_idle_timeout = \"2s\"\n",
        server.addr,
    );
    // The client sends while the echoes come back: each side of the tunnel
    // writes to a peer that is itself busy writing.
    let url = format!("ws://127.0.0.1:{}/echo", p.port());
    let out = std::process::Command::new(python)
        .args([WS_SCRIPT, "flood", &url, "2000", "65536"])
        .output()
        .expect("python");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"echoes": 2000}"#,
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log()
    );
    assert_eq!(p.metric("finguard_tunnels_closed_total{outcome=\"stalled\"}"), 0.0);
}
