//! One exchange for HTTP/1 and HTTP/2: what a hostile client or backend
//! gets for the exact bytes that once got through, on either protocol.
//! The HTTP/2 request is turned into the HTTP/1.1 head it stands for and
//! judged by the same parser and the same forward-head writer, so each
//! client-side case is tried over both where the protocol can carry it.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;
use support::h2_client::*;
use support::tls::*;
use support::*;

/// Two backends behind routes: `/api/` to `api`, the rest to `web`.
fn two_routes(api: SocketAddr, web: SocketAddr) -> String {
    format!(
        "[[backend]]\nname = \"api\"\naddrs = [\"{api}\"]\n\
         [[backend]]\nname = \"web\"\naddrs = [\"{web}\"]\n\
         [[route]]\npath_prefix = \"/api/\"\nbackend = \"api\"\n\
         [[route]]\npath_prefix = \"/\"\nbackend = \"web\"\n"
    )
}

#[test]
fn a_route_prefix_cannot_be_stepped_out_of_with_dot_segments() {
    let api = Backend::start(Reply::Ok);
    let web = Backend::start(Reply::Ok);
    let p = Proxy::start_args(&two_routes(api.addr, web.addr), &[]);
    for path in [
        "/api/../admin/secret.txt",
        "/api/%2e%2e/admin/secret.txt",
        "/api/.%2e/admin/secret.txt",
        "/api/%2E./admin/secret.txt",
    ] {
        let r = request(p.addr, &format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert_eq!(r.status, 200, "{path}");
    }
    assert!(api.heads().is_empty(), "api got {:?}", api.request_lines());
    assert_eq!(web.request_lines(), vec!["GET /admin/secret.txt HTTP/1.1"; 4]);
    // Above the root: refused, sent nowhere.
    for path in ["/api/../../etc/passwd", "/%2e%2e/x"] {
        let r = request(p.addr, &format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(web.heads().len(), 4);
    // A normal path under the prefix still goes to api, unchanged.
    let r = request(p.addr, "GET /api/v1/./items?q=../x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(api.request_lines(), vec!["GET /api/v1/items?q=../x HTTP/1.1"]);
}

#[test]
fn invalid_host_values_are_refused() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start("", backend.addr);
    for host in ["a b", "a/b", "a\"<x>", "..", "a\tb"] {
        let r = request(p.addr, &format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!(r.status, 400, "{host:?}");
    }
    assert!(backend.heads().is_empty(), "{:?}", backend.heads());
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn an_absolute_target_with_an_empty_path_is_forwarded_with_the_root() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start("", backend.addr);
    let r = request(p.addr, "GET http://a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(backend.request_lines(), vec!["GET /?x=1 HTTP/1.1"]);
}

#[test]
fn a_request_target_over_the_head_limit_is_414() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start("[client]\nmax_header_bytes = \"1KiB\"\n", backend.addr);
    let long = "a".repeat(2000);
    let r = request(p.addr, &format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert_eq!(r.status, 414, "{}", r.head);
    // Headers over the limit, with a short line, stay 431.
    let r = request(p.addr, &format!("GET / HTTP/1.1\r\nHost: a\r\nX-Long: {long}\r\n\r\n"));
    assert_eq!(r.status, 431, "{}", r.head);
    assert!(backend.heads().is_empty());
}

#[test]
fn a_user_agent_rules_body_limit_holds_on_the_first_request() {
    let backend = Backend::start(Reply::CountBody);
    let p = Proxy::start(
        "[[user_agent]]\nmatch = \"Uploader/\"\nmax_body_bytes = \"1KiB\"\nmax_header_bytes = \"512B\"\n",
        backend.addr,
    );
    let body = "x".repeat(5000);
    let mut s = p.connect();
    let post = format!("POST / HTTP/1.1\r\nHost: a\r\nUser-Agent: Uploader/1\r\nContent-Length: 5000\r\n\r\n{body}");
    s.write_all(post.as_bytes()).unwrap();
    let r = read_response(&mut s, &mut Vec::new()).expect("an answer");
    assert_eq!(r.status, 413, "first request: {}", r.head);
    let r = request(p.addr, &post);
    assert_eq!(r.status, 413);
    // The rule's head limit too, on a first request.
    let pad = "p".repeat(600);
    let r = request(
        p.addr,
        &format!("GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: Uploader/1\r\nX-Pad: {pad}\r\n\r\n"),
    );
    assert_eq!(r.status, 431);
    assert!(backend.heads().is_empty(), "{:?}", backend.heads());
    // Other clients keep the base limits.
    let r = request(
        p.addr,
        &format!("POST / HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8\r\nContent-Length: 5000\r\n\r\n{body}"),
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"5000\n"[..]));
}

#[test]
fn a_keep_alive_head_that_starts_before_the_deadline_gets_header_timeout() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        "[client]\nkeepalive_timeout = \"1s\"\nheader_timeout = \"3s\"\n",
        backend.addr,
    );
    let mut s = p.connect();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
    // Client pacing: the next head starts within keepalive_timeout and is
    // completed after it.
    thread::sleep(Duration::from_millis(600));
    s.write_all(b"GET /2 HTTP/1.1\r\n").unwrap();
    thread::sleep(Duration::from_millis(800));
    s.write_all(b"Host: a\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut buf).expect("an answer");
    assert_eq!(r.status, 200, "{}", r.head);
}

#[test]
fn chunk_extensions_and_request_trailers_are_bounded_and_validated() {
    let backend = Backend::start(Reply::CountBody);
    let p = Proxy::start(
        "[client]\nmax_body_bytes = \"1KiB\"\nmax_header_bytes = \"1KiB\"\nbody_timeout = \"2s\"\n",
        backend.addr,
    );
    let mib = "e".repeat(1 << 20);
    let cases = [
        (format!("1;{mib}\r\nx\r\n0\r\n\r\n"), "a 1 MiB chunk extension"),
        (format!("1\r\nx\r\n0\r\nX-T: {mib}\r\n\r\n"), "a 1 MiB trailer line"),
        ("1\r\nx\r\n0\r\nX-T: a\0b\r\n\r\n".to_string(), "a trailer with NUL"),
        (
            "1\r\nx\r\n0\r\nX-T: a\r\n folded\r\n\r\n".to_string(),
            "an obs-folded trailer",
        ),
        (
            "1\r\nx\r\n0\r\nGET /smuggled HTTP/1.1\r\n\r\n".to_string(),
            "a request as a trailer",
        ),
    ];
    for (body, what) in &cases {
        let mut s = p.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        // The body may be refused before it is all sent: a write error is fine.
        let _ = s.write_all(format!("{head}{body}").as_bytes());
        let r = read_response(&mut s, &mut Vec::new()).expect(what);
        assert_eq!(r.status, 400, "{what}: {}", r.head);
    }
    let smuggled = backend.heads().iter().any(|h| h.contains("/smuggled"));
    assert!(!smuggled, "{:?}", backend.heads());
    // A well-formed trailer still goes through.
    let r = request(
        p.addr,
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-Sum: 1\r\n\r\n",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"1\n"[..]));
}

/// A backend that answers every request with the bytes its path names.
fn bad_response_backend(mut s: TcpStream) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf) {
        let path = head.split(' ').nth(1).unwrap_or("");
        let resp: &[u8] = match path {
            "/interim" => b"HTTP/1.1 103 Early Hints\nLink: </a.css>\nConnection: x-hop\nX-Hop: 1\nKeep-Alive: timeout=5\nUpgrade: h2c\n\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "/two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "/status-099" => b"HTTP/1.1 099 Odd\r\nContent-Length: 5\r\n\r\n",
            "/gzip" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n\x1f\x8b\x08\x00",
            "/nul-trailer" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: a\0b\r\n\r\n",
            "/fold-trailer" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: a\r\n b\r\n\r\n",
            "/http10-chunked" => {
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            }
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        };
        if s.write_all(resp).is_err() {
            return;
        }
        if path == "/gzip" {
            return;
        }
    }
}

#[test]
fn a_response_is_relayed_only_as_a_client_may_take_it() {
    let (backend, accepted) = raw_backend(bad_response_backend);
    let p = Proxy::start("", backend);
    let get = |path: &str| {
        let mut s = p.connect();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        read_to_end_or_reset(&mut s, Duration::from_secs(5))
    };
    // An interim response is rewritten: no hop-by-hop field, no bare LF.
    let mut s = p.connect();
    s.write_all(b"GET /interim HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let interim = read_head(&mut s, &mut buf).unwrap();
    assert_eq!(interim, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n");
    assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
    // One Content-Length.
    let mut s = p.connect();
    s.write_all(b"GET /two-lengths HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut Vec::new()).unwrap();
    assert_eq!(
        r.head.to_ascii_lowercase().matches("content-length").count(),
        1,
        "{}",
        r.head
    );
    // A status below 100 and an undecoded coding: 502.
    for path in ["/status-099", "/gzip"] {
        let mut s = p.connect();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut s, &mut Vec::new()).expect(path);
        assert_eq!(r.status, 502, "{path}: {}", r.head);
    }
    // Trailers that are no header lines never reach the client: the
    // connection is aborted, the body never looks complete.
    for path in ["/nul-trailer", "/fold-trailer"] {
        let (got, reset) = get(path);
        let text = String::from_utf8_lossy(&got);
        assert!(reset, "{path}: {text:?}");
        assert!(!text.contains("X-T"), "{path}: {text:?}");
    }
    // An HTTP/1.0 response with chunked framing: its connection is not reused.
    let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..2 {
        let mut s = p.connect();
        s.write_all(b"GET /http10-chunked HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut Vec::new()).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    }
    let after = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after - before, 2, "a faulty-framed connection was reused");
}

/// Reads a request head, then streams one header line without end (48 MiB
/// at most) while the client is still uploading; returns how much went.
fn stream_endless_head(mut s: TcpStream) -> usize {
    let mut buf = Vec::new();
    if read_head(&mut s, &mut buf).is_none() {
        return 0;
    }
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Endless: ");
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 48 << 20 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    sent
}

/// [`stream_endless_head`] for the HTTP/1 test, counted apart from the
/// HTTP/2 one (tests run in parallel).
fn endless_header_backend(s: TcpStream) {
    ENDLESS_SENT.store(stream_endless_head(s), std::sync::atomic::Ordering::SeqCst);
}

static ENDLESS_SENT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

#[test]
fn a_backend_cannot_grow_finguards_memory_while_a_request_goes_up() {
    let (backend, _) = raw_backend(endless_header_backend);
    // The upload streams (request buffering off): that is the path where a
    // backend answers while the request goes up.
    let p = Proxy::start("[client]\nbody_timeout = \"5s\"\n[buffer]\nrequests = false\n", backend);
    let mut s = p.connect();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\nfirst")
        .unwrap();
    // The upload goes on slowly; the backend's head never ends.
    let mut buf = Vec::new();
    let mut status = None;
    for _ in 0..200 {
        let _ = s.write_all(&[b'b'; 1000]);
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 4096];
        match s.read(&mut b) {
            Ok(n) if n > 0 => {
                buf.extend_from_slice(&b[..n]);
                if find(&buf, b"\r\n\r\n").is_some() {
                    status = Some(String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_string());
                    break;
                }
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let status = status.expect("no answer while the backend streamed its head");
    assert!(status.starts_with("HTTP/1.1 502"), "{status}");
    // finguard stopped reading long before the backend's 48 MiB went.
    assert!(wait_until(Duration::from_secs(10), || ENDLESS_SENT
        .load(std::sync::atomic::Ordering::SeqCst)
        != usize::MAX));
    let sent = ENDLESS_SENT.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent < 24 << 20, "finguard read {sent} bytes of a head");
}

// ---- HTTP/2: the same judgement as HTTP/1 ----

/// The header lines of a backend head echoed in `body`, lower-cased names.
fn fields(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn values(f: &[(String, String)], name: &str) -> Vec<String> {
    f.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
}

#[test]
fn http2_requests_get_the_same_forwarded_fields_as_http1() {
    let backend = Backend::start(Reply::EchoHead);
    let s = h2_proxy("", backend.addr);
    let port = s.proxy.addr.port();
    let authority = format!("a.test:{port}");
    // The client's X-Forwarded-Host is replaced; its X-Forwarded-For lines
    // are all kept, in order, with the hop appended.
    let (status, body) = h2_get(
        &s,
        &authority,
        &[
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ],
    );
    assert_eq!(status, 200);
    let f = fields(&body);
    assert_eq!(values(&f, "x-forwarded-host"), vec![authority.clone()], "{f:?}");
    assert_eq!(
        values(&f, "x-forwarded-for"),
        vec!["1.1.1.1, 2.2.2.2, 127.0.0.1"],
        "{f:?}"
    );
    assert_eq!(values(&f, "host"), vec![authority.clone()], "{f:?}");
    // Cookie crumbs are joined with "; " (RFC 9113 §8.2.3).
    let (status, body) = h2_get(&s, &authority, &[("cookie", "a=1"), ("cookie", "b=2")]);
    assert_eq!(status, 200);
    assert_eq!(values(&fields(&body), "cookie"), vec!["a=1; b=2"]);
    // A repeated equal length goes as one.
    let (status, body) = h2_get(&s, &authority, &[("content-length", "0"), ("content-length", "0")]);
    assert_eq!(status, 200);
    assert_eq!(values(&fields(&body), "content-length").len(), 1);
    let seen = backend.heads().len();
    // Two Host fields, a Host unlike :authority, a Host that is no host: 400,
    // and nothing reaches the backend.
    for (what, extra) in [
        ("two hosts", vec![("host", authority.as_str()), ("host", "b.test")]),
        ("host unlike :authority", vec![("host", "b.test")]),
    ] {
        let (status, _) = h2_get(&s, &authority, &extra);
        assert_eq!(status, 400, "{what}");
    }
    let (status, _) = h2_get(&s, "a..b", &[]);
    assert_eq!(status, 400, "bad authority");
    assert_eq!(backend.heads().len(), seen, "{:?}", backend.heads());
}

#[test]
fn http2_forwarded_elements_cannot_be_forged() {
    let backend = Backend::start(Reply::EchoHead);
    let s = h2_proxy(
        &format!(
            "[[backend]]\nname = \"b\"\naddrs = [\"{}\"]\nforwarded = \"forwarded\"\n",
            backend.addr
        ),
        backend.addr,
    );
    let port = s.proxy.addr.port();
    let authority = format!("a.test:{port}");
    let (status, body) = h2_get(&s, &authority, &[("forwarded", "for=1.1.1.1")]);
    assert_eq!(status, 200);
    let fwd = values(&fields(&body), "forwarded");
    assert_eq!(
        fwd,
        vec![format!("for=1.1.1.1, for=127.0.0.1;proto=https;host=\"{authority}\"")]
    );
    let (status, _) = h2_get(&s, &authority, &[("host", "a\", for=6.6.6.6;x=\"")]);
    assert_eq!(status, 400);
}

#[test]
fn http2_route_prefixes_are_matched_on_the_normalised_path() {
    let api = Backend::start(Reply::Ok);
    let web = Backend::start(Reply::Ok);
    let pki = pki();
    let files = files(&pki);
    let proxy = Proxy::start_raw(&tls_config(&files, &two_routes(api.addr, web.addr)), &[]);
    let ca = ca_file(&pki);
    let port = proxy.addr.port();
    let out = curl_to(port, &ca)
        .args(["--http2", "--path-as-is", "-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://a.test:{port}/api/%2e%2e/admin/secret.txt"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", proxy.log());
    assert!(api.heads().is_empty(), "{:?}", api.heads());
    assert_eq!(web.request_lines(), vec!["GET /admin/secret.txt HTTP/1.1"]);
}

#[test]
fn an_http2_access_log_line_names_its_backend_as_an_http1_line_does() {
    let backend = Backend::start(Reply::Ok);
    let s = h2_proxy("[log]\naccess = \"json\"\n", backend.addr);
    let authority = format!("a.test:{}", s.proxy.addr.port());
    assert_eq!(h2_get(&s, &authority, &[]).0, 200);
    let (status, _) = h2_get(&s, &authority, &[("host", "b.test")]);
    assert_eq!(status, 400);
    // The first connection's close line may come between the two.
    let reqs = || -> Vec<serde_json::Value> {
        s.proxy
            .stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["request"].is_string())
            .collect()
    };
    assert!(wait_until(Duration::from_secs(3), || reqs().len() >= 2), "{:?}", reqs());
    let reqs = reqs();
    let ok = reqs.iter().find(|v| v["status"] == 200).expect("the 200's line");
    assert_eq!(ok["request"], "GET /echo HTTP/2.0");
    assert_eq!(ok["backend"], backend.addr.to_string());
    assert!(ok["upstream_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{ok}");
    // finguard's own answer names no backend.
    let refused = reqs.iter().find(|v| v["status"] == 400).expect("the 400's line");
    assert!(refused["backend"].is_null(), "{refused}");
}

#[test]
fn a_backend_cannot_grow_finguards_memory_while_an_http2_request_goes_up() {
    let (backend, _) = raw_backend(endless_header_backend_h2);
    // The upload streams (request buffering off), as in the HTTP/1 case.
    let s = h2_proxy("[client]\nbody_timeout = \"5s\"\n[buffer]\nrequests = false\n", backend);
    let (cfg, addr) = (s.client.clone(), s.proxy.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("https://a.test/up")
            .header("content-length", "10000000")
            .body(())
            .unwrap();
        let (resp, mut body) = client.send_request(req, false).unwrap();
        // The upload goes on slowly while the backend's head never ends.
        let feed = async {
            for _ in 0..200 {
                body.reserve_capacity(1000);
                if body.send_data(bytes::Bytes::from_static(&[b'b'; 1000]), false).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            r = resp => r.map(|r| r.status().as_u16()).ok(),
            () = feed => None,
        }
    });
    assert_eq!(status, Some(502), "{}", s.proxy.log());
    assert!(wait_until(Duration::from_secs(10), || ENDLESS_SENT_H2
        .load(std::sync::atomic::Ordering::SeqCst)
        != usize::MAX));
    let sent = ENDLESS_SENT_H2.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent < 24 << 20, "finguard read {sent} bytes of a head");
}

static ENDLESS_SENT_H2: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

/// [`stream_endless_head`] for the HTTP/2 test.
fn endless_header_backend_h2(s: TcpStream) {
    ENDLESS_SENT_H2.store(stream_endless_head(s), std::sync::atomic::Ordering::SeqCst);
}
