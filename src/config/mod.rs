//! Configuration: the TOML file, the CLI/env overrides, and validation.
//!
//! `raw` mirrors the file (every key optional, unknown keys rejected); `load`
//! turns it into a checked [`Config`] where every default is filled in. Every
//! error names the file, the key and the reason. This module never touches a
//! socket.

mod raw;
pub mod units;

use crate::policy::{RuleSet, SettingsOverride, UaRule};
use raw::*;
use serde::Serialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;
use units::{fmt_duration, ConfDuration};

/// Bounded so that a stuck drain never holds a deploy hostage.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Same as the documented example; a sidecar overrides it with `--listen`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// The usual place of an Apache behind finguard on the same host.
pub const DEFAULT_BACKEND: &str = "127.0.0.1:8081";
/// Apache's `KeepAliveTimeout` default: idle clients cost a socket and a task.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Apache's `MaxKeepAliveRequests` default.
pub const DEFAULT_MAX_REQUESTS: u32 = 100;
/// Slowloris guard, as nginx `client_header_timeout` (60 s) but tighter.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence between two reads (or writes) of a body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Twice nginx's default large buffer; real heads are under 4 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 * 1024 * 1024;
/// WebSocket and other upgraded connections may idle this long (apps ping every ~30 s).
pub const DEFAULT_UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A few thousand idle connections cost a few MiB: the cap protects descriptors.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Apache `MAX_SECS_TO_LINGER`.
pub const DEFAULT_LINGER_TIME: Duration = Duration::from_secs(30);
/// Apache `SECONDS_TO_LINGER`.
pub const DEFAULT_LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// Apache's mod_proxy default `max` is per child; 256 keeps a prefork origin alive.
pub const DEFAULT_BACKEND_MAX_CONNECTIONS: u32 = 256;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_POOL_MAX_IDLE: u32 = 64;
/// Below Apache's 5 s `KeepAliveTimeout`, so finguard closes idle connections first.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Consecutive connect failures before an address sits out (nginx `max_fails` is 1;
/// 3 rides out a single lost SYN).
pub const DEFAULT_EJECT_AFTER: u32 = 3;
/// nginx `fail_timeout` default.
pub const DEFAULT_EJECT_COOL_OFF: Duration = Duration::from_secs(10);
pub const DEFAULT_REAPER_INTERVAL: Duration = Duration::from_secs(1);

/// A config error: which file, which key, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseMode {
    /// Shut down the write half, drain what the client still sends, then close.
    Lingering,
    /// Kernel lingering: `SO_LINGER {on, linger_time}` then close.
    SoLinger,
    /// Close at once (Apache's `NO_LINGCLOSE`): unread client data turns into RST.
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Abort with RST: no orphaned FIN_WAIT_2 is left in the kernel.
    Reset,
    /// Plain close: the kernel keeps FIN_WAIT_2 up to `tcp_fin_timeout`.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseSettings {
    pub mode: CloseMode,
    pub linger_time: Duration,
    pub linger_timeout: Duration,
    pub on_timeout: OnTimeout,
}

/// The settings one client connection runs with (after its User-Agent rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    pub keepalive: bool,
    pub keepalive_timeout: Duration,
    /// At least 1.
    pub max_requests: u32,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// Longest silence in both directions of an upgraded (tunnelled) connection.
    pub upgrade_idle_timeout: Duration,
    pub close: CloseSettings,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            keepalive: true,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_requests: DEFAULT_MAX_REQUESTS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES as usize,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            upgrade_idle_timeout: DEFAULT_UPGRADE_IDLE_TIMEOUT,
            close: CloseSettings {
                mode: CloseMode::Lingering,
                linger_time: DEFAULT_LINGER_TIME,
                linger_timeout: DEFAULT_LINGER_TIMEOUT,
                on_timeout: OnTimeout::Reset,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub tls: Option<crate::tls::TlsSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarded {
    XForwarded,
    Forwarded,
    Off,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    /// As written, for display.
    pub addr_specs: Vec<String>,
    pub addrs: Vec<SocketAddr>,
    pub max_connections: u32,
    pub queue_timeout: Duration,
    pub pool_max_idle: u32,
    pub pool_idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub retry_idempotent: bool,
    pub proxy_protocol: ProxyProtocol,
    pub forwarded: Forwarded,
    pub eject_after: u32,
    pub eject_cool_off: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `None` matches every host.
    pub host: Option<String>,
    pub path_prefix: String,
    /// Index into `Config::backends`.
    pub backend: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    Combined,
    Json,
    Off,
}

/// The checked configuration, every default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages; `"<defaults>"` when no file was read.
    pub source: String,
    pub shutdown_timeout: Duration,
    /// Accepting threads, each with its own runtime and its own
    /// `SO_REUSEPORT` socket per listener; 0 in the file means one per core.
    pub workers: usize,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<SocketAddr>,
    pub client: ClientSettings,
    pub max_connections: u32,
    /// 0 = unlimited.
    pub max_connections_per_ip: u32,
    pub rules: RuleSet,
    pub backends: Vec<BackendConfig>,
    pub routes: Vec<RouteConfig>,
    pub reaper_interval: Duration,
    pub access_log: AccessLog,
    pub log_level: String,
}

/// Command-line (or `FINGUARD_*`) values that take precedence over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Vec<String>,
    pub backend: Vec<String>,
    pub admin: Option<String>,
}

/// Which file to read: `-c`, else `$FINGUARD_CONFIG` (clap fills that in),
/// else `conf/finguard.toml` when it exists, else none.
pub fn default_path(explicit: Option<&Path>) -> Option<std::path::PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let p = Path::new("conf/finguard.toml");
    p.exists().then(|| p.to_path_buf())
}

/// Reads, parses and validates a config file (or the built-in defaults).
pub fn load(path: Option<&Path>, ov: &Overrides) -> Result<Config, ConfigError> {
    let (source, text) = match path {
        Some(p) => {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                file: name.clone(),
                key: "(file)".into(),
                reason: format!("cannot read: {e}"),
            })?;
            (name, text)
        }
        None => ("<defaults>".to_string(), String::new()),
    };
    parse(&source, &text, ov)
}

/// Parses and validates config text; `source` names it in errors.
pub fn parse(source: &str, text: &str, ov: &Overrides) -> Result<Config, ConfigError> {
    let raw: RawConfig = {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let key = match (path.as_str(), line) {
                (".", Some(l)) | ("", Some(l)) => format!("line {l}"),
                (p, Some(l)) => format!("{p} (line {l})"),
                (p, None) => p.to_string(),
            };
            ConfigError {
                file: source.to_string(),
                key,
                reason: inner.message().trim().to_string(),
            }
        })?
    };
    Validator { file: source }.config(raw, ov)
}

struct Validator<'a> {
    file: &'a str,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn addr(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.to_socket_addrs()
            .map_err(|e| self.err(key, format!("{s:?} is not a host:port address ({e})")))?
            .next()
            .ok_or_else(|| self.err(key, format!("{s:?} resolves to no address")))
    }

    fn config(&self, raw: RawConfig, ov: &Overrides) -> Result<Config, ConfigError> {
        let mut listeners = Vec::new();
        if ov.listen.is_empty() {
            for (i, l) in raw.listener.iter().enumerate() {
                let tls = match &l.tls {
                    Some(t) => Some(self.tls(i, t)?),
                    None => None,
                };
                listeners.push(ListenerConfig {
                    addr: self.addr(&format!("listener[{i}].addr"), &l.addr)?,
                    tls,
                });
            }
            if listeners.is_empty() {
                listeners.push(ListenerConfig {
                    addr: self.addr("listener.addr", DEFAULT_LISTEN)?,
                    tls: None,
                });
            }
        } else {
            for a in &ov.listen {
                listeners.push(ListenerConfig {
                    addr: self.addr("--listen", a)?,
                    tls: None,
                });
            }
        }
        let admin = match (&ov.admin, &raw.admin) {
            (Some(a), _) => Some(self.addr("--admin", a)?),
            (None, Some(a)) => Some(self.addr("admin.addr", &a.addr)?),
            (None, None) => None,
        };

        let client = self.client(&raw.client)?;
        let mut rules = Vec::new();
        for (i, r) in raw.user_agent.into_iter().enumerate() {
            rules.push(self.ua_rule(i, r, &client)?);
        }
        let rules = RuleSet::new(rules).map_err(|(i, e)| self.err(format!("user_agent[{i}].match"), e))?;

        let (backends, routes) = self.backends_and_routes(raw.backend, raw.route, ov)?;

        let access_log = match raw.log.access.as_deref().unwrap_or("combined") {
            "combined" => AccessLog::Combined,
            "json" => AccessLog::Json,
            "off" => AccessLog::Off,
            o => {
                return Err(self.err(
                    "log.access",
                    format!("{o:?}: expected \"combined\", \"json\" or \"off\""),
                ))
            }
        };
        let log_level = raw.log.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(self.err("log.level", format!("{log_level:?} is not a log level or filter")));
        }
        let reaper_interval = raw.reaper.interval.map_or(DEFAULT_REAPER_INTERVAL, |d| d.0);
        if reaper_interval.is_zero() {
            return Err(self.err("reaper.interval", "must be greater than 0"));
        }
        let max_connections = raw.client.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(self.err("client.max_connections", "must be at least 1"));
        }
        Ok(Config {
            source: self.file.to_string(),
            shutdown_timeout: raw.shutdown_timeout.map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.0),
            workers: match raw.workers.unwrap_or(0) {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n as usize,
            },
            listeners,
            admin,
            client,
            max_connections,
            max_connections_per_ip: raw.client.max_connections_per_ip.unwrap_or(0),
            rules,
            backends,
            routes,
            reaper_interval,
            access_log,
            log_level,
        })
    }

    fn tls(&self, i: usize, t: &RawTls) -> Result<crate::tls::TlsSettings, ConfigError> {
        use crate::tls::CertFiles;
        let mut files = vec![CertFiles {
            names: Vec::new(),
            cert: t.cert.clone(),
            key: t.key.clone(),
        }];
        for (j, s) in t.sni.iter().enumerate() {
            if s.names.is_empty() {
                return Err(self.err(
                    format!("listener[{i}].tls.sni[{j}].names"),
                    "needs at least one server name",
                ));
            }
            files.push(CertFiles {
                names: s.names.clone(),
                cert: s.cert.clone(),
                key: s.key.clone(),
            });
        }
        let timeout = t
            .handshake_timeout
            .map_or(crate::tls::DEFAULT_HANDSHAKE_TIMEOUT, |d| d.0);
        if timeout.is_zero() {
            return Err(self.err(format!("listener[{i}].tls.handshake_timeout"), "must be greater than 0"));
        }
        crate::tls::build(files, timeout, crate::downstream::alpn()).map_err(|(j, key, why)| {
            let at = if j == 0 {
                format!("listener[{i}].tls.{key}")
            } else {
                format!("listener[{i}].tls.sni[{}].{key}", j - 1)
            };
            self.err(at, why)
        })
    }

    fn client(&self, c: &RawClient) -> Result<ClientSettings, ConfigError> {
        let o = SettingsOverride {
            keepalive: c.keepalive,
            keepalive_timeout: c.keepalive_timeout.map(|d| d.0),
            max_requests: c.max_requests_per_connection,
            header_timeout: c.header_timeout.map(|d| d.0),
            body_timeout: c.body_timeout.map(|d| d.0),
            max_header_bytes: c.max_header_bytes.map(|s| s.0),
            max_body_bytes: c.max_body_bytes.map(|s| s.0),
            upgrade_idle_timeout: c.upgrade_idle_timeout.map(|d| d.0),
            close_mode: self.close_mode("client.close.mode", c.close.mode.as_deref())?,
            linger_time: c.close.linger_time.map(|d| d.0),
            linger_timeout: c.close.linger_timeout.map(|d| d.0),
            on_timeout: self.on_timeout("client.close.on_timeout", c.close.on_timeout.as_deref())?,
        };
        let mut s = ClientSettings::default();
        o.apply(&mut s);
        self.check_settings("client", &s)?;
        Ok(s)
    }

    fn close_mode(&self, key: &str, v: Option<&str>) -> Result<Option<CloseMode>, ConfigError> {
        v.map(|m| match m {
            "lingering" => Ok(CloseMode::Lingering),
            "so_linger" => Ok(CloseMode::SoLinger),
            "immediate" => Ok(CloseMode::Immediate),
            o => Err(self.err(
                key,
                format!("{o:?}: expected \"lingering\", \"so_linger\" or \"immediate\""),
            )),
        })
        .transpose()
    }

    fn on_timeout(&self, key: &str, v: Option<&str>) -> Result<Option<OnTimeout>, ConfigError> {
        v.map(|m| match m {
            "reset" => Ok(OnTimeout::Reset),
            "close" => Ok(OnTimeout::Close),
            o => Err(self.err(key, format!("{o:?}: expected \"reset\" or \"close\""))),
        })
        .transpose()
    }

    /// Cross-field checks on a resolved settings value; `at` is `client` or a rule.
    fn check_settings(&self, at: &str, s: &ClientSettings) -> Result<(), ConfigError> {
        let close = if at == "client" { "client.close" } else { at };
        // Only user-space lingering uses both; so_linger uses linger_time alone.
        if s.close.mode == CloseMode::Lingering && s.close.linger_time < s.close.linger_timeout {
            return Err(self.err(format!("{close}.linger_time"), "must be >= linger_timeout"));
        }
        if s.close.linger_timeout.is_zero() && s.close.mode == CloseMode::Lingering {
            return Err(self.err(format!("{close}.linger_timeout"), "must be greater than 0"));
        }
        if s.max_requests == 0 {
            return Err(self.err(format!("{at}.max_requests_per_connection"), "must be at least 1"));
        }
        for (k, d) in [
            ("keepalive_timeout", s.keepalive_timeout),
            ("header_timeout", s.header_timeout),
            ("body_timeout", s.body_timeout),
            ("upgrade_idle_timeout", s.upgrade_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(self.err(format!("{at}.{k}"), "must be greater than 0"));
            }
        }
        if s.max_header_bytes < 256 {
            return Err(self.err(format!("{at}.max_header_bytes"), "must be at least 256 bytes"));
        }
        Ok(())
    }

    fn ua_rule(&self, i: usize, r: RawUaRule, base: &ClientSettings) -> Result<UaRule, ConfigError> {
        let at = format!("user_agent[{i}]");
        for (k, v) in [
            ("max_connections", r.max_connections),
            ("max_connections_per_ip", r.max_connections_per_ip),
        ] {
            if v.is_some() {
                return Err(self.err(
                    format!("{at}.{k}"),
                    "cannot be set per User-Agent: a connection is admitted before its User-Agent is known",
                ));
            }
        }
        let nested = r.close.unwrap_or_default();
        let flat_and_nested = [
            r.mode.is_some() && nested.mode.is_some(),
            r.linger_time.is_some() && nested.linger_time.is_some(),
            r.linger_timeout.is_some() && nested.linger_timeout.is_some(),
            r.on_timeout.is_some() && nested.on_timeout.is_some(),
        ];
        if flat_and_nested.iter().any(|b| *b) {
            return Err(self.err(
                format!("{at}.close"),
                "a close setting is given both flat and in the close table",
            ));
        }
        let mode = r.mode.or(nested.mode);
        let on_timeout = r.on_timeout.or(nested.on_timeout);
        let overrides = SettingsOverride {
            keepalive: r.keepalive,
            keepalive_timeout: r.keepalive_timeout.map(|d| d.0),
            max_requests: r.max_requests_per_connection,
            header_timeout: r.header_timeout.map(|d| d.0),
            body_timeout: r.body_timeout.map(|d| d.0),
            max_header_bytes: r.max_header_bytes.map(|s| s.0),
            max_body_bytes: r.max_body_bytes.map(|s| s.0),
            upgrade_idle_timeout: r.upgrade_idle_timeout.map(|d| d.0),
            close_mode: self.close_mode(&format!("{at}.mode"), mode.as_deref())?,
            linger_time: r.linger_time.or(nested.linger_time).map(|d| d.0),
            linger_timeout: r.linger_timeout.or(nested.linger_timeout).map(|d| d.0),
            on_timeout: self.on_timeout(&format!("{at}.on_timeout"), on_timeout.as_deref())?,
        };
        let mut s = *base;
        overrides.apply(&mut s);
        self.check_settings(&at, &s)?;
        Ok(UaRule {
            pattern: r.pattern,
            nokeepalive: r.nokeepalive,
            downgrade_1_0: r.downgrade_1_0,
            force_response_1_0: r.force_response_1_0,
            overrides,
        })
    }

    fn backends_and_routes(
        &self,
        raw_backends: Vec<RawBackend>,
        raw_routes: Vec<RawRoute>,
        ov: &Overrides,
    ) -> Result<(Vec<BackendConfig>, Vec<RouteConfig>), ConfigError> {
        let mut backends = Vec::new();
        if !ov.backend.is_empty() || raw_backends.is_empty() {
            // A sidecar: one backend from the command line, one catch-all route.
            let specs: Vec<String> = if ov.backend.is_empty() {
                vec![DEFAULT_BACKEND.to_string()]
            } else {
                ov.backend.clone()
            };
            let mut addrs = Vec::new();
            for s in &specs {
                addrs.push(self.addr("--backend", s)?);
            }
            let mut b = default_backend("default", specs, addrs);
            if let Some(first) = raw_backends.into_iter().next() {
                // Keep the file's tuning of its first backend, only the address changes.
                let (specs, addrs) = (b.addr_specs, b.addrs);
                b = self.backend(0, first)?;
                (b.addr_specs, b.addrs) = (specs, addrs);
            }
            let route = RouteConfig {
                host: None,
                path_prefix: "/".into(),
                backend: 0,
            };
            backends.push(b);
            return Ok((backends, vec![route]));
        }
        for (i, b) in raw_backends.into_iter().enumerate() {
            let b = self.backend(i, b)?;
            if backends.iter().any(|o: &BackendConfig| o.name == b.name) {
                return Err(self.err(format!("backend[{i}].name"), format!("{:?} is defined twice", b.name)));
            }
            backends.push(b);
        }
        let mut routes = Vec::new();
        for (i, r) in raw_routes.into_iter().enumerate() {
            let Some(idx) = backends.iter().position(|b| b.name == r.backend) else {
                return Err(self.err(
                    format!("route[{i}].backend"),
                    format!("no backend named {:?}", r.backend),
                ));
            };
            let path_prefix = r.path_prefix.unwrap_or_else(|| "/".into());
            if !path_prefix.starts_with('/') {
                return Err(self.err(format!("route[{i}].path_prefix"), "must start with '/'"));
            }
            let host = r.host.filter(|h| h != "*").map(|h| h.to_ascii_lowercase());
            routes.push(RouteConfig {
                host,
                path_prefix,
                backend: idx,
            });
        }
        if routes.is_empty() {
            if backends.len() > 1 {
                return Err(self.err("route", "required when more than one backend is defined"));
            }
            routes.push(RouteConfig {
                host: None,
                path_prefix: "/".into(),
                backend: 0,
            });
        }
        Ok((backends, routes))
    }

    fn backend(&self, i: usize, b: RawBackend) -> Result<BackendConfig, ConfigError> {
        let at = format!("backend[{i}]");
        if b.name.is_empty() {
            return Err(self.err(format!("{at}.name"), "must not be empty"));
        }
        if b.addrs.is_empty() {
            return Err(self.err(format!("{at}.addrs"), "needs at least one address"));
        }
        let mut addrs = Vec::new();
        for (j, a) in b.addrs.iter().enumerate() {
            addrs.push(self.addr(&format!("{at}.addrs[{j}]"), a)?);
        }
        let mut c = default_backend(&b.name, b.addrs.clone(), addrs);
        let d = |v: Option<ConfDuration>, def: Duration| v.map_or(def, |d| d.0);
        c.max_connections = b.max_connections.unwrap_or(c.max_connections);
        c.queue_timeout = d(b.queue_timeout, c.queue_timeout);
        c.pool_max_idle = b.pool_max_idle.unwrap_or(c.pool_max_idle);
        c.pool_idle_timeout = d(b.pool_idle_timeout, c.pool_idle_timeout);
        c.connect_timeout = d(b.connect_timeout, c.connect_timeout);
        c.response_timeout = d(b.response_timeout, c.response_timeout);
        c.retry_idempotent = b.retry_idempotent.unwrap_or(c.retry_idempotent);
        c.eject_after = b.eject_after.unwrap_or(c.eject_after);
        c.eject_cool_off = d(b.eject_cool_off, c.eject_cool_off);
        if c.eject_after == 0 {
            return Err(self.err(format!("{at}.eject_after"), "must be at least 1"));
        }
        c.proxy_protocol = match b.proxy_protocol.as_deref().unwrap_or("off") {
            "off" => ProxyProtocol::Off,
            "v1" => ProxyProtocol::V1,
            "v2" => ProxyProtocol::V2,
            o => {
                return Err(self.err(
                    format!("{at}.proxy_protocol"),
                    format!("{o:?}: expected \"off\", \"v1\" or \"v2\""),
                ))
            }
        };
        c.forwarded = match b.forwarded.as_deref().unwrap_or("x-forwarded") {
            "x-forwarded" => Forwarded::XForwarded,
            "forwarded" => Forwarded::Forwarded,
            "off" => Forwarded::Off,
            o => {
                return Err(self.err(
                    format!("{at}.forwarded"),
                    format!("{o:?}: expected \"x-forwarded\", \"forwarded\" or \"off\""),
                ))
            }
        };
        if c.max_connections == 0 {
            return Err(self.err(format!("{at}.max_connections"), "must be at least 1"));
        }
        if c.pool_max_idle > c.max_connections {
            return Err(self.err(format!("{at}.pool_max_idle"), "must be <= max_connections"));
        }
        for (k, v) in [
            ("queue_timeout", c.queue_timeout),
            ("connect_timeout", c.connect_timeout),
            ("response_timeout", c.response_timeout),
        ] {
            if v.is_zero() {
                return Err(self.err(format!("{at}.{k}"), "must be greater than 0"));
            }
        }
        Ok(c)
    }
}

fn default_backend(name: &str, addr_specs: Vec<String>, addrs: Vec<SocketAddr>) -> BackendConfig {
    BackendConfig {
        name: name.to_string(),
        addr_specs,
        addrs,
        max_connections: DEFAULT_BACKEND_MAX_CONNECTIONS,
        queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        pool_max_idle: DEFAULT_POOL_MAX_IDLE,
        pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        retry_idempotent: true,
        proxy_protocol: ProxyProtocol::Off,
        forwarded: Forwarded::XForwarded,
        eject_after: DEFAULT_EJECT_AFTER,
        eject_cool_off: DEFAULT_EJECT_COOL_OFF,
    }
}

pub use effective::{close_table as effective_close_table, settings_table as effective_settings_table, to_toml};
mod effective;
