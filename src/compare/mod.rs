//! `finguard compare`: the same client mix against each named target in
//! turn — well-behaved load at a constant arrival rate (open loop, latency
//! from the intended send time, so a stalled server is charged for the
//! requests it delayed) plus any of the simulator's buggy scenarios — with
//! per-target counts, an HDR latency histogram, throughput per second and a
//! census of a named port's TCP states per second; a summary table, a
//! self-contained HTML report and JSON.
//!
//! Owns the orchestration and the report's numbers; `load` sends the
//! well-behaved requests, `summary` the table, `report`/`plots` the HTML.
//! Bounded like `simulate`: only the targets named, at most [`MAX_TARGETS`],
//! [`MAX_RATE`], [`MAX_LOAD_CONNECTIONS`] and the simulator's caps on
//! connections and duration; every await has a deadline; `stop` (Ctrl-C)
//! ends the run early with a report of what ran.

mod load;
mod options;
mod plots;
pub mod progress;
pub mod report;
pub mod summary;

pub use options::{parse_census_port, parse_mix, parse_target, MixItem, Options, Target};

use crate::census::{self, Counts};
use crate::simulate::{self, Scenario};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_RATE: f64 = 200.0;
/// Above this one process's sender, not the server, is what gets measured.
pub const MAX_RATE: f64 = 50_000.0;
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Enough to keep the default rate going through a 150 ms stall without a
/// backlog; a server slower than that is charged the wait (open loop).
pub const DEFAULT_LOAD_CONNECTIONS: usize = 32;
pub const MAX_LOAD_CONNECTIONS: usize = 2_000;
pub const MAX_TARGETS: usize = 8;
/// Connections of a scenario named in `--mix` without a count.
pub const DEFAULT_MIX_COUNT: usize = 10;
/// How often the census is taken: fine enough to see a 1 s keep-alive
/// timeout's effect, one small /proc read each time.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How long a connect may take before the target counts as unreachable.
pub const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// One census of a port's server side.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub counts: Counts,
}

/// A port's server-side sockets over one target's run.
#[derive(Debug, Clone, Serialize)]
pub struct PortCensus {
    pub port: u16,
    /// `named` (`--census-port`, e.g. the backend behind a front) or `target`.
    pub role: &'static str,
    pub samples: Vec<Sample>,
    /// The most of each state seen in any sample.
    pub peak: Counts,
    /// At the end of the run, every client socket still open.
    pub end: Counts,
    pub fin_wait2_peak: u64,
    pub fin_wait2_end: u64,
    pub close_wait_peak: u64,
    pub close_wait_end: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Requests {
    /// Due by the rate during the run.
    pub intended: u64,
    pub sent: u64,
    /// Complete responses, any status.
    pub answered: u64,
    /// No response: timeout, close, unparsable, or no connection.
    pub errors: u64,
    /// The response was destroyed by a reset.
    pub lost_to_reset: u64,
    /// Due but never sent: every connection was still waiting.
    pub not_sent: u64,
    /// Requests resent once on a fresh connection after a reused one was
    /// found closed before any byte came back (as browsers do).
    pub retried: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

/// What a buggy scenario of the mix saw.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioOutcome {
    pub scenario: Scenario,
    pub connections: usize,
    pub requests_sent: u64,
    pub responses_complete: u64,
    pub responses_lost_to_reset: u64,
    pub responses_missing: u64,
}

/// One target's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub addr: String,
    pub elapsed_s: f64,
    pub requests: Requests,
    pub statuses: BTreeMap<u16, u64>,
    /// Answered per second of the load's run (the duration, or less when stopped early).
    pub throughput_rps: f64,
    /// Milliseconds from the intended send time to the whole response.
    pub latency_ms: Latency,
    /// (percentile, ms) points of the latency distribution.
    pub latency_curve: Vec<(f64, f64)>,
    /// Responses completed in each second of the run.
    pub throughput: Vec<u64>,
    /// `census[0]` is the port named by `--census-port` (else the
    /// target's); `census[1]`, when a port was named, the target's own.
    pub census: Vec<PortCensus>,
    pub scenarios: Vec<ScenarioOutcome>,
    /// Buggy scenarios' responses lost to a reset or never received.
    pub scenario_responses_lost: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line, to repeat the run.
    pub command: String,
    pub started: String,
    pub rate: f64,
    pub duration_s: f64,
    pub connections: usize,
    pub path: String,
    pub mix: Vec<MixItem>,
    pub stopped_early: bool,
    pub targets: Vec<TargetReport>,
}

/// A progress tick: once a second per target.
#[derive(Debug, Clone)]
pub struct Tick<'a> {
    pub index: usize,
    pub name: &'a str,
    pub elapsed: Duration,
    pub duration: Duration,
    pub sent: u64,
    pub answered: u64,
    pub failed: u64,
}

/// Connects to each target once; the first that cannot be reached names itself.
pub async fn check_reachable(targets: &[Target]) -> Result<(), String> {
    for t in targets {
        match tokio::time::timeout(CONNECT_WAIT, TcpStream::connect(t.addr)).await {
            Ok(Ok(s)) => {
                // Closed with a reset, so that the probe leaves no socket
                // behind on the server (a naive one would keep a CLOSE_WAIT).
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
            Ok(Err(e)) => return Err(format!("--target {}={}: cannot connect: {e}", t.name, t.addr)),
            Err(_) => {
                return Err(format!(
                    "--target {}={}: no answer to a connect within {CONNECT_WAIT:?}",
                    t.name, t.addr
                ))
            }
        }
    }
    Ok(())
}

/// Runs the mix against every target in turn (until `stop`).
pub async fn run(opts: Options, stop: CancellationToken, mut progress: impl FnMut(&Tick)) -> Report {
    let opts = opts.bounded();
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut targets = Vec::new();
    for (index, t) in opts.targets.iter().enumerate() {
        if stop.is_cancelled() {
            break;
        }
        targets.push(run_target(&opts, index, t, &stop, &mut progress).await);
    }
    Report {
        command: opts.command.clone(),
        started,
        rate: opts.rate,
        duration_s: opts.duration.as_secs_f64(),
        connections: opts.connections,
        path: opts.path.clone(),
        mix: opts.mix.clone(),
        stopped_early: stop.is_cancelled(),
        targets,
    }
}

/// The ports whose server side is counted for `t`: the named one first.
fn watched(opts: &Options, t: &Target) -> Vec<(u16, &'static str)> {
    match opts.census_ports.get(&t.name) {
        Some(&p) if p != t.addr.port() => vec![(p, "named"), (t.addr.port(), "target")],
        Some(&p) => vec![(p, "named")],
        None => vec![(t.addr.port(), "target")],
    }
}

fn sample(ports: &[(u16, &'static str)], t_s: f64) -> Vec<Sample> {
    let all = census::sockets();
    ports
        .iter()
        .map(|(port, _)| Sample {
            t_s,
            counts: census::count(all.iter().filter(|s| s.local.port() == *port && s.state != "LISTEN")),
        })
        .collect()
}

async fn run_target(
    opts: &Options,
    index: usize,
    t: &Target,
    stop: &CancellationToken,
    progress: &mut impl FnMut(&Tick),
) -> TargetReport {
    let ports = watched(opts, t);
    let before = sample(&ports, 0.0);
    let start = Instant::now();
    let live = Arc::new(load::Live::default());
    let load_opts = load::LoadOptions::new(opts, t.addr);
    let load_task = tokio::spawn(load::run(load_opts, start, live.clone(), stop.clone()));
    let scenario_tasks = spawn_scenarios(opts, t, stop);
    let work = async {
        let load = load_task.await.ok();
        let mut scenarios = Vec::new();
        for task in scenario_tasks {
            if let Ok(r) = task.await {
                scenarios.push(r);
            }
        }
        (load, scenarios)
    };
    tokio::pin!(work);
    let mut samples: Vec<Vec<Sample>> = before.into_iter().map(|s| vec![s]).collect();
    let mut tick = tokio::time::interval_at(start + SAMPLE_EVERY, SAMPLE_EVERY);
    let mut shown = 0;
    let (load, scenarios) = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = tick.tick() => {
                let now = start.elapsed();
                for (i, s) in sample(&ports, now.as_secs_f64()).into_iter().enumerate() {
                    samples[i].push(s);
                }
                if now.as_secs() > shown {
                    shown = now.as_secs();
                    progress(&live.tick(index, &t.name, now.min(opts.duration), opts.duration));
                }
            }
        }
    };
    // Every client socket is still open: this census is what the mix left.
    let elapsed = start.elapsed();
    let end = sample(&ports, elapsed.as_secs_f64());
    let census = ports
        .iter()
        .zip(samples)
        .zip(end)
        .map(|(((port, role), samples), end)| port_census(*port, role, samples, end))
        .collect();
    let (stats, held_load) = load.unwrap_or_default();
    let outcomes = scenarios.iter().map(|(r, _)| outcome(r)).collect();
    // Only now may the client sockets close.
    drop(held_load);
    drop(scenarios);
    // The load's window: the scenarios' final probes may end a moment later.
    let window = elapsed.min(opts.duration);
    target_report(t, elapsed, window, stats, census, outcomes)
}

fn outcome(r: &simulate::Report) -> ScenarioOutcome {
    ScenarioOutcome {
        scenario: r.scenario,
        connections: r.connections,
        requests_sent: r.requests_sent,
        responses_complete: r.responses_complete,
        responses_lost_to_reset: r.responses_lost_to_reset,
        responses_missing: r.responses_missing,
    }
}

/// The buggy clients of the mix, each scenario with its own count.
fn spawn_scenarios(
    opts: &Options,
    t: &Target,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<(simulate::Report, simulate::Held)>> {
    opts.mix
        .iter()
        .map(|m| {
            let o = simulate::Options {
                connections: m.connections,
                duration: opts.duration,
                path: opts.path.clone(),
                ..simulate::Options::new(t.addr, m.scenario)
            };
            tokio::spawn(simulate::run_held(o, stop.clone()))
        })
        .collect()
}

fn port_census(port: u16, role: &'static str, mut samples: Vec<Sample>, end: Sample) -> PortCensus {
    samples.push(end.clone());
    let mut peak = Counts::new();
    for s in &samples {
        for (state, n) in &s.counts {
            let p = peak.entry(state).or_default();
            *p = (*p).max(*n);
        }
    }
    let get = |c: &Counts, s: &str| c.get(s).copied().unwrap_or(0);
    PortCensus {
        port,
        role,
        fin_wait2_peak: get(&peak, "FIN_WAIT2"),
        fin_wait2_end: get(&end.counts, "FIN_WAIT2"),
        close_wait_peak: get(&peak, "CLOSE_WAIT"),
        close_wait_end: get(&end.counts, "CLOSE_WAIT"),
        samples,
        peak,
        end: end.counts,
    }
}

/// Milliseconds to the microsecond, as the report prints them.
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn target_report(
    t: &Target,
    elapsed: Duration,
    window: Duration,
    stats: load::Stats,
    census: Vec<PortCensus>,
    scenarios: Vec<ScenarioOutcome>,
) -> TargetReport {
    let h = &stats.histogram;
    let at = |q: f64| if h.is_empty() { 0.0 } else { ms(h.value_at_quantile(q)) };
    let latency_ms = Latency {
        count: h.len(),
        mean: h.mean().round() / 1000.0,
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        p99_9: at(0.999),
        p99_99: at(0.9999),
        max: if h.is_empty() { 0.0 } else { ms(h.max()) },
    };
    // Percentiles spaced evenly in -log10(1 - q): 0, 90, 99, 99.9, ... 99.999.
    let latency_curve = if h.is_empty() {
        Vec::new()
    } else {
        (0..=50)
            .map(|i| 1.0 - 10f64.powf(-(i as f64) / 10.0))
            .map(|q| ((q * 100.0 * 1e4).round() / 1e4, at(q)))
            .collect()
    };
    let secs = elapsed.as_secs_f64().max(1e-9);
    let window_s = window.as_secs_f64().max(1e-9);
    let scenario_responses_lost = scenarios
        .iter()
        .map(|s| s.responses_lost_to_reset + s.responses_missing)
        .sum();
    TargetReport {
        name: t.name.clone(),
        addr: t.addr.to_string(),
        elapsed_s: (secs * 1000.0).round() / 1000.0,
        throughput_rps: (stats.requests.answered as f64 / window_s * 10.0).round() / 10.0,
        requests: stats.requests,
        statuses: stats.statuses,
        latency_ms,
        latency_curve,
        throughput: stats.per_second,
        census,
        scenarios,
        scenario_responses_lost,
    }
}
