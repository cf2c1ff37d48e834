//! A real Apache httpd (Debian's `apache2`, installed by `.ci/run`) on an
//! ephemeral port, with its own minimal config, for tests that put finguard
//! in front of it. Skipped, with a message, only where no `apache2` binary
//! exists.

use super::{tcp_sockets, wait_until};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const APACHE: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";

pub struct Apache {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

/// How the Apache of a test runs.
#[derive(Clone, Copy)]
enum Mode {
    /// `-X`: one process, mpm_event; `true`: mod_cgid, `/cgi/echo`, `/big`.
    Single { cgi: bool },
    /// `-D FOREGROUND`: mpm_prefork with at most this many worker
    /// processes, mod_cgi, mod_status, `/cgi/echo` and `/big` of
    /// [`PREFORK_BIG`] bytes.
    Prefork { workers: usize },
}

/// The prefork Apache's `/big`: larger than every socket buffer between a
/// slow reader and Apache on loopback (the receive buffers of a reader that
/// does not keep up stay near `tcp_rmem`'s default, the send buffers at most
/// `tcp_wmem`'s 4 MiB), so a worker that must hand it to a slow reader
/// itself is held for the whole transfer.
pub const PREFORK_BIG: usize = 24 << 20;

impl Apache {
    /// Starts `apache2 -X` (one process, mpm_event) with `extra` directives.
    /// The port is picked free and may be taken by a parallel test before
    /// Apache binds it: then Apache exits and another port is tried.
    pub fn start(extra: &str) -> Option<Apache> {
        Self::start_with(extra, Mode::Single { cgi: false })
    }

    /// Also serves `/cgi/echo` (a CGI that answers `<bytes> <sha256>` of the
    /// body it received) and `/big` (8 MiB).
    pub fn start_cgi(extra: &str) -> Option<Apache> {
        Self::start_with(extra, Mode::Single { cgi: true })
    }

    /// Starts `apache2 -D FOREGROUND` with mpm_prefork: at most `workers`
    /// worker processes (`MaxRequestWorkers`), few started ahead; mod_cgi
    /// serves `/cgi/echo` (it reads its whole request body), `/big` is
    /// [`PREFORK_BIG`] bytes of [`big_file_of`], and mod_status answers
    /// `/server-status` ([`Apache::status`]).
    pub fn start_prefork(workers: usize, extra: &str) -> Option<Apache> {
        Self::start_with(extra, Mode::Prefork { workers })
    }

    fn start_with(extra: &str, mode: Mode) -> Option<Apache> {
        if !std::path::Path::new(APACHE).exists() {
            super::require_peer(&format!("{APACHE} (Debian's apache2)"));
            return None;
        }
        for _ in 0..5 {
            if let Some(a) = Self::try_start(extra, mode) {
                return Some(a);
            }
        }
        panic!("apache did not start on any of 5 ports");
    }

    fn try_start(extra: &str, mode: Mode) -> Option<Apache> {
        let dir = std::env::temp_dir().join(format!("finguard-apache-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(dir.join("htdocs")).unwrap();
        std::fs::write(dir.join("htdocs/index.html"), "hello from apache\n").unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let d = dir.display();
        let mode_conf = match mode {
            Mode::Single { cgi: false } => format!("LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n"),
            Mode::Single { cgi: true } => {
                write_cgi(&dir, 8 << 20);
                format!(
                    "LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n\
                     LoadModule cgid_module {MODULES}/mod_cgid.so\nLoadModule alias_module {MODULES}/mod_alias.so\n\
                     ScriptSock {d}/cgid.sock\nScriptAlias /cgi/ \"{d}/cgi/\"\n"
                )
            }
            Mode::Prefork { workers } => {
                write_cgi(&dir, PREFORK_BIG);
                prefork_conf(workers, &d.to_string())
            }
        };
        let conf = format!(
            r#"ServerRoot "{d}"
ServerName localhost
DefaultRuntimeDir "{d}"
{mode_conf}LoadModule authz_core_module {MODULES}/mod_authz_core.so
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
        // Its own process group: mod_cgid's daemon, prefork's workers and
        // their CGI processes must go with it.
        let args: &[&str] = match mode {
            Mode::Single { .. } => &["-X", "-f"],
            Mode::Prefork { .. } => &["-D", "FOREGROUND", "-f"],
        };
        let child = Command::new(APACHE)
            .process_group(0)
            .args(args)
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

    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// mod_status's `/server-status?auto`, asked directly on Apache's port
    /// (prefork only) on a connection of its own: `BusyWorkers` (the status
    /// request's own worker included) and the scoreboard line, or `None`
    /// when no answer came within `limit` (no worker free to give one).
    pub fn status(&self, limit: Duration) -> Option<(usize, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&self.addr, limit).ok()?;
        s.set_read_timeout(Some(limit)).ok()?;
        s.set_write_timeout(Some(limit)).ok()?;
        s.write_all(b"GET /server-status?auto HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .ok()?;
        let deadline = std::time::Instant::now() + limit;
        let mut text = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            // A worker that answers slowly counts as none answering.
            if std::time::Instant::now() >= deadline {
                return None;
            }
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
        let text = String::from_utf8_lossy(&text);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let busy = field("BusyWorkers:")?.parse().ok()?;
        Some((busy, field("Scoreboard:").unwrap_or_default()))
    }

    /// Access log lines (client ip, client port, keep-alive count, request, status).
    pub fn log(&self) -> Vec<Vec<String>> {
        self.file("access.log")
            .lines()
            .map(|l| l.split(' ').map(str::to_string).collect())
            .collect()
    }

    /// Connections Apache accepted that carried a request: first requests
    /// (`%k` = 0) in its own log.
    pub fn connections(&self) -> usize {
        self.log()
            .iter()
            .filter(|f| f.get(2).map(String::as_str) == Some("0"))
            .count()
    }
}

impl Drop for Apache {
    /// Kills the whole process group (Apache and its CGI daemon).
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
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

/// mpm_prefork with at most `workers` processes, two started ahead (so the
/// status page finds one free unless all are taken), mod_cgi and mod_status.
/// No mod_reqtimeout: Apache's own defence against slow bodies stays out of
/// the way, as in many installations.
fn prefork_conf(workers: usize, d: &str) -> String {
    format!(
        "LoadModule mpm_prefork_module {MODULES}/mod_mpm_prefork.so\n\
         StartServers 2\nMinSpareServers 1\nMaxSpareServers 2\n\
         ServerLimit {workers}\nMaxRequestWorkers {workers}\nMaxConnectionsPerChild 0\n\
         LoadModule cgi_module {MODULES}/mod_cgi.so\nLoadModule alias_module {MODULES}/mod_alias.so\n\
         ScriptAlias /cgi/ \"{d}/cgi/\"\n\
         LoadModule status_module {MODULES}/mod_status.so\nExtendedStatus On\n\
         <Location \"/server-status\">\n  SetHandler server-status\n  Require all granted\n</Location>\n"
    )
}

/// The echo CGI and `/big` of `big` bytes.
fn write_cgi(dir: &std::path::Path, big: usize) {
    use std::os::unix::fs::PermissionsExt;
    let cgi = dir.join("cgi");
    std::fs::create_dir_all(&cgi).unwrap();
    let script = cgi.join("echo");
    std::fs::write(
        &script,
        "#!/usr/bin/python3\nimport hashlib, os, sys\nh = hashlib.sha256()\nn = 0\nwhile True:\n    b = sys.stdin.buffer.read(65536)\n    if not b:\n        break\n    h.update(b)\n    n += len(b)\nsys.stdout.write('Content-Type: text/plain\\r\\n\\r\\n%d %s %s\\n' % (n, h.hexdigest(), os.environ.get('CONTENT_LENGTH', '-')))\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("htdocs/big"), big_file_of(big)).unwrap();
}

/// 8 MiB of a repeating, position-dependent pattern (so a shifted or cut
/// copy never matches).
pub fn big_file() -> Vec<u8> {
    big_file_of(8 << 20)
}

/// `len` bytes of the same pattern.
pub fn big_file_of(len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect()
}
