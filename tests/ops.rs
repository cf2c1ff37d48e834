//! Operating finguard as nginx and HAProxy are operated: log files that
//! rotate (SIGUSR1 reopens), the real client address behind a load balancer
//! (PROXY protocol listeners, trusted X-Forwarded-For), and the shipped
//! dashboard and manifests checked against what finguard really exports
//! and reads.

mod support;

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

#[test]
fn an_access_file_in_a_missing_directory_is_a_config_error_naming_the_key() {
    let cfg = TempFile::new("bad-log.toml", "[log]\naccess_file = \"/nonexistent-dir/access.log\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finguard"))
        .args(["check", "-c"])
        .arg(&cfg.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("log.access_file") && err.contains("/nonexistent-dir"),
        "{err}"
    );
}
