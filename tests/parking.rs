//! Idle plain HTTP/1 keep-alive connections are parked without a task
//! (`downstream::parking`): observed from outside, a parked connection
//! behaves exactly as one that kept its task — its next request is
//! served, it closes at its keep-alive timeout, a client's FIN is noticed
//! at once, SIGTERM closes it, the idle gauge counts it and eviction
//! finds it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(10);

fn get(path: &str, ua: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\nUser-Agent: {ua}\r\n\r\n")
}

/// A keep-alive connection that has had one answer.
fn served_once(p: &Proxy, ua: &str) -> (TcpStream, Vec<u8>) {
    let mut s = p.connect();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(get("/first", ua).as_bytes()).unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).expect("first response");
    assert_eq!(r.status, 200);
    (s, buf)
}

/// `/connections` entries, as JSON.
fn connections(p: &Proxy) -> Vec<serde_json::Value> {
    let (_, body) = p.admin_get("/connections");
    serde_json::from_str(&body).unwrap()
}

fn is_parked(p: &Proxy, s: &TcpStream) -> bool {
    let me = s.local_addr().unwrap().to_string();
    connections(p)
        .iter()
        .any(|c| c["peer"] == me.as_str() && c["state"] == "idle" && c["parked"] == true)
}

fn is_listed(p: &Proxy, s: &TcpStream) -> bool {
    let me = s.local_addr().unwrap().to_string();
    connections(p).iter().any(|c| c["peer"] == me.as_str())
}

const CONFIG: &str = r#"
workers = 1
[admin]
addr = "127.0.0.1:0"
[client]
keepalive_timeout = "30s"
"#;

#[test]
fn a_parked_connection_serves_its_next_requests_byte_exact() {
    let backend = Backend::start(Reply::EchoHead);
    let p = Proxy::start(CONFIG, backend.addr);
    let (mut s, mut buf) = served_once(&p, "parker/1");
    assert!(wait_until(LIMIT, || is_parked(&p, &s)), "{:?}", connections(&p));
    // Each return makes the next park wait longer, to a cap: past it too,
    // the connection is parked again.
    for i in 0..6 {
        let path = format!("/after-parking-{i}");
        s.write_all(get(&path, "parker/1").as_bytes()).unwrap();
        let r = read_response(&mut s, &mut buf).expect("a response after parking");
        assert_eq!(r.status, 200);
        // The body is the head the backend received: the one just sent.
        let heads = backend.heads();
        let last = heads.last().expect("the backend saw the request");
        assert_eq!(String::from_utf8_lossy(&r.body), *last);
        assert!(last.starts_with(&format!("GET {path} HTTP/1.1\r\n")), "{last}");
        assert!(buf.is_empty(), "no stray bytes after the response");
        // Parked again between requests.
        assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    }
    let me = s.local_addr().unwrap().to_string();
    let c = connections(&p);
    let mine = c.iter().find(|c| c["peer"] == me.as_str()).unwrap();
    assert_eq!(mine["requests"], 7);
}

#[test]
fn a_parked_connection_closes_at_its_keepalive_timeout_with_a_fin() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        "workers = 1\n[admin]\naddr = \"127.0.0.1:0\"\n[client]\nkeepalive_timeout = \"1s\"\n",
        backend.addr,
    );
    let (mut s, _) = served_once(&p, "parker/1");
    assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    assert!(matches!(peer_end(&mut s, LIMIT), PeerEnd::Eof), "a FIN at the timeout");
    let (port, me) = (p.addr.port(), s.local_addr().unwrap().port());
    drop(s);
    // finguard's side ends (TIME_WAIT or gone), never stuck in CLOSE_WAIT.
    assert!(wait_until(LIMIT, || tcp_states(port, me)
        .iter()
        .all(|st| *st == "TIME_WAIT")));
    assert_eq!(p.metric("finguard_client_connections{state=\"idle\"}"), 0.0);
}

#[test]
fn a_client_fin_while_parked_leaves_no_close_wait() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(CONFIG, backend.addr);
    let conns: Vec<(TcpStream, Vec<u8>)> = (0..5).map(|_| served_once(&p, "parker/1")).collect();
    assert!(wait_until(LIMIT, || conns.iter().all(|(s, _)| is_parked(&p, s))));
    let port = p.addr.port();
    let mut ports = Vec::new();
    for (s, _) in conns {
        ports.push(s.local_addr().unwrap().port());
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut s = s;
        // The close is seen: finguard answers the FIN with its own.
        assert!(matches!(peer_end(&mut s, LIMIT), PeerEnd::Eof));
    }
    for me in ports {
        assert!(
            wait_until(LIMIT, || !tcp_states(port, me).contains(&"CLOSE_WAIT")),
            "{:?}",
            tcp_states(port, me)
        );
    }
    assert!(wait_until(LIMIT, || connections(&p).is_empty()));
    assert_eq!(p.metric("finguard_client_connections{state=\"idle\"}"), 0.0);
}

#[test]
fn the_idle_gauge_and_the_listing_count_parked_connections() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(CONFIG, backend.addr);
    let conns: Vec<(TcpStream, Vec<u8>)> = (0..20).map(|_| served_once(&p, "parker/1")).collect();
    assert!(wait_until(LIMIT, || conns.iter().all(|(s, _)| is_parked(&p, s))));
    assert_eq!(p.metric("finguard_client_connections{state=\"idle\"}"), 20.0);
    let listed = connections(&p);
    assert_eq!(listed.len(), 20);
    assert!(listed
        .iter()
        .all(|c| c["user_agent"] == "parker/1" && c["requests"] == 1));
    drop(conns);
    assert!(wait_until(LIMIT, || p
        .metric("finguard_client_connections{state=\"idle\"}")
        == 0.0));
}

#[test]
fn sigterm_closes_parked_connections_and_exits() {
    let backend = Backend::start(Reply::Ok);
    let mut p = Proxy::start(CONFIG, backend.addr);
    let mut conns: Vec<(TcpStream, Vec<u8>)> = (0..5).map(|_| served_once(&p, "parker/1")).collect();
    assert!(wait_until(LIMIT, || conns.iter().all(|(s, _)| is_parked(&p, s))));
    p.signal("TERM");
    for (s, _) in &mut conns {
        assert!(
            matches!(peer_end(s, LIMIT), PeerEnd::Eof),
            "each parked connection gets a FIN"
        );
    }
    drop(conns);
    assert_eq!(p.wait_exit(LIMIT), Some(0));
}

#[test]
fn eviction_takes_parked_connections_in_order() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        r#"
workers = 1
[admin]
addr = "127.0.0.1:0"
[client]
max_connections = 4
keepalive_timeout = "60s"
[client.pressure]
min_keepalive_timeout = "60s"
high_water = 1.0
grace = "200ms"
[[user_agent]]
match = "HoardBot"
reclaim_first = true
"#,
        backend.addr,
    );
    // Oldest idle first: a browser, then a crawler, then two browsers.
    let mut held = Vec::new();
    for ua in ["Mozilla/5.0 old", "HoardBot/1", "Mozilla/5.0 b", "Mozilla/5.0 c"] {
        let (s, _) = served_once(&p, ua);
        assert!(wait_until(LIMIT, || is_parked(&p, &s)));
        held.push(s);
    }
    // Every held connection's grace window has passed before the first
    // newcomer comes; otherwise, on a loaded machine, the oldest browser
    // could be out of its window while the crawler, served just after it,
    // was still in its own, and go first.
    std::thread::sleep(Duration::from_millis(250));
    let closed = |s: &TcpStream| !is_listed(&p, s);
    // Past the grace window, each newcomer closes one parked connection:
    // the crawler first, then the longest idle.
    let first = served_once(&p, "newcomer/1");
    assert!(wait_until(LIMIT, || closed(&held[1])));
    assert!(!closed(&held[0]) && !closed(&held[2]) && !closed(&held[3]));
    let mut crawler = held.remove(1);
    assert!(matches!(peer_end(&mut crawler, LIMIT), PeerEnd::Eof));
    let second = served_once(&p, "newcomer/2");
    assert!(wait_until(LIMIT, || closed(&held[0])));
    assert!(!closed(&held[1]) && !closed(&held[2]));
    let mut s = held.remove(0);
    assert!(matches!(peer_end(&mut s, LIMIT), PeerEnd::Eof));
    assert_eq!(
        p.metric("finguard_client_evictions_total{reason=\"reclaim_first\",rule=\"HoardBot\"}"),
        1.0
    );
    assert_eq!(
        p.metric("finguard_client_evictions_total{reason=\"idle\",rule=\"none\"}"),
        1.0
    );
    // The survivors still answer.
    for s in &mut held {
        s.write_all(get("/still", "Mozilla/5.0").as_bytes()).unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_response(s, &mut buf).map(|r| r.status), Some(200));
    }
    drop((first, second));
}

/// Empty lines (which bring no request) sent to a parked connection every
/// 250 ms do not buy it a new keep-alive timeout each time it wakes: it
/// still closes about its 1 s one, well within the 6 s the client trickles.
#[test]
fn empty_lines_to_a_parked_connection_do_not_extend_its_keepalive() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        "workers = 1\n[admin]\naddr = \"127.0.0.1:0\"\n[client]\nkeepalive_timeout = \"1s\"\n",
        backend.addr,
    );
    let (mut s, _) = served_once(&p, "parker/1");
    assert!(wait_until(LIMIT, || is_parked(&p, &s)));
    // The read's timeout paces the trickle.
    s.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
    let mut b = [0u8; 64];
    let closed = (0..24).any(|_| {
        if s.write_all(b"\r\n").is_err() {
            return true;
        }
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&b[..n])),
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    });
    assert!(closed, "the connection outlived its keep-alive timeout by 5 s");
}
