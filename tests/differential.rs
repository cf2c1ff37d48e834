//! Differential test of request framing: for every client byte stream —
//! valid pipelined sequences, and the bad-input and smuggling corpora placed
//! before and after valid requests — the backend receives exactly the valid
//! requests that precede the first bad one, each with its body byte for byte
//! as the client framed it, and nothing else.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;
use support::*;

/// A request as the backend received it: (request line, raw body).
type Received = (String, Vec<u8>);

/// What each recording backend received, by its port.
static RECORDS: Mutex<Option<HashMap<u16, Vec<Received>>>> = Mutex::new(None);

fn record(port: u16, line: String, body: Vec<u8>) {
    let mut r = RECORDS.lock().unwrap();
    r.get_or_insert_with(HashMap::new)
        .entry(port)
        .or_default()
        .push((line, body));
}

fn records(port: u16) -> Vec<Received> {
    RECORDS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&port).cloned())
        .unwrap_or_default()
}

/// Fills `buf` from `s` until it holds `n` bytes.
fn need(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<()> {
    let mut b = [0u8; 16384];
    while buf.len() < n {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&b[..k]),
        }
    }
    Some(())
}

/// Reads a CRLF-ended line at `at`; returns the index after its CRLF.
fn line_end(s: &mut TcpStream, buf: &mut Vec<u8>, at: usize) -> Option<usize> {
    loop {
        if let Some(i) = find(&buf[at..], b"\r\n") {
            return Some(at + i + 2);
        }
        need(s, buf, buf.len() + 1)?;
    }
}

/// A strict backend written independently of finguard's parser: records
/// each request's line and the raw bytes of its body (chunked framing kept).
fn recording(mut s: TcpStream) {
    let port = s.local_addr().unwrap().port();
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_head(&mut s, &mut buf) else {
            return;
        };
        let lower = head.to_ascii_lowercase();
        let line = head.lines().next().unwrap_or_default().to_string();
        let mut body = Vec::new();
        if lower.contains("\r\ntransfer-encoding: chunked") {
            loop {
                let Some(end) = line_end(&mut s, &mut buf, 0) else {
                    return;
                };
                let size_line = String::from_utf8_lossy(&buf[..end - 2]).to_string();
                let Ok(size) = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16) else {
                    return;
                };
                body.extend(buf.drain(..end));
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let Some(end) = line_end(&mut s, &mut buf, 0) else {
                            return;
                        };
                        let done = end == 2;
                        body.extend(buf.drain(..end));
                        if done {
                            break;
                        }
                    }
                    break;
                }
                if need(&mut s, &mut buf, size + 2).is_none() {
                    return;
                }
                body.extend(buf.drain(..size + 2));
            }
        } else if let Some(cl) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            if need(&mut s, &mut buf, cl).is_none() {
                return;
            }
            body.extend(buf.drain(..cl));
        }
        record(port, line, body);
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
            return;
        }
    }
}

/// A request: its bytes, and (for a valid one) its request line and raw body.
struct Req {
    bytes: Vec<u8>,
    valid: Option<(&'static str, Vec<u8>)>,
}

fn valid(line: &'static str, headers: &str, body: &[u8]) -> Req {
    let mut bytes = format!("{line}\r\nHost: t\r\n{headers}\r\n").into_bytes();
    bytes.extend_from_slice(body);
    Req {
        bytes,
        valid: Some((line, body.to_vec())),
    }
}

fn bad(raw: &str) -> Req {
    Req {
        bytes: raw.as_bytes().to_vec(),
        valid: None,
    }
}

fn valid_set() -> Vec<Req> {
    vec![
        valid("GET /a HTTP/1.1", "", b""),
        valid("POST /b HTTP/1.1", "Content-Length: 5\r\n", b"hello"),
        valid(
            "POST /c HTTP/1.1",
            "Transfer-Encoding: chunked\r\n",
            b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: 1\r\n\r\n",
        ),
        valid("PUT /d HTTP/1.1", "Content-Length: 0\r\n", b""),
        valid("POST /e HTTP/1.1", "Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        valid(
            "GET /f HTTP/1.1",
            "Connection: keep-alive, x-drop\r\nX-Drop: 1\r\n",
            b"",
        ),
    ]
}

fn bad_corpus() -> Vec<Req> {
    [
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc",
        "GET /x HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n  b\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nb /smuggled\r\nhello world\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /x HTTP/1.1\nHost: t\n\n",
        "GET /x HTTP/1.1\r\nHost : t\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n",
        "GET /x HTTP/1.1\r\n\r\n",
        "HELLO\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: t\r\nX: a\0b\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: t\r\nExpect: something-else\r\n\r\n",
    ]
    .into_iter()
    .map(bad)
    .collect()
}

/// Sends `reqs` on one connection in writes of `split` bytes (0: one write),
/// reads until the connection ends, and checks what the backend recorded.
fn check(p: &Proxy, port: u16, reqs: &[&Req], split: usize, what: &str) {
    let before = records(port).len();
    let mut s = p.connect();
    let _ = s.set_nodelay(true);
    let stream: Vec<u8> = reqs.iter().flat_map(|r| r.bytes.clone()).collect();
    let pieces: Vec<&[u8]> = if split == 0 {
        vec![&stream[..]]
    } else {
        stream.chunks(split).collect()
    };
    for piece in pieces {
        if s.write_all(piece).is_err() {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = read_to_end_or_reset(&mut s, Duration::from_secs(10));
    let expected: Vec<(String, Vec<u8>)> = reqs
        .iter()
        .map_while(|r| r.valid.clone())
        .map(|(l, b)| (l.to_string(), b))
        .collect();
    let got: Vec<(String, Vec<u8>)> = records(port).split_off(before);
    assert_eq!(
        got.len(),
        expected.len(),
        "{what}: backend got {:?}",
        got.iter().map(|g| &g.0).collect::<Vec<_>>()
    );
    for ((gl, gb), (el, eb)) in got.iter().zip(&expected) {
        assert_eq!(gl, el, "{what}");
        assert_eq!(
            String::from_utf8_lossy(gb),
            String::from_utf8_lossy(eb),
            "{what}: {el}: body framed differently"
        );
    }
}

#[test]
fn the_backend_receives_exactly_the_valid_requests_framed_as_sent() {
    let (addr, _) = raw_backend(recording);
    // One worker: the streams are checked one after another against one record.
    let p = Proxy::start(
        "workers = 1\n[client]\nheader_timeout = \"2s\"\nbody_timeout = \"2s\"\n[client.close]\nlinger_timeout = \"200ms\"\n",
        addr,
    );
    let port = addr.port();
    let good = valid_set();
    let all: Vec<&Req> = good.iter().collect();
    for split in [0, 1, 7, 64] {
        check(&p, port, &all, split, &format!("valid pipeline, writes of {split}"));
    }
    for (i, b) in bad_corpus().iter().enumerate() {
        for (j, g) in good.iter().enumerate() {
            check(&p, port, &[g, b, g], 0, &format!("valid {j}, bad {i}, valid"));
            check(&p, port, &[b, g], 0, &format!("bad {i}, valid {j}"));
        }
        check(
            &p,
            port,
            &[&good[1], b],
            3,
            &format!("valid then bad {i} in writes of 3"),
        );
    }
}
