//! The simulator against servers whose behaviour is known, and the demo's
//! measured verdict.

mod support;

use std::process::Command;
use support::*;

fn simulate(target: std::net::SocketAddr, scenario: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "simulate",
            "--json",
            "--target",
            &target.to_string(),
            "--scenario",
            scenario,
        ])
        .args(["--connections", "10", "--duration", "1500ms"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// These tests measure socket states across the whole host's table for
/// their ports and load both cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const LINGER: &str = "[client]\nheader_timeout = \"500ms\"\nkeepalive_timeout = \"500ms\"\n[client.close]\nlinger_timeout = \"200ms\"\nlinger_time = \"1s\"\n";

#[test]
fn post_unauthorized_loses_responses_only_without_lingering_close() {
    let _one_at_a_time = serial();
    let backend = Backend::start(Reply::Unauthorized);
    let lingering = Proxy::start(LINGER, backend.addr);
    let r = simulate(lingering.addr, "post-unauthorized", &["--path", "/upload"]);
    assert_eq!(r["responses_lost_to_reset"], 0, "{r}");
    assert_eq!(r["statuses"]["401"], 10, "{r}");
    // Request buffering off: buffered, finguard reads the whole body before
    // the backend answers, so an immediate close has nothing left to reset.
    let immediate = Proxy::start(
        &format!("{LINGER}mode = \"immediate\"\n[buffer]\nrequests = false\n"),
        backend.addr,
    );
    // 64 MiB each: more than the socket buffers swallow before the close.
    let r = simulate(
        immediate.addr,
        "post-unauthorized",
        &["--path", "/upload", "--body-bytes", "64MiB"],
    );
    assert!(r["responses_lost_to_reset"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn slowloris_and_half_close_against_finguard() {
    let _one_at_a_time = serial();
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(LINGER, backend.addr);
    let r = simulate(p.addr, "slowloris", &[]);
    assert_eq!(r["statuses"]["408"], 10, "{r}");
    assert_eq!(backend.accepted(), 0);
    let r = simulate(p.addr, "half-close", &[]);
    assert_eq!(r["responses_complete"], 10, "{r}");
    assert_eq!(r["census_after"].get("CLOSE_WAIT"), None, "{r}");
    let r = simulate(p.addr, "never-close", &[]);
    assert_eq!(r["census_after"].get("FIN_WAIT2"), None, "{r}");
    let r = simulate(p.addr, "well-behaved", &[]);
    assert!(r["requests_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["responses_lost_to_reset"], 0);
}

#[test]
fn hoarders_keep_their_pools_and_newcomers_are_counted() {
    let _one_at_a_time = serial();
    let backend = Backend::start(Reply::Ok);
    let p = Proxy::start(
        "[client]\nmax_connections = 10\nkeepalive_timeout = \"5s\"\n",
        backend.addr,
    );
    let r = simulate(
        p.addr,
        "hoard",
        &["--pool", "2", "--every", "500ms", "--newcomers", "10"],
    );
    // Ten clients of two connections each, twice finguard's limit.
    assert_eq!(r["connections"], 20, "{r}");
    assert!(r["requests_sent"].as_u64().unwrap() >= 20, "{r}");
    assert_eq!(r["responses_lost_to_reset"], 0, "{r}");
    assert_eq!(r["responses_missing"], 0, "{r}");
    let newcomers = &r["newcomers"];
    assert!(newcomers["sent"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(newcomers["sent"], newcomers["answered"], "{r}");
    assert_eq!(r["census_after"].get("FIN_WAIT2"), None, "{r}");
}

#[test]
fn the_demo_shows_the_damage_directly_and_none_through_finguard() {
    let _one_at_a_time = serial();
    let out = Command::new(BIN).args(["demo", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 10);
    let damage = |side: &serde_json::Value| {
        [
            "responses_lost",
            "front_fin_wait2",
            "front_close_wait",
            "backend_fin_wait2",
            "backend_close_wait",
        ]
        .iter()
        .map(|k| side[k].as_u64().unwrap())
        .sum::<u64>()
    };
    let direct: u64 = rows.iter().map(|r| damage(&r["direct"])).sum();
    assert!(direct > 0, "the naive backend showed no damage: {rows:?}");
    for r in &rows {
        assert_eq!(damage(&r["finguard"]), 0, "{}", r);
    }
    // A full house: a front at its connection limit locks the newcomers
    // out; finguard with the same limit lets them in.
    let hoard = rows.iter().find(|r| r["scenario"] == "hoard").unwrap();
    let (direct, via) = (&hoard["direct"], &hoard["finguard"]);
    let sent = via["newcomers_sent"].as_u64().unwrap();
    assert!(sent > 0, "{hoard}");
    assert!(
        direct["newcomers_answered"].as_u64().unwrap() * 2 < direct["newcomers_sent"].as_u64().unwrap(),
        "{hoard}"
    );
    assert!(
        via["newcomers_answered"].as_u64().unwrap() * 100 >= sent * 99,
        "{hoard}"
    );
    // A few-worker backend: slow readers and uploaders starve the good
    // client beside them directly, never through finguard.
    for name in ["slow-read", "slow-post"] {
        let r = rows.iter().find(|r| r["scenario"] == name).unwrap();
        assert_eq!(r["direct"]["responses_complete"], 0, "{r}");
        assert!(r["direct"]["responses_lost"].as_u64().unwrap() > 0, "{r}");
        assert!(r["finguard"]["responses_complete"].as_u64().unwrap() > 0, "{r}");
    }
    let slow = rows.iter().find(|r| r["scenario"] == "slowloris").unwrap();
    assert_eq!(
        slow["finguard"]["backend_connections"], 0,
        "slowloris reached the backend"
    );
}
