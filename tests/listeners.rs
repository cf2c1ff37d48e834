//! Listening sockets through the process's life: a binary upgrade hands
//! over any number of them.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::*;

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
