//! The load comparison: finguard against nginx (one worker) and HAProxy (one
//! thread) as the proxy in front of the same nginx backend, plus the backend
//! directly as the ceiling. Backend and load generator share core 0; the
//! proxy under test has core 1 to itself. Rounds are interleaved (every
//! proxy once per workload per round) and the median is reported, as ratios
//! to nginx measured in the same run.
//!
//!   cargo bench --bench load               # full: 5 rounds x 5 s per cell, proxies in turn
//!   cargo bench --bench load -- --smoke    # CI: 1 round x 1 s per cell
//!   FINGUARD_LOAD_OUT=dir                  # where report.md / report.svg go (default target/load)
//!   FINGUARD_LOAD_ONLY="12 B,16 KiB"       # only workloads whose name contains one of these
//!   FINGUARD_LOAD_ROUNDS=1 FINGUARD_LOAD_SECS=3   # override rounds and seconds per cell
//!   FINGUARD_LOAD_ONLY=slow                # only the slow-client group
//!   FINGUARD_LOAD_ONLY=hoard               # only the full-house row (`load/hoard.rs`)
//!   FINGUARD_LOAD_ONLY=rss                 # only the memory rows (always measured first, on fresh processes)
//!
//! Then the slow-client group (`load/slow.rs`): each proxy with its defaults
//! in front of a real Apache prefork with 16 workers, slow readers or slow
//! uploaders outnumbering them, and the good client's fate beside them.
//!
//! TLS workloads terminate TLS at the proxy (a certificate made at run time);
//! the backend stays plain HTTP, so they have no direct ceiling. `h2` runs
//! h2load (10 streams per connection); its percentiles come from h2load's
//! per-request log.
//!
//! Needs nginx, haproxy, wrk, h2load and taskset (Debian packages); says
//! SKIPPED and exits 0 when one is missing. The slow group also needs apache2
//! and says SKIPPED on its own when it is missing.

#[path = "load/hoard.rs"]
mod hoard;
#[path = "load/slow.rs"]
mod slow;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FINGUARD: &str = env!("CARGO_BIN_EXE_finguard");
const PROXY_CORE: &str = "1";
const LOAD_CORE: &str = "0";
const IDLE_CONNS: usize = 2000;
/// The download rows' file: larger than every socket buffer and than
/// finguard's per-exchange memory, so a buffering proxy's disk path is in it.
const DOWNLOAD_BYTES: u64 = 200 << 20;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Proxy {
    Direct,
    Finguard,
    Nginx,
    Haproxy,
}

impl Proxy {
    const ALL: [Proxy; 4] = [Proxy::Direct, Proxy::Finguard, Proxy::Nginx, Proxy::Haproxy];
    fn name(self) -> &'static str {
        match self {
            Proxy::Direct => "direct (ceiling)",
            Proxy::Finguard => "finguard",
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "haproxy",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Workload {
    KeepAliveSmall,
    KeepAlive16k,
    KeepAlive16kStreamed,
    NewConnection,
    Concurrent1000,
    BesideBuggyClients,
    TlsKeepAlive,
    TlsH2,
    Download,
    DownloadStreamed,
}

impl Workload {
    const ALL: [Workload; 10] = [
        Workload::KeepAliveSmall,
        Workload::KeepAlive16k,
        Workload::KeepAlive16kStreamed,
        Workload::NewConnection,
        Workload::Concurrent1000,
        Workload::BesideBuggyClients,
        Workload::TlsKeepAlive,
        Workload::TlsH2,
        Workload::Download,
        Workload::DownloadStreamed,
    ];

    fn tls(self) -> bool {
        matches!(self, Workload::TlsKeepAlive | Workload::TlsH2)
    }
    fn name(self) -> &'static str {
        match self {
            Workload::KeepAliveSmall => "keep-alive, 12 B",
            Workload::KeepAlive16k => "keep-alive, 16 KiB",
            Workload::KeepAlive16kStreamed => "keep-alive, 16 KiB, finguard buffering off",
            Workload::NewConnection => "new connection per request",
            Workload::Concurrent1000 => "1000 concurrent connections",
            Workload::BesideBuggyClients => "50 clients beside 2000 idle-hold",
            Workload::TlsKeepAlive => "TLS 1.3 keep-alive, 12 B",
            Workload::TlsH2 => "TLS h2, 50 conns x 10 streams",
            Workload::Download => "200 MiB download, one client",
            Workload::DownloadStreamed => "200 MiB download, finguard buffering off",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Connections the backend accepted per 1,000 requests it served.
    backend_conns_per_1k: f64,
    /// The proxy's own CPU time (user + system, all its processes) per
    /// request: what it costs, even when the load generator is the limit.
    cpu_us_per_req: f64,
}

/// CPU time (user + system, in clock ticks) of a process and its children.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let own: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        })
        .unwrap_or(0);
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    own + children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(cpu_ticks)
        .sum::<u64>()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The backend's own counters (nginx stub_status): (accepted connections, requests).
fn backend_counters(port: u16) -> (u64, u64) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, 0);
    };
    let _ = s.write_all(b"GET /stub HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    // "... server accepts handled requests\n A H R \n ..."
    let nums: Vec<u64> = text
        .lines()
        .skip_while(|l| !l.contains("accepts handled requests"))
        .nth(1)
        .map(|l| l.split_whitespace().filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    (nums.first().copied().unwrap_or(0), nums.get(2).copied().unwrap_or(0))
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    /// SIGTERM first: a SIGKILLed nginx master leaves its workers running
    /// (orphans that kept serving, and spinning, after a run).
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        for c in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pinned(core: &str, prog: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", core, prog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn start_backend(dir: &Path, port: u16) -> Child {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("small"), "hello world\n").unwrap();
    std::fs::write(www.join("16k"), vec![b'x'; 16 * 1024]).unwrap();
    // The 16 KiB and download rows: each file under two paths (finguard
    // buffers responses on one route and streams them on the other).
    let big = std::fs::File::create(www.join("200m")).unwrap();
    big.set_len(DOWNLOAD_BYTES).unwrap();
    std::fs::create_dir_all(www.join("streamed")).unwrap();
    std::fs::hard_link(www.join("200m"), www.join("streamed/200m")).unwrap();
    std::fs::hard_link(www.join("16k"), www.join("streamed/16k")).unwrap();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/backend.pid; error_log {d}/backend.err;\n\
         worker_rlimit_nofile 20000;\nevents {{ worker_connections 16384; }}\n\
         http {{ access_log off; keepalive_requests 1000000; server {{ listen 127.0.0.1:{port} backlog=4096; root {d}/www;\n\
         location = /stub {{ stub_status; }} }} }}\n"
    );
    std::fs::write(dir.join("backend.conf"), conf).unwrap();
    let c = pinned(LOAD_CORE, "nginx")
        .arg("-c")
        .arg(dir.join("backend.conf"))
        .spawn()
        .expect("nginx");
    wait_port(port);
    c
}

/// A self-signed certificate for 127.0.0.1, as PEM files in `dir`:
/// (cert, key, cert+key for HAProxy), and a client config that trusts it.
fn make_cert(dir: &Path) -> ((PathBuf, PathBuf, PathBuf), std::sync::Arc<rustls::ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let (cert, key) = (ck.cert.pem(), ck.key_pair.serialize_pem());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let paths = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("both.pem"));
    std::fs::write(&paths.0, &cert).unwrap();
    std::fs::write(&paths.1, &key).unwrap();
    std::fs::write(&paths.2, format!("{cert}{key}")).unwrap();
    (paths, std::sync::Arc::new(client))
}

/// The request each proxy sends the backend carries the same headers as
/// finguard's (its default `forwarded = "x-forwarded"`: the client's Host,
/// X-Forwarded-For, -Proto and -Host), so that the backend parses the same
/// request behind each: without them nginx sent 32 bytes where finguard
/// sent 134, and the backend shares the load core with wrk.
const NGINX_FORWARDED: &str = "proxy_set_header Host $http_host; \
     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
     proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $http_host;";
const HAPROXY_FORWARDED: &str = "option forwardfor\n\
     http-request set-header X-Forwarded-Proto https if { ssl_fc }\n\
     http-request set-header X-Forwarded-Proto http if !{ ssl_fc }\n\
     http-request set-header X-Forwarded-Host %[req.hdr(host)]\n";

fn start_proxy(p: Proxy, dir: &Path, port: u16, tls_port: u16, backend: u16) -> Option<Child> {
    let d = dir.display();
    let (cert, key, both) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("both.pem"));
    let (cert, key, both) = (cert.display(), key.display(), both.display());
    let child = match p {
        Proxy::Direct => return None,
        Proxy::Finguard => {
            let conf = format!(
                "[[listener]]\naddr = \"127.0.0.1:{port}\"\n[[listener]]\naddr = \"127.0.0.1:{tls_port}\"\n\
                 tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n[client]\nmax_requests_per_connection = 1000000\nkeepalive_timeout = \"60s\"\n\
                 max_connections = 20000\n[[backend]]\nname = \"b\"\naddrs = [\"127.0.0.1:{backend}\"]\nmax_connections = 1024\n\
                 pool_max_idle = 1024\npool_idle_timeout = \"30s\"\n\
                 [[route]]\npath_prefix = \"/streamed/\"\nbackend = \"b\"\nresponse_buffering = false\n\
                 [[route]]\npath_prefix = \"/\"\nbackend = \"b\"\n[log]\naccess = \"off\"\nlevel = \"error\"\n"
            );
            std::fs::write(dir.join("finguard.toml"), conf).unwrap();
            pinned(PROXY_CORE, FINGUARD)
                .args(["run", "-c"])
                .arg(dir.join("finguard.toml"))
                .spawn()
        }
        Proxy::Nginx => {
            let conf = format!(
                "worker_processes 1; daemon off; pid {d}/proxy.pid; error_log {d}/proxy.err;\nworker_rlimit_nofile 20000;\n\
                 events {{ worker_connections 16384; }}\n\
                 http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 60s;\n\
                 upstream b {{ server 127.0.0.1:{backend}; keepalive 1024; }}\n\
                 server {{ listen 127.0.0.1:{port} backlog=4096; listen 127.0.0.1:{tls_port} ssl http2;\n\
                 ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;\n\
                 location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                 {NGINX_FORWARDED} }} }} }}\n"
            );
            std::fs::write(dir.join("proxy-nginx.conf"), conf).unwrap();
            pinned(PROXY_CORE, "nginx")
                .arg("-c")
                .arg(dir.join("proxy-nginx.conf"))
                .spawn()
        }
        Proxy::Haproxy => {
            let conf = format!(
                "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
                 option http-keep-alive\nfrontend f\n  bind 127.0.0.1:{port}\n  bind 127.0.0.1:{tls_port} ssl crt {both} alpn h2,http/1.1\n\
                 {HAPROXY_FORWARDED}default_backend b\nbackend b\n  http-reuse always\n\
                 server s1 127.0.0.1:{backend} maxconn 1024\n"
            );
            std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
            pinned(PROXY_CORE, "haproxy")
                .args(["-db", "-f"])
                .arg(dir.join("haproxy.cfg"))
                .spawn()
        }
    };
    let c = child.expect("start proxy");
    wait_port(port);
    wait_port(tls_port);
    Some(c)
}

fn parse_ms(v: &str) -> f64 {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * mult
}

fn wrk(port: u16, path: &str, conns: usize, secs: u64, extra: &[&str]) -> Sample {
    let out = Command::new("taskset")
        .args(["-c", LOAD_CORE, "wrk", "-t1", "--latency"])
        .args(["-c", &conns.to_string(), "-d", &format!("{secs}s"), "--timeout", "5s"])
        .args(extra)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("wrk");
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_wrk(text: &str) -> Sample {
    let mut s = Sample::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => s.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => s.p50_ms = parse_ms(v),
            ["99%", v] => s.p99_ms = parse_ms(v),
            _ => {}
        }
    }
    s
}

fn h2load(port: u16, secs: u64) -> Sample {
    // Per-request latencies from h2load's log (start µs, status, µs to the
    // end of the response): its own summary has no percentiles.
    let log = std::env::temp_dir().join(format!("finguard-h2load-{}-{port}.tsv", std::process::id()));
    let out = Command::new("taskset")
        .args([
            "-c",
            LOAD_CORE,
            "h2load",
            "-c",
            "50",
            "-m",
            "10",
            "-t",
            "1",
            "-D",
            &secs.to_string(),
        ])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("https://127.0.0.1:{port}/small"))
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut s = Sample::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 5.00s, 12345.67 req/s, 1.23MB/s"
            s.rps = rest
                .split(", ")
                .nth(1)
                .and_then(|v| v.trim_end_matches(" req/s").parse().ok())
                .unwrap_or(0.0);
        }
    }
    let mut micros: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    let _ = std::fs::remove_file(&log);
    micros.sort_unstable();
    let pct = |p: f64| {
        if micros.is_empty() {
            return f64::NAN;
        }
        let i = ((micros.len() as f64 * p).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    s.p50_ms = pct(0.50);
    s.p99_ms = pct(0.99);
    s
}

fn run_cell(w: Workload, port: u16, secs: u64) -> Sample {
    match w {
        Workload::TlsKeepAlive => {
            let out_port = port;
            let s = Command::new("taskset")
                .args([
                    "-c",
                    LOAD_CORE,
                    "wrk",
                    "-t1",
                    "--latency",
                    "-c",
                    "50",
                    "-d",
                    &format!("{secs}s"),
                ])
                .arg(format!("https://127.0.0.1:{out_port}/small"))
                .output()
                .expect("wrk");
            parse_wrk(&String::from_utf8_lossy(&s.stdout))
        }
        Workload::TlsH2 => h2load(port, secs),
        Workload::KeepAliveSmall => wrk(port, "/small", 50, secs, &[]),
        Workload::KeepAlive16k => wrk(port, "/16k", 50, secs, &[]),
        Workload::KeepAlive16kStreamed => wrk(port, "/streamed/16k", 50, secs, &[]),
        Workload::NewConnection => wrk(port, "/small", 50, secs, &["-H", "Connection: close"]),
        Workload::Concurrent1000 => wrk(port, "/small", 1000, secs, &[]),
        Workload::Download => wrk(port, "/200m", 1, secs, &[]),
        Workload::DownloadStreamed => wrk(port, "/streamed/200m", 1, secs, &[]),
        Workload::BesideBuggyClients => {
            let mut sim = pinned(LOAD_CORE, FINGUARD)
                .args([
                    "simulate",
                    "--scenario",
                    "idle-hold",
                    "--target",
                    &format!("127.0.0.1:{port}"),
                ])
                .args([
                    "--connections",
                    &IDLE_CONNS.to_string(),
                    "--duration",
                    &format!("{}s", secs + 3),
                ])
                .spawn()
                .expect("simulate");
            // Let the idle connections open before measuring.
            std::thread::sleep(Duration::from_secs(2));
            let s = wrk(port, "/small", 50, secs, &[]);
            let _ = sim.wait();
            s
        }
    }
}

/// RSS of a process and its children (nginx's master and worker).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let own: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let kids: u64 = children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .filter_map(rss_kib)
        .sum();
    Some(own + kids)
}

/// An idle keep-alive client connection, plain or TLS.
enum Held {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

/// Connections opened, answered and closed before the idle ones are
/// counted: the first requests of a kind fault the code that serves them
/// into memory and warm the allocator, once per process, not per
/// connection (finguard's first 2,000 plain connections measured 774 B
/// each counted from a fresh process, 414 B after this warm-up; nginx's
/// 741 B and 475 B).
const RSS_WARMUP: usize = 200;

/// RSS per idle connection (bytes): after a warm-up, and counted from
/// before it (one-time costs included).
#[derive(Clone, Copy)]
struct Rss {
    warm: f64,
    cold: f64,
}

/// One idle keep-alive connection that has had one answer.
fn open_idle(addr: SocketAddr, tls: Option<&std::sync::Arc<rustls::ClientConfig>>) -> Option<Held> {
    let s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut c = match tls {
        None => Held::Plain(s),
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
            let conn = rustls::ClientConnection::new(cfg.clone(), name).ok()?;
            Held::Tls(Box::new(rustls::StreamOwned::new(conn, s)))
        }
    };
    let io: &mut dyn ReadWrite = match &mut c {
        Held::Plain(s) => s,
        Held::Tls(s) => &mut **s,
    };
    io.write_all(b"GET /small HTTP/1.1\r\nHost: b\r\n\r\n").ok()?;
    let mut buf = [0u8; 1024];
    let _ = io.read(&mut buf);
    Some(c)
}

/// RSS growth per idle keep-alive connection (bytes), for a proxy process:
/// `n` connections that have each had one answer, held open. With `tls`,
/// TLS connections (TLS 1.3, rustls client). Counted after `warmup`
/// connections of the same kind came and went ([`RSS_WARMUP`]), and from
/// before them.
fn rss_per_idle(
    pid: u32,
    port: u16,
    n: usize,
    warmup: usize,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Option<Rss> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let fresh = rss_kib(pid)?;
    let warm: Vec<Held> = (0..warmup).map(|_| open_idle(addr, tls)).collect::<Option<_>>()?;
    std::thread::sleep(Duration::from_millis(500));
    drop(warm);
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(pid)?;
    let held: Vec<Held> = (0..n).map(|_| open_idle(addr, tls)).collect::<Option<_>>()?;
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid)?;
    drop(held);
    // Let the server notice the closes before the next measurement.
    std::thread::sleep(Duration::from_millis(300));
    let per = |from: u64| (after.saturating_sub(from) as f64 * 1024.0) / n as f64;
    Some(Rss {
        warm: per(before),
        cold: per(fresh),
    })
}

/// Requests per second: whole numbers, except for the few large downloads.
fn rate(rps: f64) -> String {
    if rps < 100.0 {
        format!("{rps:.2}")
    } else {
        format!("{rps:.0}")
    }
}
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == slow::GOOD_CLIENT_ARG) {
        slow::good_client_main(&args[i + 1..]);
        return;
    }
    let smoke = args.iter().any(|a| a == "--smoke") || std::env::var_os("FINGUARD_LOAD_SMOKE").is_some();
    let missing: Vec<&str> = ["nginx", "haproxy", "wrk", "taskset"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        println!("SKIPPED: the load comparison needs {missing:?} (apt-get install nginx haproxy wrk util-linux)");
        return;
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Five rounds: on a shared 2-core machine one round in three can be
    // 20% off; the median of five is steadier.
    let (rounds, secs) = if smoke { (1, 1) } else { (5, 5) };
    let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let rounds = env_num("FINGUARD_LOAD_ROUNDS").map_or(rounds, |r| r.max(1) as usize);
    let secs = env_num("FINGUARD_LOAD_SECS").unwrap_or(secs).max(1);
    let only = std::env::var("FINGUARD_LOAD_ONLY").ok();
    // A workload, group or row is run when `FINGUARD_LOAD_ONLY` is unset or
    // one of its keys is part of the name.
    let in_only = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|k| name.contains(k.trim())))
    };
    let selected = |w: &Workload| in_only(w.name());
    let out_dir = PathBuf::from(std::env::var("FINGUARD_LOAD_OUT").unwrap_or_else(|_| "target/load".into()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let dir = std::env::temp_dir().join(format!("finguard-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let backend_port = free_port();
    let (_, tls_client) = make_cert(&dir);
    let mut procs = Procs(vec![start_backend(&dir, backend_port)]);
    let mut ports = BTreeMap::new();
    let mut tls_ports = BTreeMap::new();
    let mut pids = BTreeMap::new();
    for p in Proxy::ALL {
        let port = if p == Proxy::Direct { backend_port } else { free_port() };
        let tls_port = free_port();
        if let Some(c) = start_proxy(p, &dir, port, tls_port, backend_port) {
            pids.insert(p, c.id());
            procs.0.push(c);
        }
        ports.insert(p, port);
        tls_ports.insert(p, tls_port);
    }
    // Memory first, on fresh processes: after the load, allocator caches hide it.
    let idle_n = if smoke { 200 } else { IDLE_CONNS };
    let warmup = if smoke { 50 } else { RSS_WARMUP };
    let mut rss = BTreeMap::new();
    for p in Proxy::ALL {
        let pid = if p == Proxy::Direct { procs.0[0].id() } else { pids[&p] };
        if let Some(b) = rss_per_idle(pid, ports[&p], idle_n, warmup, None) {
            // The backend speaks plain HTTP only.
            let tls = (p != Proxy::Direct)
                .then(|| rss_per_idle(pid, tls_ports[&p], idle_n, warmup, Some(&tls_client)))
                .flatten();
            rss.insert(p, (b, tls));
        }
    }
    eprintln!("load: {rounds} round(s) x {secs} s per cell, proxies on core {PROXY_CORE}, backend and wrk on core {LOAD_CORE}");
    let mut samples: BTreeMap<(Workload, Proxy), Vec<Sample>> = BTreeMap::new();
    let tick_hz = ticks_per_sec();
    for round in 0..rounds {
        for w in Workload::ALL.into_iter().filter(selected) {
            // Each round starts with the next proxy: none always runs right
            // after the same other one (a cell inherits the TIME_WAIT
            // sockets, pooled connections and page cache the one before
            // left), nor always first or last in the round.
            let n = Proxy::ALL.len();
            for p in (0..n).map(|i| Proxy::ALL[(i + round) % n]) {
                if w.tls() && p == Proxy::Direct {
                    continue; // the backend speaks plain HTTP
                }
                let port = if w.tls() { tls_ports[&p] } else { ports[&p] };
                let (a0, r0) = backend_counters(backend_port);
                let pid = if p == Proxy::Direct {
                    None
                } else {
                    pids.get(&p).copied()
                };
                let cpu0 = pid.map_or(0, cpu_ticks);
                let mut s = run_cell(w, port, secs);
                let cpu1 = pid.map_or(0, cpu_ticks);
                let (a1, r1) = backend_counters(backend_port);
                let served = s.rps * secs as f64;
                s.cpu_us_per_req = if pid.is_some() && served > 0.0 {
                    (cpu1.saturating_sub(cpu0)) as f64 / tick_hz * 1e6 / served
                } else {
                    f64::NAN
                };
                // Each reading is itself one connection and one request.
                let (conns, reqs) = (a1.saturating_sub(a0 + 1), r1.saturating_sub(r0 + 1));
                s.backend_conns_per_1k = conns as f64 * 1000.0 / reqs.max(1) as f64;
                eprintln!(
                    "round {} {:<34} {:<16} {:>10.0} req/s  p99 {:.2} ms  cpu {:.1} us/req",
                    round + 1,
                    w.name(),
                    p.name(),
                    s.rps,
                    s.p99_ms,
                    s.cpu_us_per_req
                );
                samples.entry((w, p)).or_default().push(s);
            }
        }
    }
    let full_house = in_only("hoard").then(|| hoard::run(&dir, backend_port, &hoard::Plan::new(smoke)));
    drop(procs);
    let mut report = render(&samples, &rss, rounds, secs, (idle_n, warmup));
    if let Some(h) = full_house {
        report.push('\n');
        report.push_str(&h);
    }
    if in_only("slow") {
        report.push('\n');
        report.push_str(&slow::run(&dir, &slow::Plan::new(smoke)));
    }
    std::fs::write(out_dir.join("report.md"), &report).unwrap();
    std::fs::write(out_dir.join("report.svg"), chart(&samples)).unwrap();
    println!("{report}");
    println!("written: {}/report.md and report.svg", out_dir.display());
    let _ = std::fs::remove_dir_all(&dir);
}

fn med(samples: &BTreeMap<(Workload, Proxy), Vec<Sample>>, w: Workload, p: Proxy) -> Sample {
    let v = samples.get(&(w, p)).cloned().unwrap_or_default();
    Sample {
        rps: median(v.iter().map(|s| s.rps).collect()),
        p50_ms: median(v.iter().map(|s| s.p50_ms).collect()),
        p99_ms: median(v.iter().map(|s| s.p99_ms).collect()),
        backend_conns_per_1k: median(v.iter().map(|s| s.backend_conns_per_1k).collect()),
        cpu_us_per_req: median(v.iter().map(|s| s.cpu_us_per_req).collect()),
    }
}

/// The spread of `p`'s req/s over nginx's, round by round (in a round, a
/// workload's cells run one after the other, seconds apart): a row whose
/// range spans 1.00 is within this machine's noise, whatever its median
/// says.
fn round_ratios(samples: &BTreeMap<(Workload, Proxy), Vec<Sample>>, w: Workload, p: Proxy) -> String {
    let (Some(mine), Some(nginx)) = (samples.get(&(w, p)), samples.get(&(w, Proxy::Nginx))) else {
        return "-".to_string();
    };
    let ratios: Vec<f64> = mine.iter().zip(nginx).map(|(m, n)| m.rps / n.rps.max(1e-9)).collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if ratios.is_empty() {
        "-".to_string()
    } else {
        format!("{min:.2}–{max:.2}")
    }
}

fn render(
    samples: &BTreeMap<(Workload, Proxy), Vec<Sample>>,
    rss: &BTreeMap<Proxy, (Rss, Option<Rss>)>,
    rounds: usize,
    secs: u64,
    (idle_n, warmup): (usize, usize),
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## Load comparison ({rounds} round(s) x {secs} s per cell, medians; ratios are to nginx in the same run)\n"
    );
    let _ = writeln!(
        o,
        "| workload | proxy | req/s | × nginx | × nginx by round (min–max) | p50 ms | p99 ms | p99 × nginx | proxy CPU µs/req | CPU × nginx | backend conns / 1k req |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for w in Workload::ALL {
        let n = med(samples, w, Proxy::Nginx);
        for p in Proxy::ALL {
            if !samples.contains_key(&(w, p)) {
                continue;
            }
            let s = med(samples, w, p);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} |",
                w.name(),
                p.name(),
                rate(s.rps),
                s.rps / n.rps.max(1e-9),
                round_ratios(samples, w, p),
                s.p50_ms,
                s.p99_ms,
                s.p99_ms / n.p99_ms.max(1e-9),
                s.cpu_us_per_req,
                s.cpu_us_per_req / n.cpu_us_per_req,
                s.backend_conns_per_1k
            );
        }
    }
    let downloads = samples.keys().any(|(w, _)| {
        matches!(
            w,
            Workload::Download | Workload::DownloadStreamed | Workload::KeepAlive16kStreamed
        )
    });
    if downloads {
        let _ = writeln!(
            o,
            "\nDownload rows: each request is {} MiB (req/s × {} = MiB/s). Rows marked \"finguard buffering off\" \
         go through a finguard route with `response_buffering = false` (the other proxies serve them as usual): \
         what buffering costs a fast client.",
            DOWNLOAD_BYTES >> 20,
            DOWNLOAD_BYTES >> 20
        );
    }
    let _ = writeln!(
        o,
        "\n| proxy | RSS per idle keep-alive connection ({idle_n} held) | × nginx | with one-time costs | × nginx \
         | RSS per idle TLS 1.3 connection | × nginx | with one-time costs | × nginx |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (nginx, nginx_tls) = rss
        .get(&Proxy::Nginx)
        .copied()
        .map_or((None, None), |(b, t)| (Some(b), t));
    // "B | × nginx" for one figure.
    let cell = |v: Option<f64>, n: Option<f64>| match (v, n) {
        (Some(v), Some(n)) => format!("{v:.0} B | {:.2}", v / n),
        (Some(v), None) => format!("{v:.0} B | -"),
        _ => "- | -".to_string(),
    };
    for (p, (b, tls)) in rss {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            p.name(),
            cell(Some(b.warm), nginx.map(|n| n.warm)),
            cell(Some(b.cold), nginx.map(|n| n.cold)),
            cell(tls.map(|t| t.warm), nginx_tls.map(|n| n.warm)),
            cell(tls.map(|t| t.cold), nginx_tls.map(|n| n.cold)),
        );
    }
    let _ = writeln!(
        o,
        "\nRSS growth over the idle connections, counted after {warmup} connections of the same kind came and went \
         (the first requests fault in the code that serves them and warm the allocator, once per process), \
         and, \"with one-time costs\", counted from before them."
    );
    o
}

/// Throughput relative to nginx, per workload and proxy, as an SVG bar chart.
fn chart(samples: &BTreeMap<(Workload, Proxy), Vec<Sample>>) -> String {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n_w = Workload::ALL.len();
        let max = Workload::ALL
            .iter()
            .flat_map(|w| Proxy::ALL.iter().map(move |p| (w, p)))
            .map(|(w, p)| med(samples, *w, *p).rps / med(samples, *w, Proxy::Nginx).rps.max(1e-9))
            .fold(1.0f64, f64::max);
        let Ok(mut c) = ChartBuilder::on(&root)
            .caption("req/s relative to nginx (1.0), per workload", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n_w as f64, 0f64..max * 1.1)
        else {
            return svg_fallback();
        };
        let _ = c
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n_w)
            .x_label_formatter(&|x| {
                Workload::ALL
                    .get(*x as usize)
                    .map_or(String::new(), |w| w.name().to_string())
            })
            .x_label_style(("sans-serif", 9))
            .draw();
        let colors = [
            RGBColor(150, 150, 150),
            RGBColor(214, 39, 40),
            RGBColor(31, 119, 180),
            RGBColor(44, 160, 44),
        ];
        for (pi, p) in Proxy::ALL.iter().enumerate() {
            let color = colors[pi];
            let bars = Workload::ALL.iter().enumerate().map(|(wi, w)| {
                let v = med(samples, *w, *p).rps / med(samples, *w, Proxy::Nginx).rps.max(1e-9);
                let x0 = wi as f64 + 0.1 + pi as f64 * 0.2;
                Rectangle::new([(x0, 0.0), (x0 + 0.18, v)], color.filled())
            });
            if let Ok(a) = c.draw_series(bars) {
                a.label(p.name())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
            }
        }
        let _ = c
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw();
        let _ = root.present();
    }
    svg
}

fn svg_fallback() -> String {
    "<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_string()
}
