//! Fault injection on real sockets: a backend that stops its response at
//! every byte offset, with a FIN or a reset, for each framing. The client
//! never receives a truncated body that looks complete (a cut inside the
//! head is a 502; a cut inside a body with a length or chunked ends the
//! client connection with RST), a cut connection is never reused, and no
//! socket is left behind.

mod support;

use std::io::Write;
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
