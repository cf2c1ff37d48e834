//! `finguard demo`: the problem and the cure, side by side, with no setup.
//!
//! An embedded *naive* backend — it answers early and closes outright (no
//! lingering close), closes idle keep-alive connections after a second, and
//! is slow to close after a client's FIN (the CLOSE_WAIT leak of the field
//! report) — faces each simulator scenario directly, then behind an embedded
//! finguard. Every number printed is measured; everything runs on loopback
//! and ends by itself.
//!
//! The `hoard` row is about a full house: crawlers holding twice as many
//! keep-alive connections as a front allows, and newcomers arriving. The
//! naive server there is a front with [`HOARD_SLOTS`] connections (a
//! prefork Apache, or any front at its limit): the hoarders hold every slot
//! and the newcomers wait in its backlog. finguard, with the same limit
//! and the same 5 s keep-alive, closes idle hoarders to let them in.
//!
//! The slow rows (`slow-read`, `slow-post`) face the naive backend as a
//! small prefork server ([`SLOW_WORKERS`] workers) with more slow clients
//! than workers, and one well-behaved client beside them: what is counted is
//! that good client's fate (lost: its requests left unanswered).

use super::naive::Naive;
use super::{run, Options, Report, Scenario};
use crate::config::ConfigError;
use crate::config::{self, Overrides};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long each scenario runs (per side).
const SCENARIO_TIME: Duration = Duration::from_millis(2500);
const CONNECTIONS: usize = 20;
/// The slow rows: the backend's workers, the slow clients (more than the
/// workers), how long they run before the good client starts, and how long
/// the good client runs.
const SLOW_WORKERS: usize = 4;
const SLOW_CLIENTS: usize = 6;
const SLOW_HEAD_START: Duration = Duration::from_millis(500);
const GOOD_CLIENT_TIME: Duration = Duration::from_secs(2);
/// `slow-post`'s body: at 200 B every 0.5 s it never ends within the row.
const SLOW_POST_BYTES: usize = 64 * 1024;

/// The scenarios of the table, in order.
const ROWS: [Scenario; 10] = [
    Scenario::NeverClose,
    Scenario::HalfClose,
    Scenario::PostUnauthorized,
    Scenario::PipelineError,
    Scenario::Slowloris,
    Scenario::IdleHold,
    Scenario::WellBehaved,
    Scenario::SlowRead,
    Scenario::SlowPost,
    Scenario::Hoard,
];

fn is_slow(s: Scenario) -> bool {
    matches!(s, Scenario::SlowRead | Scenario::SlowPost)
}

/// The `hoard` row: the connection limit of both fronts ...
pub const HOARD_SLOTS: usize = 20;
/// ... held by hoarders with twice as many connections, a GET on each every 2 s ...
const HOARD_CLIENTS: usize = 10;
const HOARD_POOL: usize = 4;
const HOARD_EVERY: Duration = Duration::from_secs(2);
/// ... while newcomers arrive at this rate, for three quarters of the run.
const HOARD_NEWCOMERS: f64 = 20.0;
const HOARD_TIME: Duration = Duration::from_secs(4);

/// The finguard of the `hoard` row: the same connection limit and
/// keep-alive timeout as the front it is compared with.
pub fn hoard_config(backend: SocketAddr) -> Result<config::Config, ConfigError> {
    let text = format!(
        r#"shutdown_timeout = "2s"
[[listener]]
addr = "127.0.0.1:0"
[client]
max_connections = {HOARD_SLOTS}
keepalive_timeout = "5s"
[[backend]]
name = "front"
addrs = ["{backend}"]
max_connections = 16
pool_max_idle = 16
[log]
access = "off"
level = "off"
"#
    );
    config::parse("<demo>", &text, &Overrides::default())
}

/// The finguard the demo puts in front of the naive backend.
pub fn finguard_config(backend: SocketAddr) -> Result<config::Config, config::ConfigError> {
    let text = format!(
        r#"shutdown_timeout = "2s"
[[listener]]
addr = "127.0.0.1:0"
[client]
keepalive_timeout = "1s"
header_timeout = "1s"
body_timeout = "2s"
[client.close]
mode = "lingering"
linger_timeout = "300ms"
linger_time = "2s"
on_timeout = "reset"
[[backend]]
name = "naive"
addrs = ["{backend}"]
# This backend leaks CLOSE_WAIT whenever its peer closes first, so finguard
# lets it close idle connections itself (after 1 s) and closes its own end
# at once; a request that races that close is retried.
pool_idle_timeout = "5s"
[reaper]
interval = "200ms"
[log]
access = "off"
level = "off"
"#
    );
    config::parse("<demo>", &text, &Overrides::default())
}

/// One scenario, both ways.
#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: Scenario,
    pub direct: Side,
    pub finguard: Side,
}

#[derive(Debug, Serialize, Default)]
pub struct Side {
    /// Responses lost to a reset, or never received.
    pub responses_lost: u64,
    pub responses_complete: u64,
    /// Sockets left on the client-facing server (the backend directly, or finguard).
    pub front_fin_wait2: u64,
    pub front_close_wait: u64,
    /// Sockets left on the backend behind finguard.
    pub backend_fin_wait2: u64,
    pub backend_close_wait: u64,
    pub backend_connections: u64,
    pub p99_ms: Option<f64>,
    pub requests_per_sec: Option<f64>,
    /// `hoard`: newcomers that came, and those answered within 2 s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newcomers_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newcomers_answered: Option<u64>,
}

fn side(r: &Report, backend_connections: u64) -> Side {
    let get = |c: &crate::census::Counts, s: &str| c.get(s).copied().unwrap_or(0);
    let back = r.also_census_after.clone().unwrap_or_default();
    Side {
        responses_lost: r.responses_lost_to_reset + r.responses_missing,
        responses_complete: r.responses_complete,
        front_fin_wait2: get(&r.census_after, "FIN_WAIT2"),
        front_close_wait: get(&r.census_after, "CLOSE_WAIT"),
        backend_fin_wait2: get(&back, "FIN_WAIT2"),
        backend_close_wait: get(&back, "CLOSE_WAIT"),
        backend_connections,
        p99_ms: r.latency.as_ref().map(|l| l.p99_ms),
        requests_per_sec: r.requests_per_sec,
        newcomers_sent: r.newcomers.map(|n| n.sent),
        newcomers_answered: r.newcomers.map(|n| n.answered),
    }
}

/// The `hoard` row's load against `target`.
fn hoard_opts(target: SocketAddr) -> Options {
    Options {
        connections: HOARD_CLIENTS,
        pool: HOARD_POOL,
        every: HOARD_EVERY,
        newcomers: HOARD_NEWCOMERS,
        duration: HOARD_TIME,
        ..Options::new(target, Scenario::Hoard)
    }
}

/// The `hoard` row: a front with [`HOARD_SLOTS`] connections, directly
/// and behind a finguard with the same limit.
async fn hoard_row(stop: &CancellationToken, progress: &mut impl FnMut(&str)) -> std::io::Result<Row> {
    let name = Scenario::Hoard.name();
    progress(&format!("{name:<18} direct to a {HOARD_SLOTS}-connection front ..."));
    let front = Naive::limited(HOARD_SLOTS).await?;
    let direct = run(hoard_opts(front.addr), stop.clone()).await;
    let direct_side = side(&direct, front.accepted());
    drop(front);

    progress(&format!("{name:<18} through finguard ({HOARD_SLOTS} connections) ..."));
    let front = Naive::limited(HOARD_SLOTS).await?;
    let cfg = hoard_config(front.addr).map_err(std::io::Error::other)?;
    let running = crate::server::start(cfg, None, false)
        .await
        .map_err(std::io::Error::other)?;
    let mut o = hoard_opts(running.addrs[0]);
    o.also_census = Some(front.addr.port());
    let via = run(o, stop.clone()).await;
    let via_side = side(&via, front.accepted());
    running.drain(Duration::from_secs(2)).await;
    drop(front);
    Ok(Row {
        scenario: Scenario::Hoard,
        direct: direct_side,
        finguard: via_side,
    })
}

/// Runs every scenario directly and through finguard; `progress` gets a line per phase.
pub async fn run_demo(stop: CancellationToken, mut progress: impl FnMut(&str)) -> std::io::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for scenario in ROWS {
        if stop.is_cancelled() {
            break;
        }
        if scenario == Scenario::Hoard {
            rows.push(hoard_row(&stop, &mut progress).await?);
            continue;
        }
        if is_slow(scenario) {
            rows.push(slow_row(scenario, &stop, &mut progress).await?);
            continue;
        }
        let opts = |target| Options {
            connections: CONNECTIONS,
            duration: SCENARIO_TIME,
            ..Options::new(target, scenario)
        };
        progress(&format!("{:<18} direct to the naive backend ...", scenario.name()));
        let naive = Naive::start().await?;
        let direct = run(opts(naive.addr), stop.clone()).await;
        let direct_side = side(&direct, naive.accepted());
        drop(naive);

        progress(&format!("{:<18} through finguard ...", scenario.name()));
        let naive = Naive::start().await?;
        let cfg = finguard_config(naive.addr).map_err(std::io::Error::other)?;
        let running = crate::server::start(cfg, None, false)
            .await
            .map_err(std::io::Error::other)?;
        let mut o = opts(running.addrs[0]);
        o.also_census = Some(naive.addr.port());
        let via = run(o, stop.clone()).await;
        let via_side = side(&via, naive.accepted());
        running.drain(Duration::from_secs(2)).await;
        drop(naive);
        rows.push(Row {
            scenario,
            direct: direct_side,
            finguard: via_side,
        });
    }
    Ok(rows)
}

/// A slow row: the slow clients and the good client, directly against a
/// few-worker backend, then through finguard.
async fn slow_row(
    scenario: Scenario,
    stop: &CancellationToken,
    progress: &mut impl FnMut(&str),
) -> std::io::Result<Row> {
    progress(&format!(
        "{:<18} direct to a backend with {SLOW_WORKERS} workers ...",
        scenario.name()
    ));
    let naive = Naive::start_workers(SLOW_WORKERS).await?;
    let good = beside_slow_clients(scenario, naive.addr, None, stop).await;
    let direct = side(&good, naive.accepted());
    drop(naive);

    progress(&format!("{:<18} through finguard ...", scenario.name()));
    let naive = Naive::start_workers(SLOW_WORKERS).await?;
    let cfg = finguard_config(naive.addr).map_err(std::io::Error::other)?;
    let running = crate::server::start(cfg, None, false)
        .await
        .map_err(std::io::Error::other)?;
    let good = beside_slow_clients(scenario, running.addrs[0], Some(naive.addr.port()), stop).await;
    let finguard = side(&good, naive.accepted());
    running.drain(Duration::from_secs(2)).await;
    drop(naive);
    Ok(Row {
        scenario,
        direct,
        finguard,
    })
}

/// Starts the slow clients, gives them a head start to take the workers,
/// then runs one well-behaved client; its report. The slow clients are
/// stopped when it is done.
async fn beside_slow_clients(
    scenario: Scenario,
    target: SocketAddr,
    backend: Option<u16>,
    stop: &CancellationToken,
) -> Report {
    let slow = Options {
        connections: SLOW_CLIENTS,
        duration: SLOW_HEAD_START + GOOD_CLIENT_TIME + Duration::from_secs(2),
        path: if scenario == Scenario::SlowPost {
            "/upload"
        } else {
            "/big"
        }
        .into(),
        body_bytes: SLOW_POST_BYTES,
        ..Options::new(target, scenario)
    };
    let slow_stop = stop.child_token();
    let slow = tokio::spawn(run(slow, slow_stop.clone()));
    tokio::select! {
        () = tokio::time::sleep(SLOW_HEAD_START) => {}
        () = stop.cancelled() => {}
    }
    let good = Options {
        connections: 1,
        duration: GOOD_CLIENT_TIME,
        also_census: backend,
        ..Options::new(target, Scenario::WellBehaved)
    };
    let mut report = run(good, stop.clone()).await;
    slow_stop.cancel();
    let _ = slow.await;
    report.scenario = scenario;
    report
}

/// The side-by-side table.
pub fn table(rows: &[Row]) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "{:<18} | {:>5} {:>5} {:>5} {:>6} | {:>5} {:>9} {:>9} {:>6}\n",
        "", "lost", "FW2", "CW", "conns", "lost", "FW2 f/b", "CW f/b", "conns"
    ));
    o.push_str(&format!(
        "{:<18} | {:^24} | {:^33}\n",
        "scenario", "direct to backend", "through finguard"
    ));
    o.push_str(&format!("{}\n", "-".repeat(81)));
    for r in rows {
        let (d, f) = (&r.direct, &r.finguard);
        o.push_str(&format!(
            "{:<18} | {:>5} {:>5} {:>5} {:>6} | {:>5} {:>9} {:>9} {:>6}\n",
            r.scenario.name(),
            d.responses_lost,
            d.front_fin_wait2,
            d.front_close_wait,
            d.backend_connections,
            f.responses_lost,
            format!("{}/{}", f.front_fin_wait2, f.backend_fin_wait2),
            format!("{}/{}", f.front_close_wait, f.backend_close_wait),
            f.backend_connections,
        ));
    }
    if let Some(r) = rows.iter().find(|r| r.scenario == Scenario::WellBehaved) {
        let fmt = |s: &Side| {
            format!(
                "{:.2} ms p99, {:.0} req/s",
                s.p99_ms.unwrap_or(0.0),
                s.requests_per_sec.unwrap_or(0.0)
            )
        };
        o.push_str(&format!(
            "\nwell-behaved clients: direct {}  |  through finguard {}\n",
            fmt(&r.direct),
            fmt(&r.finguard)
        ));
    }
    for r in rows.iter().filter(|r| is_slow(r.scenario)) {
        let fmt = |s: &Side| {
            format!(
                "{} answered, {} unanswered ({:.0} req/s)",
                s.responses_complete,
                s.responses_lost,
                s.requests_per_sec.unwrap_or(0.0)
            )
        };
        o.push_str(&format!(
            "{} ({SLOW_CLIENTS} clients, backend with {SLOW_WORKERS} workers), the good client beside them: direct {}  |  through finguard {}\n",
            r.scenario.name(),
            fmt(&r.direct),
            fmt(&r.finguard)
        ));
    }
    if let Some(r) = rows.iter().find(|r| r.scenario == Scenario::Hoard) {
        let fmt = |s: &Side| {
            format!(
                "{} of {}",
                s.newcomers_answered.unwrap_or(0),
                s.newcomers_sent.unwrap_or(0)
            )
        };
        o.push_str(&format!(
            "hoarders ({} keep-alive connections, a GET every {}s) at a {HOARD_SLOTS}-connection limit:\n  \
             newcomers answered within 2 s: direct {}  |  through finguard {}\n",
            HOARD_CLIENTS * HOARD_POOL,
            HOARD_EVERY.as_secs(),
            fmt(&r.direct),
            fmt(&r.finguard)
        ));
    }
    o.push_str(
        "\nlost: responses lost to a reset or never received (slow rows: the good client's requests left unanswered); FW2 / CW: sockets left in FIN_WAIT_2 / CLOSE_WAIT\n\
         right after the run (f/b: finguard's client side / the backend); conns: connections the backend accepted.\n",
    );
    o
}
