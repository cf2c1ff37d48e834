//! Fault injection on real sockets: a backend that stops its response at
//! every byte offset, with a FIN or a reset, for each framing. The client
//! never receives a truncated body that looks complete (a cut inside the
//! head is a 502; a cut inside a body with a length or chunked ends the
//! client connection with RST), a cut connection is never reused, and no
//! socket is left behind.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;
use support::*;

/// Whether what the client read is a complete response of that framing.
fn complete(framing: &str, got: &[u8]) -> bool {
    let h = head_len(got);
    if h > got.len() || !got.starts_with(b"HTTP/1.1 200") {
        return false;
    }
    let body = &got[h..];
    match framing {
        "cl" => body.len() >= 20,
        "chunked" => body.ends_with(b"0\r\n\r\n"),
        _ => true,
    }
}

#[test]
fn a_backend_cut_at_any_offset_never_yields_a_truncated_body_that_looks_complete() {
    let (backend, accepted) = raw_backend(cutting_backend);
    let p = Proxy::start("[admin]\naddr = \"127.0.0.1:0\"\n", backend);
    let mut requests = 0;
    let mut cells = std::collections::BTreeMap::<String, usize>::new();
    for framing in ["cl", "chunked", "close"] {
        let full = response(framing);
        let hl = head_len(full);
        for offset in 0..=full.len() {
            for how in ["fin", "rst"] {
                let mut c = p.connect();
                let req = format!("GET /cut/{framing}/{offset}/{how} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
                c.write_all(req.as_bytes()).unwrap();
                requests += 1;
                let (got, reset) = read_to_end_or_reset(&mut c, Duration::from_secs(10));
                let text = String::from_utf8_lossy(&got);
                let case = format!("{framing} cut at {offset} with {how}: reset {reset}, got {text:?}");
                let outcome = if offset < hl {
                    // Nothing of the response was relayed: finguard answers.
                    assert!(text.starts_with("HTTP/1.1 502 "), "{case}");
                    "502"
                } else if offset == full.len() && how == "fin" {
                    assert!(complete(framing, &got), "{case}");
                    "complete"
                } else if offset == full.len() && framing != "close" {
                    // All of it was sent before the reset: whole, or aborted,
                    // never cut short without a reset.
                    assert!(complete(framing, &got) || reset, "{case}");
                    if reset {
                        "reset"
                    } else {
                        "complete"
                    }
                } else if framing == "close" && how == "fin" {
                    // A close-delimited body ends at the backend's FIN.
                    assert!(!reset && got.ends_with(&full[hl..offset]), "{case}");
                    "complete at the close"
                } else if framing == "close" {
                    // A reset is no end of a close-delimited body: abort.
                    assert!(reset, "{case}");
                    "reset"
                } else {
                    assert!(reset && !complete(framing, &got), "{case}");
                    "reset"
                };
                *cells.entry(format!("{framing}/{how}: {outcome}")).or_default() += 1;
            }
        }
    }
    eprintln!("{cells:#?}");
    // Every cut connection was new: none was lent again after its cut.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), requests);
    // Nothing left: no CLOSE_WAIT or established socket towards the backend,
    // no client connection still open.
    let left = || {
        let mut s: Vec<&str> = tcp_states(0, backend.port())
            .into_iter()
            .filter(|s| *s == "CLOSE_WAIT" || *s == "ESTABLISHED")
            .collect();
        s.extend(
            tcp_states(p.port(), 0)
                .into_iter()
                .filter(|s| *s != "LISTEN" && *s != "TIME_WAIT"),
        );
        s
    };
    assert!(wait_until(Duration::from_secs(5), || left().is_empty()), "{:?}", left());
}

/// Serves requests at one byte per second: `GET /head` trickles the whole
/// response, head included; anything else gets its head at once and then
/// a four-byte body a byte a second.
fn trickling_backend(mut s: TcpStream) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf) {
        let (now, slow): (&[u8], &[u8]) = if head.starts_with("GET /head ") {
            (b"", CL)
        } else {
            (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", b"abcd")
        };
        if s.write_all(now).is_err() {
            return;
        }
        for b in slow {
            thread::sleep(Duration::from_secs(1)); // the fault itself: one byte a second
            if s.write_all(&[*b]).is_err() {
                return;
            }
        }
    }
}

/// Reads a request head and the first 1,000 body bytes, then neither reads
/// nor answers for 30 s.
fn stops_reading_backend(mut s: TcpStream) {
    let mut buf = Vec::new();
    if read_head(&mut s, &mut buf).is_none() {
        return;
    }
    let mut chunk = [0u8; 1000];
    let _ = s.read_exact(&mut chunk[buf.len().min(1000)..]);
    thread::sleep(Duration::from_secs(30)); // the fault: a backend that stopped reading
}

/// finguard's own sockets towards `backend` that are still open (its side
/// of the connection, whatever the backend did with its own).
fn held_towards(backend: u16) -> Vec<&'static str> {
    tcp_states(0, backend)
        .into_iter()
        .filter(|s| !matches!(*s, "TIME_WAIT" | "FIN_WAIT2" | "FIN_WAIT1" | "CLOSE"))
        .collect()
}

#[test]
fn a_backend_that_trickles_its_head_is_a_504_at_response_timeout() {
    let (backend, accepted) = raw_backend(trickling_backend);
    let cfg = "[[backend]]\nname = \"app\"\naddrs = [\"127.0.0.1:1\"]\nresponse_timeout = \"2s\"\n";
    let p = Proxy::start(cfg, backend);
    let mut c = p.connect();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    c.write_all(b"GET /head HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    // The head would take 58 s at a byte a second; finguard does not wait.
    let r = read_response(&mut c, &mut Vec::new()).expect("an answer, not a hang");
    assert_eq!(r.status, 504);
    // The client's connection stays usable, the backend's is dropped.
    c.write_all(b"GET /body HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let r = read_response(&mut c, &mut Vec::new()).expect("second answer");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"abcd"[..]));
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the trickling connection was reused"
    );
}

#[test]
fn a_backend_that_trickles_its_body_is_relayed_whole_within_the_gap_and_cut_past_it() {
    let (backend, _) = raw_backend(trickling_backend);
    // A byte a second is within a 3 s gap: the whole body arrives.
    let cfg = "[[backend]]\nname = \"app\"\naddrs = [\"127.0.0.1:1\"]\nresponse_timeout = \"3s\"\n";
    let p = Proxy::start(cfg, backend);
    let r = request(p.addr, "GET /body HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"abcd"[..]));
    // Past a 500 ms gap: the client connection is reset, never left with a
    // short body that looks complete; finguard lets go of the backend.
    let cfg = "[[backend]]\nname = \"app\"\naddrs = [\"127.0.0.1:1\"]\nresponse_timeout = \"500ms\"\n";
    let p = Proxy::start(cfg, backend);
    let mut c = p.connect();
    c.write_all(b"GET /body HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let (got, reset) = read_to_end_or_reset(&mut c, Duration::from_secs(10));
    assert!(reset, "{:?}", String::from_utf8_lossy(&got));
    assert!(got.starts_with(b"HTTP/1.1 200") && got.len() < head_len(&got) + 4);
    assert!(wait_until(Duration::from_secs(5), || held_towards(backend.port()).is_empty()));
}

#[test]
fn a_backend_that_stops_reading_mid_upload_is_a_504_the_client_reads() {
    let (backend, _) = raw_backend(stops_reading_backend);
    // The upload streams (request buffering off): a buffered body would be
    // read whole before the backend is contacted, and the connection kept.
    let cfg = "[client]\nmax_body_bytes = \"64MiB\"\n[buffer]\nrequests = false\n[[backend]]\nname = \"app\"\naddrs = [\"127.0.0.1:1\"]\nresponse_timeout = \"1s\"\n";
    let p = Proxy::start(cfg, backend);
    let mut c = p.connect();
    let len = 32 << 20;
    c.write_all(format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n").as_bytes())
        .unwrap();
    // The client goes on sending while the answer comes, as curl does.
    let mut w = c.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let block = vec![b'u'; 65536];
        let mut sent = 0;
        while sent < len && w.write_all(&block).is_ok() {
            sent += block.len();
        }
    });
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let r = read_response(&mut c, &mut Vec::new()).expect("an answer the client can read, not a reset");
    assert_eq!(r.status, 504);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    drop(c);
    sender.join().unwrap();
    assert!(wait_until(Duration::from_secs(5), || held_towards(backend.port()).is_empty()));
}

/// A backend for the client-reset phases: `/big` answers 8 MiB with a
/// length (and blocks once nobody reads), `/slow` answers after 500 ms,
/// `/deny` answers 401 at once without reading the body and then reads
/// until finguard closes, anything else reads its body and answers 200.
fn phase_backend(mut s: TcpStream) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf) {
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let ok = match path.as_str() {
            "/big" => s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n")
                .and_then(|_| s.write_all(&vec![b'b'; 8 << 20])),
            "/deny" => {
                let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.read_to_end(&mut Vec::new());
                return;
            }
            _ => {
                if path == "/slow" {
                    thread::sleep(Duration::from_millis(500)); // the client resets meanwhile
                }
                let mut rest = std::mem::take(&mut buf);
                let need = len.saturating_sub(rest.len());
                let body = (&mut s).take(need as u64).read_to_end(&mut rest).map(|_| ());
                buf = rest.split_off(len.min(rest.len()));
                body.and_then(|_| s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
            }
        };
        if ok.is_err() {
            return;
        }
    }
}

/// What a client does before it resets.
type Phase<'a> = dyn Fn(&mut TcpStream) + 'a;

/// Resets `c` (SO_LINGER 0, then close): the client's TCP sends RST.
fn reset(c: TcpStream) {
    socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
}

#[test]
fn a_client_reset_at_any_phase_leaves_nothing_behind() {
    let (backend, _) = raw_backend(phase_backend);
    // Request buffering off: the lingering phase needs a backend that
    // answers while the body still comes, which only an unbuffered upload
    // meets (buffered, the body is read whole before the backend is asked).
    let cfg = "[admin]\naddr = \"127.0.0.1:0\"\n[client.close]\nlinger_timeout = \"5s\"\nlinger_time = \"10s\"\n[buffer]\nrequests = false\n";
    let p = Proxy::start(cfg, backend);
    let post = |path: &str, len: usize| format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n");
    // Each phase: what the client does before it resets.
    let phases: [(&str, &Phase<'_>); 6] = [
        ("mid-head", &|c| {
            c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nAcc").unwrap()
        }),
        ("mid-body", &|c| {
            c.write_all(post("/up", 100_000).as_bytes()).unwrap();
            c.write_all(&[b'u'; 5000]).unwrap();
        }),
        ("waiting for the response", &|c| {
            c.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        }),
        ("mid-response body", &|c| {
            c.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            let mut b = vec![0u8; 1000];
            c.read_exact(&mut b).unwrap();
        }),
        ("while lingering", &|c| {
            c.write_all(post("/deny", 10_000_000).as_bytes()).unwrap();
            c.write_all(&[b'u'; 20_000]).unwrap();
            let r = read_response(c, &mut Vec::new()).unwrap();
            assert_eq!(r.status, 401);
            // finguard has shut its write side and drains what still comes.
            assert_eq!(peer_end(c, Duration::from_millis(200)), PeerEnd::Eof);
            c.write_all(&[b'u'; 20_000]).unwrap();
        }),
        ("idle between requests", &|c| {
            c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            assert_eq!(read_response(c, &mut Vec::new()).unwrap().status, 200);
        }),
    ];
    for (phase, act) in phases {
        let mut c = p.connect();
        act(&mut c);
        let client_port = c.local_addr().unwrap().port();
        reset(c);
        // finguard lets go of the client at once: no socket of it is held.
        let held = || {
            tcp_sockets(p.port(), client_port)
                .into_iter()
                .filter(|&(s, inode)| inode != 0 && s != "TIME_WAIT")
                .collect::<Vec<_>>()
        };
        assert!(
            wait_until(Duration::from_secs(3), || held().is_empty()),
            "{phase}: {:?}",
            held()
        );
        // No backend socket of finguard's is left half-closed, and it serves on.
        assert!(
            wait_until(Duration::from_secs(3), || !held_towards(backend.port())
                .contains(&"CLOSE_WAIT")),
            "{phase}"
        );
        let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200, "after a reset {phase}");
    }
    // The lingering close saw the reset as one.
    assert_eq!(
        p.metric("finguard_lingering_closes_total{outcome=\"reset\"}"),
        1.0,
        "{}",
        p.admin_get("/metrics").1
    );
    // At the end nothing of finguard's is open towards the backend but its pool.
    assert!(wait_until(Duration::from_secs(5), || held_towards(backend.port())
        .iter()
        .all(|s| *s == "ESTABLISHED")));
    let count = |state: &str| {
        p.metric(&format!(
            "finguard_backend_connections{{backend=\"default\",state=\"{state}\"}}"
        ))
    };
    let settled = || {
        let open = held_towards(backend.port()).len() as f64;
        (count("idle"), count("busy")) == (open, 0.0)
    };
    // The last exchange's connection goes back to the pool just after its answer.
    assert!(
        wait_until(Duration::from_secs(3), settled),
        "{:?}",
        tcp_sockets(0, backend.port())
    );
}
