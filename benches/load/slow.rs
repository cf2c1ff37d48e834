//! The slow-client rows: a real Apache prefork with few workers behind each
//! proxy, with its default configuration, while slow clients (24 readers of a
//! 24 MiB file at 4 KiB / 0.2 s, or 24 uploaders of 512 KiB at 200 B / 0.5 s,
//! `finguard simulate`) outnumber Apache's 16 workers, and one well-behaved
//! keep-alive client asks for a small page. Reported: what the good client
//! got (answered, failed, rate, p99) and how long each slow exchange held an
//! Apache worker, from Apache's own log (`%D`, begun during the attack).
//!
//! Every cell starts a fresh Apache and a fresh proxy, and ends by killing
//! the slow clients, so nothing carries over. Skipped, with a line saying so,
//! where `apache2` is missing.

use super::{free_port, pinned, wait_port, Proxy, FINGUARD, LOAD_CORE, PROXY_CORE};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const APACHE: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";
/// Apache prefork's workers (`MaxRequestWorkers`): fewer than the slow clients.
const WORKERS: usize = 16;
const SLOW_CLIENTS: usize = 24;
const BIG_BYTES: usize = 24 << 20;
const UPLOAD: &str = "512KiB";
/// The good client's patience for one request (connect included).
const GOOD_TIMEOUT: Duration = Duration::from_secs(2);
/// The argument that makes this bench binary the good client (run pinned,
/// like wrk, on the load core).
pub const GOOD_CLIENT_ARG: &str = "--good-client";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Attack {
    None,
    SlowRead,
    SlowPost,
}

impl Attack {
    pub fn name(self) -> &'static str {
        match self {
            Attack::None => "no attack (good client alone)",
            Attack::SlowRead => "24 slow readers (24 MiB, 4 KiB / 0.2 s)",
            Attack::SlowPost => "24 slow uploaders (512 KiB, 200 B / 0.5 s)",
        }
    }
    /// Apache's request line of a slow exchange (method and path in its log).
    fn request(self) -> &'static str {
        match self {
            Attack::SlowPost => "POST /cgi-bin/sink",
            _ => "GET /big",
        }
    }
}

/// One cell: one proxy under one attack.
#[derive(Debug, Default, Clone)]
pub struct Cell {
    pub answered: u64,
    pub failed: u64,
    pub rps: f64,
    pub p99_ms: f64,
    /// Apache's `%D` (ms) of each slow exchange it began serving during the attack.
    pub holds_ms: Vec<f64>,
    /// Of those, the ones still holding their worker when the attack ended.
    pub held_at_end: usize,
}

/// A prefork Apache in its own process group (its workers and CGIs go with it).
struct Apache {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Apache {
    fn start(dir: &Path, www: &Path) -> Apache {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let (d, w) = (dir.display(), www.display());
        let conf = format!(
            r#"ServerRoot "{d}"
ServerName localhost
DefaultRuntimeDir "{d}"
LoadModule mpm_prefork_module {MODULES}/mod_mpm_prefork.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule alias_module {MODULES}/mod_alias.so
LoadModule cgi_module {MODULES}/mod_cgi.so
Listen 127.0.0.1:{port}
User www-data
Group www-data
PidFile {d}/httpd.pid
ErrorLog {d}/error.log
StartServers {WORKERS}
MinSpareServers {WORKERS}
MaxSpareServers {WORKERS}
ServerLimit {WORKERS}
MaxRequestWorkers {WORKERS}
DocumentRoot "{w}/htdocs"
<Directory "{w}">
  Require all granted
</Directory>
ScriptAlias /cgi-bin/ "{w}/cgi-bin/"
LogFormat "%{{begin:msec}}t %D %>s %m %U %{{remote}}p %k" hold
CustomLog {d}/access.log hold
"#
        );
        std::fs::write(dir.join("httpd.conf"), conf).unwrap();
        let child = pinned(LOAD_CORE, APACHE)
            .process_group(0)
            .args(["-D", "FOREGROUND", "-f"])
            .arg(dir.join("httpd.conf"))
            .spawn()
            .expect("apache2");
        wait_port(port);
        Apache {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// The documents: a small page, the 24 MiB file, and a CGI that reads its
/// whole body before it answers.
fn write_site(www: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(www.join("htdocs")).unwrap();
    std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
    std::fs::write(www.join("htdocs/small"), "hello world\n").unwrap();
    std::fs::write(www.join("htdocs/big"), vec![b'b'; BIG_BYTES]).unwrap();
    let sink = www.join("cgi-bin/sink");
    std::fs::write(
        &sink,
        "#!/bin/sh\ncat >/dev/null\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'\n",
    )
    .unwrap();
    std::fs::set_permissions(&sink, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The proxy with its defaults (buffering as shipped), in front of `backend`.
fn start_proxy(p: Proxy, dir: &Path, port: u16, backend: u16) -> Option<Child> {
    let d = dir.display();
    let child = match p {
        Proxy::Direct => return None,
        Proxy::Finguard => {
            let conf = format!(
                "[[listener]]\naddr = \"127.0.0.1:{port}\"\n[[backend]]\nname = \"apache\"\n\
                 addrs = [\"127.0.0.1:{backend}\"]\n[log]\naccess = \"off\"\nlevel = \"error\"\n"
            );
            std::fs::write(dir.join("finguard.toml"), conf).unwrap();
            pinned(PROXY_CORE, FINGUARD)
                .args(["run", "-c"])
                .arg(dir.join("finguard.toml"))
                .spawn()
        }
        Proxy::Nginx => {
            let conf = format!(
                "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;\nevents {{ }}\n\
                 http {{ access_log off; server {{ listen 127.0.0.1:{port};\n\
                 location / {{ proxy_pass http://127.0.0.1:{backend}; }} }} }}\n"
            );
            std::fs::write(dir.join("nginx.conf"), conf).unwrap();
            pinned(PROXY_CORE, "nginx")
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .spawn()
        }
        Proxy::Haproxy => {
            let conf = format!(
                "global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                 frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  server s1 127.0.0.1:{backend}\n"
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
    Some(c)
}

/// Ends a proxy the way the fast rows do: SIGTERM, then SIGKILL after 3 s.
pub struct Stop(pub Option<Child>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The slow clients, pinned to the load core; they run past the good client
/// and are killed when it is done.
fn start_attack(a: Attack, port: u16, secs: f64) -> Option<Child> {
    let (scenario, extra): (&str, &[&str]) = match a {
        Attack::None => return None,
        Attack::SlowRead => (
            "slow-read",
            &["--path", "/big", "--step-bytes", "4KiB", "--step-every", "200ms"],
        ),
        Attack::SlowPost => (
            "slow-post",
            &[
                "--path",
                "/cgi-bin/sink",
                "--body-bytes",
                UPLOAD,
                "--step-bytes",
                "200",
                "--step-every",
                "500ms",
            ],
        ),
    };
    let c = pinned(LOAD_CORE, FINGUARD)
        .args(["simulate", "--scenario", scenario])
        .args(["--target", &format!("127.0.0.1:{port}")])
        .args(["--connections", &SLOW_CLIENTS.to_string()])
        .args(["--duration", &format!("{}ms", (secs * 1000.0) as u64 + 5000)])
        .args(extra)
        .spawn()
        .expect("finguard simulate");
    Some(c)
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The slow exchanges of Apache's log (`begin_ms %D status method path
/// client_port keepalive_count`)
/// that began before `end_ms`: their hold times (ms), and how many ended after it.
fn holds(log: &str, a: Attack, end_ms: f64) -> (Vec<f64>, usize) {
    let mut holds = Vec::new();
    let mut at_end = 0;
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let [begin, d, _status, method, path, ..] = f.as_slice() else {
            continue;
        };
        if format!("{method} {path}") != a.request() {
            continue;
        }
        let (Ok(begin), Ok(d)) = (begin.parse::<f64>(), d.parse::<f64>()) else {
            continue;
        };
        if begin > end_ms {
            continue; // accepted after the attack: it held nothing during it
        }
        let ms = d / 1000.0;
        if begin + ms > end_ms {
            at_end += 1;
        }
        holds.push(ms);
    }
    holds.sort_by(f64::total_cmp);
    (holds, at_end)
}

/// Waits (bounded) until Apache's log stops growing: the exchanges the
/// killed slow clients held are logged as their workers notice.
fn settle(apache: &Apache) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = apache.log().len();
    let mut still_since = Instant::now();
    while Instant::now() < deadline && still_since.elapsed() < Duration::from_millis(400) {
        std::thread::sleep(Duration::from_millis(50));
        let now = apache.log().len();
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
}

fn run_cell(p: Proxy, a: Attack, root: &Path, www: &Path, n: usize, ramp: f64, secs: f64) -> Cell {
    let dir = root.join(format!("cell-{n}"));
    let apache = Apache::start(&dir, www);
    let port = if p == Proxy::Direct { apache.port } else { free_port() };
    let proxy = Stop(start_proxy(p, &dir, port, apache.port));
    let mut attack = start_attack(a, port, ramp + secs);
    if attack.is_some() {
        std::thread::sleep(Duration::from_secs_f64(ramp)); // the slow clients take their workers
    }
    let mut cell = good_client_run(port, secs);
    let end_ms = now_ms();
    if let Some(c) = &mut attack {
        let _ = c.kill();
        let _ = c.wait();
    }
    settle(&apache);
    (cell.holds_ms, cell.held_at_end) = holds(&apache.log(), a, end_ms);
    drop(proxy);
    drop(apache);
    let _ = std::fs::remove_dir_all(&dir);
    cell
}

/// Runs the good client as a pinned child process of this binary.
fn good_client_run(port: u16, secs: f64) -> Cell {
    let exe = std::env::current_exe().expect("the bench binary");
    let out = Command::new("taskset")
        .args(["-c", LOAD_CORE])
        .arg(exe)
        .args([GOOD_CLIENT_ARG, &format!("127.0.0.1:{port}"), &secs.to_string()])
        .stderr(Stdio::null())
        .output()
        .expect("good client");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
    Cell {
        answered: get(0) as u64,
        failed: get(1) as u64,
        rps: get(0) / secs,
        p99_ms: get(2),
        ..Cell::default()
    }
}

/// The good client's process: keep-alive GETs of the small page for `secs`
/// seconds, each answered within [`GOOD_TIMEOUT`] or counted failed (and the
/// connection dropped). Prints `answered failed p99_ms`.
pub fn good_client_main(args: &[String]) {
    let addr: Option<SocketAddr> = args.first().and_then(|a| a.parse().ok());
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let Some(addr) = addr else {
        println!("0 0 0");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (mut answered, mut failed) = (0u64, 0u64);
    let mut lat = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let req = b"GET /small HTTP/1.1\r\nHost: bench\r\nUser-Agent: good-client\r\n\r\n";
    while Instant::now() < deadline {
        let started = Instant::now();
        let s = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&addr, GOOD_TIMEOUT) {
                Ok(s) => s,
                Err(_) => {
                    failed += 1;
                    // Refused at once: do not spin on it.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        match one_request(s, req, started + GOOD_TIMEOUT) {
            Some((200, keep)) => {
                answered += 1;
                lat.push(started.elapsed().as_secs_f64() * 1000.0);
                conn = keep;
            }
            Some((_, keep)) => {
                failed += 1;
                conn = keep;
            }
            None => failed += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    let p99 = if lat.is_empty() {
        0.0
    } else {
        lat[((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1]
    };
    println!("{answered} {failed} {p99}");
}

/// One request on `s`, its response read by `deadline`: the status and the
/// connection back when it stays open.
fn one_request(mut s: TcpStream, req: &[u8], deadline: Instant) -> Option<(u16, Option<TcpStream>)> {
    s.write_all(req).ok()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = r.parse(&buf) else {
            continue;
        };
        let value = |name: &str| {
            r.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        let len: usize = value("content-length").and_then(|v| v.trim().parse().ok())?;
        if buf.len() < head + len {
            continue;
        }
        let closes = r.version == Some(0) || value("connection").is_some_and(|v| v.contains("close"));
        let status = r.code.unwrap_or(0);
        return Some((status, (!closes).then_some(s)));
    }
}

/// Which proxies and attacks a run covers, and for how long.
pub struct Plan {
    pub proxies: Vec<Proxy>,
    pub attacks: Vec<Attack>,
    pub ramp: f64,
    pub secs: f64,
}

impl Plan {
    /// `FINGUARD_LOAD_SLOW_SECS` overrides the good client's time under
    /// attack; `FINGUARD_LOAD_SLOW_PROXIES=finguard,nginx` picks proxies.
    pub fn new(smoke: bool) -> Plan {
        let mut plan = Plan::preset(smoke);
        if let Some(s) = std::env::var("FINGUARD_LOAD_SLOW_SECS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        {
            plan.secs = s.clamp(1.0, 60.0);
        }
        if let Ok(names) = std::env::var("FINGUARD_LOAD_SLOW_PROXIES") {
            plan.proxies
                .retain(|p| names.split(',').any(|n| p.name().starts_with(n.trim())));
        }
        plan
    }

    fn preset(smoke: bool) -> Plan {
        if smoke {
            Plan {
                proxies: vec![Proxy::Finguard, Proxy::Nginx, Proxy::Haproxy],
                attacks: vec![Attack::SlowRead, Attack::SlowPost],
                ramp: 0.5,
                secs: 1.0,
            }
        } else {
            Plan {
                proxies: Proxy::ALL.to_vec(),
                attacks: vec![Attack::None, Attack::SlowRead, Attack::SlowPost],
                ramp: 1.5,
                secs: 6.0,
            }
        }
    }
}

/// Runs the slow-client group; its section of the report.
pub fn run(root: &Path, plan: &Plan) -> String {
    if !Path::new(APACHE).exists() {
        let line = format!("## Slow clients\n\nSKIPPED: {APACHE} is missing (apt-get install apache2)\n");
        eprintln!("{line}");
        return line;
    }
    let www = root.join("slow-www");
    write_site(&www);
    let mut cells = Vec::new();
    let mut n = 0;
    for &a in &plan.attacks {
        for &p in &plan.proxies {
            n += 1;
            // The baseline needs no ramp and less time.
            let secs = if a == Attack::None {
                (plan.secs / 2.0).max(1.0)
            } else {
                plan.secs
            };
            let c = run_cell(p, a, root, &www, n, plan.ramp, secs);
            eprintln!(
                "slow {:<44} {:<16} good {:>7} answered {:>4} failed {:>8.0} req/s p99 {:>7.2} ms  slow at apache {:>2}, holding at end {:>2}, hold max {:.0} ms",
                a.name(),
                p.name(),
                c.answered,
                c.failed,
                c.rps,
                c.p99_ms,
                c.holds_ms.len(),
                c.held_at_end,
                c.holds_ms.last().copied().unwrap_or(0.0)
            );
            cells.push((a, p, c));
        }
    }
    let _ = std::fs::remove_dir_all(&www);
    render(&cells, plan)
}

fn render(cells: &[(Attack, Proxy, Cell)], plan: &Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## Slow clients in front of Apache prefork ({WORKERS} workers), each proxy with its defaults\n\n\
         One keep-alive client GETs a 12 B page for {:.0} s (a request unanswered in {} s fails) while the \
         slow clients, started {:.1} s before, hold on. Hold: Apache's own time (`%D`) for each slow exchange \
         it began during the attack; 'holding at end': those still holding a worker when the good client \
         stopped (their hold is cut by the run's end). Ratios are to nginx in the same run.\n",
        plan.secs,
        GOOD_TIMEOUT.as_secs(),
        plan.ramp
    );
    let _ = writeln!(
        o,
        "| attack | proxy | good answered | failed | req/s | × nginx | p99 ms | p99 × nginx | slow exchanges at Apache | holding at end | hold median ms | hold max ms | median × nginx |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let median = |v: &[f64]| v.get(v.len() / 2).copied();
    for (a, p, c) in cells {
        let n = cells
            .iter()
            .find(|(a2, p2, _)| a2 == a && *p2 == Proxy::Nginx)
            .map(|x| &x.2);
        let ratio = |x: f64, y: Option<f64>| match y {
            Some(y) if y > 0.0 => format!("{:.2}", x / y),
            _ => "–".to_string(),
        };
        let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
        let hold_ratio = match (median(&c.holds_ms), n.and_then(|n| median(&n.holds_ms))) {
            (Some(x), y) => ratio(x, y),
            (None, _) => "–".to_string(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.0} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
            a.name(),
            p.name(),
            c.answered,
            c.failed,
            c.rps,
            ratio(c.rps, n.map(|n| n.rps)),
            c.p99_ms,
            ratio(c.p99_ms, n.map(|n| n.p99_ms)),
            c.holds_ms.len(),
            c.held_at_end,
            fmt(median(&c.holds_ms)),
            fmt(c.holds_ms.last().copied()),
            hold_ratio
        );
    }
    o
}
