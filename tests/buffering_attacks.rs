//! Response and request buffering under attack: a hostile HTTP/2 client
//! when the buffer budgets are out, and what a backend connection carries
//! afterwards. Backends are the test's own threads; what they saw and what
//! the clients received are the oracles.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(20);

/// A keep-alive backend: `/small` gets a short body, anything else `big`
/// bytes (with `X-Accel-Buffering: no` when `unbuffered`); counts the
/// connections it accepted.
struct SizedBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

fn sized_backend(big: usize, unbuffered: bool) -> SizedBackend {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    let body = Arc::new(vec![b'x'; big]);
    thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            a.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            thread::spawn(move || serve_sized(s, &body, unbuffered));
        }
    });
    SizedBackend { addr, accepted }
}

fn serve_sized(mut s: TcpStream, big: &[u8], unbuffered: bool) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf) {
        let small = head.starts_with("GET /small");
        let body: &[u8] = if small { b"small" } else { big };
        let accel = if unbuffered && !small {
            "X-Accel-Buffering: no\r\n"
        } else {
            ""
        };
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{accel}\r\n", body.len());
        if s.write_all(head.as_bytes()).is_err() || s.write_all(body).is_err() {
            return;
        }
    }
}

/// An `h2` client connection over TLS (ALPN h2) with the given stream
/// window; its connection window is wide open.
async fn h2_client(
    cfg: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    window: u32,
) -> h2::client::SendRequest<bytes::Bytes> {
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(window);
    builder.initial_connection_window_size(64 * 1024 * 1024);
    support::h2_client::h2_connect(cfg, addr, builder).await.0
}

/// The buffer budgets are out, so exchanges relay at the client's pace: an
/// HTTP/2 client keeps two streams' windows shut while it feeds a third a
/// little at a time, so the connection as a whole keeps making progress.
/// Each shut stream must still be bounded by `body_timeout` on its own (as
/// a stuck HTTP/1 write is): its backend connection is freed and another
/// client is served, not refused with 503 for as long as the attacker likes.
#[test]
fn http2_shut_streams_are_bounded_when_the_budgets_are_out() {
    let status = shut_streams_then_another_client("memory_total = \"64KiB\"\nfile_total = \"64KiB\"", false);
    assert_eq!(
        status, 200,
        "another client was refused while shut streams held the backend"
    );
}

/// The same attack on responses a backend asked not to buffer
/// (`X-Accel-Buffering: no`; a route with `response_buffering = false` is
/// the same path): h2 never polls a stream whose window is shut, so a body
/// read only when polled would hold its backend connection for as long as
/// the client likes; the relay's own task gives up after `body_timeout`.
#[test]
fn http2_shut_unbuffered_streams_are_bounded() {
    let status = shut_streams_then_another_client("", true);
    assert_eq!(
        status, 200,
        "another client was refused while shut streams held the backend"
    );
}

/// One HTTP/2 connection, two unbuffered downloads: the client keeps one
/// stream's window shut and reads the other. hyper never polls the shut
/// stream's body again, so its relay giving up after `body_timeout` must
/// still reach the client as a reset of that stream (not a wait with no
/// signal, its concurrent-stream slot held), while the other stream and
/// the connection go on; the shut stream's backend connection is freed.
#[test]
fn http2_shut_stream_is_reset_while_another_completes() {
    let b = sized_backend(BIG, true);
    let (shut_end, fed, small) = shut_stream_beside_a_read_one(b.addr, "/big");
    assert_shut_stream_reset(shut_end);
    assert_eq!(small, Some(200), "a small page on the same connection");
    assert_eq!(fed, Some(BIG), "the read stream's whole body");
}

/// The same when the shut stream's response is buffered and its backend
/// breaks off inside the body: the error would reach hyper only when it
/// polls the body, which it does not while the window is shut; the stream
/// is reset once its client took nothing for `body_timeout`.
#[test]
fn http2_shut_stream_whose_backend_broke_off_is_reset() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let mut buf = Vec::new();
                let body = vec![b'x'; BIG];
                while let Some(head) = read_head(&mut s, &mut buf) {
                    let (cut, small) = (head.starts_with("GET /cut"), head.starts_with("GET /small"));
                    let body: &[u8] = if small { b"small" } else { &body };
                    // The cut body is buffered: finguard reads it to the break.
                    let accel = if cut { "" } else { "X-Accel-Buffering: no\r\n" };
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{accel}\r\n", body.len());
                    let sent = if cut { &body[..256 * 1024] } else { body };
                    if s.write_all(head.as_bytes()).is_err() || s.write_all(sent).is_err() || cut {
                        return;
                    }
                }
            });
        }
    });
    let (shut_end, fed, small) = shut_stream_beside_a_read_one(addr, "/cut");
    assert_shut_stream_reset(shut_end);
    assert_eq!(small, Some(200), "a small page on the same connection");
    assert_eq!(fed, Some(BIG), "the read stream's whole body");
}

const BIG: usize = 8 * 1024 * 1024;

fn assert_shut_stream_reset(end: Result<Option<h2::Error>, tokio::time::error::Elapsed>) {
    match end {
        Ok(Some(e)) => assert!(e.is_reset(), "the shut stream ended with {e:?}, not a reset"),
        Ok(None) => panic!("the shut stream ended cleanly with its window shut"),
        Err(_) => panic!("the shut stream was not reset within {:?}", LIMIT / 2),
    }
}

/// One HTTP/2 connection (`body_timeout` 1 s, two backend connections):
/// `shut` with its window kept shut, `/big` read 16 KiB at a time until
/// `shut` ended, then `/small`, then the rest of `/big`. Returns how
/// `shut` ended, the bytes `/big` had (if it ended), the `/small` status.
fn shut_stream_beside_a_read_one(
    backend: SocketAddr,
    shut: &str,
) -> (
    Result<Option<h2::Error>, tokio::time::error::Elapsed>,
    Option<usize>,
    Option<u16>,
) {
    use support::tls::*;
    let pki = pki();
    let f = files(&pki);
    // Two backend connections: a third request is served only once the
    // shut stream gave its connection back.
    let extra = format!(
        "[client]\nbody_timeout = \"1s\"\n\
         [[backend]]\nname = \"b\"\naddrs = [\"{backend}\"]\nmax_connections = 2\npool_max_idle = 2\nqueue_timeout = \"500ms\"\n"
    );
    let p = Proxy::start_raw(&tls_config(&f, &extra), &[]);
    let mut cfg = (*client(&pki)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let (cfg, addr) = (Arc::new(cfg), p.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shut = format!("https://a.test{shut}");
    rt.block_on(async move {
        let mut c = h2_client(cfg, addr, 16 * 1024).await;
        let get = |uri: &str| http::Request::get(uri).body(()).unwrap();
        let (resp, _) = c.send_request(get(&shut), true).unwrap();
        let mut shut = resp.await.unwrap().into_body();
        let (fed, _) = c.send_request(get("https://a.test/big"), true).unwrap();
        let mut fed = fed.await.unwrap().into_body();
        // The shut stream: read, never released; what ends it, if anything
        // does within the bound.
        let reset = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = reset.clone();
        let watcher = tokio::spawn(async move {
            let end = tokio::time::timeout(LIMIT / 2, async {
                loop {
                    match shut.data().await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Some(e),
                        None => return None,
                    }
                }
            })
            .await;
            seen.store(true, Ordering::SeqCst);
            end
        });
        // The fed stream moves the connection along, 16 KiB at a time,
        // until the shut one ended (bounded: at most 400 steps).
        let mut got = 0;
        for _ in 0..400 {
            if reset.load(Ordering::SeqCst) {
                break;
            }
            let Some(Ok(d)) = fed.data().await else { break };
            got += d.len();
            let _ = fed.flow_control().release_capacity(d.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let shut_end = watcher.await.unwrap();
        // The same connection serves a small page (the shut stream's
        // backend connection is free) while the fed stream is still open.
        let (small, _) = c.send_request(get("https://a.test/small"), true).unwrap();
        let small = tokio::time::timeout(LIMIT, small).await.ok().and_then(Result::ok);
        let small = small.map(|r| r.status().as_u16());
        // Then the fed stream reads to its end.
        let rest = tokio::time::timeout(LIMIT, async {
            while let Some(Ok(d)) = fed.data().await {
                got += d.len();
                let _ = fed.flow_control().release_capacity(d.len());
            }
        })
        .await;
        (shut_end, rest.is_ok().then_some(got), small)
    })
}

/// Two shut streams and a fed one on one HTTP/2 connection, a backend
/// with three connections; the status another client gets for a small page.
fn shut_streams_then_another_client(buffer: &str, unbuffered: bool) -> u16 {
    use support::tls::*;
    let b = sized_backend(8 * 1024 * 1024, unbuffered);
    let dir = std::env::temp_dir().join(format!("finguard-bufatk-{}-{unbuffered}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = pki();
    let f = files(&pki);
    let extra = format!(
        "[client]\nbody_timeout = \"1s\"\n\
         [buffer]\ndir = \"{}\"\n{buffer}\n\
         [[backend]]\nname = \"b\"\naddrs = [\"{}\"]\nmax_connections = 3\npool_max_idle = 3\nqueue_timeout = \"500ms\"\n",
        dir.display(),
        b.addr
    );
    let p = Proxy::start_raw(&tls_config(&f, &extra), &[]);
    let mut cfg = (*client(&pki)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let (cfg, addr) = (Arc::new(cfg), p.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async move {
        let mut attacker = h2_client(cfg.clone(), addr, 16 * 1024).await;
        // Two streams whose windows never open past the first 16 KiB.
        let mut shut = Vec::new();
        for _ in 0..2 {
            let req = http::Request::get("https://a.test/big").body(()).unwrap();
            let (resp, _) = attacker.send_request(req, true).unwrap();
            shut.push(resp.await.unwrap());
        }
        // The fed stream: its window opens 16 KiB at a time as it reads,
        // so the connection keeps moving (bounded: at most 400 steps).
        let req = http::Request::get("https://a.test/big").body(()).unwrap();
        let (resp, _) = attacker.send_request(req, true).unwrap();
        let mut fed_body = resp.await.unwrap().into_body();
        let feeder = tokio::spawn(async move {
            for _ in 0..400 {
                let Some(Ok(d)) = fed_body.data().await else {
                    break;
                };
                let _ = fed_body.flow_control().release_capacity(d.len());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        // Another client asks for a small page, again and again, within a
        // bounded time: with the shut streams bounded it gets a backend
        // connection once they are reset.
        let mut other = h2_client(cfg, addr, 1024 * 1024).await;
        let deadline = tokio::time::Instant::now() + LIMIT;
        let mut status = 0;
        while tokio::time::Instant::now() < deadline {
            let req = http::Request::get("https://a.test/small").body(()).unwrap();
            let (resp, _) = other.send_request(req, true).unwrap();
            let resp = resp.await.unwrap();
            status = resp.status().as_u16();
            let mut body = resp.into_body();
            while let Some(Ok(d)) = body.data().await {
                let _ = body.flow_control().release_capacity(d.len());
            }
            if status == 200 {
                break;
            }
        }
        feeder.abort();
        drop(shut);
        status
    });
    assert!(b.accepted.load(Ordering::SeqCst) >= 3);
    let _ = std::fs::remove_dir_all(&dir);
    status
}

/// A backend whose response has no length: its body ends at its close.
fn close_delimited_backend(len: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let mut buf = Vec::new();
                if read_head(&mut s, &mut buf).is_some() {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                    let _ = s.write_all(&vec![b'y'; len]);
                }
            });
        }
    });
    addr
}

/// SIGTERM while a slow client downloads a body that ends at the close:
/// when `shutdown_timeout` cuts the download, the client must see an abort
/// (RST). A clean close (FIN) is the very end of such a body: the client
/// would take the truncated response for the whole one.
#[test]
fn a_download_cut_by_shutdown_timeout_ends_in_a_reset() {
    const LEN: usize = 48 * 1024 * 1024;
    let backend = close_delimited_backend(LEN);
    let dir = std::env::temp_dir().join(format!("finguard-bufatk-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = format!("shutdown_timeout = \"1s\"\n[buffer]\ndir = \"{}\"\n", dir.display());
    let mut p = Proxy::start(&cfg, backend);
    // A small receive buffer: the client holds the download open.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&p.addr.into()).unwrap();
    let mut c: TcpStream = sock.into();
    c.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut c, &mut buf).expect("response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    p.signal("TERM");
    assert!(p.wait_exit(LIMIT).is_some(), "finguard did not exit");
    let (rest, reset) = read_to_end_or_reset(&mut c, LIMIT);
    let got = buf.len() + rest.len();
    assert!(got < LEN, "the whole body arrived: the test did not cut it");
    assert!(reset, "a body cut at {got} of {LEN} bytes ended in a clean close");
    let _ = std::fs::remove_dir_all(&dir);
}
