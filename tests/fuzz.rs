//! Property tests over finguard's own HTTP/1 code and its config parser,
//! with `proptest` (coverage-guided fuzzers need nightly or an external
//! instrumenting compiler, neither of which this toolchain has; proptest runs
//! on stable inside `cargo test` and shrinks a failure to a small case).
//!
//! Oracles: nothing panics; the chunk scanner gives the same answer whatever
//! the split of its input; a request head the parser accepts is written for
//! the backend as a head that `httparse` (a reference parser) reads whole,
//! with the same method, target and framing; the two response-head parsers
//! (HTTP/1 and HTTP/2 clients) agree on a response's framing; a PROXY
//! header finguard writes for any pair of addresses is read back the same by
//! `ppp` (a reference parser), and its own decoder, fed any bytes a prefix at
//! a time, gives one verdict and never changes it.
//!
//! `tests/corpus/` holds seed inputs (smuggling attempts and edge cases);
//! every run replays them through the same oracles.

use finguard::config::{Forwarded, ProxyProtocol};
use finguard::http1::forward::{self, ForwardCtx};
use finguard::http1::framing::Framing;
use finguard::http1::head;
use finguard::http1::response::{self, ClientView, Parsed, Parsed2};
use finguard::proxy_protocol::{self, Decoded};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use std::net::{IpAddr, SocketAddr};

/// Feeds `body` to a chunk scanner in the given split; returns how many bytes
/// belong to the body and whether it ended, or the fault.
fn scan_split(body: &[u8], cuts: &[usize]) -> Result<(usize, bool), String> {
    let mut f = Framing::chunked(1 << 20);
    let mut used = 0;
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    points.sort_unstable();
    points.push(body.len());
    for p in points {
        if p < at {
            continue;
        }
        let piece = &body[at..p];
        let n = f.consume(piece).map_err(|e| format!("{e:?}"))?;
        used += n;
        at = p;
        if f.is_done() || n < piece.len() {
            break;
        }
    }
    Ok((used, f.is_done()))
}

/// A chunked body: chunks of the given sizes (with an extension now and
/// then), the last chunk, trailers, then `tail` (a next request).
fn chunked_body(sizes: &[usize], trailers: &[(String, String)], tail: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        if i % 3 == 1 {
            b.extend_from_slice(format!("{n:x};ext=v\r\n").as_bytes());
        } else {
            b.extend_from_slice(format!("{n:X}\r\n").as_bytes());
        }
        b.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, *n));
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"0\r\n");
    for (k, v) in trailers {
        b.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    b.extend_from_slice(b"\r\n");
    b.extend_from_slice(tail);
    b
}

fn check_split_invariance(body: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let whole = scan_split(body, &[]);
    let split = scan_split(body, cuts);
    prop_assert_eq!(whole, split, "body {:?}", String::from_utf8_lossy(body));
    Ok(())
}

/// A request head the parser accepts, written for the backend, read back by
/// httparse: whole, same method and target, same framing.
fn check_forwarded_head(raw: &[u8]) -> Result<(), TestCaseError> {
    let Ok(Some(len)) = head::find_end(raw) else {
        return Ok(());
    };
    let Ok(h) = head::parse(raw, len, 1 << 30, true, true) else {
        return Ok(());
    };
    // A target that climbs above the root is refused (400), not forwarded.
    let Ok(t) = forward::target(raw, &h) else {
        return Ok(());
    };
    let cx = ForwardCtx {
        peer: "192.0.2.1:1234".parse().unwrap(),
        scheme: "http",
        forwarded: Forwarded::XForwarded,
        default_host: "backend",
        upgrade: h.upgrade,
    };
    let mut out = Vec::new();
    forward::write_head(&mut out, raw, &h, &t, &cx);
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(&out);
    prop_assert!(
        matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
        "forwarded head does not parse whole: {:?}\n{}",
        parsed,
        String::from_utf8_lossy(&out)
    );
    prop_assert_eq!(req.method.unwrap_or("").as_bytes(), h.method.get(raw));
    prop_assert_eq!(req.path.unwrap_or("").as_bytes(), &t.path[..]);
    // The framing the backend sees is the framing finguard relays.
    let again = head::parse(&out, out.len(), 1 << 30, false, false);
    prop_assert!(
        again.is_ok(),
        "finguard refuses its own head: {}",
        String::from_utf8_lossy(&out)
    );
    let again = again.unwrap();
    let same = match (&h.framing, &again.framing) {
        (Framing::Length(a), Framing::Length(b)) => a == b,
        (Framing::Chunked(_), Framing::Chunked(_)) => true,
        _ => false,
    };
    prop_assert!(same, "framing changed: {:?} → {:?}", h.framing, again.framing);
    Ok(())
}

fn view() -> ClientView {
    ClientView {
        http10: false,
        force_response_1_0: false,
        downgrade_1_0: false,
        keepalive: true,
        head_request: false,
        upgrade_requested: false,
        keepalive_timeout_secs: 5,
        remaining: 10,
    }
}

/// The HTTP/1 and HTTP/2 response parsers agree: both refuse, both wait, or
/// both accept with the same status and framing.
fn check_response(raw: &[u8]) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    let one = response::parse(raw, &view(), &mut out);
    let two = response::parse_h2(raw, false);
    match (one, two) {
        (Err(_), Err(_)) | (Ok(Parsed::Partial), Ok(Parsed2::Partial)) => {}
        (Ok(Parsed::Interim(a)), Ok(Parsed2::Interim(b))) => prop_assert_eq!(a, b),
        (Ok(Parsed::Final(a)), Ok(Parsed2::Final(b))) => {
            prop_assert_eq!(a.status, b.status);
            prop_assert_eq!(a.backend_body, b.body);
            prop_assert_eq!(a.len, b.len);
        }
        (a, b) => prop_assert!(
            false,
            "parsers disagree: {:?} vs {:?} on {:?}",
            a,
            b,
            String::from_utf8_lossy(raw)
        ),
    }
    Ok(())
}

fn header_line() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "Expect",
        "Trailer",
        "X-Forwarded-For",
        "Keep-Alive",
        "TE",
        "User-Agent",
        "X-Custom",
        "content-length",
        "Content-Length ",
        " Host",
    ]);
    let values = prop::sample::select(vec![
        "a",
        "5",
        "0",
        "chunked",
        "gzip, chunked",
        "close",
        "keep-alive",
        "Upgrade, x-drop",
        "websocket",
        "100-continue",
        "1.2.3.4",
        "5, 5",
        "-1",
        " chunked ",
        "\tv",
        "x-drop",
        "",
        "h.example",
        "text/plain",
        "1",
    ]);
    (names, values).prop_map(|(n, v)| format!("{n}: {v}\r\n"))
}

fn request_head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec![
        "GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH", "TRACE", "CONNECT", "get",
    ]);
    let target = prop::sample::select(vec![
        "/",
        "/a?b=c",
        "*",
        "http://h.example/p",
        "HTTPS://h.example:8443",
        "/%00",
        "/a b",
    ]);
    // HTTP/1.1 twice: the invalid versions are refused before anything
    // else is looked at, and the heads are to reach the later checks.
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1"]);
    let host = prop::bool::weighted(0.8);
    (
        method,
        target,
        version,
        host,
        prop::collection::vec(header_line(), 0..6),
    )
        .prop_map(|(m, t, v, host, hs)| {
            let mut s = format!("{m} {t} {v}\r\n");
            if host {
                s.push_str("Host: h.example\r\n");
            }
            for h in hs {
                s.push_str(&h);
            }
            s.push_str("\r\n");
            s.into_bytes()
        })
}

fn response_head() -> impl Strategy<Value = Vec<u8>> {
    let status = prop::sample::select(vec![
        "100", "101", "103", "200", "204", "304", "404", "999", "2000", "abc",
    ]);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/1.2"]);
    (version, status, prop::collection::vec(header_line(), 0..8)).prop_map(|(v, st, hs)| {
        let mut s = format!("{v} {st} Reason\r\n");
        for h in hs {
            s.push_str(&h);
        }
        s.push_str("\r\n");
        s.into_bytes()
    })
}

/// An encoded PROXY header read back by `ppp` directly (the reference) and
/// by finguard's decoder fed every prefix: the same addresses, the header
/// incomplete until its last byte, and the bytes after it left alone.
fn check_proxy_roundtrip(version: ProxyProtocol, src: SocketAddr, dst: SocketAddr) -> Result<(), TestCaseError> {
    let h = proxy_protocol::header(version, src, dst);
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) if src.is_ipv4() != dst.is_ipv4() => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        _ => a,
    };
    let want = (mapped(src), mapped(dst));
    // ppp's IPv4 and IPv6 address types have the same fields.
    macro_rules! pair {
        ($a:expr) => {
            (
                ($a.source_address, $a.source_port).into(),
                ($a.destination_address, $a.destination_port).into(),
            )
        };
    }
    let reference = match ppp::HeaderResult::parse(&h) {
        ppp::HeaderResult::V1(Ok(r)) => match r.addresses {
            ppp::v1::Addresses::Tcp4(a) => pair!(a),
            ppp::v1::Addresses::Tcp6(a) => pair!(a),
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        },
        ppp::HeaderResult::V2(Ok(r)) => match r.addresses {
            ppp::v2::Addresses::IPv4(a) => pair!(a),
            ppp::v2::Addresses::IPv6(a) => pair!(a),
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        },
        other => return Err(TestCaseError::fail(format!("reference refused {h:?}: {other:?}"))),
    };
    prop_assert_eq!(reference, want);
    if version == ProxyProtocol::V1 {
        prop_assert!(h.len() <= proxy_protocol::MAX_V1 && h.ends_with(b"\r\n"));
    }
    for cut in 0..h.len() {
        prop_assert_eq!(proxy_protocol::decode(&h[..cut]), Decoded::Incomplete);
    }
    let mut more = h.clone();
    more.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let got = proxy_protocol::decode(&more);
    prop_assert_eq!(
        got,
        Decoded::Header {
            len: h.len(),
            peer: Some(want)
        }
    );
    Ok(())
}

/// Arbitrary bytes: no panic, and the answer never changes once given (a
/// verdict on a prefix is the verdict on every longer input).
fn check_proxy_prefixes(raw: &[u8]) -> Result<(), TestCaseError> {
    let mut verdict: Option<Decoded> = None;
    for end in 0..=raw.len() {
        let d = proxy_protocol::decode(&raw[..end]);
        match (&verdict, &d) {
            (Some(v), _) => prop_assert_eq!(v, &d, "prefix of {} bytes", end),
            (None, Decoded::Incomplete) => {}
            (None, _) => verdict = Some(d),
        }
    }
    if let Some(Decoded::Header { len, .. }) = verdict {
        prop_assert!(len <= raw.len());
    }
    Ok(())
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

/// Bytes that start like a PROXY header often enough to reach its parsers.
fn proxy_like() -> impl Strategy<Value = Vec<u8>> {
    let sig = vec![0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
    (
        prop::sample::select(vec![
            b"PROXY ".to_vec(),
            b"PROXY TCP4 ".to_vec(),
            b"PROXY UNKNOWN".to_vec(),
            sig,
            Vec::new(),
        ]),
        prop::collection::vec(any::<u8>(), 0..120),
    )
        .prop_map(|(mut head, tail)| {
            head.extend_from_slice(&tail);
            head
        })
}

/// The backend head finguard writes for a request that came over HTTP/1.1
/// and for the same request over HTTP/2 (`:authority` for `Host`, cookie
/// crumbs for one `Cookie` line), each as its request line and its fields
/// by name (the order of fields of different names is not meaning); an
/// `Err` when it is refused.
type Written = Result<(String, Vec<(String, String)>), String>;

fn written_for_both(
    method: &str,
    host: &str,
    target: &str,
    fields: &[(&str, String)],
    forwarded: Forwarded,
) -> Option<(Written, Written)> {
    let cx = ForwardCtx {
        peer: "192.0.2.1:1234".parse().unwrap(),
        scheme: "https",
        forwarded,
        default_host: "backend",
        upgrade: false,
    };
    let write = |raw: &[u8], h: &head::Head| -> Written {
        let t = forward::target(raw, h).map_err(|e| format!("{e:?}"))?;
        let mut out = Vec::new();
        forward::write_head(&mut out, raw, h, &t, &cx);
        let text = String::from_utf8_lossy(&out).into_owned();
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or("").to_string();
        let mut f: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        f.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((line, f))
    };
    // HTTP/1.1: one Cookie line, where the first crumb was.
    let cookies: Vec<&str> = fields
        .iter()
        .filter(|(n, _)| *n == "cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    if !cookies.is_empty() {
        raw.push_str(&format!("Cookie: {}\r\n", cookies.join("; ")));
    }
    for (n, v) in fields.iter().filter(|(n, _)| *n != "cookie") {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let raw = raw.into_bytes();
    let len = head::find_end(&raw).ok()??;
    let h1 = match head::parse(&raw, len, 1 << 20, false, false) {
        Ok(h) => write(&raw, &h),
        Err(e) => Err(format!("{e:?}")),
    };
    // HTTP/2: the same fields on a request with an authority.
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://{host}{target}"))
        .body(())
        .ok()?;
    for (n, v) in fields {
        req.headers_mut().append(
            http::HeaderName::from_bytes(n.as_bytes()).ok()?,
            http::HeaderValue::from_str(v).ok()?,
        );
    }
    let (parts, ()) = req.into_parts();
    let h2 = match finguard::exchange::h2::h1_head(&parts, false, 1 << 16, 1 << 20) {
        Ok((hb, h)) => write(&hb, &h),
        Err(e) => Err(e.to_string()),
    };
    Some((h1, h2))
}

proptest! {
    // `FINGUARD_FUZZ_CASES=200000 cargo test --release --test fuzz` for a long run.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("FINGUARD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn chunk_scanner_gives_one_answer_whatever_the_split(
        sizes in prop::collection::vec(0usize..40, 0..6),
        trailers in prop::collection::vec(("[A-Za-z-]{1,8}", "[ -~]{0,8}"), 0..3),
        tail in prop::collection::vec(any::<u8>(), 0..16),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        flip in prop::option::of((any::<usize>(), any::<u8>())),
    ) {
        let mut body = chunked_body(&sizes, &trailers, &tail);
        if let Some((at, b)) = flip {
            let i = at % body.len();
            body[i] = b; // a damaged body: same answer in every split too
        }
        check_split_invariance(&body, &cuts)?;
    }

    #[test]
    fn the_same_request_over_http1_and_http2_gives_the_backend_the_same_head(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
        host in "[a-z]{1,6}(\\.[a-z]{1,4})?(:[0-9]{2,4})?",
        path in "(/([a-z0-9]{1,4}|\\.|\\.\\.|%2e|%2E%2e)){0,6}/?",
        query in prop::option::of("[a-z=&./]{0,8}"),
        fields in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "accept", "user-agent", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                    "forwarded", "cookie", "x-custom", "te", "via", "connection", "keep-alive",
                ]),
                "([a-zA-Z0-9=;.,]([a-zA-Z0-9=;., ]{0,10}[a-zA-Z0-9=;.,])?)?",
            ),
            0..8,
        ),
        rfc7239 in any::<bool>(),
    ) {
        let target = format!("{}{}", if path.is_empty() { "/" } else { &path }, query.map(|q| format!("?{q}")).unwrap_or_default());
        let fields: Vec<(&str, String)> = fields.iter().map(|(n, v)| (*n, v.clone())).collect();
        let forwarded = if rfc7239 { Forwarded::Forwarded } else { Forwarded::XForwarded };
        let Some((h1, h2)) = written_for_both(method, &host, &target, &fields, forwarded) else {
            return Ok(()); // not expressible as an HTTP/2 request
        };
        match (&h1, &h2) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "one protocol refused what the other took: {:?} / {:?}", h1, h2),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_request_parser(raw in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some(len)) = head::find_end(&raw) {
            let _ = head::parse(&raw, len, 1 << 20, true, true);
        }
        let _ = head::leading_empty_lines(&raw);
    }

    #[test]
    fn an_accepted_request_head_is_forwarded_as_one_the_reference_parser_reads_the_same(raw in request_head()) {
        check_forwarded_head(&raw)?;
    }

    #[test]
    fn a_proxy_header_finguard_writes_is_read_back_by_a_reference_parser(
        v2 in any::<bool>(), src in socket_addr(), dst in socket_addr()
    ) {
        let version = if v2 { ProxyProtocol::V2 } else { ProxyProtocol::V1 };
        check_proxy_roundtrip(version, src, dst)?;
    }

    #[test]
    fn arbitrary_bytes_get_one_verdict_from_the_proxy_header_decoder(raw in proxy_like()) {
        check_proxy_prefixes(&raw)?;
    }

    #[test]
    fn both_response_parsers_agree(raw in response_head()) {
        check_response(&raw)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_response_parsers(raw in prop::collection::vec(any::<u8>(), 0..300)) {
        check_response(&raw)?;
    }

    #[test]
    fn arbitrary_config_text_is_refused_or_accepted_never_a_panic(
        lines in prop::collection::vec(
            prop::sample::select(vec![
                "[client]", "[client.close]", "[[user_agent]]", "[[backend]]", "[[route]]", "[log]",
                "keepalive_timeout = \"5s\"", "keepalive_timeout = 5", "max_body_bytes = \"1KiB\"",
                "max_body_bytes = -1", "max_header_bytes = \"99999999999999999999\"", "mode = \"so_linger\"",
                "linger_time = \"0s\"", "match = \"(\"", "match = \"x\"", "nokeepalive = true",
                "name = \"a\"", "addrs = [\"127.0.0.1:1\"]", "addrs = []", "backend = \"a\"",
                "pool_max_idle = 0", "max_connections = 0", "access = \"json\"", "workers = 4294967295",
                "x = 1", "= =", "[[client]]",
            ]),
            0..12,
        )
    ) {
        let text = lines.join("\n");
        let _ = finguard::config::parse("fuzz", &text, &Default::default());
    }
}

#[test]
fn the_generated_heads_are_often_accepted() {
    // Not vacuous: the generator reaches the parser's accepting paths.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut accepted = 0;
    for _ in 0..500 {
        let raw = request_head().new_tree(&mut runner).unwrap().current();
        let Ok(Some(len)) = head::find_end(&raw) else { continue };
        accepted += usize::from(head::parse(&raw, len, 1 << 30, false, false).is_ok());
    }
    assert!(accepted >= 50, "only {accepted} of 500 generated heads were accepted");
}

/// Replays `tests/corpus/`: request heads (`req-*`), chunked bodies
/// (`chunked-*`) and response heads (`resp-*`), through the same oracles.
#[test]
fn the_seed_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("tests/corpus") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let raw = std::fs::read(&path).unwrap();
        let result = if name.starts_with("req-") {
            check_forwarded_head(&raw)
        } else if name.starts_with("chunked-") {
            (1..raw.len().min(64)).try_for_each(|k| check_split_invariance(&raw, &[k, 2 * k, 3 * k]))
        } else if name.starts_with("resp-") {
            check_response(&raw)
        } else if name.starts_with("proxy-") {
            check_proxy_prefixes(&raw)
        } else {
            continue;
        };
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
        n += 1;
    }
    assert!(n >= 10, "only {n} corpus files");
}
