//! What an operator sees: /metrics as the oracle of a known sequence of
//! clients, /census against /proc/net/tcp, /connections, `finguard census`,
//! the access log, health, and SIGHUP reloads.

mod support;

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;
use support::*;

const ADMIN: &str = "[admin]\naddr = \"127.0.0.1:0\"\n";

#[test]
fn metrics_count_a_known_sequence_of_clients_exactly() {
    let backend = Backend::start(Reply::Ok);
    let cfg = format!(
        "{ADMIN}[client.close]\nlinger_timeout = \"200ms\"\nlinger_time = \"1s\"\non_timeout = \"reset\"\n\
         [[user_agent]]\nmatch = \"Mozilla/2\"\nnokeepalive = true\n"
    );
    let p = Proxy::start(&cfg, backend.addr);
    // A: asks to close, reads the answer, then closes: a lingering close ended by its FIN.
    let mut a = p.connect();
    a.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    read_response(&mut a, &mut Vec::new()).unwrap();
    assert_eq!(peer_end(&mut a, Duration::from_secs(2)), PeerEnd::Eof);
    drop(a);
    // B: asks to close, then never closes: the linger times out into a reset.
    let mut b = p.connect();
    b.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    read_response(&mut b, &mut Vec::new()).unwrap();
    // C: Mozilla/2, refused keep-alive by its rule; closes after the answer.
    let mut c = p.connect();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla/2.02 (Win95; I)\r\n\r\n")
        .unwrap();
    read_response(&mut c, &mut Vec::new()).unwrap();
    assert_eq!(peer_end(&mut c, Duration::from_secs(2)), PeerEnd::Eof);
    drop(c);
    // D: keep-alive, then half-closes while idle.
    let mut d = p.connect();
    d.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    read_response(&mut d, &mut Vec::new()).unwrap();
    d.shutdown(Shutdown::Write).unwrap();
    assert_eq!(peer_end(&mut d, Duration::from_secs(2)), PeerEnd::Eof);

    let closes = |o: &str| p.metric(&format!("finguard_lingering_closes_total{{outcome=\"{o}\"}}"));
    assert!(
        wait_until(Duration::from_secs(3), || closes("linger_timeout") == 1.0),
        "{}",
        p.admin_get("/metrics").1
    );
    assert!(
        wait_until(Duration::from_secs(3), || closes("client_fin") == 3.0),
        "{}",
        p.admin_get("/metrics").1
    );
    let (_, text) = p.admin_get("/metrics");
    for (sample, want) in [
        ("finguard_client_connections_accepted_total", 4.0),
        ("finguard_requests_total{code=\"2xx\"}", 4.0),
        ("finguard_ua_rule_matches_total{rule=\"Mozilla/2\"}", 1.0),
        ("finguard_lingering_closes_total{outcome=\"reset\"}", 0.0),
        ("finguard_backend_connects_total{backend=\"default\"}", 1.0),
        ("finguard_client_connections{state=\"lingering\"}", 0.0),
        ("finguard_client_connections{state=\"idle\"}", 0.0),
    ] {
        assert_eq!(p.metric(sample), want, "{sample}\n{text}");
    }
    assert!(
        text.contains("finguard_backend_connections{backend=\"default\",state=\"idle\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("finguard_tcp_sockets{side=\"backend\",state=\"ESTABLISHED\"} 1"),
        "{text}"
    );
    drop(b);
}

#[test]
fn census_and_connections_agree_with_the_kernel() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(ADMIN, backend.addr);
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = p.connect();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nUser-Agent: census-test/1\r\n\r\n")
            .unwrap();
        read_response(&mut s, &mut Vec::new()).unwrap();
        idle.push(s);
    }
    let (status, body) = p.admin_get("/census");
    assert_eq!(status, 200);
    let census: serde_json::Value = serde_json::from_str(&body).unwrap();
    let kernel = tcp_states(p.port(), 0)
        .into_iter()
        .filter(|s| *s == "ESTABLISHED")
        .count();
    assert_eq!(census["client"]["ESTABLISHED"], kernel as u64, "{body}");
    assert_eq!(kernel, 3);
    assert_eq!(census["backend"]["ESTABLISHED"], 1, "{body}");

    let (_, body) = p.admin_get("/connections");
    let conns: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(conns.len(), 3, "{body}");
    let mine = idle[0].local_addr().unwrap().to_string();
    let c = conns.iter().find(|c| c["peer"] == mine.as_str()).expect("listed");
    assert_eq!(c["state"], "idle");
    assert_eq!(c["requests"], 1);
    assert_eq!(c["user_agent"], "census-test/1");
    assert!(c["bytes_in"].as_u64().unwrap() > 20 && c["bytes_out"].as_u64().unwrap() > 20);

    assert_eq!(p.admin_get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(p.admin_get("/nope").0, 404);
    let admin = p.admin.unwrap().to_string();
    assert!(Command::new(BIN)
        .args(["health", "--admin", &admin])
        .status()
        .unwrap()
        .success());
    let dead_port = DeadPort::new();
    let dead = dead_port.addr.to_string();
    assert_eq!(
        Command::new(BIN)
            .args(["health", "--admin", &dead])
            .status()
            .unwrap()
            .code(),
        Some(1)
    );
}

#[test]
fn census_command_counts_sockets_the_test_opened() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(l.local_addr().unwrap()).unwrap())
        .collect();
    let accepted: Vec<TcpStream> = (0..3).map(|_| l.accept().unwrap().0).collect();
    let out = Command::new(BIN)
        .args(["census", "--json", "--port", &port.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ESTABLISHED"], 6, "{v}");
    assert_eq!(v["LISTEN"], 1, "{v}");
    // The peer's FIN without our close: CLOSE_WAIT on the accepted side.
    drop(clients);
    let table = || {
        let out = Command::new(BIN)
            .args(["census", "--port", &port.to_string()])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let three_close_wait = || {
        table()
            .lines()
            .any(|l| l.starts_with("CLOSE_WAIT") && l.ends_with(" 3"))
    };
    assert!(wait_until(Duration::from_secs(3), three_close_wait), "{}", table());
    drop(accepted);
}

#[test]
fn access_log_lines_have_the_promised_fields() {
    let backend = Backend::start(Reply::Ok);
    let combined = Proxy::start("[log]\naccess = \"combined\"\n", backend.addr);
    let mut s = combined.connect();
    s.write_all(b"GET /a?b=1 HTTP/1.1\r\nHost: t\r\nReferer: http://r.test/\r\nUser-Agent: log-test/2\r\n\r\n")
        .unwrap();
    read_response(&mut s, &mut Vec::new()).unwrap();
    assert!(wait_until(Duration::from_secs(3), || !combined
        .stdout
        .lock()
        .unwrap()
        .is_empty()));
    let line = combined.stdout.lock().unwrap()[0].clone();
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("] \"GET /a?b=1 HTTP/1.1\" 200 "), "{line}");
    assert!(line.ends_with(" \"http://r.test/\" \"log-test/2\""), "{line}");

    let cfg = "[log]\naccess = \"json\"\n[[user_agent]]\nmatch = \"log-test\"\nkeepalive_timeout = \"1s\"\n";
    let json = Proxy::start(cfg, backend.addr);
    let mut s = json.connect();
    s.write_all(b"GET /j HTTP/1.1\r\nHost: t\r\nUser-Agent: log-test/2\r\nConnection: close\r\n\r\n")
        .unwrap();
    read_response(&mut s, &mut Vec::new()).unwrap();
    drop(s);
    assert!(wait_until(Duration::from_secs(3), || json.stdout.lock().unwrap().len() >= 2));
    let lines = json.stdout.lock().unwrap().clone();
    let req: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(req["request"], "GET /j HTTP/1.1");
    assert_eq!(req["status"], 200);
    assert_eq!(req["rules"][0], "log-test");
    assert_eq!(req["backend"], backend.addr.to_string());
    assert!(req["upstream_ms"].as_f64().unwrap() >= 0.0);
    let close: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(close["event"], "close");
    assert_eq!(close["outcome"], "client_fin");
}

#[test]
fn sighup_applies_a_new_rule_to_new_connections_and_ignores_a_broken_file() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        "[[user_agent]]\nmatch = \"Reloadable\"\nnokeepalive = false\n",
        backend.addr,
    );
    let ua_get = |p: &Proxy| {
        let mut s = p.connect();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nUser-Agent: Reloadable/1\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s, &mut Vec::new()).unwrap();
        (s, r.header("connection"))
    };
    let (mut old, conn) = ua_get(&p);
    assert_eq!(conn, None);
    std::fs::write(
        &p.config.0,
        "[[user_agent]]\nmatch = \"Reloadable\"\nnokeepalive = true\n",
    )
    .unwrap();
    p.signal("HUP");
    assert!(wait_until(Duration::from_secs(3), || p
        .log()
        .contains("configuration reloaded")));
    assert_eq!(
        ua_get(&p).1.as_deref(),
        Some("close"),
        "the new rule applies to a new connection"
    );
    // The connection opened before the reload keeps its policy and is not dropped.
    old.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nUser-Agent: Reloadable/1\r\n\r\n")
        .unwrap();
    let r = read_response(&mut old, &mut Vec::new()).unwrap();
    assert_eq!((r.status, r.header("connection")), (200, None));
    // A broken file changes nothing.
    std::fs::write(
        &p.config.0,
        "[[user_agent]]\nmatch = \"(broken\"\nnokeepalive = false\n",
    )
    .unwrap();
    p.signal("HUP");
    assert!(wait_until(Duration::from_secs(3), || p
        .log()
        .contains("new config rejected")));
    assert!(p.log().contains("user_agent[0].match"), "{}", p.log());
    assert_eq!(ua_get(&p).1.as_deref(), Some("close"));
}

/// `/metrics` speaks the format the scraper asks for: the classic text
/// format by default (which `promtool check metrics` lints), OpenMetrics
/// when `Accept` asks for it as Prometheus does; both name each counter
/// family as its samples, so no family lacks its help or type.
#[test]
fn a_live_scrape_passes_promtool_and_prometheus_gets_openmetrics() {
    let found = Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return require_peer("promtool (Debian prometheus)");
    }
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(ADMIN, backend.addr);
    for _ in 0..3 {
        let r = request(p.addr, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
    }
    let scrape = |accept: &str| {
        let admin = p.admin.expect("admin listener");
        request(
            admin,
            &format!("GET /metrics HTTP/1.1\r\nHost: admin\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"),
        )
    };
    let classic = scrape("*/*");
    assert_eq!(
        classic.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(classic.body).unwrap();
    assert!(text.contains("finguard_requests_total{code=\"2xx\"} 3"), "{text}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{text}");
    assert_eq!(said.trim(), "", "promtool found problems:\n{text}");

    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let om = scrape(prometheus);
    assert_eq!(
        om.header("content-type").as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = String::from_utf8(om.body).unwrap();
    assert!(text.contains("# TYPE finguard_requests counter\n"), "{text}");
    assert!(text.contains("finguard_requests_total{code=\"2xx\"} 3"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}
