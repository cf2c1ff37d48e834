//! The backend's response head: parsed once, judged, and written out for the
//! client in the same pass.
//!
//! The judgement: how the body is framed (RFC 9112 §6.3: no body for HEAD,
//! 1xx, 204 and 304; a response with both `Content-Length` and chunked is
//! refused as a bad response, never relayed with a stale length), whether the
//! backend connection may carry another request, and what the client is told:
//! one connection decision, `close` or `keep-alive`, never both.

use super::put;
use std::time::Duration;

/// More header lines than this in a backend response is a 502.
const MAX_HEADERS: usize = 100;
/// A response head larger than this is a 502.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What the backend said about reuse in a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReuseHint {
    pub close: bool,
    pub timeout: Option<Duration>,
    pub max: Option<u32>,
}

impl ReuseHint {
    /// Reads `Connection` and `Keep-Alive` of a backend response.
    pub fn from_headers(h: &http::HeaderMap) -> Self {
        let close = h
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"));
        let mut hint = ReuseHint {
            close,
            ..Default::default()
        };
        if let Some(ka) = h.get("keep-alive") {
            hint.read_keep_alive(ka.as_bytes());
        }
        hint
    }

    /// Reads a `Keep-Alive: timeout=N, max=M` value.
    pub fn read_keep_alive(&mut self, value: &[u8]) {
        let Ok(ka) = std::str::from_utf8(value) else { return };
        for part in ka.split(',') {
            let Some((k, v)) = part.split_once('=') else { continue };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "timeout" => self.timeout = v.parse().ok().map(Duration::from_secs),
                "max" => self.max = v.parse().ok(),
                _ => {}
            }
        }
    }
}

/// A backend response finguard will not relay (a 502), and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// How the backend frames its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    Empty,
    Length(u64),
    Chunked,
    /// Ends when the backend closes.
    Close,
}

/// How the client is sent the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBody {
    Empty,
    Length(u64),
    /// Chunked as the backend sent it, trailers and all.
    ChunkedPass,
    /// Chunks decoded, the body ending at close (HTTP/1.0 clients).
    ChunkedDecode,
    /// Relayed to the backend's close, then closed.
    Close,
}

/// What the client connection is, for shaping a response.
#[derive(Debug, Clone, Copy)]
pub struct ClientView {
    pub http10: bool,
    pub force_response_1_0: bool,
    pub downgrade_1_0: bool,
    /// The connection's keep-alive decision so far (policy, request, its
    /// end, a drain): the response's framing may still say close.
    pub keepalive: bool,
    pub head_request: bool,
    pub upgrade_requested: bool,
    pub keepalive_timeout_secs: u64,
    /// Requests still allowed after this one.
    pub remaining: u32,
}

/// A final response head, shaped.
#[derive(Debug)]
pub struct Shaped {
    /// Length of the backend's head in its buffer.
    pub len: usize,
    pub status: u16,
    pub backend_body: BodyMode,
    pub client_body: ClientBody,
    /// The client connection stays open after this response.
    pub keepalive: bool,
    pub reuse: ReuseHint,
    /// `X-Accel-Buffering: no`: relayed at the client's pace.
    pub unbuffered: bool,
}

#[derive(Debug)]
pub enum Parsed {
    /// More bytes needed.
    Partial,
    /// A 1xx other than 101 of this length; `out` holds it for an HTTP/1.1 client.
    Interim(usize),
    /// A 101 to an upgrade request: `out` holds the client's head.
    Switch(usize),
    /// The final response: `out` holds the client's head.
    Final(Shaped),
}

/// More interim (1xx) responses than this before the final one is a bad
/// response: a backend that floods them is broken or hostile, and no real
/// one sends more than a few (100 Continue, 102, 103 Early Hints).
pub const MAX_INTERIM: u32 = 32;

/// Response headers never relayed as they came.
fn hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        // finguard's instruction (nginx's convention), not the client's.
        b"x-accel-buffering",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Parses the response head at the start of `buf`; on a complete head,
/// writes what the client is to receive into `out`.
pub fn parse(buf: &[u8], view: &ClientView, out: &mut Vec<u8>) -> Result<Parsed, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(len) = parse_head(&mut resp, buf)? else {
        return Ok(Parsed::Partial);
    };
    let status = status(&resp)?;
    let Scan {
        length,
        te,
        reuse,
        named,
        upgrade,
        unbuffered,
    } = scan(resp.headers, resp.version == Some(0))?;
    if (100..200).contains(&status) && status != 101 {
        // Rewritten as a final head is: hop-by-hop fields are not relayed
        // (RFC 9110 §7.6.1), and every line ends in CRLF.
        // Not to a client treated as HTTP/1.0 either (RFC 9110 §15.2: a
        // server must not send 1xx to an HTTP/1.0 client), which a
        // `downgrade_1_0` or `force_response_1_0` rule says it is.
        // Nor a 100 Continue: finguard answers `Expect: 100-continue`
        // itself and does not pass the field on, so a backend's own 100
        // (sent unasked, as some do before reading a body) would be a
        // second one to a client that already had finguard's.
        if status != 100 && !(view.http10 || view.downgrade_1_0 || view.force_response_1_0) {
            status_line(out, "HTTP/1.1", status, resp.reason);
            copy_headers(out, resp.headers, &named, Fields::Interim);
            out.extend_from_slice(b"\r\n");
        }
        return Ok(Parsed::Interim(len));
    }
    if status == 101 {
        if !view.upgrade_requested {
            return Err(BadResponse("switched protocols without being asked"));
        }
        status_line(out, "HTTP/1.1", status, resp.reason);
        copy_headers(out, resp.headers, &named, Fields::Interim);
        out.extend_from_slice(b"Connection: upgrade\r\n");
        if let Some(u) = upgrade {
            put(out, b"Upgrade", u);
        }
        out.extend_from_slice(b"\r\n");
        return Ok(Parsed::Switch(len));
    }
    let (backend_body, client_body, v10) = bodies(view, status, te, length)?;
    let mut reuse = reuse;
    reuse.close |= backend_body == BodyMode::Close;
    let keepalive = view.keepalive && !matches!(client_body, ClientBody::ChunkedDecode | ClientBody::Close);
    status_line(out, if v10 { "HTTP/1.0" } else { "HTTP/1.1" }, status, resp.reason);
    let fields = match (status, client_body) {
        (204, _) => Fields::Interim,
        (_, ClientBody::ChunkedPass) => Fields::Chunked,
        _ => Fields::Final,
    };
    copy_headers(out, resp.headers, &named, fields);
    if client_body == ClientBody::ChunkedPass {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    connection_headers(out, view, keepalive, v10);
    Ok(Parsed::Final(Shaped {
        len,
        status,
        backend_body,
        client_body,
        keepalive,
        reuse,
        unbuffered,
    }))
}

/// How the backend frames the body, how the client is sent it, and whether
/// the client gets an HTTP/1.0 response.
fn bodies(
    view: &ClientView,
    status: u16,
    te: Option<&[u8]>,
    length: Option<u64>,
) -> Result<(BodyMode, ClientBody, bool), BadResponse> {
    let bodyless = view.head_request || status == 204 || status == 304 || status < 200;
    let backend_body = body_mode(te, length, bodyless)?;
    let has_length = matches!(backend_body, BodyMode::Empty | BodyMode::Length(_));
    let v10 = view.force_response_1_0 || (view.downgrade_1_0 && !has_length);
    let client_body = match backend_body {
        BodyMode::Empty => ClientBody::Empty,
        BodyMode::Length(n) => ClientBody::Length(n),
        BodyMode::Chunked if !view.http10 && !v10 => ClientBody::ChunkedPass,
        BodyMode::Chunked => ClientBody::ChunkedDecode,
        BodyMode::Close => ClientBody::Close,
    };
    Ok((backend_body, client_body, v10))
}

/// The one connection decision, as the client is told it; then the head's end.
fn connection_headers(out: &mut Vec<u8>, view: &ClientView, keepalive: bool, v10: bool) {
    if keepalive {
        if view.http10 || v10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"Keep-Alive: timeout=");
        push_num(out, view.keepalive_timeout_secs.max(1));
        out.extend_from_slice(b", max=");
        push_num(out, u64::from(view.remaining));
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// httparse over `buf`: the head's length, `None` while it is incomplete.
fn parse_head<'h, 'b>(resp: &mut httparse::Response<'h, 'b>, buf: &'b [u8]) -> Result<Option<usize>, BadResponse> {
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => Err(BadResponse("head too large")),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(BadResponse("too many headers")),
        Err(_) => Err(BadResponse("malformed head")),
    }
}

/// The status code: three digits, 100 or more (RFC 9110 §15). A status
/// such as `099` cannot be relayed as it came, and the body it frames
/// cannot be told from the next response.
fn status(resp: &httparse::Response<'_, '_>) -> Result<u16, BadResponse> {
    match resp.code {
        Some(c) if c >= 100 => Ok(c),
        _ => Err(BadResponse("status code below 100")),
    }
}

/// A final (not 1xx) response head is complete in `resp`, or `resp` cannot
/// be one: what stops an upload to hear the backend's early answer.
pub fn final_head_ready(resp: &[u8]) -> bool {
    let mut off = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&resp[off..]) {
            Ok(httparse::Status::Complete(n)) => match r.code {
                Some(c) if (100..200).contains(&c) && c != 101 => off += n,
                _ => return true,
            },
            Ok(httparse::Status::Partial) => return false,
            Err(_) => return true,
        }
    }
}

/// What a response's headers say about framing and reuse.
struct Scan<'a> {
    length: Option<u64>,
    te: Option<&'a [u8]>,
    reuse: ReuseHint,
    /// Header names listed in `Connection` (hop by hop, not relayed).
    named: Vec<&'a [u8]>,
    upgrade: Option<&'a [u8]>,
    unbuffered: bool,
}

fn scan<'a>(headers: &[httparse::Header<'a>], backend10: bool) -> Result<Scan<'a>, BadResponse> {
    let mut s = Scan {
        length: None,
        te: None,
        reuse: ReuseHint::default(),
        named: Vec::new(),
        upgrade: None,
        unbuffered: false,
    };
    let mut backend_keepalive = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = super::head::parse_content_length(h.value).ok_or(BadResponse("invalid Content-Length"))?;
            if s.length.is_some_and(|l| l != v) {
                return Err(BadResponse("conflicting Content-Length headers"));
            }
            s.length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if s.te.is_some() {
                return Err(BadResponse("repeated Transfer-Encoding"));
            }
            s.te = Some(h.value.trim_ascii());
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if t.eq_ignore_ascii_case(b"close") {
                    s.reuse.close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    backend_keepalive = true;
                } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"upgrade") {
                    s.named.push(t);
                }
            }
        } else if name.eq_ignore_ascii_case(b"keep-alive") {
            s.reuse.read_keep_alive(h.value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            s.upgrade = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"x-accel-buffering") {
            s.unbuffered = h.value.trim_ascii().eq_ignore_ascii_case(b"no");
        }
    }
    // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has
    // faulty framing; the connection closes after it.
    if backend10 && (!backend_keepalive || s.te.is_some()) {
        s.reuse.close = true;
    }
    Ok(s)
}

/// How the backend frames the body (RFC 9112 §6.3).
fn body_mode(te: Option<&[u8]>, length: Option<u64>, bodyless: bool) -> Result<BodyMode, BadResponse> {
    Ok(match (te, length) {
        (Some(_), Some(_)) => return Err(BadResponse("both Content-Length and Transfer-Encoding")),
        _ if bodyless => BodyMode::Empty,
        (Some(t), None) if t.eq_ignore_ascii_case(b"chunked") => BodyMode::Chunked,
        // Any other coding (`gzip`, `gzip, chunked`) finguard would have to
        // decode before relaying without it: refused, as HAProxy does.
        (Some(_), None) => return Err(BadResponse("unsupported Transfer-Encoding")),
        (None, Some(n)) => BodyMode::Length(n),
        (None, None) => BodyMode::Close,
    })
}

/// A final response head for an HTTP/2 client: the status, the headers an
/// HTTP/2 response may carry, and how the backend frames the body.
#[derive(Debug)]
pub struct Head2 {
    /// Length of the backend's head in its buffer.
    pub len: usize,
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: BodyMode,
    pub reuse: ReuseHint,
    /// `X-Accel-Buffering: no`.
    pub unbuffered: bool,
}

#[derive(Debug)]
pub enum Parsed2 {
    Partial,
    /// A 1xx of this length, skipped (HTTP/2 clients get the final one only).
    Interim(usize),
    Final(Head2),
}

/// Parses the response head at the start of `buf` for an HTTP/2 client:
/// framing judged as for HTTP/1 clients, hop-by-hop headers left out.
pub fn parse_h2(buf: &[u8], head_request: bool) -> Result<Parsed2, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(len) = parse_head(&mut resp, buf)? else {
        return Ok(Parsed2::Partial);
    };
    let status = status(&resp)?;
    let sc = scan(resp.headers, resp.version == Some(0))?;
    if status == 101 {
        return Err(BadResponse("switched protocols without being asked"));
    }
    if (100..200).contains(&status) {
        return Ok(Parsed2::Interim(len));
    }
    let bodyless = head_request || status == 204 || status == 304;
    let body = body_mode(sc.te, sc.length, bodyless)?;
    let mut reuse = sc.reuse;
    reuse.close |= body == BodyMode::Close;
    let mut out = http::HeaderMap::with_capacity(resp.headers.len());
    let mut length_seen = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if is_framing(name) && (status == 204 || std::mem::replace(&mut length_seen, true)) {
            continue; // a repeated equal length goes out once; a 204 has none
        }
        let trailer = body == BodyMode::Chunked && name.eq_ignore_ascii_case(b"trailer");
        if (hop_by_hop(name) && !trailer) || sc.named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            continue; // not expressible in HTTP/2 (an obsolete line fold, say)
        };
        out.append(n, v);
    }
    Ok(Parsed2::Final(Head2 {
        len,
        status,
        headers: out,
        body,
        reuse,
        unbuffered: sc.unbuffered,
    }))
}

fn status_line(out: &mut Vec<u8>, version: &str, status: u16, reason: Option<&str>) {
    out.extend_from_slice(version.as_bytes());
    out.push(b' ');
    push_num(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n`, without the formatting machinery (this runs for
/// every response).
pub fn push_num(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Byte by byte: a call to `memmove` for a few digits cost more than
    // the digits (0.8% of the CPU under 1,000 keep-alive connections).
    out.reserve(digits.len() - i);
    for &d in &digits[i..] {
        out.push(d);
    }
}

/// Which fields a relayed head may carry besides the end-to-end ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fields {
    /// A 1xx, 101 or 204: no `Content-Length` (RFC 9110 §8.6).
    Interim,
    /// A final head with its length, if the backend sent one.
    Final,
    /// A chunked body passed on: its `Trailer` field too.
    Chunked,
}

fn copy_headers(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], named: &[&[u8]], copy: Fields) {
    let keep_trailer = copy == Fields::Chunked;
    let mut length_seen = false;
    for h in headers {
        let name = h.name.as_bytes();
        if is_framing(name) {
            if copy == Fields::Interim {
                continue;
            }
            // Repeated equal lengths (unequal ones were refused) go out as
            // one: some clients refuse a repeated Content-Length.
            if std::mem::replace(&mut length_seen, true) {
                continue;
            }
        }
        if hop_by_hop(name) && !(keep_trailer && name.eq_ignore_ascii_case(b"trailer")) {
            continue;
        }
        if named.iter().any(|n| n.eq_ignore_ascii_case(name)) && !is_framing(name) {
            continue;
        }
        put(out, name, h.value);
    }
}

fn is_framing(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ClientView {
        ClientView {
            http10: false,
            force_response_1_0: false,
            downgrade_1_0: false,
            keepalive: true,
            head_request: false,
            upgrade_requested: false,
            keepalive_timeout_secs: 5,
            remaining: 9,
        }
    }

    fn shape(raw: &str, v: ClientView) -> (Result<Parsed, BadResponse>, String) {
        let mut out = Vec::new();
        let r = parse(raw.as_bytes(), &v, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn length_and_chunked_together_is_a_bad_response() {
        let (r, _) = shape(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            view(),
        );
        assert!(matches!(r, Err(BadResponse(_))));
    }

    #[test]
    fn an_http10_keepalive_client_gets_one_connection_decision() {
        let v = ClientView {
            http10: true,
            keepalive: false,
            ..view()
        };
        let (r, out) = shape(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
            v,
        );
        assert!(matches!(r, Ok(Parsed::Final(Shaped { keepalive: false, .. }))));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n");
        let v = ClientView { http10: true, ..view() };
        let (_, out) = shape("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", v);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5, max=9\r\n\r\n"
        );
    }

    #[test]
    fn chunked_is_decoded_for_http10_and_passed_to_http11() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n";
        let (r, out) = shape(raw, view());
        let Ok(Parsed::Final(s)) = r else { panic!() };
        assert_eq!(s.client_body, ClientBody::ChunkedPass);
        assert!(
            out.contains("Trailer: X-Sum\r\nTransfer-Encoding: chunked\r\n"),
            "{out}"
        );
        let (r, out) = shape(raw, ClientView { http10: true, ..view() });
        let Ok(Parsed::Final(s)) = r else { panic!() };
        assert_eq!(s.client_body, ClientBody::ChunkedDecode);
        assert!(!s.keepalive && out.ends_with("Connection: close\r\n\r\n"), "{out}");
        assert!(!out.contains("Trailer"));
    }

    #[test]
    fn bodyless_responses_and_reuse_hints() {
        let (r, _) = shape(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nKeep-Alive: timeout=3, max=7\r\n\r\n",
            view(),
        );
        let Ok(Parsed::Final(s)) = r else { panic!() };
        assert_eq!(s.backend_body, BodyMode::Empty);
        assert_eq!(s.reuse.max, Some(7));
        let (r, _) = shape("HTTP/1.0 200 OK\r\n\r\nbody", view());
        let Ok(Parsed::Final(s)) = r else { panic!() };
        assert_eq!(s.backend_body, BodyMode::Close);
        assert!(s.reuse.close && !s.keepalive);
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0u64, 7, 10, 404, 65535, u64::MAX] {
            let mut out = Vec::new();
            push_num(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn what_the_client_may_not_be_sent_is_refused_or_rewritten() {
        // A status below 100, an undecoded coding: 502.
        for bad in [
            "HTTP/1.1 099 X\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        ] {
            assert!(matches!(shape(bad, view()).0, Err(BadResponse(_))), "{bad}");
        }
        // A repeated equal length goes out once.
        let (r, out) = shape(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            view(),
        );
        assert!(matches!(r, Ok(Parsed::Final(_))));
        assert_eq!(out.matches("Content-Length").count(), 1, "{out}");
        // An interim response loses its hop-by-hop fields and its bare LFs.
        let (r, out) = shape(
            "HTTP/1.1 103 Early Hints\nLink: </a.css>\nConnection: x-hop\nX-Hop: 1\nKeep-Alive: timeout=5\nUpgrade: h2c\n\n",
            view(),
        );
        assert!(matches!(r, Ok(Parsed::Interim(_))));
        assert_eq!(out, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n");
        // A backend's 100 Continue is skipped: finguard answered the
        // expectation itself.
        let (r, out) = shape("HTTP/1.1 100 Continue\r\n\r\n", view());
        assert!(matches!(r, Ok(Parsed::Interim(_))));
        assert_eq!(out, "");
        // HTTP/1.0 with chunked framing: the connection is not reused.
        let (r, _) = shape(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
            view(),
        );
        let Ok(Parsed::Final(s)) = r else { panic!() };
        assert!(s.reuse.close);
    }

    #[test]
    fn an_unrequested_101_is_refused() {
        let (r, _) = shape("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", view());
        assert!(matches!(r, Err(BadResponse(_))));
    }
}
