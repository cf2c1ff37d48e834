//! Active health checks (`health_check = { path, interval, timeout, rise,
//! fall }`, HAProxy's `option httpchk`): every `interval`, each address of
//! the backend gets `GET path` on a new connection; a 2xx or 3xx status line
//! within `timeout` is a pass. `fall` failures in a row take the address
//! out of rotation (its idle connections are closed), `rise` passes in a row
//! bring it back; each transition is one log line and a metric. With every
//! address out, requests get a 503 at once instead of waiting on a connect.
//!
//! A check connects through the pool's own `Connector`, so it reaches an
//! address as a request would: within `connect_timeout`, and with a PROXY
//! header when the backend wants one (naming the check's own connection).
//! Without that header Apache's `RemoteIPProxyProtocol On` drops the check,
//! and every address would go down while serving requests well.
//!
//! One task per backend per config generation; it ends with its generation.

use super::{Connector, Speaker, Upstream};
use crate::config::HealthCheck;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

/// Consecutive results of one address.
#[derive(Debug, Default, Clone, Copy)]
struct Streak {
    passes: u32,
    failures: u32,
}

pub async fn run(up: Weak<Upstream>, hc: HealthCheck) {
    let mut ticker = tokio::time::interval(hc.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streaks = Vec::new();
    loop {
        ticker.tick().await;
        // Not held across the checks: a generation that is gone ends its task.
        let Some((name, addrs, host, connector)) = up.upgrade().map(|u| {
            let host = u.cfg.addr_specs.first().cloned().unwrap_or_default();
            (u.cfg.name.clone(), u.cfg.addrs.clone(), host, u.connector())
        }) else {
            return;
        };
        streaks.resize(addrs.len(), Streak::default());
        let mut checks = tokio::task::JoinSet::new();
        for (i, addr) in addrs.iter().copied().enumerate() {
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: finguard-health-check\r\nConnection: close\r\n\r\n",
                hc.path
            );
            let timeout = hc.timeout;
            checks.spawn(async move { (i, probe(connector, addr, request, timeout).await) });
        }
        while let Some(Ok((i, result))) = checks.join_next().await {
            let Some(u) = up.upgrade() else { return };
            let s = &mut streaks[i];
            match result {
                Ok(_) => {
                    s.passes += 1;
                    s.failures = 0;
                    if u.is_down(i) && s.passes >= hc.rise {
                        u.set_down(i, false);
                        info!(backend = %name, addr = %addrs[i], passes = s.passes, "health check: backend address up");
                    }
                }
                Err(why) => {
                    s.failures += 1;
                    s.passes = 0;
                    if !u.is_down(i) && s.failures >= hc.fall {
                        u.set_down(i, true);
                        warn!(backend = %name, addr = %addrs[i], failures = s.failures, reason = %why,
                            "health check: backend address down");
                    }
                }
            }
        }
    }
}

/// One check: the status of `GET path` on a new connection, within `timeout`.
async fn probe(connector: Connector, addr: SocketAddr, request: String, timeout: Duration) -> Result<u16, String> {
    let check = async {
        let mut s = connector.open(addr, Speaker::Itself).await.map_err(|e| e.to_string())?;
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(64);
        // The status line is all a check needs.
        while !buf.contains(&b'\n') && buf.len() < 1024 {
            let mut chunk = [0u8; 256];
            match s.read(&mut chunk).await {
                Ok(0) => return Err("closed before a status line".to_string()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&buf);
        let status = line
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP status line: {:?}", line.lines().next().unwrap_or("")))?;
        if (200..400).contains(&status) {
            Ok(status)
        } else {
            Err(format!("status {status}"))
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or_else(|_| Err(format!("no status line within {timeout:?}")))
}
