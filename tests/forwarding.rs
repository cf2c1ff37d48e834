//! Forwarding: headers in both directions, backend failures mapped to
//! 502/503/504, and the pool keeping backend connections few.

mod support;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;
use support::*;

#[test]
fn hop_by_hop_headers_are_stripped_and_x_forwarded_added() {
    let backend = Backend::start(Reply::EchoHead);
    let p = Proxy::start("", backend.addr);
    let r = request(
        p.addr,
        "GET /path?q=1 HTTP/1.1\r\nHost: example.test:8080\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
         Keep-Alive: timeout=99\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-Forwarded-For: 10.9.9.9\r\nX-Kept: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = String::from_utf8(r.body).unwrap().to_ascii_lowercase();
    assert!(seen.starts_with("get /path?q=1 http/1.1\r\n"), "{seen}");
    for gone in ["x-secret", "keep-alive", "proxy-connection", "te:", "connection:"] {
        assert!(!seen.contains(gone), "{gone} was forwarded:\n{seen}");
    }
    assert!(seen.contains("host: example.test:8080"), "{seen}");
    assert!(seen.contains("x-kept: yes"));
    assert!(seen.contains("x-forwarded-for: 10.9.9.9, 127.0.0.1"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http"));
    assert!(seen.contains("x-forwarded-host: example.test:8080"));
}

#[test]
fn rfc7239_forwarded_when_the_backend_asks_for_it() {
    let backend = Backend::start(Reply::EchoHead);
    let cfg = "[[backend]]\nname = \"app\"\naddrs = [\"127.0.0.1:1\"]\nforwarded = \"forwarded\"\n";
    let p = Proxy::start(cfg, backend.addr);
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: h.test\r\n\r\n");
    let seen = String::from_utf8(r.body).unwrap().to_ascii_lowercase();
    assert!(
        seen.contains("forwarded: for=127.0.0.1;proto=http;host=\"h.test\""),
        "{seen}"
    );
    assert!(!seen.contains("x-forwarded-for"));
}

#[test]
fn a_refused_backend_is_a_502_and_the_client_connection_survives() {
    let dead = DeadPort::new();
    let p = Proxy::start("", dead.addr);
    let mut s = p.connect();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut buf).unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(r.body, b"502 Bad Gateway\n");
    }
    let logged = || p.log().matches("status=502").count() == 2;
    assert!(
        wait_until(Duration::from_secs(2), logged),
        "one log line per failure:\n{}",
        p.log()
    );
}

#[test]
fn a_slow_backend_is_a_504() {
    let backend = Backend::start(Reply::Slow(Duration::from_secs(3)));
    let cfg = "[[backend]]\nname = \"app\"\naddrs = [\"127.0.0.1:1\"]\nresponse_timeout = \"300ms\"\n";
    let p = Proxy::start(cfg, backend.addr);
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 504);
}

#[test]
fn new_connection_per_request_clients_share_few_backend_connections() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start("", backend.addr);
    for _ in 0..200 {
        let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
    }
    assert!(
        backend.accepted() <= 5,
        "200 sequential clients opened {} backend connections",
        backend.accepted()
    );
}

#[test]
fn max_connections_caps_the_backend_and_the_queue_times_out_with_503() {
    let backend = Backend::start(Reply::Slow(Duration::from_millis(300)));
    let cfg = "[[backend]]\nname = \"app\"\naddrs = [\"127.0.0.1:1\"]\nmax_connections = 4\npool_max_idle = 4\nqueue_timeout = \"500ms\"\n";
    let p = Proxy::start(cfg, backend.addr);
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let addr = p.addr;
            thread::spawn(move || request(addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n").status)
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        backend.max_open.load(Ordering::SeqCst) <= 4,
        "backend saw {} at once",
        backend.max_open.load(Ordering::SeqCst)
    );
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let busy = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(ok + busy, 24, "{statuses:?}");
    assert!(ok >= 4 && busy >= 1, "{statuses:?}");
}
