//! The client settings a `[[user_agent]]` rule may override, defined once.
//!
//! [`client_keys!`] lists each key with its type in the file and the field of
//! [`ClientSettings`] it sets. Everything else is generated from that list:
//! the keys of `[client]`, `[client.close]` and `[[user_agent]]` in the raw
//! file structs (`super::raw`), [`SettingsOverride`] with `apply`, and the
//! effective settings `finguard check` prints (by serialising the same type).
//! Adding a setting is one line here and its field in `ClientSettings`.
//!
//! The raw structs get these keys as plain fields, not through
//! `#[serde(flatten)]`: flatten cannot be combined with
//! `deny_unknown_fields`, and an unknown key must stay an error that names it.

use super::units::{ConfDuration, ConfSize};
use super::{ClientSettings, CloseMode, OnTimeout};
use serde::Serialize;
use std::time::Duration;

/// Calls `$m! { $pre... [client keys] [close keys] }`. Each key is
/// `name: type in the file => path in ClientSettings`.
macro_rules! client_keys {
    ($m:ident ! { $($pre:tt)* }) => {
        $m! { $($pre)*
            [
                keepalive: bool => keepalive,
                keepalive_timeout: ConfDuration => keepalive_timeout,
                max_requests_per_connection: u32 => max_requests,
                header_timeout: ConfDuration => header_timeout,
                body_timeout: ConfDuration => body_timeout,
                max_header_bytes: ConfSize => max_header_bytes,
                max_body_bytes: ConfSize => max_body_bytes,
                upgrade_idle_timeout: ConfDuration => upgrade_idle_timeout,
            ]
            [
                mode: CloseMode => close.mode,
                linger_time: ConfDuration => close.linger_time,
                linger_timeout: ConfDuration => close.linger_timeout,
                on_timeout: OnTimeout => close.on_timeout,
            ]
        }
    };
}
pub(super) use client_keys;

/// A value as the file writes it, turned into the setting and back.
pub trait Setting<T> {
    fn into_setting(self) -> T;
    fn from_setting(v: T) -> Self;
}

impl<T> Setting<T> for T {
    fn into_setting(self) -> T {
        self
    }
    fn from_setting(v: T) -> Self {
        v
    }
}

impl Setting<Duration> for ConfDuration {
    fn into_setting(self) -> Duration {
        self.0
    }
    fn from_setting(v: Duration) -> Self {
        ConfDuration(v)
    }
}

impl Setting<u64> for ConfSize {
    fn into_setting(self) -> u64 {
        self.0
    }
    fn from_setting(v: u64) -> Self {
        ConfSize(v)
    }
}

impl Setting<usize> for ConfSize {
    fn into_setting(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
    fn from_setting(v: usize) -> Self {
        ConfSize(v as u64)
    }
}

macro_rules! define_override {
    ([$($key:ident : $ty:ty => $($path:ident).+),* $(,)?] [$($ckey:ident : $cty:ty => $($cpath:ident).+),* $(,)?]) => {
        /// The settings a rule (or `[client]`) sets; `None` leaves the value
        /// as it was. Serialised, it is the rule's keys as the file writes them.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
        pub struct SettingsOverride {
            $(#[serde(skip_serializing_if = "Option::is_none")] pub $key: Option<$ty>,)*
            $(#[serde(skip_serializing_if = "Option::is_none")] pub $ckey: Option<$cty>,)*
        }

        impl SettingsOverride {
            /// The keys that `[client]` writes in its `close` table.
            pub const CLOSE_KEYS: &'static [&'static str] = &[$(stringify!($ckey)),*];

            pub fn apply(&self, s: &mut ClientSettings) {
                $(if let Some(v) = self.$key { s.$($path).+ = v.into_setting(); })*
                $(if let Some(v) = self.$ckey { s.$($cpath).+ = v.into_setting(); })*
            }

            /// Every setting of `s`, as an override that sets them all.
            pub fn of(s: &ClientSettings) -> SettingsOverride {
                SettingsOverride {
                    $($key: Some(<$ty>::from_setting(s.$($path).+)),)*
                    $($ckey: Some(<$cty>::from_setting(s.$($cpath).+)),)*
                }
            }
        }
    };
}
client_keys!(define_override! {});

impl SettingsOverride {
    /// The keys as a TOML table, as the file writes them: flat (a rule), or
    /// with the close keys in a `close` table (`[client]`).
    pub fn to_table(&self, nest_close: bool) -> toml::Table {
        let mut t = match toml::Value::try_from(self) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        if nest_close {
            let close: toml::Table = Self::CLOSE_KEYS
                .iter()
                .filter_map(|k| t.remove(*k).map(|v| (k.to_string(), v)))
                .collect();
            t.insert("close".into(), toml::Value::Table(close));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_of_every_setting_reproduces_them() {
        let mut s = ClientSettings {
            keepalive: false,
            max_requests: 7,
            max_header_bytes: 4096,
            ..ClientSettings::default()
        };
        s.close.mode = CloseMode::Immediate;
        s.close.linger_time = Duration::from_millis(1500);
        let mut t = ClientSettings::default();
        SettingsOverride::of(&s).apply(&mut t);
        assert_eq!(s, t);
    }

    #[test]
    fn the_table_uses_the_file_keys() {
        let o = SettingsOverride {
            max_requests_per_connection: Some(3),
            linger_time: Some(ConfDuration(Duration::from_secs(2))),
            ..Default::default()
        };
        assert_eq!(
            o.to_table(false).to_string(),
            "max_requests_per_connection = 3\nlinger_time = \"2s\"\n"
        );
        let nested = o.to_table(true);
        assert_eq!(nested["close"]["linger_time"].as_str(), Some("2s"));
        assert!(!nested.contains_key("linger_time"));
    }
}
