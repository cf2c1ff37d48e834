//! The backend pool: few connections, no CLOSE_WAIT, safe retries, ejection,
//! PROXY protocol, and backend-side framing.

mod support;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;
use support::*;

fn backend_cfg(extra: &str) -> String {
    format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[reaper]\ninterval = \"100ms\"\n[[backend]]\nname = \"app\"\naddrs = [\"127.0.0.1:1\"]\n{extra}\n"
    )
}

#[test]
fn an_idle_pooled_connection_closed_by_the_backend_leaves_no_close_wait() {
    let backend = Backend::start_with(
        Reply::Ok,
        BackendOpts {
            keepalive: Some(Duration::from_millis(200)),
            ..Default::default()
        },
    );
    let p = Proxy::start(&backend_cfg("pool_idle_timeout = \"10s\""), backend.addr);
    assert_eq!(request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n").status, 200);
    assert_eq!(backend.accepted(), 1);
    // The backend's keep-alive fires; finguard sees the FIN at once.
    let sample = "finguard_backend_reaped_total{backend=\"app\",reason=\"backend_closed\"}";
    assert!(
        wait_until(Duration::from_secs(3), || p.metric(sample) == 1.0),
        "{}",
        p.admin_get("/metrics").1
    );
    let finguard_side = || {
        tcp_states(0, backend.addr.port())
            .into_iter()
            .filter(|s| *s == "CLOSE_WAIT" || *s == "ESTABLISHED")
            .count()
    };
    assert_eq!(finguard_side(), 0, "finguard still holds the closed backend connection");
    // And the next request simply gets a new connection.
    assert_eq!(request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n").status, 200);
    assert_eq!(backend.accepted(), 2);
}

#[test]
fn the_stale_connection_race_never_reaches_the_client() {
    // The backend closes idle connections after 30 ms, the pool keeps them 2 s:
    // requests spaced around 30 ms race the backend's close.
    let backend = Backend::start_with(
        Reply::Ok,
        BackendOpts {
            keepalive: Some(Duration::from_millis(30)),
            ..Default::default()
        },
    );
    let cfg = format!(
        "[client]\nmax_requests_per_connection = 1000\n{}",
        backend_cfg("pool_idle_timeout = \"2s\"")
    );
    let p = Proxy::start(&cfg, backend.addr);
    let mut s = p.connect();
    let mut buf = Vec::new();
    let mut failures = 0;
    for i in 0..200u64 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut buf).unwrap_or_else(|| panic!("request {i}: no response\n{}", p.log()));
        failures += usize::from(r.status >= 500);
        // Client pacing: 20..40 ms, straddling the backend's 30 ms.
        thread::sleep(Duration::from_millis(20 + (i * 7) % 21));
    }
    let retries = p.metric("finguard_backend_retries_total{backend=\"app\"}");
    let closed_idle = p.metric("finguard_backend_reaped_total{backend=\"app\",reason=\"backend_closed\"}");
    assert_eq!(failures, 0, "retries: {retries}");
    // The race happened: pooled connections were reused, and the backend's
    // close met finguard (seen on an idle connection, or retried).
    assert!(backend.accepted() < 200, "no connection was ever reused");
    assert!(
        retries + closed_idle.max(0.0) > 0.0,
        "the backend's close never met a pooled connection: {}",
        p.admin_get("/metrics").1
    );
}

#[test]
fn two_hundred_concurrent_clients_see_at_most_max_connections_backend_connections() {
    let backend = Backend::start(Reply::Slow(Duration::from_millis(50)));
    let p = Proxy::start(
        &backend_cfg("max_connections = 32\npool_max_idle = 32\nqueue_timeout = \"300ms\""),
        backend.addr,
    );
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let addr = p.addr;
            thread::spawn(move || request(addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
        })
        .collect();
    let responses: Vec<Response> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let max = backend.max_open.load(Ordering::SeqCst);
    assert!(max <= 32, "the backend saw {max} connections at once");
    for r in &responses {
        assert!(r.status == 200 || r.status == 503, "{}", r.head);
        if r.status == 503 {
            assert_eq!(r.header("retry-after").as_deref(), Some("1"));
        }
    }
    assert!(responses.iter().filter(|r| r.status == 200).count() >= 32);
}

#[test]
fn a_refusing_address_is_ejected_and_comes_back_after_the_cool_off() {
    let good = Backend::start(Reply::Ok);
    let dead_port = DeadPort::new();
    let dead = dead_port.addr;
    let cfg = format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\naddrs = [\"{dead}\", \"{}\"]\neject_after = 2\neject_cool_off = \"1s\"\n\
         pool_max_idle = 0\n",
        good.addr
    );
    let p = Proxy::start_args(&cfg, &[]);
    for _ in 0..10 {
        let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200, "a dead address must not cost the client its request");
    }
    assert_eq!(p.metric("finguard_backend_ejections_total{backend=\"app\"}"), 1.0);
    assert!(wait_until(Duration::from_secs(2), || p
        .log()
        .contains("backend address ejected")));
    // The address comes back to life; after the cool-off it gets traffic again.
    let revived = Backend::on(dead_port.revive(), Reply::Ok, BackendOpts::default());
    assert!(wait_until(Duration::from_secs(5), || {
        request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        revived.accepted() > 0
    }));
    assert!(wait_until(Duration::from_secs(2), || p
        .log()
        .contains("back in rotation")));
}

#[test]
fn proxy_protocol_v1_and_v2_announce_the_client() {
    for version in ["v1", "v2"] {
        let backend = Backend::start_with(
            Reply::Ok,
            BackendOpts {
                proxy_protocol: true,
                ..Default::default()
            },
        );
        let p = Proxy::start(&backend_cfg(&format!("proxy_protocol = \"{version}\"")), backend.addr);
        let mut s = p.connect();
        let client_port = s.local_addr().unwrap().port();
        let mut buf = Vec::new();
        for _ in 0..3 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
        }
        let heads = backend.heads();
        assert_eq!(heads[0], format!("PROXY 127.0.0.1 {client_port}"), "{version}");
        // One header per backend connection, reused for the same client.
        assert_eq!(heads.iter().filter(|h| h.starts_with("PROXY")).count(), 1, "{heads:?}");
    }
}

#[test]
fn a_close_delimited_backend_response_is_relayed_whole_and_not_reused() {
    let backend = Backend::start(Reply::CloseDelimited);
    let p = Proxy::start("", backend.addr);
    for n in 1..=3 {
        let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"until the end\n");
        assert_eq!(backend.accepted(), n);
    }
}

#[test]
fn a_backend_reset_mid_body_aborts_the_client_response() {
    let backend = Backend::start(Reply::ResetMidBody);
    let p = Proxy::start("", backend.addr);
    let mut s = p.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).expect("the head was relayed");
    // Header names keep the backend's case now (no longer lower-cased by hyper).
    assert!(head.to_ascii_lowercase().contains("content-length: 1000"), "{head}");
    let mut rest = buf;
    let end = loop {
        let mut b = [0u8; 4096];
        match std::io::Read::read(&mut s, &mut b) {
            Ok(0) => break "eof",
            Ok(n) => rest.extend_from_slice(&b[..n]),
            Err(_) => break "error",
        }
    };
    assert!(rest.len() < 1000, "a truncated body was passed off as complete ({end})");
}

#[test]
fn expect_100_continue_works() {
    let backend = Backend::start(Reply::CountBody);
    let p = Proxy::start("", backend.addr);
    let mut s = p.connect();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let interim = read_head(&mut s, &mut buf).unwrap();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    s.write_all(b"hello").unwrap();
    let r = read_response(&mut s, &mut buf).unwrap();
    assert_eq!((r.status, r.body), (200, b"5\n".to_vec()));
}

#[test]
fn an_idle_connection_finguard_expires_is_counted_once_and_never_as_backend_closed() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(&backend_cfg("pool_idle_timeout = \"300ms\""), backend.addr);
    assert_eq!(request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n").status, 200);
    let reaped = |reason: &str| {
        p.metric(&format!(
            "finguard_backend_reaped_total{{backend=\"app\",reason=\"{reason}\"}}"
        ))
    };
    assert!(wait_until(Duration::from_secs(3), || reaped("idle_timeout") == 1.0));
    // finguard closed it: the backend sees the FIN and its thread ends.
    assert!(wait_until(Duration::from_secs(3), || backend
        .open
        .load(Ordering::SeqCst)
        == 0));
    assert_eq!(reaped("backend_closed"), 0.0);
    assert_eq!(reaped("over_max_idle"), 0.0);
}

/// A listener whose accept queue is full: the kernel drops new SYNs, so a
/// connect to it hangs until the connector gives up.
fn unanswering_listener() -> (socket2::Socket, Vec<std::net::TcpStream>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (never accepted); later connects get no SYN-ACK.
    let fillers = (0..4)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    (sock, fillers)
}

#[test]
fn a_failed_connect_hands_its_slot_to_a_queued_request() {
    let (black_hole, _fillers) = unanswering_listener();
    let addr = black_hole.local_addr().unwrap().as_socket().unwrap();
    let cfg = format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\naddrs = [\"{addr}\"]\n\
         max_connections = 1\npool_max_idle = 1\nconnect_timeout = \"400ms\"\nqueue_timeout = \"4s\"\n"
    );
    let p = Proxy::start_args(&cfg, &[]);
    // Two requests at once: one takes the only slot and its connect times
    // out; the other waits in the queue for that slot, then tries itself.
    let statuses: Vec<u16> = (0..2)
        .map(|_| {
            let a = p.addr;
            thread::spawn(move || request(a, "GET / HTTP/1.1\r\nHost: a\r\n\r\n").status)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    // A 503 here is the queue timing out while the slot sat free.
    assert_eq!(statuses, vec![502, 502], "{}", p.log());
    assert_eq!(
        p.metric("finguard_requests_total{code=\"5xx\"}"),
        2.0,
        "{}",
        p.admin_get("/metrics").1
    );
}

#[test]
fn a_request_never_tries_the_same_dead_address_twice_while_another_lives() {
    let good = Backend::start(Reply::Ok);
    let dead = DeadPort::new();
    // Never ejected (a flapping address, or one that refuses only now and
    // then): the dead address stays in the rotation all along, and no idle
    // connection hides the choice.
    let cfg = format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\naddrs = [\"{}\", \"{}\"]\n\
         eject_after = 1000000\npool_max_idle = 0\n",
        dead.addr, good.addr
    );
    let p = Proxy::start_args(&cfg, &[]);
    // Concurrent requests advance the shared round-robin counter between one
    // request's picks.
    let mut failed = Vec::new();
    for _ in 0..16 {
        let burst: Vec<_> = (0..16)
            .map(|_| {
                let a = p.addr;
                thread::spawn(move || request(a, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").status)
            })
            .collect();
        failed.extend(burst.into_iter().map(|t| t.join().unwrap()).filter(|&s| s != 200));
    }
    assert!(failed.is_empty(), "{} of 256 failed: {failed:?}", failed.len());
    assert_eq!(good.accepted(), 256);
}

#[test]
fn a_health_check_reaches_a_proxy_protocol_backend_with_a_header_of_its_own() {
    for version in ["v1", "v2"] {
        // Like Apache with RemoteIPProxyProtocol On: a connection that does
        // not start with a PROXY header is dropped.
        let backend = Backend::start_with(
            Reply::Ok,
            BackendOpts {
                proxy_protocol: true,
                ..Default::default()
            },
        );
        let cfg = format!(
            "[admin]\naddr = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\naddrs = [\"{}\"]\nproxy_protocol = \"{version}\"\n\
             health_check = {{ path = \"/health\", interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 2 }}\n",
            backend.addr
        );
        let p = Proxy::start_args(&cfg, &[]);
        // A third check has started: the verdicts of the first two (enough
        // to take the address out, had they failed) are in.
        assert!(
            wait_until(Duration::from_secs(5), || backend.accepted() >= 3),
            "{version}"
        );
        let down = format!(
            "finguard_backend_health_transitions_total{{backend=\"app\",addr=\"{}\",to=\"down\"}}",
            backend.addr
        );
        assert_eq!(p.metric(&down), 0.0, "{version}: {}", p.log());
        let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200, "{version}: {}", p.log());
        // The first connection is a check, with a header of its own.
        let heads = backend.heads();
        assert!(heads[0].starts_with("PROXY 127.0.0.1 "), "{version}: {heads:?}");
        assert!(heads[1].starts_with("GET /health HTTP/1.1\r\n"), "{version}: {heads:?}");
    }
}

/// A backend with `workers` workers, as Apache prefork has: each takes one
/// connection from the listener's backlog and serves it, keep-alive, until
/// the peer closes or it has been idle for `keepalive` (not announced);
/// connections past the workers wait in the backlog. Counts the
/// connections a worker gave up on at its keep-alive timeout.
struct Workers {
    addr: std::net::SocketAddr,
    timed_out: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn workers_backend(workers: usize, keepalive: Duration) -> Workers {
    use std::io::Read;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let l = Arc::new(l);
    let timed_out = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    for _ in 0..workers {
        let (l, timed_out, served) = (l.clone(), timed_out.clone(), served.clone());
        thread::spawn(move || {
            while let Ok((mut s, _)) = l.accept() {
                s.set_read_timeout(Some(keepalive)).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                            timed_out.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err(_) => break,
                    }
                    while let Some(end) = find(&buf, b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        served.fetch_add(1, Ordering::SeqCst);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
    }
    Workers {
        addr,
        timed_out,
        served,
    }
}

#[test]
fn a_burst_past_the_backends_workers_is_served_without_waiting_for_idle_connections_to_expire() {
    // Two workers; four requests at once through finguard, whose pool may
    // open more connections than that. Two wait in the backend's backlog
    // while the first two are answered; their connections, idle in the
    // pool, must not keep both workers until the backend's keep-alive
    // timeout gives them up.
    const WORKERS: usize = 2;
    const BURST: usize = 4;
    const KEEPALIVE: Duration = Duration::from_secs(4);
    let b = workers_backend(WORKERS, KEEPALIVE);
    let p = Proxy::start(
        &backend_cfg("max_connections = 16\npool_max_idle = 16\npool_idle_timeout = \"60s\""),
        b.addr,
    );
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..BURST)
        .map(|_| {
            let addr = p.addr;
            thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
                let mut buf = Vec::new();
                let r = read_response(&mut s, &mut buf).map(|r| r.status);
                (r, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for c in clients {
        let (status, took) = c.join().unwrap();
        assert_eq!(status, Some(200));
        slowest = slowest.max(took);
    }
    // Observed, not asserted: the slowest of the burst.
    eprintln!("burst of {BURST} past {WORKERS} workers: slowest answered after {slowest:?}");
    assert_eq!(b.served.load(Ordering::SeqCst), BURST);
    assert_eq!(
        b.timed_out.load(Ordering::SeqCst),
        0,
        "a request waited for a worker until the backend's keep-alive timeout freed one"
    );
}

/// A backend that takes 300 ms to answer each request, one thread per
/// connection (it never runs out of workers), keeping connections open.
fn slow_backend(mut s: std::net::TcpStream) {
    let mut buf = Vec::new();
    while read_head(&mut s, &mut buf).is_some() {
        thread::sleep(Duration::from_millis(300));
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            .is_err()
        {
            return;
        }
    }
}

#[test]
fn a_slow_backend_under_overlapping_bursts_keeps_its_pooled_connections() {
    // Waves of four requests, a second four 150 ms after the first: the
    // second four find no idle connection and open fresh ones, which wait
    // 300 ms for their answers, while the first four come back to the pool
    // and sit there. A backend that is merely slow has a worker for every
    // connection: nothing is stuck, and closing the idle ones only makes
    // the next wave open new connections. Eight connections serve it all.
    const WAVE: usize = 4;
    const WAVES: usize = 5;
    let (addr, accepted) = raw_backend(slow_backend);
    let p = Proxy::start(
        &backend_cfg("max_connections = 64\npool_max_idle = 64\npool_idle_timeout = \"60s\""),
        addr,
    );
    let get = |n: usize| -> Vec<thread::JoinHandle<Option<u16>>> {
        (0..n)
            .map(|_| {
                let addr = p.addr;
                thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .unwrap();
                    let mut buf = Vec::new();
                    read_response(&mut s, &mut buf).map(|r| r.status)
                })
            })
            .collect()
    };
    let join = |v: Vec<thread::JoinHandle<Option<u16>>>| {
        for c in v {
            assert_eq!(c.join().unwrap(), Some(200));
        }
    };
    // Four connections, each used twice: the pool has seen how slow the
    // backend is on connections it reused.
    for _ in 0..2 {
        join(get(WAVE));
    }
    let warm = accepted.load(Ordering::SeqCst);
    for _ in 0..WAVES {
        let first = get(WAVE);
        thread::sleep(Duration::from_millis(150));
        let second = get(WAVE);
        join(first);
        join(second);
    }
    let opened = accepted.load(Ordering::SeqCst);
    eprintln!("backend connections: {warm} after warming up, {opened} after {WAVES} waves");
    assert!(
        warm <= WAVE + 1,
        "{warm} backend connections for {WAVE} requests at a time"
    );
    // The first wave's second half opens its own four; from then on eight
    // pooled connections serve every wave.
    assert!(
        opened <= warm + WAVE + 1,
        "{} more backend connections for {WAVES} waves of {} requests that {} pooled ones could serve",
        opened - warm,
        2 * WAVE,
        warm + WAVE
    );
}

/// A backend that answers `/poll` after 1.5 s (a long poll) and anything
/// else at once, one thread per connection, keeping connections open.
fn long_poll_backend(mut s: std::net::TcpStream) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf) {
        if head.starts_with("GET /poll ") {
            thread::sleep(Duration::from_millis(1500));
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            .is_err()
        {
            return;
        }
    }
}

#[test]
fn a_long_poll_on_a_fresh_connection_does_not_empty_the_pool_while_it_waits() {
    // The long poll waits 1.5 s on a fresh connection with a backend that
    // has a worker for every connection. Meanwhile one client makes a GET
    // every 100 ms, each of which finds the connection the one before
    // left idle. A wait that long looks stuck; closing idle connections
    // while it lasts would make every GET open a connection of its own.
    const GETS: usize = 10;
    let (addr, accepted) = raw_backend(long_poll_backend);
    let p = Proxy::start(
        &backend_cfg("max_connections = 16\npool_max_idle = 16\npool_idle_timeout = \"60s\""),
        addr,
    );
    let proxy = p.addr;
    let fetch = move |path: &'static str| {
        let mut s = std::net::TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        let mut buf = Vec::new();
        read_response(&mut s, &mut buf).map(|r| r.status)
    };
    let poll = thread::spawn(move || fetch("/poll"));
    assert!(wait_until(Duration::from_secs(5), || accepted.load(Ordering::SeqCst) == 1));
    for _ in 0..GETS {
        assert_eq!(fetch("/"), Some(200));
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(poll.join().unwrap(), Some(200));
    let opened = accepted.load(Ordering::SeqCst);
    eprintln!("backend connections for a long poll and {GETS} GETs beside it: {opened}");
    // The long poll's, the GETs' own, and at most one the rule closed.
    assert!(
        opened <= 3,
        "{opened} backend connections for a long poll and {GETS} sequential GETs"
    );
}

/// A backend that sends `100 Continue` before reading every body (asked
/// or not), then answers 200 with the body's length.
fn continuing_backend(mut s: std::net::TcpStream) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf) {
        let len = content_length(&head);
        if s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
            return;
        }
        let mut chunk = [0u8; 65536];
        while buf.len() < len {
            match std::io::Read::read(&mut s, &mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        buf.drain(..len);
        let body = format!("{len}\n");
        let r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if s.write_all(r.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_client_gets_one_100_continue_when_the_backend_sends_its_own() {
    // finguard answers `Expect: 100-continue` itself (and does not pass
    // the field on); a backend's own 100 Continue is not relayed after it.
    let (addr, _) = raw_backend(continuing_backend);
    for buffer in ["", "[buffer]\nrequests = false\n"] {
        let p = Proxy::start(buffer, addr);
        let mut s = p.connect();
        s.write_all(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let interim = read_head(&mut s, &mut buf).unwrap();
        assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
        s.write_all(b"hello").unwrap();
        let mut rest = buf;
        std::io::Read::read_to_end(&mut s, &mut rest).unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.starts_with("HTTP/1.1 200 OK\r\n"),
            "{buffer:?}: a second interim response: {rest}"
        );
        assert!(rest.ends_with("\r\n\r\n5\n"), "{rest}");
        // Without `Expect`, no 100 Continue reaches the client either.
        let r = request(
            p.addr,
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        );
        assert_eq!((r.status, r.body), (200, b"5\n".to_vec()));
    }
}
