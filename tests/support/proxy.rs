//! The real `finguard` binary, started on 127.0.0.1 port 0 and read back:
//! its addresses, log lines, admin endpoints and metrics.

use super::wire::request;
use super::{TempFile, BIN};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A running `finguard run`.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the config or arguments enable it.
    pub admin: Option<SocketAddr>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub config: TempFile,
}

impl Proxy {
    /// Starts finguard with `config` (TOML; listener and backend come from the
    /// command line) in front of `backend`.
    pub fn start(config: &str, backend: SocketAddr) -> Proxy {
        Self::start_args(config, &["--backend", &backend.to_string()])
    }

    pub fn start_args(config: &str, extra: &[&str]) -> Proxy {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start_raw(config, &args)
    }

    /// Starts finguard with exactly these arguments after `run -c FILE`
    /// (the file's own listeners apply unless `--listen` is among them).
    pub fn start_raw(config: &str, extra: &[&str]) -> Proxy {
        let file = TempFile::new("proxy.toml", config);
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(&file.0)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "finguard=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn finguard");
        let stderr = child.stderr.take().expect("stderr");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out_lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("finguard: listening on ") {
                    let _ = tx.send((true, a.parse::<SocketAddr>().expect("listen addr")));
                }
                if let Some(a) = line.strip_prefix("finguard: admin on ") {
                    let _ = tx.send((false, a.parse::<SocketAddr>().expect("admin addr")));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let out_sink = out_lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out_sink.lock().unwrap().push(line);
            }
        });
        let mut admin = None;
        let addr = loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok((true, a)) => break a,
                Ok((false, a)) => admin = Some(a),
                Err(_) => {
                    let _ = child.kill();
                    panic!("finguard did not start: {:?}", lines.lock().unwrap());
                }
            }
        };
        Proxy {
            child,
            addr,
            admin,
            stderr: lines,
            stdout: out_lines,
            config: file,
        }
    }

    /// GET on the admin listener; returns (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let admin = self.admin.expect("admin listener enabled");
        let r = request(
            admin,
            &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
        );
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The value of one metric sample (`name{labels}` exactly as exported), 0 if absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.admin_get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to finguard");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Sends a signal with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
