//! Every metric finguard exports, declared in one place: nothing else spells a
//! metric name or a label value (the label values are the enums here, each
//! with its `as_str`). Rendered in the Prometheus text format by
//! `prometheus-client`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

mod buffer;
mod pressure;
pub use buffer::{Fallback, Held};
pub use pressure::{EvictReason, NO_RULE};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendAddrLabel {
    pub backend: String,
    pub addr: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendAddrToLabel {
    pub backend: String,
    pub addr: String,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendStateLabel {
    pub backend: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendReasonLabel {
    pub backend: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SocketLabel {
    pub side: &'static str,
    pub state: &'static str,
}

/// Where a client connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum ClientState {
    /// Reading a request head.
    Reading = 0,
    /// A request is being served (body, backend, response).
    Active = 1,
    /// Between requests, keep-alive.
    Idle = 2,
    /// Closing: write half shut, draining what the client still sends.
    Lingering = 3,
}

impl ClientState {
    pub const ALL: [ClientState; 4] = [
        ClientState::Reading,
        ClientState::Active,
        ClientState::Idle,
        ClientState::Lingering,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Reading => "reading",
            ClientState::Active => "active",
            ClientState::Idle => "idle",
            ClientState::Lingering => "lingering",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        Self::ALL.get(v as usize).copied().unwrap_or(ClientState::Active)
    }
}

/// How a client connection ended (`finguard_lingering_closes_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The client sent its FIN: a clean close.
    ClientFin,
    /// The client stayed silent for `linger_timeout`.
    LingerTimeout,
    /// The client kept sending past `linger_time`.
    LingerTime,
    /// The client reset the connection.
    Reset,
    /// `immediate` or `so_linger`: no user-space lingering.
    Immediate,
    /// A socket error other than a reset.
    Error,
}

impl CloseOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseOutcome::ClientFin => "client_fin",
            CloseOutcome::LingerTimeout => "linger_timeout",
            CloseOutcome::LingerTime => "linger_time",
            CloseOutcome::Reset => "reset",
            CloseOutcome::Immediate => "immediate",
            CloseOutcome::Error => "error",
        }
    }
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsHandshake {
    Ok,
    Error,
    /// Not finished within `handshake_timeout`.
    Timeout,
}

impl TlsHandshake {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsHandshake::Ok => "ok",
            TlsHandshake::Error => "error",
            TlsHandshake::Timeout => "timeout",
        }
    }
}

/// How a PROXY protocol header on a `proxy_protocol` listener was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    Ok,
    /// Malformed, or not a PROXY header at all (answered 400 on plain HTTP).
    Invalid,
    /// Not complete within `header_timeout`.
    Timeout,
}

impl ProxyHeader {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyHeader::Ok => "ok",
            ProxyHeader::Invalid => "invalid",
            ProxyHeader::Timeout => "timeout",
        }
    }
}

/// Which of finguard's sockets a census count is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketSide {
    /// Accepted on a listener.
    Client,
    /// Opened to a backend.
    Backend,
}

impl SocketSide {
    pub fn as_str(self) -> &'static str {
        match self {
            SocketSide::Client => "client",
            SocketSide::Backend => "backend",
        }
    }
}

/// Why a pooled backend connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapReason {
    IdleTimeout,
    BackendClosed,
    OverMaxIdle,
    Error,
}

impl ReapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReapReason::IdleTimeout => "idle_timeout",
            ReapReason::BackendClosed => "backend_closed",
            ReapReason::OverMaxIdle => "over_max_idle",
            ReapReason::Error => "error",
        }
    }
}

/// How an upgraded tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed (each FIN passed on to the other).
    Closed,
    /// Silent both ways for `upgrade_idle_timeout`.
    IdleTimeout,
    /// A side stopped reading: a write made no progress for `upgrade_idle_timeout`.
    Stalled,
    /// The client reset the connection.
    ClientReset,
    /// Any other socket error, on either side.
    Error,
}

impl TunnelEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::Closed => "closed",
            TunnelEnd::IdleTimeout => "idle_timeout",
            TunnelEnd::Stalled => "stalled",
            TunnelEnd::ClientReset => "client_reset",
            TunnelEnd::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    client_connections: Family<StateLabel, Gauge>,
    accepted: Counter,
    requests: Family<CodeLabel, Counter>,
    /// `requests` by class (1xx..5xx), looked up once: counted per request.
    by_class: [Counter; 5],
    lingering_closes: Family<OutcomeLabel, Counter>,
    drained_bytes: Counter,
    ua_rule_matches: Family<RuleLabel, Counter>,
    backend_connections: Family<BackendStateLabel, Gauge>,
    backend_connects: Family<BackendLabel, Counter>,
    backend_reaped: Family<BackendReasonLabel, Counter>,
    backend_retries: Family<BackendLabel, Counter>,
    backend_ejections: Family<BackendLabel, Counter>,
    tcp_sockets: Family<SocketLabel, Gauge>,
    /// Client connections the reaper ended (per connection).
    client_reaped: Family<ReasonLabel, Counter>,
    tunnels_closed: Family<OutcomeLabel, Counter>,
    tls_handshakes: Family<OutcomeLabel, Counter>,
    proxy_headers: Family<OutcomeLabel, Counter>,
    backend_up: Family<BackendAddrLabel, Gauge>,
    health_transitions: Family<BackendAddrToLabel, Counter>,
    /// Request and response buffering, and backend hold times.
    pub buffer: buffer::BufferMetrics,
    /// Occupancy, evictions, admission waits.
    pub pressure: pressure::PressureMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            client_connections: Family::default(),
            accepted: Counter::default(),
            requests: Family::default(),
            lingering_closes: Family::default(),
            drained_bytes: Counter::default(),
            ua_rule_matches: Family::default(),
            backend_connections: Family::default(),
            backend_connects: Family::default(),
            backend_reaped: Family::default(),
            backend_retries: Family::default(),
            backend_ejections: Family::default(),
            tcp_sockets: Family::default(),
            client_reaped: Family::default(),
            tunnels_closed: Family::default(),
            tls_handshakes: Family::default(),
            proxy_headers: Family::default(),
            backend_up: Family::default(),
            health_transitions: Family::default(),
            buffer: buffer::BufferMetrics::new(),
            pressure: pressure::PressureMetrics::new(),
            registry: Registry::default(),
            by_class: Default::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        m.register_client(&mut registry);
        m.register_backend(&mut registry);
        m.buffer.register(&mut registry);
        m.pressure.register(&mut registry);
        let by_class =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|code| m.requests.get_or_create(&CodeLabel { code }).clone());
        Metrics {
            registry,
            by_class,
            ..m
        }
    }

    /// The client side's metrics.
    fn register_client(&self, registry: &mut Registry) {
        registry.register(
            "finguard_client_connections",
            "Open client connections by state",
            self.client_connections.clone(),
        );
        registry.register(
            "finguard_client_connections_accepted",
            "Client connections accepted",
            self.accepted.clone(),
        );
        registry.register(
            "finguard_requests",
            "Responses sent to clients, by status class",
            self.requests.clone(),
        );
        registry.register(
            "finguard_lingering_closes",
            "Client connections closed, by how the close ended",
            self.lingering_closes.clone(),
        );
        registry.register(
            "finguard_lingering_drained_bytes",
            "Bytes read and discarded while lingering",
            self.drained_bytes.clone(),
        );
        registry.register(
            "finguard_ua_rule_matches",
            "Client connections matched by each User-Agent rule",
            self.ua_rule_matches.clone(),
        );
        registry.register(
            "finguard_client_reaped",
            "Client connections the reaper ended, by reason (linger_expired: lingering past linger_time)",
            self.client_reaped.clone(),
        );
        registry.register(
            "finguard_tunnels_closed",
            "Upgraded tunnels (WebSocket) ended, by outcome",
            self.tunnels_closed.clone(),
        );
        registry.register(
            "finguard_tls_handshakes",
            "TLS handshakes on client connections, by outcome (ok, error, timeout)",
            self.tls_handshakes.clone(),
        );
        registry.register(
            "finguard_backend_up",
            "1 while the health check keeps a backend address in rotation, 0 while it is out",
            self.backend_up.clone(),
        );
        registry.register(
            "finguard_backend_health_transitions",
            "Backend addresses taken out (to=down) or brought back (to=up) by the health check",
            self.health_transitions.clone(),
        );
        registry.register(
            "finguard_proxy_headers",
            "PROXY protocol headers read on proxy_protocol listeners, by outcome (ok, invalid, timeout)",
            self.proxy_headers.clone(),
        );
    }

    /// The backend side's metrics, and the socket census.
    fn register_backend(&self, registry: &mut Registry) {
        registry.register(
            "finguard_backend_connections",
            "Open backend connections by state",
            self.backend_connections.clone(),
        );
        registry.register(
            "finguard_backend_connects",
            "Backend connections opened",
            self.backend_connects.clone(),
        );
        registry.register(
            "finguard_backend_reaped",
            "Pooled backend connections closed, by reason",
            self.backend_reaped.clone(),
        );
        registry.register(
            "finguard_backend_retries",
            "Requests retried on a fresh backend connection",
            self.backend_retries.clone(),
        );
        registry.register(
            "finguard_backend_ejections",
            "Backend addresses ejected after consecutive connect failures",
            self.backend_ejections.clone(),
        );
        registry.register(
            "finguard_tcp_sockets",
            "TCP sockets of finguard's listener and backend ports by state (read at scrape)",
            self.tcp_sockets.clone(),
        );
    }

    pub fn tls_handshake(&self, outcome: TlsHandshake) {
        self.tls_handshakes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The health check's verdict on a backend address changed.
    pub fn backend_health(&self, backend: &str, addr: std::net::SocketAddr, up: bool) {
        let (backend, addr) = (backend.to_string(), addr.to_string());
        self.backend_up
            .get_or_create(&BackendAddrLabel {
                backend: backend.clone(),
                addr: addr.clone(),
            })
            .set(i64::from(up));
        let to = if up { "up" } else { "down" };
        self.health_transitions
            .get_or_create(&BackendAddrToLabel { backend, addr, to })
            .inc();
    }

    /// A backend address under health checks, in rotation until a check says otherwise.
    pub fn backend_checked(&self, backend: &str, addr: std::net::SocketAddr) {
        self.backend_up
            .get_or_create(&BackendAddrLabel {
                backend: backend.to_string(),
                addr: addr.to_string(),
            })
            .set(1);
    }

    pub fn proxy_header(&self, outcome: ProxyHeader) {
        self.proxy_headers
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn accepted(&self) {
        self.accepted.inc();
    }

    /// Client connections by state, counted at scrape time.
    pub fn set_client_states(&self, counts: &[usize; 4]) {
        for s in ClientState::ALL {
            self.client_connections
                .get_or_create(&StateLabel { state: s.as_str() })
                .set(counts[s as usize] as i64);
        }
    }

    /// How a client connection was closed, and what its lingering drained.
    pub fn closed(&self, outcome: CloseOutcome, drained: u64) {
        self.lingering_closes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        self.drained_bytes.inc_by(drained);
    }

    /// A connection matched a User-Agent rule.
    pub fn ua_rule_matched(&self, rule: &str) {
        self.ua_rule_matches
            .get_or_create(&RuleLabel { rule: rule.to_string() })
            .inc();
    }

    /// A backend's connections, idle and busy, counted at scrape time.
    pub fn set_backend_pool(&self, backend: &str, idle: usize, busy: usize) {
        for (state, n) in [("idle", idle), ("busy", busy)] {
            let l = BackendStateLabel {
                backend: backend.to_string(),
                state,
            };
            self.backend_connections.get_or_create(&l).set(n as i64);
        }
    }

    /// finguard's TCP sockets by side and state, read at scrape time.
    pub fn set_tcp_sockets(&self, counts: impl IntoIterator<Item = (SocketSide, &'static str, u64)>) {
        self.tcp_sockets.clear();
        for (side, state, n) in counts {
            let l = SocketLabel {
                side: side.as_str(),
                state,
            };
            self.tcp_sockets.get_or_create(&l).set(n as i64);
        }
    }

    pub fn backend_connected(&self, backend: &str) {
        Self::backend_counter(&self.backend_connects, backend).inc();
    }

    pub fn backend_retried(&self, backend: &str) {
        Self::backend_counter(&self.backend_retries, backend).inc();
    }

    pub fn backend_ejected(&self, backend: &str) {
        Self::backend_counter(&self.backend_ejections, backend).inc();
    }

    pub fn response(&self, status: u16) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.by_class[class].inc();
    }

    pub fn reaped(&self, backend: &str, reason: ReapReason) {
        let l = BackendReasonLabel {
            backend: backend.to_string(),
            reason: reason.as_str(),
        };
        self.backend_reaped.get_or_create(&l).inc();
    }

    /// A client connection the reaper ended.
    pub fn client_reaped(&self) {
        let l = ReasonLabel {
            reason: "linger_expired",
        };
        self.client_reaped.get_or_create(&l).inc();
    }

    pub fn tunnel_closed(&self, end: TunnelEnd) {
        self.tunnels_closed
            .get_or_create(&OutcomeLabel { outcome: end.as_str() })
            .inc();
    }

    fn backend_counter(family: &Family<BackendLabel, Counter>, backend: &str) -> Counter {
        family
            .get_or_create(&BackendLabel {
                backend: backend.to_string(),
            })
            .clone()
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Every metric finguard exports, named as its samples are (counters
    /// with `_total`): what dashboards and alerts may query. A family shows
    /// in the exposition only once it has a sample, so each gets one here.
    pub fn exported_names() -> Vec<String> {
        let m = Metrics::new();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        m.tls_handshake(TlsHandshake::Ok);
        m.backend_health("b", addr, true);
        m.proxy_header(ProxyHeader::Ok);
        m.accepted();
        m.set_client_states(&[0; 4]);
        m.closed(CloseOutcome::ClientFin, 1);
        m.ua_rule_matched("r");
        m.set_backend_pool("b", 0, 0);
        m.set_tcp_sockets([(SocketSide::Client, "ESTABLISHED", 0)]);
        m.backend_connected("b");
        m.backend_retried("b");
        m.backend_ejected("b");
        m.response(200);
        m.reaped("b", ReapReason::Error);
        m.client_reaped();
        m.tunnel_closed(TunnelEnd::Closed);
        m.buffer.spilled();
        m.buffer.fell_back(Fallback::MemoryTotal);
        m.pressure.set_level(0.0);
        m.pressure.evicted(EvictReason::Idle, NO_RULE);
        m.pressure.admission_waited();
        m.render()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .flat_map(|(name, kind)| match kind {
                "counter" => vec![format!("{name}_total")],
                "histogram" => ["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")).to_vec(),
                _ => vec![name.to_string()],
            })
            .collect()
    }
}
