//! Bad input gets a clear status, never reaches the backend, never leaks a
//! socket; slow clients get 408.

mod support;

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const CONFIG: &str = r#"
[client]
header_timeout = "500ms"
body_timeout = "500ms"
max_header_bytes = "1KiB"
max_body_bytes = "1KiB"
[client.close]
linger_timeout = "200ms"
linger_time = "1s"
"#;

#[test]
fn the_bad_input_corpus_is_refused_before_the_backend() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(CONFIG, backend.addr);
    let long = "x".repeat(2000);
    let cases: Vec<(String, u16, &str)> = vec![
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), 400, "CL+TE"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(), 400, "two Content-Lengths"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n  b\r\n\r\n".into(), 400, "obs-fold"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".into(), 400, "invalid chunk size"),
        ("GET / HTTP/1.1\nHost: a\n\n".into(), 400, "bare LF"),
        ("HELLO WORLD\r\n\r\n".into(), 400, "non-HTTP request line"),
        ("\x16\x03\x01\x00\x25\x01\x00\x00\x21\x03\x03\r\n\r\n".into(), 400, "TLS-like bytes on a plain port"),
        (format!("GET / HTTP/1.1\r\nHost: a\r\nX-Long: {long}\r\n\r\n"), 431, "over-long head"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n".into(), 413, "body over max_body_bytes"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400, "two Hosts"),
    ];
    for (raw, status, what) in &cases {
        let r = request(p.addr, raw);
        assert_eq!(r.status, *status, "{what}: {}", r.head);
        assert_eq!(r.header("connection").as_deref(), Some("close"), "{what}");
    }
    // A chunked body whose chunk size is bad, arriving after the head.
    let mut s = p.connect();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    // Client pacing so the body usually arrives in its own read; the outcome
    // must be the same 400 either way.
    thread::sleep(Duration::from_millis(50));
    s.write_all(b"5\r\nhello\r\nXYZ\r\n").unwrap();
    let r = read_response(&mut s, &mut Vec::new()).unwrap();
    assert_eq!(r.status, 400);
    // A chunked body that grows past max_body_bytes.
    let mut s = p.connect();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let r = read_response_after(&mut s, b"800\r\n", 3);
    assert_eq!(r.status, 413);
    assert_eq!(
        backend.accepted(),
        0,
        "bad input reached the backend: {:?}",
        backend.heads()
    );
    // And nothing is left open on finguard's side.
    assert!(
        wait_until(Duration::from_secs(3), || tcp_states(p.port(), 0)
            .iter()
            .all(|s| *s == "LISTEN" || *s == "TIME_WAIT")),
        "{:?}",
        tcp_states(p.port(), 0)
    );
}

/// Sends a chunk-size line then `n` chunks of 2 KiB, reading what comes back.
fn read_response_after(s: &mut std::net::TcpStream, size_line: &[u8], n: usize) -> Response {
    let _ = s.write_all(size_line);
    for _ in 0..n {
        if s.write_all(&[b'y'; 2048]).is_err() {
            break;
        }
    }
    read_response(s, &mut Vec::new()).expect("response")
}

#[test]
fn slowloris_gets_408_and_never_reaches_the_backend() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(CONFIG, backend.addr);
    let mut s = p.connect();
    let writer = s.try_clone().unwrap();
    let started = Instant::now();
    let dripper = thread::spawn(move || {
        let mut w = writer;
        for b in b"GET / HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100)); // the client's own pace
        }
    });
    let r = read_response(&mut s, &mut Vec::new()).expect("a 408");
    assert_eq!(r.status, 408);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "408 after {took:?}");
    drop(s);
    dripper.join().unwrap();
    assert_eq!(backend.accepted(), 0);
}

#[test]
fn a_pipelined_request_after_a_400_is_not_forwarded() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(CONFIG, backend.addr);
    let mut s = p.connect();
    s.write_all(
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /bad HTTP/1.1\nHost: a\n\nGET /third HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let first = read_response(&mut s, &mut buf).unwrap();
    assert_eq!(first.status, 200);
    let second = read_response(&mut s, &mut buf).unwrap();
    assert_eq!(second.status, 400);
    assert_eq!(peer_end(&mut s, Duration::from_secs(2)), PeerEnd::Eof);
    let heads = backend.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("GET /first "));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::start(Reply::EchoHead);
    let p = Proxy::start(CONFIG, backend.addr);
    let mut s = p.connect();
    let mut batch = String::new();
    for i in 0..5 {
        batch.push_str(&format!("GET /r{i} HTTP/1.1\r\nHost: a\r\n\r\n"));
    }
    batch.push_str("POST /body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    batch.push_str("GET /last HTTP/1.1\r\nHost: a\r\n\r\n");
    s.write_all(batch.as_bytes()).unwrap();
    let mut buf = Vec::new();
    for want in ["/r0", "/r1", "/r2", "/r3", "/r4", "/body", "/last"] {
        let r = read_response(&mut s, &mut buf).unwrap();
        assert_eq!(r.status, 200);
        let echoed = String::from_utf8(r.body).unwrap();
        assert!(
            echoed.contains(&format!(" {want} HTTP/1.1")),
            "wanted {want}, got {echoed}"
        );
    }
}

#[test]
fn a_stalled_body_gets_408() {
    let backend = Backend::start(Reply::CountBody);
    let p = Proxy::start(CONFIG, backend.addr);
    let mut s = p.connect();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b")
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new()).unwrap();
    assert_eq!(r.status, 408, "{}", r.head);
}
