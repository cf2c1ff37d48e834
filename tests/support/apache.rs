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

impl Apache {
    /// Starts `apache2 -X` (one process, mpm_event) with `extra` directives.
    /// The port is picked free and may be taken by a parallel test before
    /// Apache binds it: then Apache exits and another port is tried.
    pub fn start(extra: &str) -> Option<Apache> {
        Self::start_with(extra, false)
    }

    /// Also serves `/cgi/echo` (a CGI that answers `<bytes> <sha256>` of the
    /// body it received) and `/big` (8 MiB).
    pub fn start_cgi(extra: &str) -> Option<Apache> {
        Self::start_with(extra, true)
    }

    fn start_with(extra: &str, cgi: bool) -> Option<Apache> {
        if !std::path::Path::new(APACHE).exists() {
            super::require_peer(&format!("{APACHE} (Debian's apache2)"));
            return None;
        }
        for _ in 0..5 {
            if let Some(a) = Self::try_start(extra, cgi) {
                return Some(a);
            }
        }
        panic!("apache did not start on any of 5 ports");
    }

    fn try_start(extra: &str, cgi: bool) -> Option<Apache> {
        let dir = std::env::temp_dir().join(format!("finguard-apache-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(dir.join("htdocs")).unwrap();
        std::fs::write(dir.join("htdocs/index.html"), "hello from apache\n").unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let d = dir.display();
        let cgi_conf = if cgi {
            write_cgi(&dir);
            format!(
                "LoadModule cgid_module {MODULES}/mod_cgid.so\nLoadModule alias_module {MODULES}/mod_alias.so\n\
                 ScriptSock {d}/cgid.sock\nScriptAlias /cgi/ \"{d}/cgi/\"\n"
            )
        } else {
            String::new()
        };
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
{cgi_conf}{extra}
"#
        );
        std::fs::write(dir.join("httpd.conf"), conf).unwrap();
        // Its own process group: mod_cgid forks a daemon that must go with it.
        let child = Command::new(APACHE)
            .process_group(0)
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

    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
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

/// The echo CGI and the 8 MiB file.
fn write_cgi(dir: &std::path::Path) {
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
    std::fs::write(dir.join("htdocs/big"), big_file()).unwrap();
}

/// 8 MiB of a repeating, position-dependent pattern (so a shifted or cut
/// copy never matches).
pub fn big_file() -> Vec<u8> {
    (0..8u32 << 20).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect()
}
