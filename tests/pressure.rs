//! A full house (`[client.pressure]`): idle keep-alive connections are
//! closed by class to let newcomers in, never one with a request in flight
//! or within the grace window; keep-alive timeouts shrink under pressure;
//! the thresholds are checked.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const BOT: &str = "HoardBot/1.0";
const BROWSER: &str = "Mozilla/5.0 (hoarder)";

fn get(ua: &str, close: bool) -> String {
    let conn = if close { "close" } else { "keep-alive" };
    format!("GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: {ua}\r\nConnection: {conn}\r\n\r\n")
}

/// A keep-alive client connection that has had one answer.
struct Hoarder {
    s: TcpStream,
    buf: Vec<u8>,
    ua: &'static str,
    /// The last answer said `Connection: close`.
    told_close: bool,
}

impl Hoarder {
    /// Connects and gets one response within `limit`; `None` if it did not.
    fn open(addr: SocketAddr, ua: &'static str, limit: Duration) -> Option<Hoarder> {
        let s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(limit)).ok()?;
        let mut h = Hoarder {
            s,
            buf: Vec::new(),
            ua,
            told_close: false,
        };
        (h.ask()? == 200).then_some(h)
    }

    /// One request and its response; `None` when the connection ended first.
    fn ask(&mut self) -> Option<u16> {
        self.s.write_all(get(self.ua, false).as_bytes()).ok()?;
        let r = read_response(&mut self.s, &mut self.buf)?;
        self.told_close = r.header("connection").is_some_and(|v| v.contains("close"));
        Some(r.status)
    }

    /// Whether finguard has closed it (FIN) by now; a reset is a failure.
    fn closed(&self) -> bool {
        self.s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        let end = match (&self.s).read(&mut b) {
            Ok(0) => true,
            Ok(n) => panic!("{n} unexpected bytes on an idle connection"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("an idle connection ended with {e}, not a FIN"),
        };
        self.s.set_nonblocking(false).unwrap();
        end
    }
}

fn evictions(p: &Proxy, reason: &str, rule: &str) -> f64 {
    p.metric(&format!(
        "finguard_client_evictions_total{{reason=\"{reason}\",rule=\"{rule}\"}}"
    ))
}

fn all_evictions(p: &Proxy) -> f64 {
    let (_, text) = p.admin_get("/metrics");
    text.lines()
        .filter(|l| l.starts_with("finguard_client_evictions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Twice as many hoarders as slots, then newcomers at a steady rate: the
/// newcomers get in, the reclaimable crawlers go first and then the
/// longest idle, and nothing a backend answered is lost.
#[test]
fn newcomers_get_in_while_hoarders_are_evicted_by_class() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        r#"
[admin]
addr = "127.0.0.1:0"
[client]
max_connections = 20
keepalive_timeout = "60s"
[client.pressure]
min_keepalive_timeout = "60s"   # no scaling: every close here is an eviction
grace = "300ms"
[[user_agent]]
match = "HoardBot"
reclaim_first = true
"#,
        backend.addr,
    );
    let limit = Duration::from_secs(5);
    // The longest idle: nine browsers; then nine crawlers. The house is at
    // high water (18 of 20).
    // Each is idle on finguard's side before the next one comes: the line
    // is ordered by when finguard finished their responses.
    let idle_after = |ua| {
        let h = Hoarder::open(p.addr, ua, limit).expect("a slot was free");
        let port = h.s.local_addr().unwrap().port();
        assert!(wait_until(limit, || {
            let (_, body) = p.admin_get("/connections");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let mine = format!("127.0.0.1:{port}");
            v.as_array()
                .unwrap()
                .iter()
                .any(|c| c["peer"] == mine.as_str() && c["state"] == "idle")
        }));
        h
    };
    let browsers: Vec<Hoarder> = (0..9).map(|_| idle_after(BROWSER)).collect();
    let bots: Vec<Hoarder> = (0..9).map(|_| idle_after(BOT)).collect();
    // Past the grace window, all eighteen are in line, crawlers first.
    assert!(wait_until(limit, || {
        let (_, body) = p.admin_get("/connections");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|c| c["evict_rank"].is_u64())
            .count()
            == 18
    }));
    let (_, body) = p.admin_get("/connections");
    let line: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let first = line.iter().find(|c| c["evict_rank"] == 1).unwrap();
    assert_eq!(first["evict_reason"], "reclaim_first", "{first}");

    // Twenty-two more hoarders arrive one at a time (forty for twenty
    // slots); each gets in at once, an idle one closed to make room. Each
    // comes once one may be closed: after the eighteen above, the next is
    // the oldest of these, past its grace window only (eighteen arrivals
    // may take less than 300 ms). One that found nothing to close would be
    // told `Connection: close` (saturated, as designed): a close that is
    // no eviction.
    let mut late = Vec::new();
    for i in 0..22 {
        assert!(wait_until(limit, || {
            let (_, body) = p.admin_get("/connections");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v.as_array().unwrap().iter().any(|c| c["evict_rank"].is_u64())
        }));
        let h = Hoarder::open(p.addr, BROWSER, limit).unwrap_or_else(|| panic!("late hoarder {i} was locked out"));
        assert!(
            !h.told_close,
            "late hoarder {i} was told to close: nothing was closed to make room"
        );
        late.push(h);
        // Settled: nothing asked to close is still open, and every
        // connection closed so far was counted.
        assert!(wait_until(limit, || {
            let (_, body) = p.admin_get("/connections");
            let all = bots.iter().chain(browsers.iter()).chain(late.iter());
            let seen = all.filter(|h| h.closed()).count();
            !body.contains("\"evicting\"") && seen as f64 == all_evictions(&p)
        }));
        let bots_left = bots.iter().filter(|h| !h.closed()).count();
        let browsers_gone = browsers.iter().filter(|h| h.closed()).count();
        assert!(
            browsers_gone == 0 || bots_left == 0,
            "a browser went while {bots_left} crawlers were idle"
        );
        // The browsers go longest idle first: those gone are the first opened.
        let gone: Vec<bool> = browsers.iter().map(|h| h.closed()).collect();
        if !gone.windows(2).all(|w| w[0] || !w[1]) {
            let ports: Vec<u16> = browsers.iter().map(|h| h.s.local_addr().unwrap().port()).collect();
            let log = p.log();
            let room: Vec<&str> = log.lines().filter(|l| l.contains("room")).collect();
            panic!("{gone:?} {ports:?} {room:#?}");
        }
    }
    assert_eq!(evictions(&p, "reclaim_first", "HoardBot"), 9.0);
    assert!(bots.iter().all(|h| h.closed()));
    assert!(evictions(&p, "idle", "none") >= 1.0);

    // Now everyone hoards: a request every second on each connection, and
    // a new one when finguard closes it; newcomers arrive at 25/s.
    let stop = Arc::new(AtomicBool::new(false));
    let hoarders_answered = Arc::new(AtomicUsize::new(0));
    let mut pool = Vec::new();
    pool.extend(late);
    pool.extend(browsers.into_iter().filter(|h| !h.closed()));
    let mut threads = Vec::new();
    for mut h in pool {
        let (stop, answered, addr) = (stop.clone(), hoarders_answered.clone(), p.addr);
        threads.push(thread::spawn(move || {
            let mut reconnects = 0;
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_secs(1));
                match h.ask() {
                    Some(200) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                        if h.told_close {
                            // As clients do: the slot goes back at once.
                            let _ = h.s.shutdown(std::net::Shutdown::Both);
                        }
                    }
                    Some(s) => panic!("a hoarder got {s}"),
                    // Closed while idle (its request never reached the
                    // backend: checked below by the totals): reconnect.
                    None if reconnects < 20 => {
                        reconnects += 1;
                        match Hoarder::open(addr, BROWSER, Duration::from_secs(5)) {
                            Some(n) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                                h = n;
                            }
                            None => return,
                        }
                    }
                    None => return,
                }
            }
        }));
    }
    let newcomers = 100;
    let answered = Arc::new(AtomicUsize::new(0));
    let late_answers = Arc::new(AtomicUsize::new(0));
    let mut arrivals = Vec::new();
    let start = Instant::now();
    for i in 0..newcomers {
        let due = start + Duration::from_millis(40 * i);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let (answered, late_answers, addr) = (answered.clone(), late_answers.clone(), p.addr);
        arrivals.push(thread::spawn(move || {
            let asked = Instant::now();
            let Ok(mut s) = TcpStream::connect(addr) else { return };
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            if s.write_all(get("curl/8", true).as_bytes()).is_err() {
                return;
            }
            if let Some(r) = read_response(&mut s, &mut Vec::new()) {
                assert_eq!(r.status, 200);
                if asked.elapsed() < Duration::from_secs(2) {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    late_answers.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in arrivals {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let answered = answered.load(Ordering::Relaxed);
    let by = |r| evictions(&p, r, "none") + evictions(&p, r, "HoardBot");
    eprintln!(
        "newcomers answered within 2 s: {answered}/{newcomers}; evictions: reclaim_first {}, never_used {}, idle {}; admission waits {}",
        by("reclaim_first"),
        by("never_used"),
        by("idle"),
        p.metric("finguard_client_admission_waits_total"),
    );
    assert!(answered * 100 >= newcomers as usize * 99, "{answered}/{newcomers}");
    // No response lost: every request the backend saw was answered to its
    // client (the hoarders' first 40, their later ones, the newcomers').
    let backend_saw = backend.heads().len();
    let clients_got = 40 + hoarders_answered.load(Ordering::Relaxed) + answered + late_answers.load(Ordering::Relaxed);
    assert_eq!(
        backend_saw, clients_got,
        "a request reached the backend and its answer was lost"
    );
}

/// A client that sends its next request right after each response is
/// never closed to make room inside the grace window, even when its class
/// puts it first in line (a `reclaim_first` crawler): the browsers idle
/// past their grace go instead.
#[test]
fn a_client_busy_within_the_grace_window_is_never_evicted() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        r#"
[admin]
addr = "127.0.0.1:0"
[client]
max_connections = 24
keepalive_timeout = "30s"
max_requests_per_connection = 100000
[client.pressure]
scale_from = 0.4
high_water = 0.5
grace = "1s"
[[user_agent]]
match = "HoardBot"
reclaim_first = true
"#,
        backend.addr,
    );
    let limit = Duration::from_secs(5);
    let idle: Vec<Hoarder> = (0..11)
        .map(|_| Hoarder::open(p.addr, BROWSER, limit).unwrap())
        .collect();
    assert!(wait_until(limit, || {
        let (_, body) = p.admin_get("/connections");
        body.matches("\"evict_rank\"").count() == 11
    }));
    // Twelve of twenty-four slots: at high water.
    let mut busy = Hoarder::open(p.addr, BOT, limit).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Newcomers that stay: each one at high water makes one idle connection go.
    let newcomers = {
        let (stop, addr) = (stop.clone(), p.addr);
        thread::spawn(move || {
            let mut kept = Vec::new();
            while !stop.load(Ordering::Relaxed) && kept.len() < 11 {
                kept.push(Hoarder::open(addr, "curl/8", Duration::from_secs(5)).expect("a newcomer got in"));
                thread::sleep(Duration::from_millis(20));
            }
            kept
        })
    };
    // The crawler asks again at once after each answer, far inside the
    // 1 s grace, until every idle browser has been evicted around it.
    let mut served = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while served < 50_000 && Instant::now() < deadline {
        assert_eq!(
            busy.ask(),
            Some(200),
            "the busy client's connection was closed after {served}"
        );
        served += 1;
        if served % 50 == 0 && idle.iter().all(|h| h.closed()) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let kept = newcomers.join().unwrap();
    assert_eq!(kept.len(), 11);
    assert!(idle.iter().all(|h| h.closed()), "not every idle browser was evicted");
    assert_eq!(evictions(&p, "idle", "none"), 11.0);
    assert_eq!(evictions(&p, "reclaim_first", "HoardBot"), 0.0);
    assert_eq!(busy.ask(), Some(200));
}

/// Under pressure the next keep-alive wait is shorter: an idle connection
/// is closed long before its configured timeout, by the timeout (no
/// eviction, no `Connection: close`).
#[test]
fn keepalive_timeouts_shrink_under_pressure() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        r#"
[admin]
addr = "127.0.0.1:0"
[client]
max_connections = 10
keepalive_timeout = "60s"
[client.pressure]
scale_from = 0.1
high_water = 0.9
min_keepalive_timeout = "1s"
grace = "60s"
"#,
        backend.addr,
    );
    // Nine of ten slots: at high water once all are open.
    let mut conns: Vec<TcpStream> = (0..9).map(|_| p.connect()).collect();
    assert!(wait_until(Duration::from_secs(5), || {
        p.metric("finguard_client_pressure") >= 0.9
    }));
    // All asked at once, so that every idle wait starts at high water.
    for s in &mut conns {
        s.write_all(get(BROWSER, false).as_bytes()).unwrap();
    }
    for s in &mut conns {
        let r = read_response(s, &mut Vec::new()).expect("a response");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None, "{}", r.head);
    }
    // Closed by the shortened timeout: well inside the configured 60 s.
    for s in &mut conns {
        assert_eq!(peer_end(s, Duration::from_secs(20)), PeerEnd::Eof);
    }
    assert_eq!(all_evictions(&p), 0.0);
}

/// With no slot left and nothing idle past its grace, newcomers wait, are
/// counted, and responses end keep-alive so that slots come back.
#[test]
fn a_saturated_house_answers_with_connection_close_and_counts_the_waits() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        r#"
[admin]
addr = "127.0.0.1:0"
[client]
max_connections = 2
keepalive_timeout = "60s"
[client.pressure]
min_keepalive_timeout = "60s"
grace = "60s"
"#,
        backend.addr,
    );
    let mut a = Hoarder::open(p.addr, BROWSER, Duration::from_secs(5)).unwrap();
    let _b = Hoarder::open(p.addr, BROWSER, Duration::from_secs(5)).unwrap();
    // A third client waits: nothing is past its grace.
    let mut c = TcpStream::connect(p.addr).unwrap();
    c.write_all(get("curl/8", true).as_bytes()).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        p.metric("finguard_client_admission_waits_total") == 1.0
    }));
    // Saturated: the next response on `a` ends its keep-alive, and the
    // slot it frees lets the waiting client in.
    a.s.write_all(get(BROWSER, false).as_bytes()).unwrap();
    let r = read_response(&mut a.s, &mut a.buf).unwrap();
    assert_eq!(r.header("connection").as_deref(), Some("close"), "{}", r.head);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_response(&mut c, &mut Vec::new()).map(|r| r.status), Some(200));
    // Counted once, not once per look.
    assert_eq!(p.metric("finguard_client_admission_waits_total"), 1.0);
}

/// Out of descriptors before the occupancy says so (the limit lowered
/// under a running finguard, `prlimit`): each failed accept asks an idle
/// connection past its grace to close, and the newcomers get in.
#[test]
fn out_of_descriptors_idle_connections_make_room() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        // The pooled backend connections stay: a newcomer needs no new descriptor for one.
        "[admin]\naddr = \"127.0.0.1:0\"\n[client]\nkeepalive_timeout = \"60s\"\n[client.pressure]\ngrace = \"200ms\"\n\
         [[backend]]\nname = \"b\"\naddrs = [\"127.0.0.1:1\"]\npool_idle_timeout = \"60s\"\n",
        backend.addr,
    );
    let idle: Vec<Hoarder> = (0..10)
        .map(|_| Hoarder::open(p.addr, BROWSER, Duration::from_secs(5)).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(5), || {
        p.admin_get("/connections").1.matches("\"evict_rank\"").count() == 10
    }));
    // Fewer descriptors than it holds: none to spare until three are freed.
    let pid = p.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = format!("--nofile={}", open - 3);
    let ok = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status();
    if !ok.is_ok_and(|s| s.success()) {
        return require_peer("prlimit");
    }
    let answered = (0..6)
        .filter(|_| {
            let mut s = TcpStream::connect(p.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(get("curl/8", true).as_bytes()).unwrap();
            read_response(&mut s, &mut Vec::new()).is_some_and(|r| r.status == 200)
        })
        .count();
    assert_eq!(answered, 6);
    // An eviction is counted when it is asked; its FIN reaches the client
    // a moment later: the two are compared once they have settled.
    let gone = || idle.iter().filter(|h| h.closed()).count();
    assert!(
        wait_until(Duration::from_secs(5), || gone() >= 1
            && evictions(&p, "idle", "none") == gone() as f64),
        "{} idle connections closed, {} evictions counted",
        gone(),
        evictions(&p, "idle", "none")
    );
}

/// The thresholds reload on SIGHUP: a grace cut from a minute to nothing
/// puts the idle connections in line at once.
#[test]
fn the_thresholds_reload() {
    let backend = Backend::start(Reply::Ok);
    let text = |grace: &str| {
        format!("[admin]\naddr = \"127.0.0.1:0\"\n[client]\nkeepalive_timeout = \"60s\"\n[client.pressure]\ngrace = \"{grace}\"\n")
    };
    let p = Proxy::start(&text("60s"), backend.addr);
    let _idle = Hoarder::open(p.addr, BROWSER, Duration::from_secs(5)).unwrap();
    let in_line = || p.admin_get("/connections").1.contains("\"evict_rank\": 1");
    assert!(!in_line());
    std::fs::write(&p.config.0, text("0s")).unwrap();
    p.signal("HUP");
    assert!(wait_until(Duration::from_secs(5), in_line));
}

fn check(config: &str) -> (bool, String, String) {
    let f = TempFile::new("pressure.toml", config);
    let out = Command::new(BIN).arg("check").arg("-c").arg(&f.0).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn thresholds_are_checked_and_printed() {
    let (ok, out, _) = check("");
    assert!(ok);
    let t: toml::Table = toml::from_str(&out).unwrap();
    let pressure = &t["client"]["pressure"];
    assert_eq!(pressure["scale_from"].as_float(), Some(0.7));
    assert_eq!(pressure["high_water"].as_float(), Some(0.9));
    assert_eq!(pressure["min_keepalive_timeout"].as_str(), Some("1s"));
    assert_eq!(pressure["grace"].as_str(), Some("1s"));
    let (ok, out, _) = check("[[user_agent]]\nmatch = \"bot\"\nreclaim_first = true\n");
    assert!(ok);
    assert!(out.contains("reclaim_first = true"), "{out}");
    for (text, key, why) in [
        (
            "[client.pressure]\nhigh_water = 1.5\n",
            "client.pressure.high_water",
            "at most 1",
        ),
        (
            "[client.pressure]\nhigh_water = 0.0\n",
            "client.pressure.high_water",
            "above 0",
        ),
        (
            "[client.pressure]\nscale_from = 0.95\n",
            "client.pressure.scale_from",
            "must be <= high_water",
        ),
        (
            "[client.pressure]\nmin_keepalive_timeout = \"0s\"\n",
            "client.pressure.min_keepalive_timeout",
            "greater than 0",
        ),
        ("[client.pressure]\ngrace = \"soon\"\n", "client.pressure.grace", "soon"),
        ("[client.pressure]\nlow_water = 0.5\n", "low_water", "unknown field"),
        (
            "[[user_agent]]\nmatch = \"bot\"\nreclaim_first = \"yes\"\n",
            "user_agent[0].reclaim_first",
            "",
        ),
    ] {
        let (ok, _, err) = check(text);
        assert!(!ok, "{text} was accepted");
        assert!(err.contains("pressure.toml: "), "{err}");
        assert!(err.contains(key) && err.contains(why), "{text}: {err}");
    }
}
