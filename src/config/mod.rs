//! Configuration: the TOML file, the CLI/env overrides, and validation.
//!
//! `raw` mirrors the file (every key optional, unknown keys rejected); `load`
//! turns it into a checked [`Config`] where every default is filled in. Every
//! error names the file, the key and the reason. This module never touches a
//! socket.

pub mod buffer;
pub mod policy;
pub mod pressure;
mod raw;
pub mod settings;
pub mod units;

use policy::RuleSet;
use raw::*;
use serde::{Deserialize, Serialize};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseMode {
    /// Shut down the write half, drain what the client still sends, then close.
    Lingering,
    /// Kernel lingering: `SO_LINGER {on, linger_time}` then close.
    SoLinger,
    /// Close at once (Apache's `NO_LINGCLOSE`): unread client data turns into RST.
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Behind a load balancer: each connection starts with a PROXY header.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarded {
    XForwarded,
    Forwarded,
    Off,
}

/// One backend. Serialised, it is the `[[backend]]` table as the file
/// writes it (`finguard check`).
#[derive(Debug, Clone, Serialize)]
pub struct BackendConfig {
    pub name: String,
    /// As written, for display.
    #[serde(rename = "addrs")]
    pub addr_specs: Vec<String>,
    #[serde(skip)]
    pub addrs: Vec<SocketAddr>,
    pub max_connections: u32,
    #[serde(serialize_with = "units::ser_duration")]
    pub queue_timeout: Duration,
    pub pool_max_idle: u32,
    #[serde(serialize_with = "units::ser_duration")]
    pub pool_idle_timeout: Duration,
    #[serde(serialize_with = "units::ser_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "units::ser_duration")]
    pub response_timeout: Duration,
    pub retry_idempotent: bool,
    pub proxy_protocol: ProxyProtocol,
    pub forwarded: Forwarded,
    pub eject_after: u32,
    #[serde(serialize_with = "units::ser_duration")]
    pub eject_cool_off: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// Active health checks of a backend's addresses (HAProxy's `option httpchk`).
#[derive(Debug, Clone, Serialize)]
pub struct HealthCheck {
    /// `GET` this; a 2xx or 3xx is a pass.
    pub path: String,
    #[serde(serialize_with = "units::ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "units::ser_duration")]
    pub timeout: Duration,
    /// Passes in a row that bring a down address back.
    pub rise: u32,
    /// Failures in a row that take an address out.
    pub fall: u32,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// `None` matches every host.
    pub host: Option<String>,
    pub path_prefix: String,
    /// Index into `Config::backends`.
    pub backend: usize,
    /// `None`: as `[buffer]` (and the User-Agent rules) say.
    pub request_buffering: Option<bool>,
    pub response_buffering: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `[client.pressure]`: what happens as connections near the limit.
    pub pressure: pressure::PressureConfig,
    /// `None`: unlimited (0 in the file).
    pub max_connections_per_ip: Option<std::num::NonZeroU32>,
    pub rules: RuleSet,
    pub backends: Vec<BackendConfig>,
    pub routes: Vec<RouteConfig>,
    pub reaper_interval: Duration,
    pub access_log: AccessLog,
    /// Peers whose `X-Forwarded-For` is believed (`client.trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `None`: stdout.
    pub access_file: Option<std::path::PathBuf>,
    pub log_level: String,
    pub buffer: std::sync::Arc<buffer::BufferConfig>,
}

impl Config {
    /// Whether `peer` is a proxy whose `X-Forwarded-For` is believed.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }

    /// The client a request comes from: `peer` itself, unless `peer` is a
    /// trusted proxy; then the rightmost `X-Forwarded-For` address that is
    /// not one (nginx's `real_ip_recursive on`). `values` are the header's
    /// values in order, read only when `peer` is trusted; an entry that is
    /// no address ends the walk.
    pub fn believed_client<'a>(
        &self,
        peer: std::net::IpAddr,
        values: impl Iterator<Item = &'a [u8]>,
    ) -> std::net::IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let entries: Vec<&[u8]> = values.flat_map(|v| v.split(|&b| b == b',')).collect();
        let mut client = peer;
        for e in entries.iter().rev() {
            let Some(ip) = std::str::from_utf8(e).ok().and_then(|s| s.trim().parse().ok()) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
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

pub use effective::to_toml;
pub use settings::SettingsOverride;
mod effective;
mod validate;
use validate::Validator;
