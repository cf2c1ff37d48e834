//! Per-User-Agent policy: the classification table over real User-Agent
//! strings, and what each policy looks like on the wire.

mod support;

use finguard::config::{self, Overrides};
use std::io::Write;
use std::time::{Duration, Instant};
use support::*;

fn shipped_config() -> finguard::config::Config {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/finguard.toml");
    config::load(Some(path.as_ref()), &Overrides::default()).expect("conf/finguard.toml")
}

#[test]
fn classification_table_over_real_user_agents() {
    let cfg = shipped_config();
    let tsv = include_str!("data/user-agents.tsv");
    // (substring of the UA, nokeepalive, downgrade, force-1.0, keepalive_timeout s)
    let expected: &[(&str, bool, bool, bool, u64)] = &[
        ("Mozilla/2.02 (Win95; I)", true, false, false, 5),
        ("Mozilla/2.0 (compatible; MSIE 3.02", true, false, false, 5),
        ("MSIE 4.0b2;", true, true, true, 5),
        ("RealPlayer 4.0", false, false, true, 5),
        ("Java/1.0", false, false, true, 5),
        ("JDK/1.0", false, false, true, 5),
        ("Java/1.8.0_151", false, false, false, 5),
        ("Googlebot/2.1", false, false, false, 2),
        ("bingbot/2.0", false, false, false, 2),
        ("Baiduspider", false, false, false, 2),
        ("Twitterbot/1.0", false, false, false, 2),
        ("GPTBot/1.2", false, false, false, 2),
        ("facebookexternalhit/1.1", false, false, false, 5),
        ("Chrome/124.0.0.0 Safari/537.36 Edg", false, false, false, 5),
        ("Firefox/125.0", false, false, false, 5),
        ("curl/8.5.0", false, false, false, 5),
    ];
    let uas: Vec<&str> = tsv
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('\t').nth(1))
        .collect();
    assert!(uas.len() > 40);
    for &(needle, nokeepalive, downgrade, force, ka) in expected {
        let ua = uas
            .iter()
            .find(|u| u.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in the data"));
        let p = cfg.rules.classify(&cfg.client, ua);
        assert_eq!(
            (
                p.nokeepalive,
                p.downgrade_1_0,
                p.force_response_1_0,
                p.settings.keepalive_timeout.as_secs()
            ),
            (nokeepalive, downgrade, force, ka),
            "{ua}"
        );
    }
    // Every browser and tool string keeps the defaults.
    for line in tsv
        .lines()
        .filter(|l| l.starts_with("browser\t") || l.starts_with("tool\t"))
    {
        let ua = line.split('\t').nth(1).unwrap();
        assert!(
            cfg.rules.classify(&cfg.client, ua).matched.is_empty(),
            "{ua} matched a rule"
        );
    }
}

#[test]
fn later_rules_override_earlier_ones() {
    let text = r#"
[[user_agent]]
match = "Foo"
nokeepalive = true
keepalive_timeout = "3s"
[[user_agent]]
match = "Foo/2"
nokeepalive = false
mode = "immediate"
"#;
    let cfg = config::parse("t.toml", text, &Overrides::default()).unwrap();
    let p = cfg.rules.classify(&cfg.client, "Foo/2.1");
    assert_eq!(p.matched, vec![0, 1]);
    assert!(!p.nokeepalive);
    assert_eq!(p.settings.keepalive_timeout, Duration::from_secs(3));
    assert_eq!(p.settings.close.mode, config::CloseMode::Immediate);
    let p = cfg.rules.classify(&cfg.client, "Foo/1");
    assert!(p.nokeepalive && p.matched == vec![0]);
}

const RULES: &str = r#"
[client]
keepalive_timeout = "10s"
[client.close]
linger_timeout = "300ms"
linger_time = "1s"
[[user_agent]]
match = "Mozilla/2"
nokeepalive = true
[[user_agent]]
match = 'MSIE 4\.0b2;'
nokeepalive = true
downgrade_1_0 = true
force_response_1_0 = true
[[user_agent]]
match = "(?i)bot"
keepalive_timeout = "300ms"
"#;

fn get(p: &Proxy, ua: &str) -> (std::net::TcpStream, Response) {
    let mut s = p.connect();
    write!(s, "GET / HTTP/1.1\r\nHost: t\r\nUser-Agent: {ua}\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut Vec::new()).expect("response");
    (s, r)
}

#[test]
fn mozilla_2_gets_connection_close_and_finguard_closes() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(RULES, backend.addr);
    let (mut s, r) = get(&p, "Mozilla/2.02 (Win95; I)");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(peer_end(&mut s, Duration::from_secs(2)), PeerEnd::Eof);
    // A current browser on the same proxy keeps its connection.
    let (mut s, r) = get(
        &p,
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    );
    assert_eq!(r.header("connection"), None);
    assert_eq!(r.header("keep-alive").as_deref(), Some("timeout=10, max=99"));
    assert_eq!(peer_end(&mut s, Duration::from_millis(500)), PeerEnd::Open);
}

#[test]
fn msie_4_0b2_gets_an_http_1_0_answer_without_chunking() {
    let backend = Backend::start(Reply::Chunked);
    let p = Proxy::start(RULES, backend.addr);
    let (mut s, r) = get(&p, "Mozilla/4.0 (compatible; MSIE 4.0b2; Windows 95)");
    assert_eq!(r.status_line, "HTTP/1.0 200 OK");
    assert_eq!(r.header("transfer-encoding"), None, "{}", r.head);
    assert_eq!(r.body, b"chunk-ed!\n");
    assert_eq!(peer_end(&mut s, Duration::from_secs(2)), PeerEnd::Eof);
    // Without the rule the same backend response is relayed chunked.
    let (_s, r) = get(&p, "curl/8.5.0");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(r.body, b"chunk-ed!\n");
}

#[test]
fn a_bot_rule_shortens_keepalive_on_the_wire() {
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(RULES, backend.addr);
    let (mut bot, r) = get(
        &p,
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    );
    assert_eq!(r.status, 200);
    let (mut browser, _) = get(
        &p,
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    );
    let t = Instant::now();
    // The bot's idle connection is closed after 300 ms (+ linger), the browser's is not.
    assert_eq!(peer_end(&mut bot, Duration::from_secs(5)), PeerEnd::Eof);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(peer_end(&mut browser, Duration::from_millis(300)), PeerEnd::Open);
}

#[test]
fn check_explains_a_user_agent() {
    let out = std::process::Command::new(BIN)
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/finguard.toml"),
        ])
        .args(["--user-agent", "Mozilla/4.0 (compatible; MSIE 4.0b2; Windows 95)"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let policy = &text[text.find("[[policy]]").expect("policy section")..];
    assert!(policy.contains("MSIE 4\\.0b2;"), "{policy}");
    assert!(policy.contains("force_response_1_0 = true"), "{policy}");
    assert!(policy.contains("keepalive = false"), "{policy}");
}
