//! Test support: the real `finguard` binary on 127.0.0.1 port 0 ([`proxy`]),
//! test backends that count what they see ([`backend`]), raw TCP clients and
//! `/proc/net/tcp` ([`wire`]), Apache, and TLS.
//! Nothing here sleeps to synchronise: waits poll observable state against a
//! deadline.

#![allow(dead_code)]

pub mod apache;
mod backend;
pub mod h2_client;
mod proxy;
pub mod tls;
mod wire;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use backend::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use wire::*;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_finguard");

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A temp file that lives as long as the value.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, text: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("finguard-test-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A test whose external peer (Apache, a Python package, ...) is missing
/// skips with a line saying so, unless `FINGUARD_REQUIRE_PEERS` is set (CI
/// sets it): then a missing peer fails the test.
pub fn require_peer(what: &str) {
    if std::env::var_os("FINGUARD_REQUIRE_PEERS").is_some() {
        panic!("{what} is required (FINGUARD_REQUIRE_PEERS is set) but missing");
    }
    eprintln!("SKIPPED: {what} not installed");
}

/// Whether the command `tool` is installed (else [`require_peer`]).
pub fn have(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        require_peer(tool);
    }
    found
}
