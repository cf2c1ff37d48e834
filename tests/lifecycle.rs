//! Process lifecycle: SIGTERM drains, config errors exit 1 naming file and key,
//! every shipped config passes `finguard check`.

mod support;

use std::io::Write;
use std::process::Command;
use std::thread;
use std::time::Duration;
use support::*;

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let backend = Backend::start(Reply::Slow(Duration::from_millis(800)));
    let mut p = Proxy::start("shutdown_timeout = \"5s\"\n", backend.addr);
    let mut idle = p.connect();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut idle, &mut Vec::new()).unwrap().status, 200);
    let addr = p.addr;
    let slow = thread::spawn(move || request(addr, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(wait_until(Duration::from_secs(5), || backend
        .heads()
        .iter()
        .any(|h| h.starts_with("GET /slow"))));
    // The first client has its answer and sits idle; the second is in flight.
    p.signal("TERM");
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"slow\n");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(
        peer_end(&mut idle, Duration::from_secs(3)),
        PeerEnd::Eof,
        "idle client not closed on drain"
    );
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(TcpStreamExt::refused(addr), "still accepting after SIGTERM");
}

struct TcpStreamExt;
impl TcpStreamExt {
    fn refused(addr: std::net::SocketAddr) -> bool {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
    }
}

fn check(text: &str) -> (i32, String) {
    let f = TempFile::new("check.toml", text);
    let out = Command::new(BIN).arg("check").arg("-c").arg(&f.0).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).replace(&f.0.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn config_errors_name_the_file_the_key_and_the_reason() {
    let cases = [
        (
            "[client]\nkeepalive_timeuot = \"5s\"\n",
            "client",
            "unknown field `keepalive_timeuot`",
        ),
        (
            "[client]\nkeepalive_timeout = \"soon\"\n",
            "client.keepalive_timeout",
            "invalid duration",
        ),
        (
            "[client]\nmax_body_bytes = \"12 parsecs\"\n",
            "client.max_body_bytes",
            "invalid size",
        ),
        (
            "[[user_agent]]\nmatch = \"(unclosed\"\nnokeepalive = true\n",
            "user_agent[0].match",
            "invalid regex",
        ),
        (
            "[[backend]]\nname = \"a\"\naddrs = [\"127.0.0.1:1\"]\n[[route]]\nbackend = \"b\"\n",
            "route[0].backend",
            "no backend named \"b\"",
        ),
        (
            "[client.close]\nlinger_time = \"1s\"\nlinger_timeout = \"2s\"\n",
            "client.close.linger_time",
            "must be >= linger_timeout",
        ),
        (
            "[client.close]\nmode = \"gentle\"\n",
            "client.close.mode",
            "expected one of `lingering`",
        ),
        (
            "[[user_agent]]\nmatch = \"x\"\nmax_connections = 3\n",
            "user_agent[0].max_connections",
            "cannot be set per User-Agent",
        ),
        (
            "[[listener]]\naddr = \"not an address\"\n",
            "listener[0].addr",
            "not a host:port",
        ),
        ("shutdown_timeout = 5\n", "shutdown_timeout", "invalid type"),
    ];
    for (text, key, reason) in cases {
        let (code, err) = check(text);
        assert_eq!(code, 1, "{text}: {err}");
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.contains("FILE: ") && first.contains(key) && first.contains(reason),
            "{text}\n→ {first}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let (code, err) = check("[client]\nkeepalive = true\n");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn every_shipped_config_passes_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(BIN).arg("check").arg("-c").arg(&path).output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            // The effective config it prints is itself a valid config.
            let (code, err) = check(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(code, 0, "{}: printed config does not re-parse: {err}", path.display());
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn bad_arguments_exit_1_and_bind_failures_exit_2() {
    let out = Command::new(BIN).args(["run", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["run", "--listen", &addr, "--backend", "127.0.0.1:1", "-c", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {addr}")));
}

#[test]
fn healthz_says_503_while_draining() {
    let backend = Backend::start(Reply::Slow(Duration::from_millis(1500)));
    let mut p = Proxy::start(
        "shutdown_timeout = \"5s\"\n[admin]\naddr = \"127.0.0.1:0\"\n",
        backend.addr,
    );
    assert_eq!(p.admin_get("/healthz").0, 200);
    let addr = p.addr;
    let slow = thread::spawn(move || request(addr, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(wait_until(Duration::from_secs(5), || !backend.heads().is_empty()));
    p.signal("TERM");
    assert!(wait_until(Duration::from_secs(1), || p.admin_get("/healthz")
        == (503, "draining\n".to_string())));
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn max_connections_per_ip_refuses_the_extra_connection_with_503() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start("[client]\nmax_connections_per_ip = 2\n", backend.addr);
    let mut held: Vec<std::net::TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut s = p.connect();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().status, 200);
        held.push(s);
    }
    let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 503);
    drop(held.pop());
    // Once finguard has seen that close, the IP has room again.
    assert!(wait_until(Duration::from_secs(3), || request(
        p.addr,
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .status
        == 200));
}

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// finguard run under a shell `ulimit` (which it cannot raise): the child,
/// its listening address and its stderr as it comes.
struct Limited {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    _cfg: TempFile,
}

impl Limited {
    fn start(ulimit: &str, config: &str, backend: std::net::SocketAddr) -> Limited {
        let cfg = TempFile::new("limited.toml", config);
        let script = format!(
            "ulimit {ulimit} && exec {BIN} run -c {} --listen 127.0.0.1:0 --backend {backend}",
            cfg.0.display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
        let addr = loop {
            let line = lines.next().expect("finguard started").unwrap();
            if let Some(a) = line.strip_prefix("finguard: listening on ") {
                break a.parse().unwrap();
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        Limited {
            child,
            addr,
            log,
            _cfg: cfg,
        }
    }

    fn logged(&self, what: &str) -> bool {
        self.log.lock().unwrap().contains(what)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// One request on a new connection: its status, if it got one.
    fn get(&self) -> Option<u16> {
        let mut s = std::net::TcpStream::connect(self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .ok()?;
        read_response(&mut s, &mut Vec::new()).map(|r| r.status)
    }

    /// A line of `/proc/<pid>/status`, in kB.
    fn status_kb(&self, key: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim_start_matches(':').trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    let backend = Backend::start(Reply::Ok);
    // 64 descriptors in all (soft and hard). At that limit the house is full
    // (`[client.pressure]`); the grace keeps the idle clients from being
    // closed to make room, and the busy one's timeout stays long.
    let cfg = "workers = 1\n[client]\nheader_timeout = \"60s\"\nmax_requests_per_connection = 1000\n\
               [client.pressure]\nmin_keepalive_timeout = \"5s\"\ngrace = \"60s\"\n";
    let mut p = Limited::start("-n 64", cfg, backend.addr);
    // A keep-alive client served before the limit, with a pooled backend connection.
    let mut busy = std::net::TcpStream::connect(p.addr).unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    busy.write_all(get).unwrap();
    assert_eq!(read_response(&mut busy, &mut Vec::new()).unwrap().status, 200);
    // 80 idle clients: more than the process has descriptors for.
    let idle: Vec<std::net::TcpStream> = (0..80).map(|_| std::net::TcpStream::connect(p.addr).unwrap()).collect();
    assert!(wait_until(Duration::from_secs(5), || p.logged("out of file descriptors")));
    // It neither died nor spins: over a second at the limit it used little CPU.
    let pid = p.child.id();
    let before = cpu_ticks(pid);
    thread::sleep(Duration::from_secs(1)); // the window being measured, not a synchronisation
    let used = cpu_ticks(pid) - before;
    assert!(used < 30, "accept loop spun: {used} ticks in 1 s");
    assert!(p.alive(), "finguard died");
    // At the limit, the connection it holds is still served in full; with
    // the house full and nothing idle past its grace, the answer ends
    // keep-alive (`[client.pressure]`), so that the slot comes back.
    busy.write_all(get).unwrap();
    let r = read_response(&mut busy, &mut Vec::new()).expect("a response at the descriptor limit");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection").as_deref(), Some("close"), "{}", r.head);
    drop(idle);
    // Descriptors free again: the next client is served.
    assert!(wait_until(Duration::from_secs(10), || p.get() == Some(200)));
}

/// Connects `n` clients that each send an unfinished head of `bytes` bytes
/// and hold it; returns them (the head is never completed).
fn half_heads(addr: std::net::SocketAddr, n: usize, bytes: usize) -> Vec<std::net::TcpStream> {
    let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    while head.len() < bytes {
        head.extend_from_slice(b"X-Fill: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    (0..n)
        .filter_map(|_| {
            let mut s = std::net::TcpStream::connect(addr).ok()?;
            s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(&head).ok()?;
            Some(s)
        })
        .collect()
}

#[test]
fn under_an_address_space_cap_a_flood_of_large_heads_is_held_within_bounds() {
    let backend = Backend::start(Reply::Ok);
    // 256 connections, each allowed a 32 KiB head: finguard's buffers are
    // bounded by its config, well inside a 256 MiB address-space cap (its
    // runtime, heap and thread stacks included). Past the cap an allocation
    // would fail and the process abort.
    let cfg = "workers = 2\n[client]\nmax_connections = 256\nmax_header_bytes = \"32KiB\"\nheader_timeout = \"30s\"\n";
    let mut p = Limited::start("-v 262144", cfg, backend.addr);
    assert_eq!(p.get(), Some(200));
    // 600 clients each send 31 KiB of head and wait: 256 are held, the rest
    // wait in the kernel's backlog or are refused by it.
    let flood = half_heads(p.addr, 600, 31 * 1024);
    assert!(flood.len() >= 256, "only {} connected", flood.len());
    // And 100 more send heads over the limit: each gets 431, or waits.
    let over = half_heads(p.addr, 100, 40 * 1024);
    thread::sleep(Duration::from_secs(1)); // let finguard read what it was sent
    assert!(p.alive(), "finguard died under the cap:\n{}", p.log.lock().unwrap());
    let peak = p.status_kb("VmHWM");
    eprintln!("peak RSS {peak} kB, address space {} kB", p.status_kb("VmPeak"));
    drop(flood);
    drop(over);
    // It recovers: the next client is served.
    assert!(wait_until(Duration::from_secs(10), || p.get() == Some(200)));
    assert!(p.alive());
}

#[test]
fn past_max_connections_a_client_waits_in_the_backlog_then_is_served() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start("workers = 1\n[client]\nmax_connections = 2\n", backend.addr);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = p.connect();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().status, 200);
        held.push(s);
    }
    // The kernel completes the handshake, but finguard does not accept it yet.
    let mut third = p.connect();
    third.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    third.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 64];
    let early = std::io::Read::read(&mut third, &mut b);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "answered past max_connections: {early:?}"
    );
    drop(held.pop());
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        read_response(&mut third, &mut Vec::new())
            .expect("served once a permit is free")
            .status,
        200
    );
}

/// A connection to `to` from the loopback address `from`, so that one test
/// can play several client IPs.
fn connect_from(from: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn connections_refused_over_the_per_ip_limit_hold_no_slot_of_anyone_else() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        "workers = 1\n[client]\nmax_connections = 8\nmax_connections_per_ip = 2\nheader_timeout = \"30s\"\n",
        backend.addr,
    );
    // One address opens every slot's worth of connections: two are served
    // (their heads trickle in), six are refused and then trickle into the
    // refusal's lingering close, a byte at a time, never silent for
    // linger_timeout.
    let mut conns: Vec<std::net::TcpStream> = (0..8).map(|_| connect_from("127.0.0.2", p.addr)).collect();
    for c in &mut conns {
        c.write_all(b"G").unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate().skip(2) {
        let mut got = Vec::new();
        let head = read_head(c, &mut got);
        assert!(
            head.as_deref().is_some_and(|h| h.starts_with("HTTP/1.1 503 ")),
            "connection {i}: {head:?}"
        );
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        thread::spawn(move || {
            for _ in 0..100 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                for c in &mut conns {
                    let _ = c.write_all(b"E");
                }
                // The trickle's pace (under linger_timeout), not a wait for anything.
                thread::sleep(Duration::from_millis(500));
            }
        })
    };
    // Another address is served at once: the refused connections hold no slot.
    let mut other = connect_from("127.0.0.1", p.addr);
    other.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = read_response(&mut other, &mut Vec::new()).map(|r| r.status);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    trickle.join().unwrap();
    assert_eq!(answer, Some(200), "a second address was locked out");
}

#[test]
fn with_a_slot_free_a_new_connection_is_served_whichever_worker_the_kernel_picks() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        "workers = 2\n[client]\nmax_connections = 2\nkeepalive_timeout = \"60s\"\n",
        backend.addr,
    );
    let mut held = p.connect();
    held.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut held, &mut Vec::new()).unwrap().status, 200);
    // One slot is free: each new connection, whichever worker's socket the
    // kernel queues it on, is answered.
    let mut unanswered = Vec::new();
    for i in 0..10 {
        let mut c = p.connect();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        if read_response(&mut c, &mut Vec::new()).map(|r| r.status) != Some(200) {
            unanswered.push(i);
        }
    }
    assert!(unanswered.is_empty(), "unanswered within 2 s: {unanswered:?}");
}
