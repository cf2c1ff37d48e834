//! The HTTP/1 data path, defect by defect: each test sends the exact bytes
//! that once broke it and checks what reached the client and the backend.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Two backends behind routes: `/down` to a refusing port, the rest live.
fn two_routes(live: SocketAddr, down: SocketAddr) -> String {
    format!(
        "[[backend]]\nname = \"live\"\naddrs = [\"{live}\"]\n\
         [[backend]]\nname = \"down\"\naddrs = [\"{down}\"]\nconnect_timeout = \"500ms\"\n\
         [[route]]\npath_prefix = \"/down\"\nbackend = \"down\"\n\
         [[route]]\npath_prefix = \"/\"\nbackend = \"live\"\n"
    )
}

/// Every status line in `bytes` (responses, in order).
fn status_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/1."))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_small_post_whose_body_came_with_its_head_is_forwarded_whole_and_the_pool_stays_in_step() {
    let backend = Backend::start(Reply::CountBody);
    let p = Proxy::start(
        "[[backend]]\nname = \"b\"\naddrs = [\"127.0.0.1:1\"]\nresponse_timeout = \"3s\"\n",
        backend.addr,
    );
    let started = Instant::now();
    let r = request(p.addr, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"5\n"[..]), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the POST waited for a body it had sent"
    );
    // Another client on another connection: its request is a request, not
    // the previous one's missing body.
    let r = request(
        p.addr,
        "POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"3\n"[..]));
    let heads = backend.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[1].starts_with("POST /second "), "{heads:?}");
    assert_eq!(backend.accepted(), 1, "the pooled connection was reused");
}

#[test]
fn body_bytes_after_a_finguard_error_are_never_parsed_as_a_request() {
    let live = Backend::start(Reply::EchoHead);
    let down = DeadPort::new();
    let p = Proxy::start_args(&two_routes(live.addr, down.addr), &[]);
    let mut s = p.connect();
    s.write_all(
        b"POST /down HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n1\r\nB\r\n1\r\nC\r\nb /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
    )
    .unwrap();
    let (bytes, _) = read_to_end_or_reset(&mut s, Duration::from_secs(10));
    let lines = status_lines(&bytes);
    assert_eq!(lines.len(), 1, "one request, one response: {lines:?}");
    assert!(
        lines[0].starts_with("HTTP/1.1 400") || lines[0].starts_with("HTTP/1.1 502"),
        "{lines:?}"
    );
    assert!(
        live.heads().is_empty(),
        "the body reached a backend as a request: {:?}",
        live.heads()
    );
}

#[test]
fn a_chunk_size_followed_by_anything_but_an_extension_is_refused() {
    let live = Backend::start(Reply::EchoHead);
    let p = Proxy::start("", live.addr);
    let mut s = p.connect();
    // A chunk-size line that a lax parser reads as size 0xb with an
    // "extension", and a strict one refuses: finguard must be the strict one.
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nb /smuggled\r\nhello world\r\n0\r\n\r\n",
    )
    .unwrap();
    let (bytes, _) = read_to_end_or_reset(&mut s, Duration::from_secs(10));
    let lines = status_lines(&bytes);
    assert_eq!(lines, vec!["HTTP/1.1 400 Bad Request".to_string()]);
    assert!(live.heads().is_empty(), "{:?}", live.heads());
}

/// The same, chunked.
fn cut_mid_chunked_body(mut s: TcpStream) {
    let mut buf = Vec::new();
    if read_head(&mut s, &mut buf).is_none() {
        return;
    }
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n");
    let _ = s.write_all(&[b'x'; 5000]);
    let _ = s.write_all(b"\r\n1388\r\nxx");
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

#[test]
fn a_backend_cut_mid_body_reaches_every_client_as_a_reset() {
    for (backend_fn, what) in [
        (cut_mid_body as fn(TcpStream), "content-length"),
        (cut_mid_chunked_body, "chunked"),
    ] {
        let (addr, _) = raw_backend(backend_fn);
        let p = Proxy::start(
            "[[user_agent]]\nmatch = \"old-client\"\nforce_response_1_0 = true\n",
            addr,
        );
        for req in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: old-client\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let mut s = p.connect();
            s.write_all(req.as_bytes()).unwrap();
            let (bytes, reset) = read_to_end_or_reset(&mut s, Duration::from_secs(10));
            assert!(
                reset,
                "{what} backend, {req:?}: a truncated body ended with a clean close ({} bytes)",
                bytes.len()
            );
        }
    }
}

#[test]
fn connection_cannot_remove_host_after_routing() {
    let public = Backend::start(Reply::EchoHead);
    let secret = Backend::start(Reply::EchoHead);
    let cfg = format!(
        "[[backend]]\nname = \"public\"\naddrs = [\"{}\"]\n[[backend]]\nname = \"secret\"\naddrs = [\"{}\"]\n\
         [[route]]\nhost = \"public.example\"\nbackend = \"public\"\n\
         [[route]]\nhost = \"secret.internal\"\nbackend = \"secret\"\n",
        public.addr, secret.addr
    );
    let p = Proxy::start_args(&cfg, &[]);
    let r = request(
        p.addr,
        "GET /admin HTTP/1.1\r\nHost: public.example\r\nConnection: host\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
    assert_eq!(body.matches("\r\nhost:").count(), 1, "{body}");
    assert!(body.contains("\r\nhost: public.example\r\n"), "{body}");
    // An absolute-form target names its host (RFC 9112 §3.2.2): routing and
    // the backend's Host agree on it, whatever Host and Connection say.
    let r = request(
        p.addr,
        "GET http://secret.internal/admin HTTP/1.1\r\nHost: public.example\r\nConnection: host\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
    assert!(body.starts_with("get /admin http/1.1\r\n"), "{body}");
    assert_eq!(body.matches("\r\nhost:").count(), 1, "{body}");
    assert!(body.contains("\r\nhost: secret.internal\r\n"), "{body}");
    assert_eq!(public.heads().len(), 1);
    assert_eq!(secret.heads().len(), 1);
}

#[test]
fn a_host_cannot_forge_a_forwarded_element() {
    let backend = Backend::start(Reply::EchoHead);
    let p = Proxy::start(
        "[[backend]]\nname = \"b\"\naddrs = [\"127.0.0.1:1\"]\nforwarded = \"forwarded\"\n",
        backend.addr,
    );
    // Such a Host is no host (RFC 9112 §3.2): refused, so no element of it
    // can reach the backend at all.
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a\", for=6.6.6.6;x=\"\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(backend.heads().is_empty(), "{:?}", backend.heads());
    // A plain host is named in the element finguard writes, and nothing else.
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n");
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body).to_string();
    let fwd: Vec<&str> = body
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("forwarded:"))
        .collect();
    assert_eq!(
        fwd,
        vec!["Forwarded: for=127.0.0.1;proto=http;host=\"a.example:8080\""],
        "{body}"
    );
}

#[test]
fn response_timeout_does_not_cut_a_slow_upload() {
    let backend = Backend::start(Reply::CountBody);
    let p = Proxy::start(
        "[client]\nbody_timeout = \"5s\"\n[[backend]]\nname = \"b\"\naddrs = [\"127.0.0.1:1\"]\nresponse_timeout = \"1s\"\n",
        backend.addr,
    );
    let mut s = p.connect();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n")
        .unwrap();
    // 100 bytes every 150 ms: 3 s, three times response_timeout.
    for _ in 0..20 {
        s.write_all(&[b'u'; 100]).unwrap();
        thread::sleep(Duration::from_millis(150));
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = read_response(&mut s, &mut Vec::new()).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"2000\n"[..]));
}

fn length_and_chunked(mut s: TcpStream) {
    let mut buf = Vec::new();
    while read_head(&mut s, &mut buf).is_some() {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
    }
}

#[test]
fn a_backend_response_with_length_and_chunked_is_a_502_and_not_reused() {
    let (addr, accepted) = raw_backend(length_and_chunked);
    let p = Proxy::start("", addr);
    let mut s = p.connect();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut Vec::new()).unwrap();
        assert_eq!(r.status, 502, "{r:?}");
        assert!(!r.body.starts_with(b"hel"));
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "a refused connection was reused"
    );
}

#[test]
fn an_http10_keepalive_client_gets_one_connection_decision() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start("[client]\nmax_requests_per_connection = 3\n", backend.addr);
    let mut s = p.connect();
    let mut buf = Vec::new();
    for n in 1..=3 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s, &mut buf).unwrap();
        let conn: Vec<String> = r
            .head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| l.to_ascii_lowercase())
            .collect();
        let want = if n < 3 {
            "connection: keep-alive"
        } else {
            "connection: close"
        };
        assert_eq!(conn, vec![want.to_string()], "response {n}: {}", r.head);
    }
    assert_eq!(peer_end(&mut s, Duration::from_secs(3)), PeerEnd::Eof);
}

/// Answers 401 to the head and closes at once, with the body unread: the
/// kernel resets the connection.
fn unauthorized_then_reset(mut s: TcpStream) {
    let mut buf = Vec::new();
    if read_head(&mut s, &mut buf).is_none() {
        return;
    }
    let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\nunauthorized\n");
}

/// Uploads 4 MiB without `Expect`; returns the status read, if any.
fn upload_4mib(addr: SocketAddr, concurrent: bool) -> Option<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 4194304\r\n\r\n")
        .unwrap();
    let body = vec![b'b'; 4 << 20];
    if concurrent {
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let _ = w.write_all(&body);
        });
        let r = read_response(&mut s, &mut Vec::new()).map(|r| r.status);
        let _ = s.shutdown(Shutdown::Both);
        let _ = writer.join();
        r
    } else {
        if s.write_all(&body).is_err() {
            return None;
        }
        read_response(&mut s, &mut Vec::new()).map(|r| r.status)
    }
}

#[test]
fn an_early_answer_from_a_backend_that_resets_reaches_every_uploader() {
    let (addr, _) = raw_backend(unauthorized_then_reset);
    let p = Proxy::start("", addr);
    for concurrent in [true, false] {
        let got: Vec<Option<u16>> = (0..30).map(|_| upload_4mib(p.addr, concurrent)).collect();
        let ok = got.iter().filter(|s| **s == Some(401)).count();
        assert_eq!(ok, 30, "concurrent={concurrent}: {got:?}");
    }
}

/// Reads a response at about `rate` bytes per second; returns the body length
/// and whether it ended in a reset.
fn slow_read(s: &mut TcpStream, rate: usize) -> (usize, Option<usize>, bool) {
    let mut buf = Vec::new();
    let head = read_head(s, &mut buf).unwrap();
    let want = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse().unwrap())
    });
    let mut got = buf.len();
    let mut b = vec![0u8; rate / 10];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while want.is_none_or(|w| got < w) {
        match s.read(&mut b) {
            Ok(0) => return (got, want, false),
            Ok(n) => got += n,
            Err(_) => return (got, want, true),
        }
        thread::sleep(Duration::from_millis(100));
    }
    (got, want, false)
}

fn big_file(mut s: TcpStream) {
    let mut buf = Vec::new();
    while read_head(&mut s, &mut buf).is_some() {
        let len = 2 << 20;
        let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes());
        if s.write_all(&vec![b'd'; len]).is_err() {
            return;
        }
    }
}

#[test]
fn a_slow_reader_gets_the_whole_download_with_keepalive_and_with_close() {
    let (addr, _) = raw_backend(big_file);
    // Timers far shorter than the download: before, they fired while the
    // response sat in the send queue and the reset threw it away.
    let p = Proxy::start(
        "[client]\nkeepalive_timeout = \"1s\"\n[client.close]\nlinger_timeout = \"500ms\"\nlinger_time = \"2s\"\non_timeout = \"reset\"\n",
        addr,
    );
    let readers: Vec<_> = [
        "GET /f HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /f HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ]
    .into_iter()
    .map(|req| {
        let mut s = p.connect();
        s.write_all(req.as_bytes()).unwrap();
        thread::spawn(move || slow_read(&mut s, 512 * 1024))
    })
    .collect();
    for r in readers {
        let (got, want, reset) = r.join().unwrap();
        assert_eq!(Some(got), want, "cut off (reset: {reset})");
    }
}

/// A backend that answers each request (200, its request line as the
/// body) only once the test lets it: what it received is recorded first,
/// so the test knows what finguard has read from its client.
struct Gated {
    addr: SocketAddr,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tokens: std::sync::Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>,
}

impl Gated {
    fn start() -> Gated {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let g = Gated {
            addr: l.local_addr().unwrap(),
            lines: Default::default(),
            tokens: Default::default(),
        };
        let (lines, tokens) = (g.lines.clone(), g.tokens.clone());
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let (lines, tokens) = (lines.clone(), tokens.clone());
                thread::spawn(move || {
                    let mut buf = Vec::new();
                    while let Some(head) = read_head(&mut s, &mut buf) {
                        let line = head.lines().next().unwrap_or("").to_string();
                        lines.lock().unwrap().push(line.clone());
                        let (n, cv) = &*tokens;
                        let mut n = cv.wait_while(n.lock().unwrap(), |n| *n == 0).unwrap();
                        *n -= 1;
                        drop(n);
                        let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{line}", line.len());
                        if s.write_all(r.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        g
    }

    /// Lets `n` more responses go.
    fn release(&self, n: usize) {
        let (tokens, cv) = &*self.tokens;
        *tokens.lock().unwrap() += n;
        cv.notify_all();
    }

    /// Waits until the backend has received `n` requests.
    fn wait_for(&self, n: usize) {
        let got = wait_until(Duration::from_secs(5), || self.lines.lock().unwrap().len() >= n);
        assert!(got, "the backend got {:?}", self.lines.lock().unwrap());
    }
}

/// Reads the response to `path` (its body is the request line it answers).
fn answered(s: &mut TcpStream, buf: &mut Vec<u8>, path: &str) {
    let r = read_response(s, buf).unwrap_or_else(|| panic!("no response to {path}"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(String::from_utf8_lossy(&r.body), format!("GET {path} HTTP/1.1"));
}

/// A read that drains the client socket clears its readiness (no `EAGAIN`
/// read before the next wait): bytes that arrive afterwards, while the
/// connection is busy with the backend, split anywhere, must still be read
/// and answered, in order, without the client sending anything more.
#[test]
fn pipelined_requests_arriving_while_busy_and_split_anywhere_are_answered_in_order() {
    let backend = Gated::start();
    let p = Proxy::start(
        "workers = 1\n[client]\nkeepalive_timeout = \"60s\"\nheader_timeout = \"60s\"\nmax_requests_per_connection = 1000\n",
        backend.addr,
    );
    let req = |i: usize| format!("GET /r{i} HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut s = p.connect();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();

    // A whole request arrives while the one before is at the backend: the
    // connection then goes from the response straight to that request.
    s.write_all(req(0).as_bytes()).unwrap();
    backend.wait_for(1);
    s.write_all(req(1).as_bytes()).unwrap();
    backend.release(1);
    answered(&mut s, &mut buf, "/r0");
    backend.wait_for(2);
    backend.release(1);
    answered(&mut s, &mut buf, "/r1");

    // A request and a piece of the next; more of it while the first is at
    // the backend; its last byte after the first's response.
    let (r2, r3) = (req(2), req(3));
    s.write_all(format!("{r2}{}", &r3[..7]).as_bytes()).unwrap();
    backend.wait_for(3);
    s.write_all(&r3.as_bytes()[7..r3.len() - 1]).unwrap();
    backend.release(1);
    answered(&mut s, &mut buf, "/r2");
    s.write_all(&r3.as_bytes()[r3.len() - 1..]).unwrap();
    backend.wait_for(4);
    backend.release(1);
    answered(&mut s, &mut buf, "/r3");

    // More pipelined requests in one write than one read takes (2 KiB):
    // a read that fills its buffer leaves the readiness for the next one.
    let batch: String = (4..100).map(req).collect();
    assert!(batch.len() > 2048);
    backend.release(96);
    s.write_all(batch.as_bytes()).unwrap();
    for i in 4..100 {
        answered(&mut s, &mut buf, &format!("/r{i}"));
    }
    // The same bytes again, one byte per write.
    backend.release(96);
    for b in batch.as_bytes() {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    for i in 4..100 {
        answered(&mut s, &mut buf, &format!("/r{i}"));
    }
    assert_eq!(backend.lines.lock().unwrap().len(), 4 + 2 * 96);
}

/// The same without the idle set's safety net: with a keep-alive timeout
/// shorter than the wait before parking, a request whose arrival was not
/// noticed (its readiness cleared after it came) would see the keep-alive
/// close instead of its answer. It came while its predecessor was at the
/// backend, so no keep-alive wait is due: its answer must follow.
#[test]
fn a_request_that_came_while_the_one_before_was_at_the_backend_is_not_missed() {
    let backend = Gated::start();
    let p = Proxy::start(
        "workers = 1\n[client]\nkeepalive_timeout = \"5ms\"\nheader_timeout = \"60s\"\n",
        backend.addr,
    );
    let req = |i: usize| format!("GET /r{i} HTTP/1.1\r\nHost: a\r\n\r\n");
    for round in 0..20 {
        let mut s = p.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        s.write_all(req(0).as_bytes()).unwrap();
        backend.wait_for(2 * round + 1);
        s.write_all(req(1).as_bytes()).unwrap();
        // In finguard's socket (so in its epoll's ready list) before the
        // answer to the first request is let go.
        let me = s.local_addr().unwrap().port();
        assert!(wait_until(Duration::from_secs(5), || unread_bytes(p.port(), me)
            .is_some_and(|n| n > 0)));
        backend.release(1);
        answered(&mut s, &mut buf, "/r0");
        backend.wait_for(2 * round + 2);
        backend.release(1);
        answered(&mut s, &mut buf, "/r1");
    }
}
