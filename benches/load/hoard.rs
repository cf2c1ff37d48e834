//! The full-house row: each proxy with the same limit of client connections
//! ([`SLOTS`]) and a 5 s keep-alive timeout, in front of the load backend.
//! Hoarders (`finguard simulate --scenario hoard`: twice as many keep-alive
//! connections as slots, a GET on each every 3 s) fill the house, then
//! newcomers arrive at a steady rate, each a new connection with one GET
//! and 2 s to be answered. Reported: newcomers answered and failed, their
//! p99, and the hoarders' own responses lost.
//!
//! nginx counts its upstream connections against `worker_connections`: it
//! gets [`SLOTS`] plus its upstream keep-alive allowance, so that its client
//! limit is the same as the others'.

use super::{free_port, pinned, wait_port, Proxy, FINGUARD, LOAD_CORE, PROXY_CORE};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Stdio};

/// Client connections each proxy may hold.
const SLOTS: usize = 500;
/// nginx's upstream keep-alive connections (counted in its `worker_connections`).
const NGINX_UPSTREAM: usize = 32;
/// Connections per hoarding client.
const POOL: usize = 4;

pub struct Plan {
    slots: usize,
    hoarders: usize,
    newcomers_per_sec: f64,
    secs: u64,
}

impl Plan {
    pub fn new(smoke: bool) -> Plan {
        if smoke {
            Plan {
                slots: 100,
                hoarders: 200,
                newcomers_per_sec: 20.0,
                secs: 4,
            }
        } else {
            Plan {
                slots: SLOTS,
                hoarders: 2 * SLOTS,
                newcomers_per_sec: 40.0,
                secs: 10,
            }
        }
    }
}

#[derive(Default)]
struct Cell {
    sent: u64,
    answered: u64,
    p99_ms: Option<f64>,
    hoarder_lost: u64,
    hoarder_requests: u64,
}

fn start_proxy(p: Proxy, dir: &Path, port: u16, backend: u16, slots: usize) -> Option<Child> {
    let d = dir.display();
    let child = match p {
        Proxy::Direct => return None,
        Proxy::Finguard => {
            let conf = format!(
                "[[listener]]\naddr = \"127.0.0.1:{port}\"\n[client]\nmax_connections = {slots}\nkeepalive_timeout = \"5s\"\n\
                 [[backend]]\nname = \"b\"\naddrs = [\"127.0.0.1:{backend}\"]\nmax_connections = 64\npool_max_idle = 64\n\
                 [log]\naccess = \"off\"\nlevel = \"error\"\n"
            );
            std::fs::write(dir.join("hoard-finguard.toml"), conf).unwrap();
            pinned(PROXY_CORE, FINGUARD)
                .args(["run", "-c"])
                .arg(dir.join("hoard-finguard.toml"))
                .spawn()
        }
        Proxy::Nginx => {
            let conf = format!(
                "worker_processes 1; daemon off; pid {d}/hoard-nginx.pid; error_log {d}/hoard-nginx.err;\n\
                 events {{ worker_connections {}; }}\n\
                 http {{ access_log off; keepalive_timeout 5s;\n\
                 upstream b {{ server 127.0.0.1:{backend}; keepalive {NGINX_UPSTREAM}; }}\n\
                 server {{ listen 127.0.0.1:{port} backlog=4096;\n\
                 location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
                slots + NGINX_UPSTREAM
            );
            std::fs::write(dir.join("hoard-nginx.conf"), conf).unwrap();
            pinned(PROXY_CORE, "nginx")
                .arg("-c")
                .arg(dir.join("hoard-nginx.conf"))
                .spawn()
        }
        Proxy::Haproxy => {
            let conf = format!(
                "global\n  nbthread 1\n  maxconn {slots}\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n\
                 timeout server 60s\n  timeout http-keep-alive 5s\n  option http-keep-alive\n\
                 frontend f\n  bind 127.0.0.1:{port}\n  maxconn {slots}\n  default_backend b\n\
                 backend b\n  http-reuse always\n  server s1 127.0.0.1:{backend} maxconn 64\n"
            );
            std::fs::write(dir.join("hoard-haproxy.cfg"), conf).unwrap();
            pinned(PROXY_CORE, "haproxy")
                .args(["-db", "-f"])
                .arg(dir.join("hoard-haproxy.cfg"))
                .spawn()
        }
    };
    let c = child.expect("start proxy");
    wait_port(port);
    Some(c)
}

fn run_cell(p: Proxy, dir: &Path, backend: u16, plan: &Plan) -> Option<Cell> {
    let port = free_port();
    let proxy = super::slow::Stop(Some(start_proxy(p, dir, port, backend, plan.slots)?));
    let out = pinned(LOAD_CORE, FINGUARD)
        .stdout(Stdio::piped())
        .args(["simulate", "--scenario", "hoard", "--json", "--path", "/small"])
        .args(["--target", &format!("127.0.0.1:{port}")])
        .args(["--connections", &(plan.hoarders / POOL).to_string()])
        .args(["--pool", &POOL.to_string(), "--every", "3s"])
        .args(["--newcomers", &plan.newcomers_per_sec.to_string()])
        .args(["--duration", &format!("{}s", plan.secs)])
        .output();
    drop(proxy);
    let out = out.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Some(Cell {
        sent: v["newcomers"]["sent"].as_u64().unwrap_or(0),
        answered: v["newcomers"]["answered"].as_u64().unwrap_or(0),
        p99_ms: v["newcomers"]["p99_ms"].as_f64(),
        hoarder_lost: n("responses_lost_to_reset") + n("responses_missing"),
        hoarder_requests: n("requests_sent"),
    })
}

/// Runs the full-house row against `backend`; its section of the report.
pub fn run(dir: &Path, backend: u16, plan: &Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## A full house ({} client connections allowed, 5 s keep-alive; {} hoarder connections, a GET on each every 3 s; \
         newcomers at {}/s, 2 s to be answered)\n",
        plan.slots, plan.hoarders, plan.newcomers_per_sec
    );
    let _ = writeln!(
        o,
        "| proxy | newcomers answered | newcomers failed | newcomer p99 ms | hoarder requests | hoarder responses lost |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    for p in [Proxy::Finguard, Proxy::Nginx, Proxy::Haproxy] {
        let Some(c) = run_cell(p, dir, backend, plan) else {
            let _ = writeln!(o, "| {} | run failed | | | | |", p.name());
            continue;
        };
        eprintln!(
            "hoard {:<16} newcomers {}/{} p99 {:?} ms, hoarder lost {}",
            p.name(),
            c.answered,
            c.sent,
            c.p99_ms,
            c.hoarder_lost
        );
        let _ = writeln!(
            o,
            "| {} | {} of {} | {} | {} | {} | {} |",
            p.name(),
            c.answered,
            c.sent,
            c.sent - c.answered,
            c.p99_ms.map_or("–".into(), |v| format!("{v:.1}")),
            c.hoarder_requests,
            c.hoarder_lost
        );
    }
    o
}
