//! The request head: parsed once, judged, and kept as a compact view.
//!
//! finguard reads each request head itself so that it can answer 408/431/400
//! with its own bytes and then close the way the policy says, and so that
//! ambiguous framing (the stuff of request smuggling) never reaches the
//! backend. The parse yields a [`Head`]: the verdict plus byte ranges of the
//! method, target and every header line, from which `http1::forward`
//! writes the backend's request head without parsing again.
//!
//! This module is pure: bytes in, verdict out.

use super::framing::{BodyFault, Framing};

/// More headers than this is a 431 (hyper's own limit is 100).
pub const MAX_HEADERS: usize = 100;

/// A range of the head's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn of(base: &[u8], part: &[u8]) -> Span {
        // Both are slices of `base`: the offset is plain address arithmetic.
        let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    pub fn get(self, head: &[u8]) -> &[u8] {
        head.get(self.start as usize..self.end as usize).unwrap_or_default()
    }
}

/// One header line: name and (untrimmed of nothing: httparse trims) value.
#[derive(Debug, Clone, Copy)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

/// What finguard needs to know about a request before forwarding it.
#[derive(Debug)]
pub struct Head {
    pub method: Span,
    pub target: Span,
    /// Every header line, in order.
    pub headers: Vec<HeaderSpan>,
    /// The `Host` header's value, if sent.
    pub host: Option<Span>,
    /// A `Content-Length` header was sent (even `0`).
    pub has_length: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
    /// `Connection` names headers other than close/keep-alive/upgrade: those
    /// are hop-by-hop too and must be dropped when forwarding.
    pub conn_names_headers: bool,
    /// Length of the head, final CRLF CRLF included.
    pub len: usize,
    pub framing: Framing,
    pub http10: bool,
    /// `Connection: close` was sent.
    pub wants_close: bool,
    /// `Connection: keep-alive` was sent (matters for HTTP/1.0).
    pub wants_keepalive: bool,
    /// GET, HEAD, OPTIONS, PUT, DELETE, TRACE: safe to send twice.
    pub idempotent: bool,
    /// Only filled in when asked for (the first request, or an access log).
    pub user_agent: Option<String>,
    /// Only filled in when asked for (an access log).
    pub referer: Option<String>,
    /// Length of the request line, without its CRLF.
    pub line_end: usize,
    /// `Connection: upgrade` with an `Upgrade` header (WebSocket).
    pub upgrade: bool,
}

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400, with a short reason for the log.
    Bad(&'static str),
    /// 431: head or header count over the limit.
    HeadTooLarge,
    /// 414: the request line alone is over the head limit (RFC 9112 §3).
    UriTooLong,
    /// 413: the announced body is over the limit.
    BodyTooLarge,
    /// 417: an `Expect` other than `100-continue`.
    Expectation,
    /// 501: `CONNECT`. finguard is not a forward proxy; a tunnel to a
    /// host the client names must never reach the backend, nor a backend
    /// connection that became one be pooled.
    Connect,
}

/// Finds the end of the head in `buf`. `Ok(None)`: not complete yet.
/// A line ending in a bare LF is refused: RFC 9112 allows it, but front ends
/// and origins that disagree about it are how requests get smuggled.
pub fn find_end(buf: &[u8]) -> Result<Option<usize>, Reject> {
    let mut line_start = 0;
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        if nl == 0 || buf[nl - 1] != b'\r' {
            return Err(Reject::Bad("bare LF in request head"));
        }
        if nl == line_start + 1 {
            return Ok(Some(nl + 1));
        }
        line_start = nl + 1;
        i = nl + 1;
    }
    Ok(None)
}

/// Which limit a head over `max` bytes broke: the request line alone (414,
/// RFC 9112 §3) or the head as a whole (431).
pub fn too_large(buf: &[u8], max: usize) -> Reject {
    let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line > max {
        Reject::UriTooLong
    } else {
        Reject::HeadTooLarge
    }
}

/// Number of empty lines (CRLF) before the request line: RFC 9112 §2.2 says to
/// ignore at least one; they are dropped before the head is parsed.
pub fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut n = 0;
    while buf.len() >= n + 2 && &buf[n..n + 2] == b"\r\n" {
        n += 2;
    }
    n
}

/// Parses and judges a complete head (`buf[..len]`, from `find_end`).
pub fn parse(buf: &[u8], len: usize, max_body: u64, want_ua: bool, want_referer: bool) -> Result<Head, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..len]) {
        Ok(httparse::Status::Complete(n)) if n == len => {}
        Ok(_) => return Err(Reject::Bad("malformed request head")),
        Err(e) => return Err(refusal(e)),
    }
    let http10 = req.version == Some(0);
    let method = req.method.unwrap_or("");
    if method == "CONNECT" {
        return Err(Reject::Connect);
    }
    let target = req.path.unwrap_or("");
    // A fragment is never sent (RFC 9112 §3.2). Apache answers 400, nginx
    // cuts the path at `#`: normalised whole, `/web/x#/../../admin/x` would
    // be routed as `/admin/x`, a path neither of them reads there.
    if target.contains('#') {
        return Err(Reject::Bad("fragment in the request target"));
    }
    // The asterisk form is for OPTIONS only (RFC 9112 §3.2.4), as Apache and
    // nginx hold it.
    if target == "*" && method != "OPTIONS" {
        return Err(Reject::Bad("asterisk-form target on a method other than OPTIONS"));
    }
    let base = &buf[..len];
    let mut seen = Seen {
        http10,
        want_ua,
        want_referer,
        ..Seen::default()
    };
    let mut spans = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        spans.push(HeaderSpan {
            name: Span::of(base, h.name.as_bytes()),
            value: Span::of(base, h.value),
        });
        seen.header(base, h.name, h.value)?;
    }
    let framing = seen.framing(max_body)?;
    Ok(Head {
        method: Span::of(base, method.as_bytes()),
        target: Span::of(base, target.as_bytes()),
        headers: spans,
        host: seen.host,
        expect_continue: seen.expect_continue,
        conn_names_headers: seen.conn_names_headers,
        has_length: seen.content_length.is_some(),
        len,
        framing,
        http10,
        wants_close: seen.wants_close,
        wants_keepalive: seen.wants_keepalive,
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"),
        user_agent: seen.user_agent,
        referer: seen.referer,
        line_end: buf.iter().position(|&b| b == b'\r').unwrap_or(0),
        upgrade: seen.conn_upgrade && seen.upgrade_header && !http10,
    })
}

impl Head {
    /// Holds a head read under looser limits (a connection's first, before
    /// its User-Agent rule was known) to the limits of its rule.
    pub fn hold_to(&mut self, head_bytes: &[u8], max_head: usize, max_body: u64) -> Result<(), Reject> {
        if self.len > max_head {
            return Err(too_large(head_bytes, max_head));
        }
        self.framing = match self.framing {
            Framing::Length(n) if n > max_body => return Err(Reject::BodyTooLarge),
            Framing::Length(n) => Framing::Length(n),
            Framing::Chunked(_) => Framing::chunked(max_body),
        };
        Ok(())
    }
}

/// httparse's error, as the answer a client gets.
fn refusal(e: httparse::Error) -> Reject {
    match e {
        httparse::Error::TooManyHeaders => Reject::HeadTooLarge,
        httparse::Error::Version => Reject::Bad("not an HTTP/1.x request"),
        httparse::Error::HeaderName | httparse::Error::HeaderValue => Reject::Bad("malformed header line"),
        _ => Reject::Bad("malformed request line"),
    }
}

/// What the header lines of one request said, gathered in one pass.
#[derive(Default)]
struct Seen {
    http10: bool,
    want_ua: bool,
    want_referer: bool,
    host: Option<Span>,
    hosts: u32,
    expect_continue: bool,
    conn_names_headers: bool,
    content_length: Option<u64>,
    chunked: bool,
    te_seen: bool,
    wants_close: bool,
    wants_keepalive: bool,
    conn_upgrade: bool,
    upgrade_header: bool,
    user_agent: Option<String>,
    referer: Option<String>,
}

impl Seen {
    /// One header line; a line that makes the request unacceptable refuses it.
    #[inline]
    fn header(&mut self, base: &[u8], name: &str, value: &[u8]) -> Result<(), Reject> {
        if name.eq_ignore_ascii_case("content-length") {
            let v = parse_content_length(value).ok_or(Reject::Bad("invalid Content-Length"))?;
            if self.content_length.is_some_and(|prev| prev != v) {
                return Err(Reject::Bad("conflicting Content-Length headers"));
            }
            self.content_length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if self.te_seen {
                return Err(Reject::Bad("repeated Transfer-Encoding"));
            }
            self.te_seen = true;
            if !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Reject::Bad("unsupported Transfer-Encoding"));
            }
            self.chunked = true;
        } else if name.eq_ignore_ascii_case("host") {
            self.hosts += 1;
            let host = value.trim_ascii();
            if !valid_host(host) {
                return Err(Reject::Bad("invalid Host"));
            }
            self.host = Some(Span::of(base, host));
        } else if name.eq_ignore_ascii_case("connection") {
            self.connection(value);
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                return Err(Reject::Expectation);
            }
            self.expect_continue = !self.http10;
        } else if name.eq_ignore_ascii_case("upgrade") {
            self.upgrade_header = true;
        } else if self.want_ua && name.eq_ignore_ascii_case("user-agent") {
            self.user_agent = Some(String::from_utf8_lossy(value).into_owned());
        } else if self.want_referer && name.eq_ignore_ascii_case("referer") {
            self.referer = Some(String::from_utf8_lossy(value).into_owned());
        }
        Ok(())
    }

    fn connection(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            let close = token.eq_ignore_ascii_case(b"close");
            let keepalive = token.eq_ignore_ascii_case(b"keep-alive");
            let upgrade = token.eq_ignore_ascii_case(b"upgrade");
            self.wants_close |= close;
            self.wants_keepalive |= keepalive;
            self.conn_upgrade |= upgrade;
            self.conn_names_headers |= !(close || keepalive || upgrade || token.is_empty());
        }
    }

    /// The body's framing, once every line was seen (RFC 9112 §6).
    fn framing(&self, max_body: u64) -> Result<Framing, Reject> {
        if self.te_seen && self.content_length.is_some() {
            return Err(Reject::Bad("both Content-Length and Transfer-Encoding"));
        }
        if self.te_seen && self.http10 {
            return Err(Reject::Bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if self.hosts > 1 || (self.hosts == 0 && !self.http10) {
            return Err(Reject::Bad("an HTTP/1.1 request needs exactly one Host header"));
        }
        Ok(match (self.chunked, self.content_length) {
            (true, _) => Framing::chunked(max_body),
            (false, Some(n)) if n > max_body => return Err(Reject::BodyTooLarge),
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::Length(0),
        })
    }
}

/// A `Host` value as RFC 9112 §3.2 and RFC 3986 §3.2.2 allow it: a
/// reg-name (unreserved, percent-encoded and sub-delimiter bytes) or an
/// `[IP-literal]`, then an optional `:port`. Empty is allowed (a target
/// without authority). `..` is refused as Apache refuses it: no host name
/// has an empty label, and a backend may take it for a path. `,` is
/// refused too: it is how two `Host` fields read when joined into one, and
/// no DNS name has it.
pub fn valid_host(v: &[u8]) -> bool {
    let (name, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &v[1..end];
                if literal.is_empty() || !literal.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                    return false;
                }
                (&[][..], &v[end + 1..])
            }
            None => return false,
        },
        _ => match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &[][..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let name_ok = name.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b';' | b'='
            )
    });
    port_ok && name_ok && !name.windows(2).any(|w| w == b"..")
}

/// Digits only (no sign, no list): `Content-Length: 5, 5` is refused too.
pub(crate) fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl From<BodyFault> for Reject {
    fn from(f: BodyFault) -> Self {
        match f {
            BodyFault::TooLarge => Reject::BodyTooLarge,
            _ => Reject::Bad("malformed body"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(raw: &str) -> Result<Head, Reject> {
        let b = raw.as_bytes();
        let len = find_end(b)?.ok_or(Reject::Bad("incomplete"))?;
        parse(b, len, 1000, true, true)
    }

    #[test]
    fn accepts_plain_requests() {
        let h = judge("GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x/1\r\n\r\n").unwrap();
        assert_eq!(h.user_agent.as_deref(), Some("x/1"));
        assert!(h.framing.is_done());
        let h = judge("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert!(!h.idempotent);
        assert!(matches!(h.framing, Framing::Length(5)));
        let h = judge("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(h.http10 && h.wants_keepalive);
    }

    #[test]
    fn refuses_the_corpus() {
        let cases = [
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                "CL+TE",
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                "two CL",
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", "CL list"),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "obs-fold"),
            ("GET / HTTP/1.1\nHost: a\n\n", "bare LF"),
            ("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", "bare LF inside"),
            ("HELLO\r\n\r\n", "not HTTP"),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", "HTTP/2 line"),
            ("GET / HTTP/1.1\r\n\r\n", "no host"),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "two hosts"),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "TE list",
            ),
            ("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "TE in 1.0"),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", "space before colon"),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "space in Host"),
            ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "slash in Host"),
            ("GET / HTTP/1.1\r\nHost: a\"<x>\r\n\r\n", "quote in Host"),
            ("GET / HTTP/1.1\r\nHost: ..\r\n\r\n", "dot-dot Host"),
            ("GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n", "tab in Host"),
            ("GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", "bad port"),
        ];
        for (raw, what) in cases {
            assert!(matches!(judge(raw), Err(Reject::Bad(_))), "{what} was accepted");
        }
        let big = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n";
        assert_eq!(judge(big).unwrap_err(), Reject::BodyTooLarge);
    }

    #[test]
    fn host_values() {
        for ok in [
            "a",
            "a.example:8080",
            "[::1]:80",
            "127.0.0.1",
            "",
            "xn--bcher-kva.example",
            "a_b",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["a b", "a/b", "a\"<x>", "..", "a\tb", "a..b", "[::1", "a:80:80", "a@b"] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn head_end_and_leading_lines() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\nrest"), Ok(Some(18)));
        assert_eq!(leading_empty_lines(b"\r\n\r\nGET"), 4);
    }
}
