//! The `[buffer]` table: request and response buffering (slow clients never
//! hold a backend connection), its per-exchange limits and the process-wide
//! budgets, and the one rule that decides whether one exchange is buffered
//! from `[buffer]`, its `[[route]]` and its `[[user_agent]]` rules.
//!
//! This module only reads the config; the budgets are counted in
//! `crate::spool`.

use super::units::ConfSize;
use super::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// nginx's `proxy_buffers 8 8k` is 64 KiB: a client that keeps up drains
/// this much between two reads of the backend, so it never sees the disk.
pub const DEFAULT_MEMORY_PER_EXCHANGE: u64 = 64 * 1024;
/// nginx's `proxy_max_temp_file_size` default: past it, the exchange relays
/// at the client's pace (the backend waits, as without buffering).
pub const DEFAULT_FILE_PER_EXCHANGE: u64 = 1024 * 1024 * 1024;
/// 4096 exchanges with a full memory buffer: bounds the process's RSS while
/// thousands of slow clients are served; past it exchanges relay unbuffered.
pub const DEFAULT_MEMORY_TOTAL: u64 = 256 * 1024 * 1024;
/// Eight 1 GiB downloads held for slow clients at once; keeps a busy proxy
/// from filling the disk its host runs on.
pub const DEFAULT_FILE_TOTAL: u64 = 8 * 1024 * 1024 * 1024;
/// On disk, unlike `/tmp` on many hosts (a tmpfs would turn the file budget
/// into memory); meant for larger temporary files (FHS).
pub const DEFAULT_DIR: &str = "/var/tmp";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    pub requests: Option<bool>,
    pub responses: Option<bool>,
    pub memory_per_exchange: Option<ConfSize>,
    pub file_per_exchange: Option<ConfSize>,
    pub memory_total: Option<ConfSize>,
    pub file_total: Option<ConfSize>,
    pub dir: Option<String>,
}

/// The checked `[buffer]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferConfig {
    /// Take the whole request body before the backend is contacted.
    pub requests: bool,
    /// Read the response at the backend's speed, feed the client at its own.
    pub responses: bool,
    pub memory_per_exchange: usize,
    pub file_per_exchange: u64,
    pub memory_total: u64,
    pub file_total: u64,
    /// Where temporary files are made (and unlinked at once).
    pub dir: PathBuf,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            requests: true,
            responses: true,
            memory_per_exchange: DEFAULT_MEMORY_PER_EXCHANGE as usize,
            file_per_exchange: DEFAULT_FILE_PER_EXCHANGE,
            memory_total: DEFAULT_MEMORY_TOTAL,
            file_total: DEFAULT_FILE_TOTAL,
            dir: PathBuf::from(DEFAULT_DIR),
        }
    }
}

impl BufferConfig {
    /// From the file's table; `err(key, reason)` makes the error.
    pub fn from_raw(raw: &RawBuffer, err: impl Fn(&str, String) -> ConfigError) -> Result<BufferConfig, ConfigError> {
        let d = BufferConfig::default();
        let size = |v: Option<ConfSize>, def: u64| v.map_or(def, |s| s.0);
        let c = BufferConfig {
            requests: raw.requests.unwrap_or(d.requests),
            responses: raw.responses.unwrap_or(d.responses),
            memory_per_exchange: usize::try_from(size(raw.memory_per_exchange, DEFAULT_MEMORY_PER_EXCHANGE))
                .unwrap_or(usize::MAX),
            file_per_exchange: size(raw.file_per_exchange, d.file_per_exchange),
            memory_total: size(raw.memory_total, d.memory_total),
            file_total: size(raw.file_total, d.file_total),
            dir: raw.dir.as_ref().map_or(d.dir, PathBuf::from),
        };
        if c.memory_per_exchange == 0 {
            return Err(err("buffer.memory_per_exchange", "must be greater than 0".into()));
        }
        if c.uses_disk() {
            c.check_dir().map_err(|why| err("buffer.dir", why))?;
        }
        Ok(c)
    }

    /// Whether temporary files may be made at all.
    pub fn uses_disk(&self) -> bool {
        self.file_per_exchange > 0 && self.file_total > 0
    }

    /// The directory exists and a file can be made in it.
    fn check_dir(&self) -> Result<(), String> {
        let dir = self.dir.display();
        if !self.dir.is_dir() {
            return Err(format!(
                "{dir} is not a directory (set file_per_exchange = 0 to buffer in memory only)"
            ));
        }
        tempfile::tempfile_in(&self.dir)
            .map(drop)
            .map_err(|e| format!("{dir} is not writable: {e}"))
    }

    /// The table as the file writes it (`finguard check`).
    pub fn to_table(&self) -> toml::Table {
        use toml::Value;
        let int = |v: u64| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
        let mut t = toml::Table::new();
        t.insert("requests".into(), Value::Boolean(self.requests));
        t.insert("responses".into(), Value::Boolean(self.responses));
        t.insert("memory_per_exchange".into(), int(self.memory_per_exchange as u64));
        t.insert("file_per_exchange".into(), int(self.file_per_exchange));
        t.insert("memory_total".into(), int(self.memory_total));
        t.insert("file_total".into(), int(self.file_total));
        t.insert("dir".into(), Value::String(self.dir.display().to_string()));
        t
    }
}

/// Whether one exchange is buffered in one direction: an explicit `false`
/// from its route or a User-Agent rule turns it off (a route that streams
/// must be able to count on that), else an explicit `true` turns it on, else
/// `[buffer]` decides.
pub fn decide(global: bool, route: Option<bool>, rule: Option<bool>) -> bool {
    match (route, rule) {
        (Some(false), _) | (_, Some(false)) => false,
        (Some(true), _) | (_, Some(true)) => true,
        (None, None) => global,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_false_wins_then_an_explicit_true() {
        let table = [
            (true, None, None, true),
            (false, None, None, false),
            (true, Some(false), None, false),
            (true, None, Some(false), false),
            (false, Some(true), None, true),
            (false, None, Some(true), true),
            (true, Some(true), Some(false), false),
            (false, Some(false), Some(true), false),
        ];
        for (global, route, rule, want) in table {
            assert_eq!(decide(global, route, rule), want, "{global} {route:?} {rule:?}");
        }
    }
}
