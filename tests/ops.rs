//! Operating finguard as nginx and HAProxy are operated: log files that
//! rotate (SIGUSR1 reopens), the real client address behind a load balancer
//! (PROXY protocol listeners, trusted X-Forwarded-For), and the shipped
//! dashboard and manifests checked against what finguard really exports
//! and reads.

mod support;

use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;
use support::*;

/// A directory that lives as long as the value.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("finguard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lines_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "a file ends inside a line");
        out.extend(text.lines().map(str::to_string));
    }
    out
}

#[test]
fn sigusr1_reopens_the_access_file_and_no_line_is_lost_or_split_across_a_rotation() {
    let backend = Backend::start(Reply::Ok);
    let dir = TempDir::new("rotate");
    let file = dir.0.join("access.log");
    let cfg = format!("[log]\naccess_file = \"{}\"\n", file.display());
    let p = Proxy::start(&cfg, backend.addr);
    let (clients, each) = (4, 1500);
    let load: Vec<_> = (0..clients)
        .map(|t| {
            let addr = p.addr;
            thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                for i in 0..each {
                    c.write_all(format!("GET /c{t}/r{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
                        .unwrap();
                    let r = read_response(&mut c, &mut Vec::new()).expect("answer");
                    assert_eq!(r.status, 200);
                    if r.header("connection").as_deref() == Some("close") {
                        c = std::net::TcpStream::connect(addr).unwrap();
                    }
                }
            })
        })
        .collect();
    // Rotate twice while the load runs, as logrotate does: rename, then signal.
    for n in 1..=2 {
        let rotated = dir.0.join(format!("access.log.{n}"));
        assert!(wait_until(Duration::from_secs(10), || std::fs::metadata(&file)
            .is_ok_and(|m| m.len() > 20_000)));
        std::fs::rename(&file, &rotated).unwrap();
        p.signal("USR1");
        assert!(
            wait_until(Duration::from_secs(5), || file.exists()),
            "not reopened:\n{}",
            p.log()
        );
    }
    for l in load {
        l.join().unwrap();
    }
    let want = clients * each;
    assert!(wait_until(Duration::from_secs(5), || lines_in(&dir.0).len() >= want));
    let lines = lines_in(&dir.0);
    assert_eq!(lines.len(), want, "lines lost or doubled");
    let mut seen = std::collections::HashSet::new();
    for l in &lines {
        // Every line whole: combined format from the address to the User-Agent.
        assert!(
            l.starts_with("127.0.0.1 - - [") && l.ends_with("\"-\" \"-\""),
            "split line {l:?}"
        );
        let path = l.split('"').nth(1).and_then(|r| r.split(' ').nth(1)).unwrap_or("");
        assert!(seen.insert(path.to_string()), "{path} twice");
    }
    // Each of the three files got lines of the load.
    for name in ["access.log.1", "access.log.2", "access.log"] {
        let n = std::fs::read_to_string(dir.0.join(name)).unwrap().lines().count();
        assert!(n > 0, "{name} is empty");
    }
}

/// `finguard check` on a config that must be refused: its stderr, after
/// asserting exit code 1.
fn refused_by_check(config: &str) -> String {
    let cfg = TempFile::new("refused.toml", config);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finguard"))
        .args(["check", "-c"])
        .arg(&cfg.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{config}: {err}");
    err
}

#[test]
fn an_access_file_in_a_missing_directory_is_a_config_error_naming_the_key() {
    let err = refused_by_check("[log]\naccess_file = \"/nonexistent-dir/access.log\"\n");
    assert!(
        err.contains("log.access_file") && err.contains("/nonexistent-dir"),
        "{err}"
    );
}

/// finguard on a `proxy_protocol` listener, its access log in a file, and a
/// backend that echoes the head it got and records the PROXY header finguard
/// sends it.
struct Behind {
    p: Proxy,
    backend: Backend,
    dir: TempDir,
}

impl Behind {
    fn start(name: &str, listener: &str, client: &str) -> Behind {
        let backend = Backend::start_with(
            Reply::EchoHead,
            BackendOpts {
                proxy_protocol: true,
                ..Default::default()
            },
        );
        let dir = TempDir::new(name);
        let cfg = format!(
            "[admin]\naddr = \"127.0.0.1:0\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n{listener}\n[client]\nheader_timeout = \"1s\"\n{client}\n\
             [[backend]]\nname = \"app\"\naddrs = [\"{}\"]\nproxy_protocol = \"v1\"\n[log]\naccess_file = \"{}/access.log\"\n",
            backend.addr,
            dir.0.display()
        );
        let p = Proxy::start_raw(&cfg, &[]);
        Behind { p, backend, dir }
    }

    /// One request after `prefix` on a new connection: the response.
    fn get(&self, prefix: &[u8], extra: &str) -> Option<Response> {
        let mut c = self.p.connect();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(prefix).unwrap();
        c.write_all(format!("GET / HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes())
            .unwrap();
        read_response(&mut c, &mut Vec::new())
    }

    /// The addresses at the start of the access log's lines.
    fn logged_clients(&self, n: usize) -> Vec<String> {
        let file = self.dir.0.join("access.log");
        let read = || std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            wait_until(Duration::from_secs(3), || read().lines().count() >= n),
            "{}",
            read()
        );
        read()
            .lines()
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect()
    }
}

/// The `X-Forwarded-For` value in an echoed head.
fn xff(r: &Response) -> String {
    let body = String::from_utf8_lossy(&r.body).into_owned();
    body.lines()
        .find_map(|l| l.strip_prefix("X-Forwarded-For: "))
        .unwrap_or("")
        .to_string()
}

fn v2_header(src: std::net::SocketAddr, dst: std::net::SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match (src, dst) {
        (std::net::SocketAddr::V6(s), std::net::SocketAddr::V6(d)) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("IPv6 only here"),
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[test]
fn a_proxy_protocol_listener_takes_the_client_address_from_the_header_for_everything() {
    let b = Behind::start("pp", "proxy_protocol = true", "max_connections_per_ip = 1");
    // v1, whole.
    let r = b
        .get(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\n", "")
        .expect("answer");
    assert_eq!((r.status, xff(&r)), (200, "203.0.113.7".to_string()));
    // v1 split by the network: still one header, and the request after it intact.
    let mut c = b.p.connect();
    for piece in [
        &b"PROXY TCP4 203.0."[..],
        b"113.8 10.0.0.1 400",
        b"01 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        c.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(50)); // separate segments on the wire
    }
    let r = read_response(&mut c, &mut Vec::new()).expect("answer");
    assert_eq!(xff(&r), "203.0.113.8");
    drop(c);
    // v2, IPv6.
    let src: std::net::SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let r = b
        .get(&v2_header(src, "[2001:db8::1]:80".parse().unwrap()), "")
        .expect("answer");
    assert_eq!(xff(&r), "2001:db8::7");
    // The backend's PROXY headers name the client, not the balancer.
    let proxied: Vec<String> = b
        .backend
        .heads()
        .into_iter()
        .filter(|h| h.starts_with("PROXY"))
        .collect();
    assert_eq!(
        proxied,
        [
            "PROXY 203.0.113.7 40000",
            "PROXY 203.0.113.8 40001",
            "PROXY 2001:db8::7 40000"
        ]
    );
    // So does the access log.
    assert_eq!(b.logged_clients(3), ["203.0.113.7", "203.0.113.8", "2001:db8::7"]);
    // The per-IP limit counts the named client: a second connection of the
    // same client is refused, another client is not.
    let mut held = b.p.connect();
    held.write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 1 80\r\n").unwrap();
    assert!(wait_until(Duration::from_secs(2), || b
        .p
        .admin_get("/connections")
        .1
        .contains("203.0.113.9")));
    assert_eq!(
        b.get(b"PROXY TCP4 203.0.113.9 10.0.0.1 2 80\r\n", "").map(|r| r.status),
        Some(503)
    );
    assert_eq!(
        b.get(b"PROXY TCP4 203.0.113.10 10.0.0.1 2 80\r\n", "")
            .map(|r| r.status),
        Some(200)
    );
}

#[test]
fn a_proxy_protocol_listener_refuses_a_missing_or_malformed_header_and_a_silent_balancer() {
    let b = Behind::start("pp-bad", "proxy_protocol = true", "");
    let count = |o: &str| b.p.metric(&format!("finguard_proxy_headers_total{{outcome=\"{o}\"}}"));
    // A plain HTTP client on a PROXY listener: a clear 400, not a hang.
    let r = b.get(b"", "").expect("an answer");
    assert_eq!(r.status, 400);
    for bad in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        &[b'P'; 120],
    ] {
        let mut c = b.p.connect();
        c.write_all(bad).unwrap();
        let (got, _) = read_to_end_or_reset(&mut c, Duration::from_secs(5));
        assert!(got.starts_with(b"HTTP/1.1 400 "), "{:?}", String::from_utf8_lossy(&got));
    }
    assert_eq!(count("invalid"), 4.0);
    // Half a header, then silence: cut at header_timeout.
    let mut c = b.p.connect();
    c.write_all(b"PROXY TCP4 1.2.3.4").unwrap();
    assert_ne!(peer_end(&mut c, Duration::from_secs(5)), PeerEnd::Open);
    assert_eq!(count("timeout"), 1.0);
    // Nothing reached the backend.
    assert_eq!(b.backend.accepted(), 0);
}

#[test]
fn haproxy_and_curl_in_front_speak_proxy_protocol_to_finguard() {
    let (Ok(_), Ok(_)) = (
        std::process::Command::new("haproxy").arg("-v").output(),
        std::process::Command::new("curl").arg("--version").output(),
    ) else {
        return require_peer("haproxy and curl");
    };
    let b = Behind::start("pp-haproxy", "proxy_protocol = true", "");
    // curl's own PROXY v1 header, from 127.0.0.5.
    let out = std::process::Command::new("curl")
        .args(["-s", "--haproxy-protocol", "--interface", "127.0.0.5"])
        .arg(format!("http://127.0.0.1:{}/", b.p.port()))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("X-Forwarded-For: 127.0.0.5\r\n"), "{body}");
    // HAProxy (send-proxy-v2) between curl at 127.0.0.6 and finguard.
    let front = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = TempFile::new(
        "haproxy.cfg",
        &format!(
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend f\n  bind {front}\n  default_backend b\nbackend b\n  server fg 127.0.0.1:{} send-proxy-v2\n",
            b.p.port()
        ),
    );
    let mut haproxy = std::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(
        front
    )
    .is_ok()));
    let out = std::process::Command::new("curl")
        .args(["-s", "--interface", "127.0.0.6"])
        .arg(format!("http://{front}/"))
        .output()
        .unwrap();
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("X-Forwarded-For: 127.0.0.6\r\n"), "{body}");
    assert_eq!(b.logged_clients(2)[..2], ["127.0.0.5", "127.0.0.6"]);
}

#[test]
fn a_trusted_proxys_x_forwarded_for_names_the_client_and_nobody_elses_does() {
    // Trusted: the rightmost untrusted address in X-Forwarded-For is the client.
    let b = Behind::start(
        "xff",
        "",
        "trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\nmax_connections_per_ip = 1",
    );
    let r = b
        .get(b"", "X-Forwarded-For: 192.0.2.1, 198.51.100.9, 10.1.1.1\r\n")
        .expect("answer");
    // The chain travels on, with the hop finguard saw appended.
    assert_eq!(xff(&r), "192.0.2.1, 198.51.100.9, 10.1.1.1, 127.0.0.1");
    assert_eq!(b.logged_clients(1), ["198.51.100.9"]);
    assert!(b.backend.heads().iter().any(|h| h.starts_with("PROXY 198.51.100.9 ")));
    // A trusted proxy is not held to max_connections_per_ip: it carries many clients.
    let _held = b.p.connect();
    assert_eq!(b.get(b"", "").map(|r| r.status), Some(200));
    // Untrusted (the default): the header is passed on but not believed.
    let b = Behind::start("xff-none", "", "");
    let r = b.get(b"", "X-Forwarded-For: 198.51.100.9\r\n").expect("answer");
    assert_eq!(xff(&r), "198.51.100.9, 127.0.0.1");
    assert_eq!(b.logged_clients(1), ["127.0.0.1"]);
}

/// Whether the switchable backend below is healthy, and the requests other
/// than health checks it was sent.
static B_HEALTHY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static B_REQUESTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Healthy: 200 at once. Unhealthy: answers only after 3 s (health checks
/// time out; a client sent there would wait).
fn switchable_backend(mut s: std::net::TcpStream) {
    use std::sync::atomic::Ordering::SeqCst;
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf) {
        if !head.starts_with("GET /health ") {
            B_REQUESTS.fetch_add(1, SeqCst);
        }
        if !B_HEALTHY.load(SeqCst) {
            thread::sleep(Duration::from_secs(3)); // the fault: an overloaded backend
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
            return;
        }
    }
}

#[test]
fn a_health_check_takes_a_failing_address_out_before_a_client_pays_and_brings_it_back() {
    use std::sync::atomic::Ordering::SeqCst;
    let good = Backend::start(Reply::Ok);
    let (bad, _) = raw_backend(switchable_backend);
    let check = "health_check = { path = \"/health\", interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2 }";
    // No idle reuse: every request picks an address afresh, round-robin.
    // (No idle connection is kept at all: with a 1 ms idle timeout, a next
    // request quicker than that reused the good address's connection, and
    // the recovered address could see none of twenty.)
    let cfg = format!(
        "[admin]\naddr = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\naddrs = [\"{}\", \"{bad}\"]\npool_max_idle = 0\n{check}\n",
        good.addr
    );
    let p = Proxy::start_raw(&cfg, &["--listen", "127.0.0.1:0"]);
    let up = |a: std::net::SocketAddr| p.metric(&format!("finguard_backend_up{{backend=\"app\",addr=\"{a}\"}}"));
    let moved = |a: std::net::SocketAddr, to: &str| {
        p.metric(&format!(
            "finguard_backend_health_transitions_total{{backend=\"app\",addr=\"{a}\",to=\"{to}\"}}"
        ))
    };
    // Two failed checks in a row: out, with one log line.
    assert!(wait_until(Duration::from_secs(5), || up(bad) == 0.0), "{}", p.log());
    assert_eq!((moved(bad, "down"), up(good.addr)), (1.0, 1.0));
    assert_eq!(
        p.log().matches("health check: backend address down").count(),
        1,
        "{}",
        p.log()
    );
    // No client is sent there: every request is answered at once by the good one.
    for _ in 0..20 {
        let mut c = p.connect();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut c, &mut Vec::new()).map(|r| r.status), Some(200));
    }
    assert_eq!(B_REQUESTS.load(SeqCst), 0);
    // It recovers: two passes in a row, and it is back in rotation.
    B_HEALTHY.store(true, SeqCst);
    assert!(wait_until(Duration::from_secs(5), || up(bad) == 1.0), "{}", p.log());
    assert_eq!(moved(bad, "up"), 1.0);
    assert!(p.log().contains("health check: backend address up"));
    for _ in 0..20 {
        let r = request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
    }
    assert!(B_REQUESTS.load(SeqCst) > 0, "never sent to the recovered address");
    // Every address down: a 503 at once, not a wait on the backend.
    B_HEALTHY.store(false, SeqCst);
    let only_bad =
        format!("[admin]\naddr = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\naddrs = [\"{bad}\"]\n{check}\n");
    let p = Proxy::start_raw(&only_bad, &["--listen", "127.0.0.1:0"]);
    let before = B_REQUESTS.load(SeqCst);
    assert!(wait_until(Duration::from_secs(5), || p
        .metric(&format!("finguard_backend_up{{backend=\"app\",addr=\"{bad}\"}}"))
        == 0.0));
    let mut c = p.connect();
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut c, &mut Vec::new()).map(|r| r.status), Some(503));
    assert_eq!(B_REQUESTS.load(SeqCst), before);
}

#[test]
fn a_bad_health_check_is_a_config_error_naming_the_key() {
    for (check, key) in [
        ("{ path = \"health\" }", "backend[0].health_check.path"),
        (
            "{ interval = \"1s\", timeout = \"2s\" }",
            "backend[0].health_check.timeout",
        ),
        ("{ rise = 0 }", "backend[0].health_check"),
        ("{ paht = \"/\" }", "paht"),
    ] {
        let err = refused_by_check(&format!(
            "[[backend]]\nname = \"a\"\naddrs = [\"127.0.0.1:1\"]\nhealth_check = {check}\n"
        ));
        assert!(err.contains(key), "{check}: {err}");
    }
}

/// Every `finguard_*` name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("finguard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_query_of_the_grafana_dashboard_names_a_metric_finguard_exports() {
    let exported: std::collections::BTreeSet<String> =
        finguard::metrics::Metrics::exported_names().into_iter().collect();
    assert!(exported.len() >= 18, "{exported:?}");
    // The list is what a running finguard serves: every sample it has is on it.
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start("[admin]\naddr = \"127.0.0.1:0\"\n", backend.addr);
    assert_eq!(
        request(p.addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").status,
        200
    );
    let (_, text) = p.admin_get("/metrics");
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(samples.len() > 5, "{text}");
    for n in metric_names(&samples.join("\n")) {
        assert!(exported.contains(&n), "{n} is served but not listed");
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/grafana/finguard-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().expect("panels");
    let mut used = std::collections::BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr} names no finguard metric");
            for n in names {
                assert!(exported.contains(&n), "{expr}: finguard exports no {n}");
                used.insert(n);
            }
        }
    }
    // And the dashboard shows every family finguard exports.
    let unused: Vec<_> = exported.difference(&used).collect();
    assert!(unused.is_empty(), "not on the dashboard: {unused:?}");
}

#[test]
fn the_kubernetes_example_uses_only_what_finguard_reads() {
    use serde_yaml::Value;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/k8s/finguard-sidecar.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}"));
    let (config_map, deployment) = (kind("ConfigMap"), kind("Deployment"));
    let pod = &deployment["spec"]["template"]["spec"];
    let fg = pod["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "finguard")
        .expect("a finguard container");
    let env: Vec<(String, String)> = fg["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().into(), e["value"].as_str().unwrap().into()))
        .collect();
    // Every FINGUARD_* variable is one `finguard run` reads.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_finguard"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for (name, _) in &env {
        assert!(
            help.contains(&format!("env: {name}=")) || name == "FINGUARD_CONFIG",
            "finguard does not read {name}:\n{help}"
        );
    }
    // FINGUARD_CONFIG names the mounted ConfigMap key.
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mount = fg["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let key = config_map["data"]
        .as_mapping()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(get("FINGUARD_CONFIG"), format!("{mount}/{key}"));
    // The config, with the same environment, passes `finguard check`.
    let toml = config_map["data"][key].as_str().unwrap();
    let file = TempFile::new("k8s.toml", toml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finguard"))
        .args(["check", "-c"])
        .arg(&file.0)
        .envs(env.iter().filter(|(n, _)| n != "FINGUARD_CONFIG").cloned())
        .output()
        .unwrap();
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let effective: toml::Value = toml::from_str(&effective).unwrap();
    let admin = effective["admin"]["addr"].as_str().unwrap().to_string();
    assert_eq!(admin, get("FINGUARD_ADMIN"));
    assert_eq!(
        effective["listener"][0]["addr"].as_str().unwrap(),
        get("FINGUARD_LISTEN")
    );
    assert_eq!(
        effective["backend"][0]["addrs"][0].as_str().unwrap(),
        get("FINGUARD_BACKEND")
    );
    // Probes hit finguard's /healthz on its admin port, which is declared.
    let admin_port: u64 = admin.rsplit(':').next().unwrap().parse().unwrap();
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(fg[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(fg[probe]["httpGet"]["port"].as_u64(), Some(admin_port), "{probe}");
    }
    let ports: Vec<u64> = fg["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    let listen_port: u64 = get("FINGUARD_LISTEN").rsplit(':').next().unwrap().parse().unwrap();
    assert!(ports.contains(&admin_port) && ports.contains(&listen_port), "{ports:?}");
    // The grace period covers the preStop pause and finguard's own drain.
    let shutdown = effective["shutdown_timeout"].as_str().unwrap();
    let shutdown = humantime::parse_duration(shutdown).unwrap().as_secs();
    let pause = fg["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > pause + shutdown, "grace {grace} <= {pause} + {shutdown}");
}

#[test]
fn under_systemd_finguard_says_ready_once_its_listeners_are_bound_and_stopping_when_it_drains() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("notify");
    let sock_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let backend = Backend::start(Reply::Ok);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_finguard"))
        .args(["run", "--listen", "127.0.0.1:0", "--backend"])
        .arg(backend.addr.to_string())
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a READY notification");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // Ready means bound: the address it names accepts and serves at once.
    let addr: std::net::SocketAddr = msg
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=listening on "))
        .and_then(|a| a.split(", ").next()?.parse().ok())
        .unwrap_or_else(|| panic!("no listening address in {msg:?}"));
    assert_eq!(
        request(addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").status,
        200
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let n = sock.recv(&mut buf).expect("a STOPPING notification");
    assert!(String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_sidecar_in_network_namespaces_keeps_the_app_untouched() {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let ip = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !ip {
        return require_peer("root and ip netns");
    }
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sidecar-netns.sh"))
        .arg(env!("CARGO_BIN_EXE_finguard"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    // The app is reachable only through finguard, and was left clean.
    assert!(text.contains("through finguard (10.200.0.1:8080): hello"), "{text}");
    assert!(text.contains("unreachable, as it should be"), "{text}");
    assert!(text.contains("the application is untouched"), "{text}");
    // No client lost a response to a reset in any scenario.
    for line in text.lines().filter(|l| l.contains("scenario=")) {
        assert!(line.contains("responses_lost_to_reset=0,"), "{line}");
    }
}

#[test]
fn an_upgrade_under_load_refuses_no_connection_and_loses_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    let backend = Backend::start(Reply::Ok);
    let dir = TempDir::new("upgrade");
    let sock = dir.0.join("upgrade.sock");
    let b = backend.addr.to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &b,
        "--upgrade-socket",
        sock.to_str().unwrap(),
    ];
    let mut old = Proxy::start_raw("workers = 2\n", &args);
    let addr = old.addr;
    // Clients hammering the listener, a new connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            thread::spawn(move || {
                for _ in 0..100_000 {
                    if stop.load(SeqCst) {
                        break;
                    }
                    let outcome = std::net::TcpStream::connect(addr).and_then(|mut c| {
                        c.set_read_timeout(Some(Duration::from_secs(5)))?;
                        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")?;
                        let (got, reset) = read_to_end_or_reset(&mut c, Duration::from_secs(5));
                        Ok((got, reset))
                    });
                    match outcome {
                        Ok((got, false)) if got.starts_with(b"HTTP/1.1 200 ") => {
                            ok.fetch_add(1, SeqCst);
                        }
                        Ok((got, reset)) => failed
                            .lock()
                            .unwrap()
                            .push(format!("reset {reset}: {:?}", String::from_utf8_lossy(&got))),
                        Err(e) => failed.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || ok.load(SeqCst) > 200));
    // The new process takes the sockets over; the old one drains and exits 0.
    let new = Proxy::start_raw("workers = 2\n", &args);
    assert_eq!(new.addr, addr, "the new process serves the same address");
    assert_eq!(
        old.wait_exit(Duration::from_secs(15)),
        Some(0),
        "old process:\n{}",
        old.log()
    );
    assert!(new.log().contains("serving on the sockets taken over"), "{}", new.log());
    let after = ok.load(SeqCst);
    assert!(wait_until(Duration::from_secs(5), || ok.load(SeqCst) > after + 200));
    stop.store(true, SeqCst);
    for l in load {
        l.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok.load(SeqCst),
        &failed[..failed.len().min(5)]
    );
    // And the next upgrade finds the new process on the same socket.
    assert!(sock.exists());
}

#[test]
fn http2_requests_are_in_the_access_log_with_the_believed_client() {
    use support::tls::{ca_file, curl_to, files, pki, tls_config};
    let backend = Backend::start(Reply::Ok);
    let dir = TempDir::new("h2-log");
    let (pki, log) = (pki(), dir.0.join("access.log"));
    let f = files(&pki);
    let extra = format!(
        "[client]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[log]\naccess_file = \"{}\"\n",
        log.display()
    );
    let p = Proxy::start_raw(&tls_config(&f, &extra), &["--backend", &backend.addr.to_string()]);
    let ca = ca_file(&pki);
    let out = curl_to(p.addr.port(), &ca)
        .args(["-o", "/dev/null", "-w", "%{http_version}", "-A", "h2-client/1"])
        .args(["-H", "X-Forwarded-For: 192.0.2.44"])
        .arg(format!("https://a.test:{}/logged?q=1", p.addr.port()))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(3), || std::fs::read_to_string(&log)
        .is_ok_and(|t| !t.is_empty())));
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(
        line.starts_with("192.0.2.44 - - [")
            && line.contains("\"GET /logged?q=1 HTTP/2.0\" 200 ")
            && line.ends_with("\"-\" \"h2-client/1\"\n"),
        "{line}"
    );
}
