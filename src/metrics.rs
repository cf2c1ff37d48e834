//! Every metric finguard exports, declared in one place: nothing else spells a
//! metric name. Rendered in the Prometheus text format by `prometheus-client`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    pub client_connections: Family<StateLabel, Gauge>,
    pub accepted: Counter,
    pub requests: Family<CodeLabel, Counter>,
    /// `requests` by class (1xx..5xx), looked up once: counted per request.
    by_class: [Counter; 5],
    pub lingering_closes: Family<OutcomeLabel, Counter>,
    pub drained_bytes: Counter,
    pub ua_rule_matches: Family<RuleLabel, Counter>,
    pub backend_connections: Family<BackendStateLabel, Gauge>,
    pub backend_connects: Family<BackendLabel, Counter>,
    pub backend_reaped: Family<BackendReasonLabel, Counter>,
    pub backend_retries: Family<BackendLabel, Counter>,
    pub backend_ejections: Family<BackendLabel, Counter>,
    pub tcp_sockets: Family<SocketLabel, Gauge>,
    /// Client connections the reaper ended (per connection).
    client_reaped: Family<ReasonLabel, Counter>,
    tunnels_closed: Family<OutcomeLabel, Counter>,
    pub tls_handshakes: Family<OutcomeLabel, Counter>,
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
            registry: Registry::default(),
            by_class: Default::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "finguard_client_connections",
            "Open client connections by state",
            m.client_connections.clone(),
        );
        registry.register(
            "finguard_client_connections_accepted",
            "Client connections accepted",
            m.accepted.clone(),
        );
        registry.register(
            "finguard_requests",
            "Responses sent to clients, by status class",
            m.requests.clone(),
        );
        registry.register(
            "finguard_lingering_closes",
            "Client connections closed, by how the close ended",
            m.lingering_closes.clone(),
        );
        registry.register(
            "finguard_lingering_drained_bytes",
            "Bytes read and discarded while lingering",
            m.drained_bytes.clone(),
        );
        registry.register(
            "finguard_ua_rule_matches",
            "Client connections matched by each User-Agent rule",
            m.ua_rule_matches.clone(),
        );
        registry.register(
            "finguard_backend_connections",
            "Open backend connections by state",
            m.backend_connections.clone(),
        );
        registry.register(
            "finguard_backend_connects",
            "Backend connections opened",
            m.backend_connects.clone(),
        );
        registry.register(
            "finguard_backend_reaped",
            "Pooled backend connections closed, by reason",
            m.backend_reaped.clone(),
        );
        registry.register(
            "finguard_backend_retries",
            "Requests retried on a fresh backend connection",
            m.backend_retries.clone(),
        );
        registry.register(
            "finguard_backend_ejections",
            "Backend addresses ejected after consecutive connect failures",
            m.backend_ejections.clone(),
        );
        registry.register(
            "finguard_tcp_sockets",
            "TCP sockets of finguard's listener and backend ports by state (read at scrape)",
            m.tcp_sockets.clone(),
        );
        registry.register(
            "finguard_client_reaped",
            "Client connections the reaper ended, by reason (linger_expired: lingering past linger_time)",
            m.client_reaped.clone(),
        );
        registry.register(
            "finguard_tunnels_closed",
            "Upgraded tunnels (WebSocket) ended, by outcome",
            m.tunnels_closed.clone(),
        );
        registry.register(
            "finguard_tls_handshakes",
            "TLS handshakes on client connections, by outcome (ok, error, timeout)",
            m.tls_handshakes.clone(),
        );
        let by_class =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|code| m.requests.get_or_create(&CodeLabel { code }).clone());
        Metrics {
            registry,
            by_class,
            ..m
        }
    }

    pub fn tls_handshake(&self, outcome: &'static str) {
        self.tls_handshakes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn client_state(&self, state: &'static str) -> Gauge {
        self.client_connections.get_or_create(&StateLabel { state }).clone()
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

    pub fn backend_state(&self, backend: &str, state: &'static str) -> Gauge {
        let l = BackendStateLabel {
            backend: backend.to_string(),
            state,
        };
        self.backend_connections.get_or_create(&l).clone()
    }

    pub fn backend_counter(family: &Family<BackendLabel, Counter>, backend: &str) -> Counter {
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
}
