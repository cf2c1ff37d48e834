//! The exchange under attack, second round: what an adversarial review of
//! the one exchange found a hostile client or backend could still do, each
//! tried with the exact bytes, on HTTP/1 and (where the protocol carries it)
//! HTTP/2.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::h2_client::*;
use support::*;

/// `/admin/` and the host `admin.test` go to `admin`; the rest to `web`.
fn admin_routes(admin: SocketAddr, web: SocketAddr) -> String {
    format!(
        "[[backend]]\nname = \"admin\"\naddrs = [\"{admin}\"]\n\
         [[backend]]\nname = \"web\"\naddrs = [\"{web}\"]\n\
         [[route]]\nhost = \"admin.test\"\npath_prefix = \"/\"\nbackend = \"admin\"\n\
         [[route]]\npath_prefix = \"/admin/\"\nbackend = \"admin\"\n\
         [[route]]\npath_prefix = \"/\"\nbackend = \"web\"\n"
    )
}

#[test]
fn a_route_cannot_be_walked_around_with_slashes_escapes_or_a_trailing_dot() {
    let admin = Backend::start(Reply::Ok);
    let web = Backend::start(Reply::Ok);
    let p = Proxy::start_args(&admin_routes(admin.addr, web.addr), &[]);
    // Apache merges slashes and decodes unreserved escapes before it maps
    // a path: each of these is /admin/x to it, so each is routed as that.
    for path in [
        "//admin/x",
        "/%61dmin/x",
        "/%61%64%6D%69%6E/x",
        "///admin//x",
        "/web/..//admin/x",
    ] {
        let r = request(p.addr, &format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert_eq!(r.status, 200, "{path}");
    }
    assert!(web.heads().is_empty(), "web got {:?}", web.request_lines());
    assert_eq!(admin.request_lines(), vec!["GET /admin/x HTTP/1.1"; 5]);
    // A fully qualified host name is the same host.
    for host in ["admin.test.", "ADMIN.test.:8080"] {
        let r = request(p.addr, &format!("GET /page HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!(r.status, 200, "{host}");
    }
    assert!(web.heads().is_empty(), "web got {:?}", web.request_lines());
    assert_eq!(admin.heads().len(), 7);
    // Escapes of reserved characters stay as they came.
    let r = request(p.addr, "GET /a%2Fb%20c HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(web.request_lines(), vec!["GET /a%2Fb%20c HTTP/1.1"]);
}

#[test]
fn connect_is_refused_and_no_backend_hears_of_it() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start("", backend.addr);
    for target in ["a.test:443", "127.0.0.1:22"] {
        let r = request(p.addr, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
        assert_eq!(r.status, 501, "{}", r.head);
    }
    assert!(backend.heads().is_empty(), "{:?}", backend.heads());
    assert_eq!(backend.accepted(), 0);
}

#[test]
fn a_comma_in_host_is_refused_and_options_asterisk_reaches_the_backend() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start("", backend.addr);
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a.test,evil.test\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(backend.heads().is_empty(), "{:?}", backend.heads());
    let r = request(p.addr, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(backend.request_lines(), vec!["OPTIONS * HTTP/1.1"]);
}

#[test]
fn chunk_size_whitespace_is_bounded_and_request_trailers_cannot_reframe() {
    let backend = Backend::start(Reply::CountBody);
    let p = Proxy::start("[client]\nbody_timeout = \"2s\"\n", backend.addr);
    let spaces = " ".repeat(64 * 1024);
    let cases = [
        format!("1{spaces}\r\nx\r\n0\r\n\r\n"),
        "1\r\nx\r\n0\r\nHost: admin.test\r\n\r\n".to_string(),
        "1\r\nx\r\n0\r\nContent-Length: 99\r\n\r\n".to_string(),
        "1\r\nx\r\n0\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n\r\n".to_string(),
        "1\r\nx\r\n0\r\nX-Forwarded-For: 10.9.8.7\r\n\r\n".to_string(),
        "1\r\nx\r\n0\r\nforwarded: for=10.9.8.7\r\n\r\n".to_string(),
    ];
    for body in &cases {
        let mut s = p.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ =
            s.write_all(format!("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}").as_bytes());
        let r = read_response(&mut s, &mut Vec::new()).expect("an answer");
        assert_eq!(r.status, 400, "{:?}: {}", &body[..body.len().min(40)], r.head);
    }
    // Whatever went up before the refusal, no trailer reached the backend.
    let heads = backend.heads().join("");
    assert!(!heads.contains("admin.test") && !heads.contains("YWRtaW4"), "{heads}");
}

/// A backend that answers by path: a 1xx flood, a 204 with a length, a
/// 103 before a 200, trailers with connection-specific fields.
fn odd_backend(mut s: TcpStream) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf) {
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let resp: &[u8] = match path.as_str() {
            "/flood" => {
                flood(&mut s);
                return;
            }
            "/204" => b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n",
            "/interim" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "/trailers" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 7\r\nConnection: close\r\nTransfer-Encoding: gzip\r\nKeep-Alive: timeout=1\r\n\r\n"
            }
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        };
        if s.write_all(resp).is_err() {
            return;
        }
    }
}

/// A backend table whose address `--backend` replaces, with a response
/// deadline far past what the flood tests wait.
const LONG_RESPONSE_TIMEOUT: &str =
    "[[backend]]\nname = \"b\"\naddrs = [\"127.0.0.1:1\"]\nresponse_timeout = \"30s\"\n";

static FLOOD_SENT: AtomicUsize = AtomicUsize::new(0);

/// 102s without end, as fast as they are taken (64 MiB at most).
fn flood(s: &mut TcpStream) {
    let one = b"HTTP/1.1 102 Processing\r\n\r\n";
    let batch = one.repeat(2048);
    let mut sent = 0;
    while sent < 64 << 20 && s.write_all(&batch).is_ok() {
        sent += batch.len();
    }
    FLOOD_SENT.fetch_max(sent, Ordering::SeqCst);
}

#[test]
fn a_flood_of_interim_responses_is_a_bad_response_not_a_hang() {
    let (backend, _) = raw_backend(odd_backend);
    let p = Proxy::start(LONG_RESPONSE_TIMEOUT, backend);
    let mut s = p.connect();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /flood HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    // What the client gets: a few 102s relayed, then 502, long before the
    // 30 s response_timeout.
    let mut buf = Vec::new();
    let mut interims = 0;
    let status = loop {
        let head = read_head(&mut s, &mut buf).expect("an answer before the flood ends");
        let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if status != 102 {
            break status;
        }
        interims += 1;
    };
    assert_eq!(status, 502);
    assert!(interims <= 32, "{interims} interim responses relayed");
    // finguard stopped reading: the backend's writes stalled far below 64 MiB.
    assert!(wait_until(Duration::from_secs(10), || FLOOD_SENT
        .load(Ordering::SeqCst)
        > 0));
    assert!(FLOOD_SENT.load(Ordering::SeqCst) < 32 << 20);
}

#[test]
fn a_204_goes_out_without_a_length() {
    let (backend, _) = raw_backend(odd_backend);
    let p = Proxy::start("", backend);
    let mut s = p.connect();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /204 HTTP/1.1\r\nHost: a\r\n\r\nGET /other HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).expect("a 204");
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "{head}");
    assert!(head.contains("X-A: 1"), "{head}");
    // The connection goes on: the next response follows at once.
    let r = read_response(&mut s, &mut buf).expect("the second answer");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
}

#[test]
fn a_client_treated_as_http10_gets_no_interim_response() {
    let (backend, _) = raw_backend(odd_backend);
    let p = Proxy::start("[[user_agent]]\nmatch = \"OldUA/\"\ndowngrade_1_0 = true\n", backend);
    for (ua, first) in [("OldUA/1", "HTTP/1.1 200"), ("NewUA/1", "HTTP/1.1 103")] {
        let mut s = p.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("GET /interim HTTP/1.1\r\nHost: a\r\nUser-Agent: {ua}\r\n\r\n").as_bytes())
            .unwrap();
        let head = read_head(&mut s, &mut Vec::new()).expect("an answer");
        assert!(head.starts_with(first), "{ua}: {head}");
    }
    // finguard's own 100 Continue is not sent to it either: the first bytes
    // it reads are the final answer to the body it sent.
    let backend = Backend::start(Reply::CountBody);
    let p = Proxy::start(
        "[[user_agent]]\nmatch = \"OldUA/\"\ndowngrade_1_0 = true\n",
        backend.addr,
    );
    for (ua, first) in [("OldUA/1", "HTTP/1.1 200"), ("NewUA/1", "HTTP/1.1 100")] {
        let mut s = p.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nUser-Agent: {ua}\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        if ua == "OldUA/1" {
            // It waits no longer than curl does, then sends the body.
            s.write_all(b"abc").unwrap();
        }
        let head = read_head(&mut s, &mut Vec::new()).expect("an answer");
        assert!(head.starts_with(first), "{ua}: {head}");
    }
}

#[test]
fn http2_trailers_with_connection_fields_do_not_reset_the_stream() {
    let (backend, _) = raw_backend(odd_backend);
    let s = h2_proxy("", backend);
    let a = h2_send(
        &s,
        &H2Request {
            path: "/trailers",
            ..H2Request::default()
        },
    );
    assert!(a.clean, "the stream was reset: {}", s.proxy.log());
    assert_eq!((a.status, a.body.as_slice()), (200, &b"ok"[..]));
    let t = a.trailers.expect("the trailers");
    assert_eq!(t.get("x-sum").map(|v| v.as_bytes()), Some(&b"7"[..]));
    assert_eq!(t.len(), 1, "{t:?}");
}

#[test]
fn http2_request_trailers_cannot_reframe_and_a_flood_of_interims_is_502() {
    let backend = Backend::start(Reply::EchoHead);
    let s = h2_proxy("", backend.addr);
    let a = h2_send(
        &s,
        &H2Request {
            method: "POST",
            path: "/up",
            body: Some(b"x"),
            trailers: &[("host", "admin.test")],
            ..H2Request::default()
        },
    );
    assert_eq!(a.status, 400);
    let ok = h2_send(
        &s,
        &H2Request {
            method: "POST",
            path: "/up",
            body: Some(b"x"),
            trailers: &[("x-sum", "1")],
            ..H2Request::default()
        },
    );
    assert_eq!(ok.status, 200);
    let (flood_backend, _) = raw_backend(odd_backend);
    let s = h2_proxy(LONG_RESPONSE_TIMEOUT, flood_backend);
    let a = h2_send(
        &s,
        &H2Request {
            path: "/flood",
            ..H2Request::default()
        },
    );
    assert_eq!(a.status, 502);
}

#[test]
fn an_http2_request_gets_its_user_agent_rules_larger_head_limit() {
    let backend = Backend::start(Reply::Ok);
    let s = h2_proxy(
        "[client]\nmax_header_bytes = \"1KiB\"\n[[user_agent]]\nmatch = \"BigHeads/\"\nmax_header_bytes = \"16KiB\"\n",
        backend.addr,
    );
    let pad = "p".repeat(4000);
    let send = |ua: &str| {
        h2_send(
            &s,
            &H2Request {
                fields: &[("user-agent", ua), ("x-pad", &pad)],
                ..H2Request::default()
            },
        )
        .status
    };
    assert_eq!(send("BigHeads/1"), 200);
    assert_eq!(send("Other/1"), 431);
    assert_eq!(backend.heads().len(), 1);
}

#[test]
fn a_fragment_or_a_stray_asterisk_in_the_target_is_refused() {
    let admin = Backend::start(Reply::Ok);
    let web = Backend::start(Reply::Ok);
    let p = Proxy::start_args(&admin_routes(admin.addr, web.addr), &[]);
    // Apache answers 400 to a `#`, nginx serves /web/x: normalised whole,
    // it was routed to admin as /admin/x. `GET *` is a 400 in both.
    for line in [
        "GET /web/x#/../../admin/x",
        "GET /web/x#frag",
        "GET http://a/web/x#/../../admin/x",
        "GET *",
        "POST *",
    ] {
        let r = request(
            p.addr,
            &format!("{line} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
        );
        assert_eq!(r.status, 400, "{line}: {}", r.head);
    }
    assert!(admin.heads().is_empty(), "admin got {:?}", admin.request_lines());
    assert!(web.heads().is_empty(), "web got {:?}", web.request_lines());
}

#[test]
fn a_malformed_escape_cannot_become_an_escaped_dot_behind_the_route() {
    let admin = Backend::start(Reply::Ok);
    let web = Backend::start(Reply::Ok);
    let p = Proxy::start_args(&admin_routes(admin.addr, web.addr), &[]);
    // Decoded once, `%%32%65` is `%2e`: routed to web, and then Apache
    // reads /web/%2e%2e/admin/x as /admin/x. Apache and nginx answer 400.
    for path in ["/web/%%32%65%%32%65/admin/x", "/%%36%31dmin/x", "/web/%zz", "/web/x%4"] {
        let r = request(p.addr, &format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert_eq!(r.status, 400, "{path}: {}", r.head);
    }
    assert!(admin.heads().is_empty(), "admin got {:?}", admin.request_lines());
    assert!(web.heads().is_empty(), "web got {:?}", web.request_lines());
}
