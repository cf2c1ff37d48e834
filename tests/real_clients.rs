//! Real clients (curl, ApacheBench, Python `requests`) through finguard to a
//! real Apache httpd whose CGI reports the length and SHA-256 of every body it
//! received: what users run, framed the way those clients frame it, compared
//! end to end. Skipped, with a message, where apache2 or the client is missing
//! (`.ci/run` installs them).

mod support;

use std::path::Path;
use std::process::Command;
use std::thread;
use support::apache::{big_file, Apache};
use support::*;

/// Runs curl; returns (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "120", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A file of `n` pseudo-random bytes.
fn random_file(name: &str, n: usize) -> TempFile {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ n as u64;
    let bytes: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let f = TempFile::new(name, "");
    std::fs::write(&f.0, bytes).unwrap();
    f
}

fn setup() -> Option<(Apache, Proxy)> {
    if !have("curl") {
        return None;
    }
    let apache = Apache::start_cgi("KeepAliveTimeout 5")?;
    // Keep-alive for the whole of each test's session (the default is 100).
    let p = Proxy::start(
        "[client]\nmax_requests_per_connection = 10000\n[admin]\naddr = \"127.0.0.1:0\"\n",
        apache.addr,
    );
    Some((apache, p))
}

#[test]
fn curl_uploads_of_every_kind_reach_apache_whole() {
    let Some((apache, p)) = setup() else { return };
    let url = format!("http://{}/cgi/echo", p.addr);
    // -d: a small form POST whose body travels with its head.
    let (code, body) = curl(&["-d", "a=1&b=2", &url]);
    assert_eq!(code, 200, "{body}\n{}", apache.file("error.log"));
    let form = TempFile::new("form", "a=1&b=2");
    assert_eq!(body.trim(), format!("7 {} 7", sha256(&form.0)));
    // -F: 5 MiB multipart.
    let five = random_file("five", 5 << 20);
    let (code, body) = curl(&["-F", &format!("file=@{}", five.0.display()), &url]);
    assert_eq!(code, 200, "{body}");
    let f: Vec<&str> = body.split_whitespace().collect();
    assert_eq!(f.len(), 3, "{body}");
    assert_eq!(f[0], f[2], "Apache got fewer bytes than announced: {body}");
    assert!(f[0].parse::<usize>().unwrap() > 5 << 20, "{body}");
    // Chunked upload of the same file.
    let (code, body) = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", five.0.display()),
        &url,
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.trim(), format!("{} {} -", 5 << 20, sha256(&five.0)));
    // -T: 64 MiB PUT; curl sends `Expect: 100-continue`.
    let big = random_file("sixtyfour", 64 << 20);
    let (code, body) = curl(&["-T", &big.0.display().to_string(), &url]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.trim(), format!("{} {} {}", 64 << 20, sha256(&big.0), 64 << 20));
}

#[test]
fn a_requests_session_posts_300_random_bodies_on_one_connection() {
    let python = if Command::new("/usr/bin/python3")
        .args(["-c", "import requests"])
        .status()
        .is_ok_and(|s| s.success())
    {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    if !Command::new(python)
        .args(["-c", "import requests"])
        .status()
        .is_ok_and(|s| s.success())
    {
        require_peer("python3-requests");
        return;
    }
    let Some((_apache, p)) = setup() else { return };
    let script = r#"
import hashlib, random, sys, requests
url = sys.argv[1]
s = requests.Session()
rnd = random.Random(7)
bad = 0
for i in range(300):
    n = rnd.randint(0, 65536)
    body = bytes(rnd.getrandbits(8) for _ in range(n))
    r = s.post(url, data=body, headers={"Content-Type": "application/octet-stream"})
    want = "%d %s %d" % (n, hashlib.sha256(body).hexdigest(), n)
    if r.status_code != 200 or r.text.strip() != want:
        bad += 1
        print("bad", i, r.status_code, r.text[:100], want, file=sys.stderr)
print(bad)
"#;
    let out = Command::new(python)
        .args(["-c", script, &format!("http://{}/cgi/echo", p.addr)])
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "0", "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        p.metric("finguard_client_connections_accepted_total"),
        1.0,
        "the session's connection was not kept"
    );
}

/// `ab -k` (HTTP/1.0 with `Connection: keep-alive`); returns its report.
fn ab(addr: std::net::SocketAddr) -> String {
    let out = Command::new("ab")
        .args(["-k", "-n", "5000", "-c", "20", "-s", "10"])
        .arg(format!("http://{addr}/index.html"))
        .output()
        .expect("ab");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn ab_field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
}

#[test]
fn apachebench_keepalive_sees_no_failures() {
    if !have("ab") {
        return;
    }
    let Some((apache, p)) = setup() else { return };
    let text = ab(p.addr);
    assert_eq!(ab_field(&text, "Complete requests:").as_deref(), Some("5000"), "{text}");
    assert_eq!(ab_field(&text, "Failed requests:").as_deref(), Some("0"), "{text}");
    assert!(ab_field(&text, "Non-2xx responses:").is_none(), "{text}");
    assert_eq!(
        ab_field(&text, "Keep-Alive requests:").as_deref(),
        Some("5000"),
        "{text}"
    );
    // With the default of 100 requests per connection, every 100th response
    // closes: ab must read that as a close, not as keep-alive.
    let p = Proxy::start("", apache.addr);
    let text = ab(p.addr);
    assert_eq!(ab_field(&text, "Complete requests:").as_deref(), Some("5000"), "{text}");
    assert_eq!(ab_field(&text, "Failed requests:").as_deref(), Some("0"), "{text}");
    assert!(ab_field(&text, "Non-2xx responses:").is_none(), "{text}");
}

#[test]
fn slow_readers_get_the_whole_file_over_tcp_and_tls() {
    let Some((apache, p)) = setup() else { return };
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = TempFile::new("cert.pem", &ck.cert.pem());
    let key = TempFile::new("key.pem", &ck.key_pair.serialize_pem());
    let tls_cfg = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        cert.0.display(),
        key.0.display()
    );
    let tls = Proxy::start_raw(&tls_cfg, &["--backend", &apache.addr.to_string()]);
    let want = big_file();
    let urls = [
        (format!("http://{}/big", p.addr), false),
        (format!("http://{}/big", p.addr), true),
        (format!("https://localhost:{}/big", tls.addr.port()), false),
        (format!("https://localhost:{}/big", tls.addr.port()), true),
    ];
    let runs: Vec<_> = urls
        .into_iter()
        .enumerate()
        .map(|(i, (url, close))| {
            thread::spawn(move || {
                let out = TempFile::new(&format!("download-{i}"), "");
                let mut args = vec!["-k", "--limit-rate", "300k", "-o"];
                let path = out.0.display().to_string();
                args.push(&path);
                if close {
                    args.extend(["-H", "Connection: close"]);
                }
                let status = Command::new("curl")
                    .args(["-sS", "--max-time", "90"])
                    .args(&args)
                    .arg(&url)
                    .status()
                    .expect("curl");
                (url, close, status.code(), std::fs::read(&out.0).unwrap_or_default())
            })
        })
        .collect();
    for r in runs {
        let (url, close, code, got) = r.join().unwrap();
        assert_eq!(
            code,
            Some(0),
            "{url} close={close}: curl failed after {} bytes",
            got.len()
        );
        assert!(
            got == want,
            "{url} close={close}: {} of {} bytes, or different ones",
            got.len(),
            want.len()
        );
    }
}

/// The interim responses in bytes a client read: the status lines of
/// `HTTP/1.1 1xx` heads at the start of the stream or after a head's end.
fn interim_count(raw: &[u8], status: &str) -> usize {
    let line = format!("HTTP/1.1 {status}");
    let text = String::from_utf8_lossy(raw);
    text.split("\r\n\r\n").filter(|h| h.starts_with(&line)).count()
}

#[test]
fn expect_100_continue_is_answered_once_through_finguard_to_apache() {
    let Some((apache, p)) = setup() else { return };
    let url = format!("http://{}/cgi/echo", p.addr);
    let big = random_file("expect", 4 << 20);
    // curl: a body sent on finguard's 100 Continue; its trace shows every
    // interim response it read.
    for buffering in [true, false] {
        let p2;
        let url = if buffering {
            url.clone()
        } else {
            p2 = Proxy::start("[buffer]\nrequests = false\nresponses = false\n", apache.addr);
            format!("http://{}/cgi/echo", p2.addr)
        };
        let out = Command::new("curl")
            .args(["-sS", "-v", "--max-time", "60", "-o", "-", "-H", "Expect: 100-continue"])
            .args(["--data-binary", &format!("@{}", big.0.display()), &url])
            .output()
            .expect("curl");
        let trace = String::from_utf8_lossy(&out.stderr);
        let continues = trace.lines().filter(|l| l.starts_with("< HTTP/1.1 100")).count();
        assert_eq!(continues, 1, "buffering {buffering}: {trace}");
        let body = String::from_utf8_lossy(&out.stdout);
        assert_eq!(body.trim(), format!("{} {} {}", 4 << 20, sha256(&big.0), 4 << 20));
    }
    // A raw client: the bytes themselves.
    let mut s = p.connect();
    let body = std::fs::read(&big.0).unwrap();
    let head = format!(
        "POST /cgi/echo HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    use std::io::{Read, Write};
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let interim = read_head(&mut s, &mut buf).expect("100 Continue");
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    s.write_all(&body).unwrap();
    let mut raw = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
    raw.extend_from_slice(&buf);
    s.read_to_end(&mut raw).unwrap();
    assert_eq!(interim_count(&raw, "100"), 1, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(interim_count(&raw, "200"), 1);
}
