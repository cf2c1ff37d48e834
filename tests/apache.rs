//! finguard in front of a real Apache httpd (Debian's `apache2`, installed by
//! `.ci/run`). Each test writes its own minimal Apache config on an ephemeral
//! port and counts what Apache itself logged. Skipped, with a message, only
//! where no `apache2` binary exists.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;
use support::*;

const APACHE: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";

struct Apache {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Apache {
    /// Starts `apache2 -X` (one process, mpm_event) with `extra` directives.
    /// The port is picked free and may be taken by a parallel test before
    /// Apache binds it: then Apache exits and another port is tried.
    fn start(extra: &str) -> Option<Apache> {
        if !std::path::Path::new(APACHE).exists() {
            eprintln!("SKIPPED: {APACHE} not found (install Debian's apache2 to run this test)");
            return None;
        }
        for _ in 0..5 {
            if let Some(a) = Self::try_start(extra) {
                return Some(a);
            }
        }
        panic!("apache did not start on any of 5 ports");
    }

    fn try_start(extra: &str) -> Option<Apache> {
        let dir = std::env::temp_dir().join(format!("finguard-apache-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(dir.join("htdocs")).unwrap();
        std::fs::write(dir.join("htdocs/index.html"), "hello from apache\n").unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let d = dir.display();
        let conf = format!(
            r#"ServerRoot "{d}"
ServerName localhost
LoadModule mpm_event_module {MODULES}/mod_mpm_event.so
LoadModule authz_core_module {MODULES}/mod_authz_core.so
LoadModule remoteip_module {MODULES}/mod_remoteip.so
Listen 127.0.0.1:{port}
User www-data
Group www-data
PidFile {d}/httpd.pid
ErrorLog {d}/error.log
DocumentRoot "{d}/htdocs"
<Directory "{d}/htdocs">
  Require all granted
</Directory>
KeepAlive On
MaxKeepAliveRequests 10000
LogFormat "%a %{{remote}}p %k \"%r\" %>s" fg
CustomLog {d}/access.log fg
{extra}
"#
        );
        std::fs::write(dir.join("httpd.conf"), conf).unwrap();
        let child = Command::new(APACHE)
            .args(["-X", "-f"])
            .arg(dir.join("httpd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start apache2");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut a = Apache { child, addr, dir };
        // Seen in the kernel's table and owned by this Apache, not probed: a
        // probe would itself be a (PROXY-less) client.
        let pid = a.child.id();
        let mut exited = false;
        let up = wait_until(Duration::from_secs(15), || {
            exited = a.child.try_wait().ok().flatten().is_some();
            exited || owns_listener(pid, port)
        });
        if exited || !up {
            return None; // dropped: killed and cleaned up
        }
        Some(a)
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Access log lines (client ip, client port, keep-alive count, request, status).
    fn log(&self) -> Vec<Vec<String>> {
        self.file("access.log")
            .lines()
            .map(|l| l.split(' ').map(str::to_string).collect())
            .collect()
    }

    /// Connections Apache accepted that carried a request: first requests
    /// (`%k` = 0) in its own log.
    fn connections(&self) -> usize {
        self.log()
            .iter()
            .filter(|f| f.get(2).map(String::as_str) == Some("0"))
            .count()
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether process `pid` holds the socket listening on `port`.
fn owns_listener(pid: u32, port: u16) -> bool {
    let inodes: Vec<u64> = tcp_sockets(port, 0)
        .into_iter()
        .filter(|(s, _)| *s == "LISTEN")
        .map(|(_, i)| i)
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|l| {
            let l = l.to_string_lossy();
            inodes.iter().any(|i| l == format!("socket:[{i}]"))
        })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

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
