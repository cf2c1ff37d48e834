//! The soak: well-behaved load through finguard while buggy clients come and
//! go (idle-hold, slowloris, never-close, half-close, from finguard's own
//! simulator), a SIGHUP every period and a backend restart in the middle.
//! Loopback only, bounded in time and in connections.
//!
//!   cargo bench --bench soak                 # 10 periods of 60 s
//!   cargo bench --bench soak -- --smoke      # CI: 4 periods of 15 s
//!   FINGUARD_SOAK_PERIODS=N FINGUARD_SOAK_SECS=S   # override
//!   FINGUARD_SOAK_BUGGY=N                    # buggy connections per period, a quarter per kind (default 2500)
//!
//! Reported per period: requests of the well-behaved clients (sent,
//! complete, lost, 5xx), their p99, finguard's RSS and open descriptors, and
//! its sockets in CLOSE_WAIT and FIN_WAIT2 (from `/proc/net/tcp`). At the
//! end: descriptors and RSS against the start, after the clients are gone.
//! Needs nginx (the backend); says SKIPPED and exits 0 without it.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FINGUARD: &str = env!("CARGO_BIN_EXE_finguard");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn start_backend(dir: &Path, port: u16) -> Child {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("small"), "hello world\n").unwrap();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/backend.pid; error_log {d}/backend.err;\n\
         worker_rlimit_nofile 20000;\nevents {{ worker_connections 16384; }}\n\
         http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 5s;\n\
         server {{ listen 127.0.0.1:{port} backlog=4096 reuseport; root {d}/www; }} }}\n"
    );
    std::fs::write(dir.join("backend.conf"), conf).unwrap();
    let c = quiet(Command::new("nginx").arg("-c").arg(dir.join("backend.conf")));
    assert!(wait_port(port), "the backend did not start");
    c
}

/// Starts `cmd` with no input and its output thrown away.
fn quiet(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn")
}

fn stop(mut c: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// finguard's sockets in `state` (hex code) on the listener or towards the backend.
fn sockets_in(state: &str, listen: u16, backend: u16) -> usize {
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != state {
                continue;
            }
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0);
            if port(f[1]) == listen || port(f[2]) == backend {
                n += 1;
            }
        }
    }
    n
}

/// `finguard simulate` against finguard, as a child process with JSON out.
fn simulate(port: u16, scenario: &str, connections: usize, secs: u64) -> Child {
    Command::new(FINGUARD)
        .args([
            "simulate",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--scenario",
            scenario,
        ])
        .args([
            "--connections",
            &connections.to_string(),
            "--duration",
            &format!("{secs}s"),
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("finguard simulate")
}

/// (sent, complete, 5xx, p99 ms) from a well-behaved run's JSON.
fn well_behaved(out: &str) -> (u64, u64, u64, f64) {
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let five = v["statuses"].as_object().map_or(0, |m| {
        m.iter()
            .filter(|(s, _)| s.starts_with('5'))
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum()
    });
    let p99 = v["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN);
    (n("requests_sent"), n("responses_complete"), five, p99)
}

fn env_num(k: &str) -> Option<u64> {
    std::env::var(k).ok()?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let periods = env_num("FINGUARD_SOAK_PERIODS").unwrap_or(if smoke { 4 } else { 10 }) as usize;
    let secs = env_num("FINGUARD_SOAK_SECS").unwrap_or(if smoke { 15 } else { 60 });
    let buggy = env_num("FINGUARD_SOAK_BUGGY").unwrap_or(if smoke { 500 } else { 2500 }) as usize;
    if Command::new("nginx").arg("-v").output().is_err() {
        println!("soak: SKIPPED (nginx not found)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("finguard-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, admin, backend_port) = (free_port(), free_port(), free_port());
    let mut backend = start_backend(&dir, backend_port);
    let conf = dir.join("finguard.toml");
    std::fs::write(
        &conf,
        format!(
            "[[listener]]\naddr = \"127.0.0.1:{listen}\"\n[admin]\naddr = \"127.0.0.1:{admin}\"\n\
             [client]\nkeepalive_timeout = \"5s\"\nheader_timeout = \"5s\"\nmax_connections = 20000\n\
             [client.close]\nlinger_time = \"5s\"\nlinger_timeout = \"2s\"\n\
             [[backend]]\nname = \"b\"\naddrs = [\"127.0.0.1:{backend_port}\"]\nmax_connections = 256\n\
             [log]\naccess = \"off\"\nlevel = \"error\"\n"
        ),
    )
    .unwrap();
    let mut fg = quiet(Command::new(FINGUARD).args(["run", "-c"]).arg(&conf));
    assert!(wait_port(listen), "finguard did not start");
    let pid = fg.id();
    std::thread::sleep(Duration::from_millis(300));
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    println!(
        "soak: {periods} periods x {secs} s; each period 50 well-behaved clients and {buggy} buggy connections (idle-hold, slowloris, never-close, half-close: a quarter each)"
    );
    println!("start: RSS {rss0} KiB, {fds0} descriptors\n");
    println!("| period | sent | complete | lost | 5xx | p99 ms | RSS KiB | fds | CLOSE_WAIT | FIN_WAIT2 | event |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let (mut lost_total, mut five_total) = (0, 0);
    for period in 1..=periods {
        let control = simulate(listen, "well-behaved", 50, secs);
        let kinds = ["idle-hold", "slowloris", "never-close", "half-close"];
        let crowd: Vec<Child> = kinds.iter().map(|k| simulate(listen, k, buggy / 4, secs)).collect();
        let mut event = String::new();
        if period == periods / 2 + 1 {
            // The backend restarts mid-period: in-flight requests get 502/503, none hangs.
            std::thread::sleep(Duration::from_secs(secs / 2));
            stop(backend);
            backend = start_backend(&dir, backend_port);
            event.push_str("backend restarted; ");
        }
        let out = control.wait_with_output().expect("simulate");
        for c in crowd {
            let _ = c.wait_with_output();
        }
        let _ = Command::new("kill").arg("-HUP").arg(pid.to_string()).status();
        event.push_str("SIGHUP");
        let (sent, complete, five, p99) = well_behaved(&String::from_utf8_lossy(&out.stdout));
        // Sent and never answered: lost (a 502/503 is an answer).
        let lost = sent.saturating_sub(complete);
        lost_total += lost;
        five_total += five;
        println!(
            "| {period} | {sent} | {complete} | {lost} | {five} | {p99:.2} | {} | {} | {} | {} | {event} |",
            rss_kib(pid),
            fds(pid),
            sockets_in("08", listen, backend_port),
            sockets_in("05", listen, backend_port),
        );
    }
    // Every client is gone: what finguard still holds.
    std::thread::sleep(Duration::from_secs(8));
    let (rss1, fds1) = (rss_kib(pid), fds(pid));
    println!(
        "\nend: RSS {rss1} KiB ({:+} KiB), {fds1} descriptors (start {fds0}); CLOSE_WAIT {}, FIN_WAIT2 {}; lost {lost_total}, 5xx {five_total}",
        rss1 as i64 - rss0 as i64,
        sockets_in("08", listen, backend_port),
        sockets_in("05", listen, backend_port),
    );
    stop(backend);
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = fg.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
