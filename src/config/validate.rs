//! Validation: raw file values to a checked [`Config`], with every error
//! naming the file, the key and the reason, and cross-field rules checked.

use super::policy::{RuleSet, UaRule};
use super::*;

pub(super) struct Validator<'a> {
    pub(super) file: &'a str,
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

    pub(super) fn config(&self, raw: RawConfig, ov: &Overrides) -> Result<Config, ConfigError> {
        let listeners = self.listeners(&raw.listener, ov)?;
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

        let access_log = raw.log.access.unwrap_or(AccessLog::Combined);
        let mut trusted_proxies = Vec::new();
        for (i, t) in raw.client.trusted_proxies.iter().flatten().enumerate() {
            let net = t
                .parse::<ipnet::IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    self.err(
                        format!("client.trusted_proxies[{i}]"),
                        format!("{t:?} is not an address or CIDR"),
                    )
                })?;
            trusted_proxies.push(net);
        }
        let access_file = match raw.log.access_file.as_deref() {
            None => None,
            Some("") => return Err(self.err("log.access_file", "must not be empty (omit it for stdout)")),
            Some(f) => {
                let path = std::path::PathBuf::from(f);
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                if !dir.is_dir() {
                    return Err(self.err("log.access_file", format!("directory {} does not exist", dir.display())));
                }
                Some(path)
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
        let pressure = pressure::PressureConfig::from_raw(&raw.client.pressure, |k, why| self.err(k, why))?;
        let buffer = std::sync::Arc::new(buffer::BufferConfig::from_raw(&raw.buffer, |k, why| self.err(k, why))?);
        Ok(Config {
            buffer,
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
            pressure,
            max_connections_per_ip: raw.client.max_connections_per_ip.and_then(std::num::NonZeroU32::new),
            rules,
            backends,
            routes,
            reaper_interval,
            access_log,
            trusted_proxies,
            access_file,
            log_level,
        })
    }

    /// The listeners: `--listen` replaces the file's, the default when none.
    fn listeners(&self, raw: &[RawListener], ov: &Overrides) -> Result<Vec<ListenerConfig>, ConfigError> {
        let mut listeners = Vec::new();
        if ov.listen.is_empty() {
            for (i, l) in raw.iter().enumerate() {
                let tls = match &l.tls {
                    Some(t) => Some(self.tls(i, t)?),
                    None => None,
                };
                listeners.push(ListenerConfig {
                    addr: self.addr(&format!("listener[{i}].addr"), &l.addr)?,
                    tls,
                    proxy_protocol: l.proxy_protocol.unwrap_or(false),
                });
            }
            if listeners.is_empty() {
                listeners.push(ListenerConfig {
                    addr: self.addr("listener.addr", DEFAULT_LISTEN)?,
                    tls: None,
                    proxy_protocol: false,
                });
            }
        } else {
            for a in &ov.listen {
                listeners.push(ListenerConfig {
                    addr: self.addr("--listen", a)?,
                    tls: None,
                    proxy_protocol: false,
                });
            }
        }
        Ok(listeners)
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
        crate::tls::build(files, timeout, crate::tls::alpn()).map_err(|(j, key, why)| {
            let at = if j == 0 {
                format!("listener[{i}].tls.{key}")
            } else {
                format!("listener[{i}].tls.sni[{}].{key}", j - 1)
            };
            self.err(at, why)
        })
    }

    fn client(&self, c: &RawClient) -> Result<ClientSettings, ConfigError> {
        let mut s = ClientSettings::default();
        c.overrides().apply(&mut s);
        self.check_settings("client", &s)?;
        Ok(s)
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
            ("trusted_proxies", r.trusted_proxies.as_ref().map(|_| 0)),
        ] {
            if v.is_some() {
                return Err(self.err(
                    format!("{at}.{k}"),
                    "cannot be set per User-Agent: a connection is admitted before its User-Agent is known",
                ));
            }
        }
        let (overrides, both) = r.overrides();
        if !both.is_empty() {
            return Err(self.err(
                format!("{at}.close"),
                format!("{} given both flat and in the close table", both.join(", ")),
            ));
        }
        let mut s = *base;
        overrides.apply(&mut s);
        self.check_settings(&at, &s)?;
        Ok(UaRule {
            pattern: r.pattern,
            nokeepalive: r.nokeepalive,
            downgrade_1_0: r.downgrade_1_0,
            force_response_1_0: r.force_response_1_0,
            request_buffering: r.request_buffering,
            response_buffering: r.response_buffering,
            reclaim_first: r.reclaim_first,
            overrides,
        })
    }

    fn backends_and_routes(
        &self,
        raw_backends: Vec<RawBackend>,
        raw_routes: Vec<RawRoute>,
        ov: &Overrides,
    ) -> Result<(Vec<BackendConfig>, Vec<RouteConfig>), ConfigError> {
        if !ov.backend.is_empty() || raw_backends.is_empty() {
            return self.sidecar(raw_backends, ov);
        }
        let mut backends = Vec::new();
        for (i, b) in raw_backends.into_iter().enumerate() {
            let b = self.backend(i, b)?;
            if backends.iter().any(|o: &BackendConfig| o.name == b.name) {
                return Err(self.err(format!("backend[{i}].name"), format!("{:?} is defined twice", b.name)));
            }
            backends.push(b);
        }
        let routes = self.routes(raw_routes, &backends)?;
        Ok((backends, routes))
    }

    /// One backend from `--backend` (or the default address), keeping the
    /// file's tuning of its first backend, and one catch-all route.
    fn sidecar(
        &self,
        raw_backends: Vec<RawBackend>,
        ov: &Overrides,
    ) -> Result<(Vec<BackendConfig>, Vec<RouteConfig>), ConfigError> {
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
            request_buffering: None,
            response_buffering: None,
        };
        Ok((vec![b], vec![route]))
    }

    fn routes(&self, raw_routes: Vec<RawRoute>, backends: &[BackendConfig]) -> Result<Vec<RouteConfig>, ConfigError> {
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
                request_buffering: r.request_buffering,
                response_buffering: r.response_buffering,
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
                request_buffering: None,
                response_buffering: None,
            });
        }
        Ok(routes)
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
        if let Some(h) = b.health_check {
            c.health_check = Some(self.health_check(&at, h)?);
        }
        c.proxy_protocol = b.proxy_protocol.unwrap_or(c.proxy_protocol);
        c.forwarded = b.forwarded.unwrap_or(c.forwarded);
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

    fn health_check(&self, at: &str, h: RawHealthCheck) -> Result<HealthCheck, ConfigError> {
        let at = format!("{at}.health_check");
        let path = h.path.unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(self.err(
                format!("{at}.path"),
                "must start with / and hold no spaces or control bytes",
            ));
        }
        let hc = HealthCheck {
            path,
            interval: h.interval.map_or(Duration::from_secs(2), |d| d.0),
            timeout: h.timeout.map_or(Duration::from_secs(1), |d| d.0),
            rise: h.rise.unwrap_or(2),
            fall: h.fall.unwrap_or(3),
        };
        if hc.interval.is_zero() || hc.timeout.is_zero() {
            return Err(self.err(at, "interval and timeout must be greater than 0"));
        }
        if hc.timeout > hc.interval {
            return Err(self.err(format!("{at}.timeout"), "must be <= interval"));
        }
        if hc.rise == 0 || hc.fall == 0 {
            return Err(self.err(at, "rise and fall must be at least 1"));
        }
        Ok(hc)
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
        health_check: None,
    }
}
