//! The effective configuration printed by `finguard check`: the file's values
//! with every default filled in, in the file's own syntax.

use super::*;
use toml::{Table, Value};

fn dur(d: Duration) -> Value {
    Value::String(fmt_duration(d))
}

fn enum_str<T: Serialize>(v: &T) -> Value {
    toml::Value::try_from(v).unwrap_or_else(|_| Value::String(String::new()))
}

/// Renders the config as TOML.
pub fn to_toml(c: &Config) -> String {
    let mut root = Table::new();
    root.insert("shutdown_timeout".into(), dur(c.shutdown_timeout));
    root.insert("workers".into(), Value::Integer(c.workers as i64));
    let listeners = c.listeners.iter().map(listener_table).map(Value::Table).collect();
    root.insert("listener".into(), Value::Array(listeners));
    if let Some(a) = c.admin {
        let mut t = Table::new();
        t.insert("addr".into(), Value::String(a.to_string()));
        root.insert("admin".into(), Value::Table(t));
    }
    let mut client = SettingsOverride::of(&c.client).to_table(true);
    client.insert("max_connections".into(), Value::Integer(c.max_connections.into()));
    client.insert(
        "max_connections_per_ip".into(),
        Value::Integer(c.max_connections_per_ip.map_or(0, |n| n.get().into())),
    );
    let trusted = c.trusted_proxies.iter().map(|n| Value::String(n.to_string())).collect();
    client.insert("trusted_proxies".into(), Value::Array(trusted));
    client.insert("pressure".into(), Value::Table(c.pressure.to_table()));
    root.insert("client".into(), Value::Table(client));
    let rules: Vec<Value> = c.rules.rules().iter().map(|r| Value::Table(r.to_table())).collect();
    if !rules.is_empty() {
        root.insert("user_agent".into(), Value::Array(rules));
    }
    let backends = c
        .backends
        .iter()
        .map(|b| Value::try_from(b).unwrap_or_else(|_| Value::Table(Table::new())))
        .collect();
    root.insert("backend".into(), Value::Array(backends));
    let routes = c.routes.iter().map(|r| Value::Table(route_table(c, r))).collect();
    root.insert("route".into(), Value::Array(routes));
    root.insert("buffer".into(), Value::Table(c.buffer.to_table()));
    let mut reaper = Table::new();
    reaper.insert("interval".into(), dur(c.reaper_interval));
    root.insert("reaper".into(), Value::Table(reaper));
    let mut log = Table::new();
    log.insert("access".into(), enum_str(&c.access_log));
    if let Some(f) = &c.access_file {
        log.insert("access_file".into(), Value::String(f.display().to_string()));
    }
    log.insert("level".into(), Value::String(c.log_level.clone()));
    root.insert("log".into(), Value::Table(log));
    toml::to_string_pretty(&root).unwrap_or_default()
}

fn listener_table(l: &ListenerConfig) -> Table {
    let mut t = Table::new();
    t.insert("addr".into(), Value::String(l.addr.to_string()));
    t.insert("proxy_protocol".into(), Value::Boolean(l.proxy_protocol));
    if let Some(tls) = &l.tls {
        let mut tt = Table::new();
        tt.insert("cert".into(), Value::String(tls.files[0].cert.clone()));
        tt.insert("key".into(), Value::String(tls.files[0].key.clone()));
        tt.insert("handshake_timeout".into(), dur(tls.handshake_timeout));
        let sni = tls.files[1..]
            .iter()
            .map(|f| {
                let mut s = Table::new();
                s.insert(
                    "names".into(),
                    Value::Array(f.names.iter().cloned().map(Value::String).collect()),
                );
                s.insert("cert".into(), Value::String(f.cert.clone()));
                s.insert("key".into(), Value::String(f.key.clone()));
                Value::Table(s)
            })
            .collect();
        tt.insert("sni".into(), Value::Array(sni));
        t.insert("tls".into(), Value::Table(tt));
    }
    t
}

fn route_table(c: &Config, r: &RouteConfig) -> Table {
    let mut t = Table::new();
    t.insert(
        "host".into(),
        Value::String(r.host.clone().unwrap_or_else(|| "*".into())),
    );
    t.insert("path_prefix".into(), Value::String(r.path_prefix.clone()));
    t.insert("backend".into(), Value::String(c.backends[r.backend].name.clone()));
    for (k, v) in [
        ("request_buffering", r.request_buffering),
        ("response_buffering", r.response_buffering),
    ] {
        if let Some(v) = v {
            t.insert(k.into(), Value::Boolean(v));
        }
    }
    t
}
