//! Listening sockets through the process's life: a reload never gives a
//! socket another listener's TLS or PROXY protocol, and a binary upgrade
//! hands over any number of them.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::*;

/// A port free on 127.0.0.1 a moment ago: a reload matches listeners by
/// address, so these tests name theirs.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One request after `prefix` on a new connection: its status, and the
/// `X-Forwarded-For` the echoing backend saw; `None` without an HTTP answer.
fn get(port: u16, prefix: &[u8]) -> Option<(u16, String)> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(prefix).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c, &mut Vec::new())?;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    let xff = body
        .lines()
        .find_map(|l| l.strip_prefix("X-Forwarded-For: "))
        .unwrap_or("")
        .to_string();
    Some((r.status, xff))
}

/// The status line of a GET over TLS (SNI `a.test`), `None` if no TLS answer.
fn get_tls(client: &std::sync::Arc<rustls::ClientConfig>, port: u16) -> Option<String> {
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_string)
}

const FORGED: &[u8] = b"PROXY TCP4 6.6.6.6 10.0.0.1 1111 80\r\n";

#[test]
fn a_reload_that_reorders_or_drops_listeners_leaves_each_socket_its_own_tls_and_proxy_protocol() {
    use support::tls::{client, files, pki};
    let backend = Backend::start(Reply::EchoHead);
    let (pki, plain, pp, tls) = (pki(), free_port(), free_port(), free_port());
    let f = files(&pki);
    let listener = |port: u16, extra: &str| format!("[[listener]]\naddr = \"127.0.0.1:{port}\"\n{extra}\n");
    let plain_l = listener(plain, "");
    let pp_l = listener(pp, "proxy_protocol = true");
    let tls_l = listener(
        tls,
        &format!(
            "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"",
            f.a_cert.0.display(),
            f.a_key.0.display()
        ),
    );
    let rest = format!(
        "[client]\nheader_timeout = \"2s\"\n[[backend]]\nname = \"app\"\naddrs = [\"{}\"]\n",
        backend.addr
    );
    let p = Proxy::start_raw(&format!("{plain_l}{pp_l}{tls_l}{rest}"), &[]);
    let tls_client = client(&pki);
    let reloads = std::cell::Cell::new(0);
    let reload = |text: String| {
        std::fs::write(&p.config.0, text).unwrap();
        p.signal("HUP");
        reloads.set(reloads.get() + 1);
        assert!(wait_until(Duration::from_secs(5), || p
            .log()
            .matches("configuration reloaded")
            .count()
            == reloads.get()));
    };
    // What each socket speaks, whatever the config now says of the others.
    let each_socket_as_started = |when: &str| {
        assert_eq!(get(plain, b""), Some((200, "127.0.0.1".into())), "{when}: plain");
        let forged = get(plain, FORGED);
        assert!(
            forged.as_ref().is_some_and(|(s, xff)| *s == 400 && xff.is_empty()),
            "{when}: the plain port took a client's PROXY header: {forged:?}"
        );
        assert_eq!(get(pp, FORGED), Some((200, "6.6.6.6".into())), "{when}: PROXY port");
        assert_eq!(get(pp, b"").map(|r| r.0), Some(400), "{when}: PROXY port, no header");
        assert_eq!(get(tls, b""), None, "{when}: the TLS port answered plaintext");
        assert_eq!(
            get_tls(&tls_client, tls).as_deref(),
            Some("HTTP/1.1 200 OK"),
            "{when}: TLS port"
        );
    };
    each_socket_as_started("at start");
    reload(format!("{pp_l}{plain_l}{tls_l}{rest}"));
    each_socket_as_started("reordered");
    reload(format!("{pp_l}{tls_l}{rest}"));
    // Gone from the config: served as before until a restart.
    each_socket_as_started("plain listener removed");
    assert!(
        p.log().contains(&format!("127.0.0.1:{plain}")) && p.log().contains("until restart"),
        "the reload does not say the removed listener goes on: {}",
        p.log()
    );
    // Turning the PROXY protocol on for a running socket needs a restart.
    reload(format!(
        "{}{pp_l}{tls_l}{rest}",
        listener(plain, "proxy_protocol = true")
    ));
    each_socket_as_started("proxy_protocol turned on for the plain address");
    assert!(p.log().contains("proxy_protocol"), "{}", p.log());
}

#[test]
fn an_upgrade_hands_over_more_listening_sockets_than_one_message_carries() {
    let backend = Backend::start(Reply::Ok);
    let dir = std::env::temp_dir().join(format!("finguard-upgrade-many-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("upgrade.sock");
    let b = backend.addr.to_string();
    // 64 workers x 4 listeners: 256 sockets, past the kernel's 253
    // descriptors per SCM_RIGHTS message.
    let mut args = vec!["--backend", &b, "--upgrade-socket", sock.to_str().unwrap()];
    for _ in 0..4 {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    let listening = |p: &Proxy| -> Vec<SocketAddr> {
        p.log()
            .lines()
            .filter_map(|l| l.strip_prefix("finguard: listening on "))
            .map(|a| a.parse().unwrap())
            .collect()
    };
    let mut old = Proxy::start_raw("workers = 64\n", &args);
    assert!(wait_until(Duration::from_secs(5), || listening(&old).len() == 4));
    let addrs = listening(&old);
    let new = Proxy::start_raw("workers = 64\n", &args);
    assert_eq!(
        old.wait_exit(Duration::from_secs(15)),
        Some(0),
        "old process:\n{}",
        old.log()
    );
    assert!(wait_until(Duration::from_secs(5), || listening(&new).len() == 4));
    assert_eq!(listening(&new), addrs, "the new process serves the same addresses");
    for a in addrs {
        let r = request(a, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200, "{a}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
