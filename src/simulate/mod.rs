//! The buggy-client simulator: connections that behave like the broken
//! clients of the field, against any HTTP server the user names, with a
//! report of what happened to them and a TCP census of the target port.
//!
//! Bounded by construction: at most [`MAX_CONNECTIONS`] connections and
//! [`MAX_DURATION`]; every await has a deadline; Ctrl-C (the `stop` token)
//! ends the run early and the report is still printed.

pub mod hoard;
mod scenarios;
mod slow;
pub(crate) mod wire;

use crate::census::{self, Counts};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_CONNECTIONS: usize = 20;
pub const MAX_CONNECTIONS: usize = 20_000;
pub const DEFAULT_DURATION: Duration = Duration::from_secs(3);
pub const MAX_DURATION: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Reads its response, then never closes and never reads again.
    NeverClose,
    /// Sends a request, shuts its write side, reads the response, then vanishes.
    HalfClose,
    /// Streams a large body to a URL answered early (401/413).
    PostUnauthorized,
    /// Pipelines requests with a malformed one in the middle.
    PipelineError,
    /// Sends the request head a byte at a time.
    Slowloris,
    /// Opens connections and holds them idle.
    IdleHold,
    /// Plain keep-alive GETs: the control group.
    WellBehaved,
    /// Downloads a large response a few KiB at a time.
    SlowRead,
    /// Sends a request body a few hundred bytes at a time.
    SlowPost,
    /// Keeps a pool of keep-alive connections and sends a request on each
    /// every few seconds, as crawlers do.
    Hoard,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::NeverClose,
        Scenario::HalfClose,
        Scenario::PostUnauthorized,
        Scenario::PipelineError,
        Scenario::Slowloris,
        Scenario::IdleHold,
        Scenario::WellBehaved,
        Scenario::Hoard,
    ];

    /// The scenario of that name (`ALL` and `name` are the one list).
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::NeverClose => "never-close",
            Scenario::HalfClose => "half-close",
            Scenario::PostUnauthorized => "post-unauthorized",
            Scenario::PipelineError => "pipeline-error",
            Scenario::Slowloris => "slowloris",
            Scenario::IdleHold => "idle-hold",
            Scenario::WellBehaved => "well-behaved",
            Scenario::SlowRead => "slow-read",
            Scenario::SlowPost => "slow-post",
            Scenario::Hoard => "hoard",
        }
    }
}

/// A slow scenario's own pace (bytes per step, pause between steps).
pub fn slow_defaults(s: Scenario) -> (usize, Duration) {
    match s {
        Scenario::SlowPost => slow::DEFAULT_POST_STEP,
        _ => slow::DEFAULT_READ_STEP,
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: SocketAddr,
    pub scenario: Scenario,
    pub connections: usize,
    pub duration: Duration,
    /// The path requested (`post-unauthorized` posts to it).
    pub path: String,
    /// Body size for `post-unauthorized`.
    pub body_bytes: usize,
    /// Another port whose server-side sockets are counted too (the backend
    /// behind a proxy under test).
    pub also_census: Option<u16>,
    /// `slow-read`/`slow-post`: bytes per step and the pause between
    /// steps; `None`: the scenario's own default.
    pub step: Option<(usize, Duration)>,
    /// `hoard`: connections per client (`connections` counts clients).
    pub pool: usize,
    /// `hoard`: the pause between two requests on one connection.
    pub every: Duration,
    /// `hoard`: new clients per second (one connection, one GET each)
    /// arriving from a quarter of the run to its end; 0: none.
    pub newcomers: f64,
}

impl Options {
    pub fn new(target: SocketAddr, scenario: Scenario) -> Self {
        Options {
            target,
            scenario,
            connections: DEFAULT_CONNECTIONS,
            duration: DEFAULT_DURATION,
            path: "/".into(),
            body_bytes: 4 << 20,
            also_census: None,
            step: None,
            pool: hoard::DEFAULT_POOL,
            every: hoard::DEFAULT_EVERY,
            newcomers: 0.0,
        }
    }

    /// Applies the hard caps.
    pub fn bounded(mut self) -> Self {
        self.connections = self.connections.clamp(1, MAX_CONNECTIONS);
        self.duration = self.duration.min(MAX_DURATION);
        self.pool = self.pool.clamp(1, hoard::MAX_POOL);
        self.newcomers = self.newcomers.clamp(0.0, hoard::MAX_NEWCOMER_RATE);
        self
    }

    /// The connections the run opens: `hoard` keeps a pool per client.
    pub fn sockets(&self) -> usize {
        match self.scenario {
            Scenario::Hoard => (self.connections * self.pool).min(MAX_CONNECTIONS),
            _ => self.connections,
        }
    }
}

/// How the server ended a connection, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum End {
    Fin,
    Rst,
    #[default]
    Open,
}

/// One connection's story.
#[derive(Debug, Default)]
pub struct ConnOutcome {
    pub sent: u64,
    pub complete: u64,
    /// Responses the server sent (or owed) that a reset destroyed.
    pub lost_reset: u64,
    /// Requests that got no response without a reset (cut by FIN or timeout).
    pub missing: u64,
    pub statuses: Vec<u16>,
    /// Requests sent again on a new connection after the server had closed
    /// the idle one (nothing came back on it).
    pub retried: u64,
    pub latencies: Vec<Duration>,
    pub end: End,
    /// Held until the census is taken, so that it sees the sockets' states.
    pub socket: Option<TcpStream>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub target: String,
    pub connections: usize,
    pub elapsed_ms: u64,
    pub requests_sent: u64,
    pub responses_complete: u64,
    pub responses_lost_to_reset: u64,
    pub responses_missing: u64,
    /// Requests sent again after the server closed an idle connection.
    pub requests_retried: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// `hoard` with newcomers: how many came and were answered in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newcomers: Option<hoard::Newcomers>,
    pub server_closed_fin: u64,
    pub server_closed_rst: u64,
    pub server_left_open: u64,
    /// The target port's server-side sockets by state.
    pub census_before: Counts,
    pub census_after: Counts,
    /// `also_census`'s server side, after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub also_census_after: Option<Counts>,
    pub requests_per_sec: Option<f64>,
    pub latency: Option<Latency>,
}

/// The server side of `port`: sockets whose local port it is (not the listener).
pub fn server_side(port: u16) -> Counts {
    census::count(
        census::sockets()
            .iter()
            .filter(|s| s.local.port() == port && s.state != "LISTEN"),
    )
}

/// The client sockets of a finished run, kept open until this is dropped,
/// so that a census taken meanwhile sees what the server left behind.
#[must_use = "dropping it closes the run's sockets"]
pub struct Held(#[allow(dead_code)] Vec<ConnOutcome>);

/// Runs one scenario to its end (or until `stop`).
pub async fn run(opts: Options, stop: CancellationToken) -> Report {
    let (report, held) = run_held(opts, stop).await;
    drop(held); // now the sockets may close
    report
}

/// [`run`], with the client sockets handed back still open (`finguard
/// compare` takes its census when every scenario of the mix has ended).
pub async fn run_held(opts: Options, stop: CancellationToken) -> (Report, Held) {
    let opts = opts.bounded();
    let before = server_side(opts.target.port());
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..opts.sockets() {
        let (o, stop) = (opts.clone(), stop.clone());
        set.spawn(async move { scenarios::one(&o, i, deadline, stop).await });
    }
    let arrivals = (opts.scenario == Scenario::Hoard && opts.newcomers > 0.0).then(|| {
        let (o, stop) = (opts.clone(), stop.clone());
        let from = started + opts.duration / 4;
        tokio::spawn(async move { hoard::newcomers(&o, from, deadline, &stop).await })
    });
    let mut outcomes = Vec::with_capacity(opts.sockets());
    while let Some(r) = set.join_next().await {
        if let Ok(o) = r {
            outcomes.push(o);
        }
    }
    let newcomers = match arrivals {
        Some(a) => a.await.ok(),
        None => None,
    };
    let elapsed = started.elapsed();
    let after = server_side(opts.target.port());
    let also = opts.also_census.map(server_side);
    let mut report = summarize(&opts, &outcomes, elapsed);
    report.newcomers = newcomers;
    report.census_before = before;
    report.census_after = after;
    report.also_census_after = also;
    (report, Held(outcomes))
}

fn summarize(opts: &Options, outcomes: &[ConnOutcome], elapsed: Duration) -> Report {
    let mut r = Report {
        scenario: opts.scenario,
        target: opts.target.to_string(),
        connections: opts.sockets(),
        elapsed_ms: elapsed.as_millis() as u64,
        requests_sent: 0,
        responses_complete: 0,
        responses_lost_to_reset: 0,
        responses_missing: 0,
        requests_retried: 0,
        statuses: BTreeMap::new(),
        newcomers: None,
        server_closed_fin: 0,
        server_closed_rst: 0,
        server_left_open: 0,
        census_before: Counts::new(),
        census_after: Counts::new(),
        also_census_after: None,
        requests_per_sec: None,
        latency: None,
    };
    let mut lat: Vec<Duration> = Vec::new();
    for o in outcomes {
        r.requests_sent += o.sent;
        r.responses_complete += o.complete;
        r.responses_lost_to_reset += o.lost_reset;
        r.responses_missing += o.missing;
        r.requests_retried += o.retried;
        for s in &o.statuses {
            *r.statuses.entry(*s).or_default() += 1;
        }
        match o.end {
            End::Fin => r.server_closed_fin += 1,
            End::Rst => r.server_closed_rst += 1,
            End::Open => r.server_left_open += 1,
        }
        lat.extend_from_slice(&o.latencies);
    }
    if opts.scenario == Scenario::WellBehaved && !lat.is_empty() {
        lat.sort_unstable();
        let pick = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
        r.latency = Some(Latency {
            p50_ms: pick(0.5),
            p90_ms: pick(0.9),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
        });
        r.requests_per_sec = Some(r.responses_complete as f64 / elapsed.as_secs_f64().max(1e-9));
    }
    r
}

const CENSUS_STATES: [&str; 6] = [
    "ESTABLISHED",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
];

/// The human-readable report.
pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let statuses: Vec<String> = r.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    o.push_str(&format!(
        "scenario {}  target {}  connections {}  elapsed {:.2}s\n",
        r.scenario.name(),
        r.target,
        r.connections,
        r.elapsed_ms as f64 / 1000.0
    ));
    o.push_str(&format!("  requests sent              {:>8}\n", r.requests_sent));
    o.push_str(&format!(
        "  responses complete         {:>8}   ({})\n",
        r.responses_complete,
        statuses.join(", ")
    ));
    o.push_str(&format!(
        "  responses lost to a reset  {:>8}\n",
        r.responses_lost_to_reset
    ));
    o.push_str(&format!("  responses missing          {:>8}\n", r.responses_missing));
    if r.requests_retried > 0 {
        o.push_str(&format!(
            "  requests retried           {:>8}   (the server had closed the idle connection)\n",
            r.requests_retried
        ));
    }
    if let Some(n) = &r.newcomers {
        let p99 = n.p99_ms.map_or(String::new(), |p| format!("   (p99 {p:.1} ms)"));
        o.push_str(&format!(
            "  newcomers answered in 2s   {:>8} of {}{p99}\n",
            n.answered, n.sent
        ));
    }
    o.push_str(&format!(
        "  server closed              FIN {}  RST {}  still open {}\n",
        r.server_closed_fin, r.server_closed_rst, r.server_left_open
    ));
    if let (Some(rps), Some(l)) = (r.requests_per_sec, &r.latency) {
        o.push_str(&format!(
            "  req/s {rps:.0}   latency p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        ));
    }
    o.push_str(&format!(
        "  target-port sockets (server side)   {:>8} {:>8}\n",
        "before", "after"
    ));
    for st in CENSUS_STATES {
        let (b, a) = (
            r.census_before.get(st).copied().unwrap_or(0),
            r.census_after.get(st).copied().unwrap_or(0),
        );
        o.push_str(&format!("    {st:<33} {b:>8} {a:>8}\n"));
    }
    o
}

pub mod demo;
pub mod naive;
