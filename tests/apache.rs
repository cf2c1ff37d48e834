//! finguard in front of a real Apache httpd (Debian's `apache2`, installed by
//! `.ci/run`). Each test writes its own minimal Apache config on an ephemeral
//! port and counts what Apache itself logged. Skipped, with a message, only
//! where no `apache2` binary exists.

mod support;

use std::io::Write;
use std::thread;
use std::time::Duration;
use support::apache::Apache;
use support::*;

const GET: &str = "GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

#[test]
fn two_hundred_new_connection_clients_become_a_handful_of_apache_connections() {
    let Some(apache) = Apache::start("KeepAliveTimeout 5") else {
        return;
    };
    let p = Proxy::start("", apache.addr);
    for _ in 0..200 {
        let r = request(p.addr, GET);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello from apache\n");
    }
    assert!(wait_until(Duration::from_secs(5), || apache.log().len() == 200));
    let conns = apache.connections();
    assert!(conns <= 5, "Apache accepted {conns} connections for 200 clients");
    eprintln!("apache connections for 200 sequential clients: {conns}");
}

#[test]
fn apache_closing_idle_connections_first_costs_no_5xx() {
    // Apache's KeepAliveTimeout (1 s) is shorter than the pool's (2 s):
    // finguard must follow Apache's announced Keep-Alive timeout, and retry
    // what still races it.
    let Some(apache) = Apache::start("KeepAliveTimeout 1") else {
        return;
    };
    let cfg = "[client]\nmax_requests_per_connection = 1000\n[[backend]]\nname = \"apache\"\naddrs = [\"127.0.0.1:1\"]\npool_idle_timeout = \"2s\"\n";
    let p = Proxy::start(cfg, apache.addr);
    let mut s = p.connect();
    let mut buf = Vec::new();
    let mut bad = 0;
    for i in 0..200u64 {
        s.write_all(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s, &mut buf).expect("response");
        bad += usize::from(r.status >= 500);
        // Client pacing straddling Apache's 1 s (most gaps short, some long).
        let gap = if i % 20 == 19 { 900 + (i * 37) % 250 } else { 5 };
        thread::sleep(Duration::from_millis(gap));
    }
    assert_eq!(bad, 0);
    // No CLOSE_WAIT towards Apache on finguard's side.
    let cw = tcp_states(0, apache.addr.port())
        .into_iter()
        .filter(|s| *s == "CLOSE_WAIT")
        .count();
    assert_eq!(cw, 0);
}

#[test]
fn apache_with_mod_remoteip_logs_the_client_not_finguard() {
    for version in ["v1", "v2"] {
        let Some(apache) = Apache::start("KeepAliveTimeout 5\nRemoteIPProxyProtocol On") else {
            return;
        };
        let cfg =
            format!("[[backend]]\nname = \"apache\"\naddrs = [\"127.0.0.1:1\"]\nproxy_protocol = \"{version}\"\n");
        let p = Proxy::start(&cfg, apache.addr);
        let mut s = p.connect();
        let client_port = s.local_addr().unwrap().port().to_string();
        s.write_all(GET.as_bytes()).unwrap();
        let r = read_response(&mut s, &mut Vec::new()).unwrap();
        assert_eq!(r.status, 200, "{version}: {}\n{}", apache.file("error.log"), p.log());
        assert!(wait_until(Duration::from_secs(5), || !apache.log().is_empty()));
        let line = &apache.log()[0];
        assert_eq!(line[0], "127.0.0.1", "{version}");
        assert_eq!(
            line[1], client_port,
            "{version}: Apache logged finguard's port, not the client's: {line:?}"
        );
    }
}

#[test]
fn health_checks_pass_through_apache_with_mod_remoteip() {
    for version in ["v1", "v2"] {
        let Some(apache) = Apache::start("KeepAliveTimeout 5\nRemoteIPProxyProtocol On") else {
            return;
        };
        let cfg = format!(
            "[admin]\naddr = \"127.0.0.1:0\"\n[[backend]]\nname = \"apache\"\naddrs = [\"127.0.0.1:1\"]\nproxy_protocol = \"{version}\"\n\
             health_check = {{ path = \"/index.html?check\", interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 2 }}\n"
        );
        let p = Proxy::start(&cfg, apache.addr);
        let down = format!(
            "finguard_backend_health_transitions_total{{backend=\"apache\",addr=\"{}\",to=\"down\"}}",
            apache.addr
        );
        let checks = || {
            apache
                .log()
                .iter()
                .filter(|l| l.get(4).map(String::as_str) == Some("/index.html?check"))
                .count()
        };
        // Three checks Apache answered, or the address taken out.
        assert!(
            wait_until(Duration::from_secs(5), || checks() >= 3 || p.metric(&down) > 0.0),
            "{version}: {}",
            apache.file("error.log")
        );
        assert_eq!(
            p.metric(&down),
            0.0,
            "{version}: {}\n{}",
            apache.file("error.log"),
            p.log()
        );
        let r = request(p.addr, GET);
        assert_eq!(r.status, 200, "{version}: {}", p.log());
        // A check speaks for itself: Apache logs finguard's own address.
        let check = apache
            .log()
            .into_iter()
            .find(|l| l.get(4).map(String::as_str) == Some("/index.html?check"));
        assert_eq!(check.map(|l| l[0].clone()).as_deref(), Some("127.0.0.1"), "{version}");
    }
}
