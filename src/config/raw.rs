//! The config file exactly as written: every key optional, unknown keys rejected.
//! `super::validate` turns this into a checked `Config`.

use super::settings::{client_keys, SettingsOverride};
use super::units::{ConfDuration, ConfSize};
use super::{AccessLog, CloseMode, Forwarded, OnTimeout, ProxyProtocol};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub shutdown_timeout: Option<ConfDuration>,
    pub workers: Option<u32>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub client: RawClient,
    #[serde(default)]
    pub user_agent: Vec<RawUaRule>,
    #[serde(default)]
    pub backend: Vec<RawBackend>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    #[serde(default)]
    pub reaper: RawReaper,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub buffer: super::buffer::RawBuffer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub addr: String,
    pub tls: Option<RawTls>,
    /// Expect a PROXY protocol header (v1 or v2) first.
    pub proxy_protocol: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    pub handshake_timeout: Option<ConfDuration>,
    /// More certificates, chosen by the client's SNI.
    #[serde(default)]
    pub sni: Vec<RawSni>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSni {
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub addr: String,
}

// `[client]`, `[client.close]` and `[[user_agent]]`: their setting keys come
// from the one list in `super::settings` (see there why not `flatten`).
macro_rules! define_client_structs {
    ([$($key:ident : $ty:ty => $($path:ident).+),* $(,)?] [$($ckey:ident : $cty:ty => $($cpath:ident).+),* $(,)?]) => {
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawClose {
            $(pub $ckey: Option<$cty>,)*
        }

        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawClient {
            $(pub $key: Option<$ty>,)*
            pub max_connections: Option<u32>,
            pub max_connections_per_ip: Option<u32>,
            pub trusted_proxies: Option<Vec<String>>,
            #[serde(default)]
            pub close: RawClose,
            #[serde(default)]
            pub pressure: super::pressure::RawPressure,
        }

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawUaRule {
            #[serde(rename = "match")]
            pub pattern: String,
            pub nokeepalive: Option<bool>,
            pub downgrade_1_0: Option<bool>,
            pub force_response_1_0: Option<bool>,
            pub request_buffering: Option<bool>,
            pub response_buffering: Option<bool>,
            /// Closed first when idle connections must make room.
            pub reclaim_first: Option<bool>,
            $(pub $key: Option<$ty>,)*
            /// `[client.close]` keys may be written flat in the rule or in a `close` table.
            $(pub $ckey: Option<$cty>,)*
            pub close: Option<RawClose>,
            /// Listed only to give a precise error: these are decided before any
            /// User-Agent is known.
            pub max_connections: Option<u32>,
            pub max_connections_per_ip: Option<u32>,
            pub trusted_proxies: Option<Vec<String>>,
        }

        impl RawClient {
            pub fn overrides(&self) -> SettingsOverride {
                SettingsOverride {
                    $($key: self.$key,)*
                    $($ckey: self.close.$ckey,)*
                }
            }
        }

        impl RawUaRule {
            /// The rule's settings, flat keys and the `close` table together;
            /// the keys given both ways, if any.
            pub fn overrides(&self) -> (SettingsOverride, Vec<&'static str>) {
                let nested = self.close.clone().unwrap_or_default();
                let mut both = Vec::new();
                $(if self.$ckey.is_some() && nested.$ckey.is_some() {
                    both.push(stringify!($ckey));
                })*
                let o = SettingsOverride {
                    $($key: self.$key,)*
                    $($ckey: self.$ckey.or(nested.$ckey),)*
                };
                (o, both)
            }
        }
    };
}
client_keys!(define_client_structs! {});

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    pub addrs: Vec<String>,
    pub max_connections: Option<u32>,
    pub queue_timeout: Option<ConfDuration>,
    pub pool_max_idle: Option<u32>,
    pub pool_idle_timeout: Option<ConfDuration>,
    pub connect_timeout: Option<ConfDuration>,
    pub response_timeout: Option<ConfDuration>,
    pub retry_idempotent: Option<bool>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub forwarded: Option<Forwarded>,
    pub eject_after: Option<u32>,
    pub eject_cool_off: Option<ConfDuration>,
    pub health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<ConfDuration>,
    pub timeout: Option<ConfDuration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub backend: String,
    pub request_buffering: Option<bool>,
    pub response_buffering: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReaper {
    pub interval: Option<ConfDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access: Option<AccessLog>,
    pub access_file: Option<String>,
    pub level: Option<String>,
}
