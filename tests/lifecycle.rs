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
            "expected \"lingering\"",
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
