//! TLS termination: a test CA made at test time (rcgen), rustls clients.

mod support;

use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use support::tls::*;
use support::*;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr, name: &str) -> Tls {
    let conn = rustls::ClientConnection::new(cfg.clone(), ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Reads one Content-Length response from a TLS stream: (status line, body).
fn read_tls_response(s: &mut Tls) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < i + 4 + len {
                let n = s.read(&mut b).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&b[..n]);
            }
            let body = String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).to_string();
            return Some((head, body));
        }
        let n = s.read(&mut b).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    }
}

#[test]
fn requests_over_tls_reach_the_backend_as_https() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::EchoHead);
    let p = Proxy::start_raw(&tls_config(&f, ""), &["--backend", &backend.addr.to_string()]);
    let mut s = connect(&client(&pki), p.addr, "a.test");
    for _ in 0..3 {
        s.write_all(b"GET /secure HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
        let (head, body) = read_tls_response(&mut s).expect("a response over TLS");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.to_ascii_lowercase().contains("x-forwarded-proto: https"), "{body}");
    }
    assert_eq!(s.conn.alpn_protocol(), None);
}

#[test]
fn sni_picks_the_certificate() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start_raw(&tls_config(&f, ""), &["--backend", &backend.addr.to_string()]);
    let cfg = client(&pki);
    for (name, want) in [("a.test", &f.a_der), ("b.test", &f.b_der)] {
        let mut s = connect(&cfg, p.addr, name);
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        read_tls_response(&mut s).expect("response");
        let presented = s.conn.peer_certificates().unwrap()[0].to_vec();
        assert_eq!(&presented, want, "{name}");
    }
}

#[test]
fn an_unfinished_handshake_is_closed_within_the_handshake_timeout() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start_raw(&tls_config(&f, ""), &["--backend", &backend.addr.to_string()]);
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).unwrap(); // the start of a ClientHello, then silence
    assert_ne!(peer_end(&mut s, Duration::from_secs(3)), PeerEnd::Open);
    let sample = "finguard_tls_handshakes_total{outcome=\"timeout\"}";
    assert!(wait_until(Duration::from_secs(2), || p.metric(sample) == 1.0));
    assert_eq!(backend.accepted(), 0);
}

/// POSTs 4 MiB over TLS, writing all of it before reading, as simple clients
/// do; returns the response head, or what went wrong.
fn upload_4mib(cfg: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String, String> {
    let mut s = connect(cfg, addr, "a.test");
    s.sock.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let len = 4 << 20;
    s.write_all(format!("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: {len}\r\n\r\n").as_bytes())
        .map_err(|e| format!("head not sent: {e}"))?;
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..(len / chunk.len()) {
        s.write_all(&chunk).map_err(|e| format!("the upload was reset: {e}"))?;
    }
    read_tls_response(&mut s)
        .map(|(head, _)| head)
        .ok_or_else(|| "the response was lost".to_string())
}

#[test]
fn early_413_over_tls_is_read_thanks_to_lingering_close() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Ok);
    let cfg = tls_config(&f, "[client]\nmax_body_bytes = \"1MiB\"\nbody_timeout = \"5s\"\n");
    let p = Proxy::start_raw(&cfg, &["--backend", &backend.addr.to_string()]);
    let ccfg = client(&pki);
    for i in 0..10 {
        let head = upload_4mib(&ccfg, p.addr).unwrap_or_else(|e| panic!("run {i}: {e}"));
        assert!(head.starts_with("HTTP/1.1 413"), "run {i}: {head}");
    }
}

#[test]
fn sighup_loads_a_new_certificate_for_the_next_handshake_and_keeps_it_on_a_bad_file() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start_raw(&tls_config(&f, ""), &["--backend", &backend.addr.to_string()]);
    let cfg = client(&pki);
    let presented = |p: &Proxy| {
        let mut s = connect(&cfg, p.addr, "a.test");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        read_tls_response(&mut s).expect("response");
        s.conn.peer_certificates().unwrap()[0].to_vec()
    };
    assert_eq!(presented(&p), f.a_der);
    let (c2, k2, der2) = leaf(&pki, &["a.test"]);
    std::fs::write(&f.a_cert.0, c2).unwrap();
    std::fs::write(&f.a_key.0, k2).unwrap();
    p.signal("HUP");
    assert!(wait_until(Duration::from_secs(3), || p
        .log()
        .contains("configuration reloaded")));
    assert_eq!(presented(&p), der2);
    // A key that does not match: logged, and the running certificate stays.
    let (_, other_key, _) = leaf(&pki, &["a.test"]);
    std::fs::write(&f.a_key.0, other_key).unwrap();
    p.signal("HUP");
    assert!(wait_until(Duration::from_secs(3), || p
        .log()
        .contains("does not match the certificate")));
    assert_eq!(presented(&p), der2);
}

#[test]
fn tls_config_errors_name_the_file_and_the_problem() {
    let pki = pki();
    let f = files(&pki);
    let check = |text: &str| {
        let file = TempFile::new("tls-check.toml", text);
        let out = std::process::Command::new(BIN)
            .arg("check")
            .arg("-c")
            .arg(&file.0)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let missing = tls_config(&f, "").replace(&f.a_cert.0.display().to_string(), "/nonexistent/cert.pem");
    let (code, err) = check(&missing);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("listener[0].tls.cert") && err.contains("/nonexistent/cert.pem: cannot read"),
        "{err}"
    );
    let swapped = tls_config(&f, "").replace(&f.b_key.0.display().to_string(), &f.a_key.0.display().to_string());
    let (code, err) = check(&swapped);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("listener[0].tls.sni[0].key") && err.contains("does not match the certificate"),
        "{err}"
    );
    let (code, err) = check(&tls_config(&f, ""));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn curl_speaks_http2_through_finguard_on_one_connection() {
    let pki = pki();
    let f = files(&pki);
    let ca = ca_file(&pki);
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start_raw(&tls_config(&f, ""), &["--backend", &backend.addr.to_string()]);
    let (out, ok) = curl_h2(&p, &ca, 5, &[]);
    assert!(ok, "{out}\n{}", p.log());
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["2 200"; 5], "{out}");
    assert_eq!(
        p.metric("finguard_client_connections_accepted_total"),
        1.0,
        "five requests, one connection"
    );
    assert_eq!(backend.heads().len(), 5);
    assert!(
        backend.heads()[0].to_ascii_lowercase().contains("host: a.test:"),
        "{:?}",
        backend.heads()
    );
    // HTTP/1.1 is still offered.
    let (out, ok) = curl_h2(&p, &ca, 1, &["--http1.1"]);
    assert!(ok);
    assert_eq!(out.trim(), "1.1 200");
}

#[test]
fn a_rapid_reset_burst_gets_goaway_while_another_client_keeps_working() {
    let pki = pki();
    let f = files(&pki);
    let ca = ca_file(&pki);
    let backend = Backend::start(Reply::Slow(Duration::from_millis(200)));
    let p = Proxy::start_raw(&tls_config(&f, ""), &["--backend", &backend.addr.to_string()]);
    let mut cfg = (*client(&pki)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = Arc::new(cfg);
    let addr = p.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let goaway = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
        let driver = tokio::spawn(conn);
        // Open streams and reset them at once, as fast as the connection takes them.
        for _ in 0..2000 {
            let req = http::Request::get("https://a.test/").body(()).unwrap();
            let Ok((_resp, mut stream)) = client.send_request(req, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            if client.clone().ready().await.is_err() {
                break;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), driver).await {
            Ok(Ok(Err(e))) => e.reason(),
            other => panic!("the connection was not cut off: {other:?}"),
        }
    });
    assert_eq!(goaway, Some(h2::Reason::ENHANCE_YOUR_CALM));
    // Meanwhile a normal client on another connection is served.
    let (out, ok) = curl_h2(&p, &ca, 2, &[]);
    assert!(ok);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["2 200"; 2]);
}

#[test]
fn early_401_from_the_backend_and_ua_policy_over_tls() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Unauthorized);
    let cfg = tls_config(
        &f,
        "[client]\nbody_timeout = \"5s\"\n[[user_agent]]\nmatch = \"Mozilla/2\"\nnokeepalive = true\n",
    );
    let p = Proxy::start_raw(&cfg, &["--backend", &backend.addr.to_string()]);
    let ccfg = client(&pki);
    for i in 0..10 {
        let head = upload_4mib(&ccfg, p.addr).unwrap_or_else(|e| panic!("run {i}: {e}"));
        assert!(head.starts_with("HTTP/1.1 401"), "run {i}: {head}");
    }
    // A Mozilla/2 client over TLS: Connection: close, then close_notify and the close.
    let mut s = connect(&ccfg, p.addr, "a.test");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nUser-Agent: Mozilla/2.02 (Win95; I)\r\n\r\n")
        .unwrap();
    let (head, _) = read_tls_response(&mut s).expect("response");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let end = s.read_to_end(&mut rest);
    assert!(end.is_ok(), "no clean close_notify: {end:?}");
}

#[test]
fn a_backend_cut_mid_body_is_an_abort_over_tls_without_close_notify() {
    let pki = pki();
    let f = files(&pki);
    let (backend, _) = raw_backend(cut_mid_body);
    let cfg = tls_config(
        &f,
        "[[user_agent]]\nmatch = \"old-client\"\nforce_response_1_0 = true\n",
    );
    let p = Proxy::start_raw(&cfg, &["--backend", &backend.to_string()]);
    for req in [
        "GET / HTTP/1.0\r\nHost: a.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.test\r\nUser-Agent: old-client\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ] {
        let mut s = connect(&client(&pki), p.addr, "a.test");
        s.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        let end = s.read_to_end(&mut got);
        // A clean end would be Ok: close_notify, then EOF.
        assert!(
            end.is_err(),
            "{req:?}: a truncated body ended cleanly ({} bytes)",
            got.len()
        );
        assert!(got.len() < 10_000 + 100, "{req:?}");
    }
}

/// A full house on a TLS listener: an idle TLS connection is asked to make
/// room for a newcomer and closes cleanly (`close_notify`, then FIN).
#[test]
fn an_idle_tls_connection_makes_room_with_a_clean_close() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::Ok);
    let extra = "[client]\nmax_connections = 1\nkeepalive_timeout = \"60s\"\n\
                 [client.pressure]\nmin_keepalive_timeout = \"60s\"\ngrace = \"100ms\"\n";
    let p = Proxy::start_raw(&tls_config(&f, extra), &["--backend", &backend.addr.to_string()]);
    let cfg = client(&pki);
    let get = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let mut idle = connect(&cfg, p.addr, "a.test");
    idle.write_all(get).unwrap();
    assert!(read_tls_response(&mut idle).is_some());
    assert!(wait_until(Duration::from_secs(5), || {
        p.admin_get("/connections").1.contains("\"evict_rank\": 1")
    }));
    // The only slot is taken: the newcomer gets it all the same.
    let mut newcomer = connect(&cfg, p.addr, "a.test");
    newcomer.write_all(get).unwrap();
    let (head, _) = read_tls_response(&mut newcomer).expect("the newcomer was answered");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut b = [0u8; 64];
    assert_eq!(idle.read(&mut b).map_err(|e| e.kind()), Ok(0), "not a clean close");
    assert_eq!(
        p.metric("finguard_client_evictions_total{reason=\"idle\",rule=\"none\"}"),
        1.0
    );
}

/// An idle TLS connection waits on its socket's readiness (no read, no
/// buffer): it still answers the next request, and a client's
/// `close_notify` and FIN while it idles end it at once (no CLOSE_WAIT).
#[test]
fn an_idle_tls_connection_answers_after_a_pause_and_notices_the_clients_close() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::EchoHead);
    let extra = "[client]\nkeepalive_timeout = \"60s\"\n";
    let p = Proxy::start_raw(&tls_config(&f, extra), &["--backend", &backend.addr.to_string()]);
    let mut s = connect(&client(&pki), p.addr, "a.test");
    let me = s.sock.local_addr().unwrap();
    let idle = |p: &Proxy| {
        let (_, body) = p.admin_get("/connections");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .any(|c| c["peer"] == me.to_string().as_str() && c["state"] == "idle")
    };
    for i in 0..3 {
        s.write_all(format!("GET /pause-{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .unwrap();
        let (head, body) = read_tls_response(&mut s).expect("a response after the pause");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.starts_with(&format!("GET /pause-{i} HTTP/1.1\r\n")), "{body}");
        assert!(wait_until(Duration::from_secs(5), || idle(&p)));
    }
    s.conn.send_close_notify();
    s.flush().unwrap();
    s.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let port = p.addr.port();
    assert!(wait_until(Duration::from_secs(5), || !idle(&p)));
    assert!(
        wait_until(Duration::from_secs(5), || !tcp_states(port, me.port())
            .contains(&"CLOSE_WAIT")),
        "{:?}",
        tcp_states(port, me.port())
    );
}

/// A WebSocket over TLS: the tunnel runs on finguard's own TLS stream
/// (the one an idle connection parks with): bytes both ways, the client's
/// `close_notify` and FIN end it cleanly, nothing left in CLOSE_WAIT.
#[test]
fn a_websocket_over_tls_round_trips_and_closes_cleanly() {
    let pki = pki();
    let f = files(&pki);
    let backend = Backend::start(Reply::UpgradeEcho);
    let p = Proxy::start_raw(&tls_config(&f, ""), &["--backend", &backend.addr.to_string()]);
    let mut s = connect(&client(&pki), p.addr, "a.test");
    let me = s.sock.local_addr().unwrap().port();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly",
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed before the 101");
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    buf.drain(..end);
    s.write_all(b"ping").unwrap();
    while buf.len() < 9 {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "tunnel closed early");
        buf.extend_from_slice(&b[..n]);
    }
    assert_eq!(&buf[..], b"earlyping");
    s.conn.send_close_notify();
    s.flush().unwrap();
    s.sock.shutdown(std::net::Shutdown::Write).unwrap();
    // The backend's close comes back as finguard's `close_notify`.
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(matches!(r, Ok(0)), "{r:?}");
    let port = p.addr.port();
    assert!(
        wait_until(Duration::from_secs(5), || !tcp_states(port, me).contains(&"CLOSE_WAIT")),
        "{:?}",
        tcp_states(port, me)
    );
}
