//! The request head a backend receives, written from the client's parsed
//! head ([`Head`]) in one pass, changing only what must change:
//!
//! - the target in origin-form, and one `Host`: the absolute-form target's
//!   authority, else the client's `Host`, else the backend's address (the
//!   host routing used is the host the backend sees);
//! - hop-by-hop headers dropped: the fixed set and whatever `Connection`
//!   names, except `Host`, `Content-Length` and `Transfer-Encoding`, whose
//!   meaning was already acted on (RFC 9110 §7.6.1 lets a proxy ignore them);
//! - the body's framing written by finguard (`Content-Length` or chunked);
//! - `X-Forwarded-*` or RFC 7239 `Forwarded`, per backend;
//! - `Expect` dropped: finguard answers `100-continue` itself.

use super::put;
use crate::config::Forwarded;
use crate::http1::framing::Framing;
use crate::http1::head::{Head, Reject, Span};
use std::borrow::Cow;
use std::io::Write;
use std::net::SocketAddr;

/// What the forwarded head depends on besides the client's head.
pub struct ForwardCtx<'a> {
    pub peer: SocketAddr,
    pub scheme: &'static str,
    pub forwarded: Forwarded,
    /// Used as `Host` when the client sent none (HTTP/1.0).
    pub default_host: &'a str,
    /// Keep `Connection: upgrade` + `Upgrade` (a WebSocket handshake).
    pub upgrade: bool,
}

/// The target and host of a request, as finguard routes it.
pub struct Target<'a> {
    /// Origin-form: `/path?query` (or `*`), normalised ([`normalize`]).
    pub path: Cow<'a, [u8]>,
    pub host: Option<&'a [u8]>,
}

/// Splits an absolute-form target (`http://host/path`); origin-form and `*`
/// pass with the `Host` header as the host. The path is normalised
/// ([`normalize`]): what is routed is what the backend is sent.
pub fn target<'a>(head_bytes: &'a [u8], head: &Head) -> Result<Target<'a>, Reject> {
    let t = head.target.get(head_bytes);
    let host_header = head.host.map(|s| s.get(head_bytes));
    let rest = strip_prefix_ci(t, b"http://").or_else(|| strip_prefix_ci(t, b"https://"));
    let Some(rest) = rest else {
        return Ok(Target {
            path: normalize(t)?,
            host: host_header,
        });
    };
    let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    let authority = &rest[..end];
    // userinfo is not forwarded
    let authority = authority
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(authority, |i| &authority[i + 1..]);
    if !crate::http1::head::valid_host(authority) {
        return Err(Reject::Bad("invalid authority in the request target"));
    }
    let path = match &rest[end..] {
        [] => Cow::Borrowed(&b"/"[..]),
        // `http://a?x=1`: the path is empty, the query is not (RFC 9112 §3.2.1).
        p @ [b'?', ..] => Cow::Owned([&b"/"[..], p].concat()),
        p => normalize(p)?,
    };
    Ok(Target {
        path,
        host: Some(authority).filter(|a| !a.is_empty()).or(host_header),
    })
}

/// Normalises the path of an origin-form target as Apache resolves it
/// (`ap_normalize_path` with its defaults), so that a route's prefix is
/// matched against what the backend will serve and cannot be stepped
/// around: percent-encoded unreserved characters are decoded (RFC 3986
/// §6.2.2.2: `/%61dmin` is `/admin`), runs of `/` are merged (Apache's
/// `MergeSlashes On`: `//admin` is `/admin`), and dot segments are removed
/// (RFC 3986 §5.2.4: `/api/%2e%2e/admin` is `/admin`). A path that climbs
/// above the root is refused. The query and every other byte (an encoded
/// `/` or reserved character among them) are left as they came; a target
/// that needs nothing done is not copied.
pub fn normalize(target: &[u8]) -> Result<Cow<'_, [u8]>, Reject> {
    let end = target.iter().position(|&b| b == b'?').unwrap_or(target.len());
    let (path, query) = target.split_at(end);
    let suspicious = path.windows(2).any(|w| w == b"/." || w == b"//") || path.contains(&b'%');
    if !path.starts_with(b"/") || !suspicious {
        return Ok(Cow::Borrowed(target));
    }
    let path = decode_unreserved(path)?;
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for seg in path[1..].split(|&b| b == b'/') {
        match seg {
            b"" | b"." => trailing = true,
            b".." => {
                if kept.pop().is_none() {
                    return Err(Reject::Bad("request path climbs above the root"));
                }
                trailing = true;
            }
            _ => {
                kept.push(seg);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(target.len());
    for seg in &kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing || kept.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(query);
    Ok(Cow::Owned(out))
}

/// `%XX` decoded where it stands for an unreserved character (ALPHA,
/// DIGIT, `-._~`); any other escape is kept as it came. A `%` without two
/// hex digits is refused, as Apache and nginx refuse it: decoded once,
/// `%%32%65` became `%2e`, a dot to the backend that the route never saw.
fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, Reject> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let decoded = match path.get(i..i + 3) {
            _ if path[i] != b'%' => None,
            Some([_, h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        if path[i] == b'%' && decoded.is_none() {
            return Err(Reject::Bad("malformed percent-encoding in the request path"));
        }
        match decoded {
            Some(b) if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(path[i]);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &s[prefix.len()..])
}

/// Headers never forwarded as they came: hop-by-hop, or rewritten here.
fn dropped(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 10] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"content-length",
        b"upgrade",
        b"host",
        b"expect",
        b"trailer",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Tokens of `Connection` that name headers to drop. Framing and routing
/// headers are never dropped for being named.
fn named_by_connection<'a>(head_bytes: &'a [u8], head: &Head) -> Vec<&'a [u8]> {
    let mut names = Vec::new();
    for h in &head.headers {
        if !h.name.get(head_bytes).eq_ignore_ascii_case(b"connection") {
            continue;
        }
        for t in h.value.get(head_bytes).split(|&b| b == b',') {
            let t = t.trim_ascii();
            let keep = [
                &b"close"[..],
                b"keep-alive",
                b"upgrade",
                b"host",
                b"content-length",
                b"transfer-encoding",
            ]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(t));
            if !t.is_empty() && !keep {
                names.push(t);
            }
        }
    }
    names
}

/// Writes the backend's request head into `out`.
/// `t` is the request's [`target`], as it was routed.
pub fn write_head(out: &mut Vec<u8>, head_bytes: &[u8], head: &Head, t: &Target<'_>, cx: &ForwardCtx<'_>) {
    out.extend_from_slice(head.method.get(head_bytes));
    out.push(b' ');
    out.extend_from_slice(&t.path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(t.host.unwrap_or(cx.default_host.as_bytes()));
    out.extend_from_slice(b"\r\n");
    let prior = copy_headers(out, head_bytes, head, cx);
    match head.framing {
        Framing::Chunked(_) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Length(0) if !head.has_length => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            super::response::push_num(out, n);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(u) = prior.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        put(out, b"Upgrade", u.get(head_bytes));
    }
    write_forwarded(out, head_bytes, &prior, t, cx);
    out.extend_from_slice(b"\r\n");
}

/// What the client's headers held that finguard rewrites rather than copies.
#[derive(Default)]
struct Prior {
    /// `X-Forwarded-For` values, in order.
    xff: Vec<Span>,
    /// `Forwarded` values, in order.
    fwd: Vec<Span>,
    /// The `Upgrade` value, when the request is an upgrade.
    upgrade: Option<Span>,
}

/// Copies the end-to-end headers; keeps aside what is rewritten.
fn copy_headers(out: &mut Vec<u8>, head_bytes: &[u8], head: &Head, cx: &ForwardCtx<'_>) -> Prior {
    let named = if head.conn_names_headers {
        named_by_connection(head_bytes, head)
    } else {
        Vec::new()
    };
    let mut prior = Prior::default();
    let chunked = matches!(head.framing, Framing::Chunked(_));
    for h in &head.headers {
        let name = h.name.get(head_bytes);
        if dropped(name) {
            if cx.upgrade && name.eq_ignore_ascii_case(b"upgrade") {
                prior.upgrade = Some(h.value);
            } else if chunked && name.eq_ignore_ascii_case(b"trailer") {
                // The trailers travel with the chunked body: announce them.
                put(out, name, h.value.get(head_bytes));
            }
            continue;
        }
        if named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        match cx.forwarded {
            Forwarded::XForwarded if name.eq_ignore_ascii_case(b"x-forwarded-for") => {
                prior.xff.push(h.value);
                continue;
            }
            Forwarded::XForwarded
                if name.eq_ignore_ascii_case(b"x-forwarded-proto")
                    || name.eq_ignore_ascii_case(b"x-forwarded-host") =>
            {
                continue; // replaced by finguard's own
            }
            Forwarded::Forwarded if name.eq_ignore_ascii_case(b"forwarded") => {
                prior.fwd.push(h.value);
                continue;
            }
            _ => {}
        }
        put(out, name, h.value.get(head_bytes));
    }
    prior
}

/// `X-Forwarded-*` or RFC 7239 `Forwarded`, the client's values first.
fn write_forwarded(out: &mut Vec<u8>, head_bytes: &[u8], prior: &Prior, t: &Target<'_>, cx: &ForwardCtx<'_>) {
    let ip = cx.peer.ip();
    match cx.forwarded {
        Forwarded::Off => {}
        Forwarded::XForwarded => {
            out.extend_from_slice(b"X-Forwarded-For: ");
            for v in &prior.xff {
                out.extend_from_slice(v.get(head_bytes));
                out.extend_from_slice(b", ");
            }
            push_ip(out, ip);
            out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
            out.extend_from_slice(cx.scheme.as_bytes());
            out.extend_from_slice(b"\r\n");
            if let Some(h) = t.host {
                put(out, b"X-Forwarded-Host", h);
            }
        }
        Forwarded::Forwarded => {
            out.extend_from_slice(b"Forwarded: ");
            for v in &prior.fwd {
                out.extend_from_slice(v.get(head_bytes));
                out.extend_from_slice(b", ");
            }
            if ip.is_ipv6() {
                let _ = write!(out, "for=\"[{ip}]\";proto={}", cx.scheme);
            } else {
                out.extend_from_slice(b"for=");
                push_ip(out, ip);
                out.extend_from_slice(b";proto=");
                out.extend_from_slice(cx.scheme.as_bytes());
            }
            // RFC 7239 §4: a host that is not plainly a host name, address
            // and port is left out, so no client can forge another element.
            if let Some(h) = t.host.filter(|h| is_plain_host(h)) {
                out.extend_from_slice(b";host=\"");
                out.extend_from_slice(h);
                out.push(b'"');
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// An address as `Display` writes it; IPv4 without the formatter (on
/// every request, `write!` was 0.5% of the CPU).
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                crate::http1::response::push_num(out, u64::from(octet));
            }
        }
        std::net::IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// Letters, digits, `.-_:` and brackets: a reg-name, IPv4 or `[IPv6]`, with a port.
fn is_plain_host(h: &[u8]) -> bool {
    !h.is_empty()
        && h.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::head;

    #[test]
    fn an_address_is_written_as_display_writes_it() {
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: std::net::IpAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().into_bytes());
        }
    }

    fn forward(raw: &str, forwarded: Forwarded) -> String {
        let b = raw.as_bytes();
        let len = head::find_end(b).unwrap().unwrap();
        let h = head::parse(b, len, 1 << 20, false, false).unwrap();
        let mut out = Vec::new();
        let cx = ForwardCtx {
            peer: "10.1.2.3:5555".parse().unwrap(),
            scheme: "http",
            forwarded,
            default_host: "backend:80",
            upgrade: h.upgrade,
        };
        write_head(&mut out, b, &h, &target(b, &h).unwrap(), &cx);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn connection_cannot_remove_host_or_framing() {
        let out = forward(
            "POST /a HTTP/1.1\r\nHost: public.example\r\nConnection: host, content-length, x-secret\r\nX-Secret: 1\r\nContent-Length: 3\r\n\r\n",
            Forwarded::Off,
        );
        assert_eq!(
            out,
            "POST /a HTTP/1.1\r\nHost: public.example\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn an_absolute_target_becomes_origin_form_with_its_host() {
        let out = forward(
            "GET http://secret.internal/admin?x=1 HTTP/1.1\r\nHost: public.example\r\n\r\n",
            Forwarded::Off,
        );
        assert_eq!(out, "GET /admin?x=1 HTTP/1.1\r\nHost: secret.internal\r\n\r\n");
    }

    #[test]
    fn forwarded_never_carries_a_forged_element() {
        // A Host that would forge an element is no host: the head is refused
        // before anything is written (it was written without `host=` before
        // Host values were checked).
        let raw = b"GET / HTTP/1.1\r\nHost: a\", for=6.6.6.6;x=\"\r\n\r\n";
        let len = head::find_end(raw).unwrap().unwrap();
        assert!(head::parse(raw, len, 1 << 20, false, false).is_err());
        // The writer's own guard, for a host that reached it anyway.
        assert!(!is_plain_host(b"a\", for=6.6.6.6;x=\""));
        let out = forward("GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", Forwarded::Forwarded);
        assert!(
            out.contains("Forwarded: for=10.1.2.3;proto=http;host=\"a.example:8080\"\r\n"),
            "{out}"
        );
    }

    #[test]
    fn x_forwarded_appends_to_the_chain_and_replaces_the_rest() {
        let out = forward(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\nTE: trailers\r\nExpect: 100-continue\r\n\r\n",
            Forwarded::XForwarded,
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1, 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n"
        );
    }

    #[test]
    fn dot_segments_are_removed_and_may_not_climb_above_the_root() {
        let cases = [
            ("/api/../admin/secret.txt", Some("/admin/secret.txt")),
            ("/api/%2e%2e/admin/secret.txt", Some("/admin/secret.txt")),
            ("/api/.%2E/admin/secret.txt", Some("/admin/secret.txt")),
            ("/a/./b/.?x=/../", Some("/a/b/?x=/../")),
            ("/a/b/..", Some("/a/")),
            ("/a//../b", Some("/b")),
            ("//admin/x", Some("/admin/x")),
            ("/%61dmin/%7Eu%2Fv%20w", Some("/admin/~u%2Fv%20w")),
            ("/a/%2E%2e/%2e/b//", Some("/b/")),
            ("/%zz/%4", None),
            ("/a/%%32%65%%32%65/b", None),
            ("/a/%25%32%65/b", Some("/a/%252e/b")),
            ("/a/...", Some("/a/...")),
            ("/a/.hidden/..x", Some("/a/.hidden/..x")),
            ("/plain/path?q", Some("/plain/path?q")),
            ("*", Some("*")),
            ("/..", None),
            ("/a/../../etc/passwd", None),
            ("/%2e%2e/x", None),
        ];
        for (raw, want) in cases {
            let got = normalize(raw.as_bytes())
                .ok()
                .map(|p| String::from_utf8(p.into_owned()).unwrap());
            assert_eq!(got.as_deref(), want, "{raw}");
        }
    }

    #[test]
    fn an_absolute_target_with_an_empty_path_gets_the_root() {
        let out = forward("GET http://a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", Forwarded::Off);
        assert_eq!(out, "GET /?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        let out = forward("GET http://a HTTP/1.1\r\nHost: a\r\n\r\n", Forwarded::Off);
        assert_eq!(out, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn http10_without_host_gets_the_backend_address() {
        let out = forward("GET / HTTP/1.0\r\n\r\n", Forwarded::Off);
        assert_eq!(out, "GET / HTTP/1.1\r\nHost: backend:80\r\n\r\n");
    }
}
