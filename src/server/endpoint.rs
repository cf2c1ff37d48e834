//! What each listening socket speaks: TLS (with which certificates) or not,
//! a PROXY header first or not. Fixed when the socket is bound; a reload
//! finds the socket's listener in the new config by address (never by
//! position: a reordered or shortened list would hand one socket another's
//! settings, a public port the PROXY header or a TLS port plaintext) and
//! renews its certificates only. What it cannot apply is reported.

use crate::config::ListenerConfig;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// One listening socket's settings.
#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    /// The address its listener named when it was bound (port 0 included):
    /// how a reloaded config's listener is matched to it.
    named: SocketAddr,
    pub(super) tls: Option<crate::tls::TlsSettings>,
    pub(super) proxy_protocol: bool,
}

/// Every listener's endpoint, in the order they were bound.
pub(super) type Endpoints = Arc<RwLock<Vec<Endpoint>>>;

impl Endpoint {
    pub(super) fn new(l: &ListenerConfig) -> Endpoint {
        Endpoint {
            named: l.addr,
            tls: l.tls.clone(),
            proxy_protocol: l.proxy_protocol,
        }
    }
}

/// The settings of listener `idx` for a connection it just accepted.
pub(super) fn get(endpoints: &Endpoints, idx: usize) -> Option<Endpoint> {
    endpoints.read().unwrap_or_else(|p| p.into_inner()).get(idx).cloned()
}

/// The running endpoints after a reload to `listeners`, and what the reload
/// could not apply to them. A socket whose address is gone from the config
/// serves on as it was until a restart, as does one whose listener turns
/// TLS or the PROXY protocol on or off; a new address needs a restart.
pub(super) fn rematch(running: &[Endpoint], listeners: &[ListenerConfig]) -> (Vec<Endpoint>, Vec<String>) {
    let mut matched = vec![false; listeners.len()];
    let mut not_applied = Vec::new();
    let next = running
        .iter()
        .map(|e| {
            // Two listeners of one address (port 0 twice) match in order.
            let found = (0..listeners.len()).find(|&i| !matched[i] && listeners[i].addr == e.named);
            let Some(i) = found else {
                not_applied.push(format!(
                    "listener {}: gone from the config, serves on as it was until restart",
                    e.named
                ));
                return e.clone();
            };
            matched[i] = true;
            let l = &listeners[i];
            let mut keep = false;
            if l.tls.is_some() != e.tls.is_some() {
                not_applied.push(format!("listener {}: tls on or off", e.named));
                keep = true;
            }
            if l.proxy_protocol != e.proxy_protocol {
                not_applied.push(format!("listener {}: proxy_protocol", e.named));
                keep = true;
            }
            if keep {
                e.clone()
            } else {
                Endpoint::new(l)
            }
        })
        .collect();
    for (l, _) in listeners.iter().zip(&matched).filter(|(_, m)| !**m) {
        not_applied.push(format!("listener {}: new", l.addr));
    }
    (next, not_applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(addr: &str, proxy_protocol: bool) -> ListenerConfig {
        ListenerConfig {
            addr: addr.parse().unwrap(),
            tls: None,
            proxy_protocol,
        }
    }

    fn kinds(e: &[Endpoint]) -> Vec<(String, bool)> {
        e.iter().map(|e| (e.named.to_string(), e.proxy_protocol)).collect()
    }

    #[test]
    fn a_reload_matches_listeners_by_address_and_reports_what_it_cannot_apply() {
        let started = [
            l("127.0.0.1:80", false),
            l("127.0.0.1:81", true),
            l("127.0.0.1:0", false),
        ];
        let running: Vec<Endpoint> = started.iter().map(Endpoint::new).collect();
        let as_started = vec![
            ("127.0.0.1:80".to_string(), false),
            ("127.0.0.1:81".to_string(), true),
            ("127.0.0.1:0".to_string(), false),
        ];
        let cases: [(&[ListenerConfig], &[&str]); 5] = [
            // Reordered: nothing to report, each socket keeps its own.
            (
                &[
                    l("127.0.0.1:0", false),
                    l("127.0.0.1:81", true),
                    l("127.0.0.1:80", false),
                ],
                &[],
            ),
            // Removed: kept until restart.
            (
                &[l("127.0.0.1:81", true), l("127.0.0.1:0", false)],
                &["listener 127.0.0.1:80: gone from the config, serves on as it was until restart"],
            ),
            // The PROXY protocol turned on for a running plain socket.
            (
                &[
                    l("127.0.0.1:80", true),
                    l("127.0.0.1:81", true),
                    l("127.0.0.1:0", false),
                ],
                &["listener 127.0.0.1:80: proxy_protocol"],
            ),
            // A new address, and a second port-0 listener.
            (
                &[
                    l("127.0.0.1:80", false),
                    l("127.0.0.1:81", true),
                    l("127.0.0.1:0", false),
                    l("127.0.0.1:0", false),
                    l("127.0.0.1:82", false),
                ],
                &["listener 127.0.0.1:0: new", "listener 127.0.0.1:82: new"],
            ),
            (&started, &[]),
        ];
        for (listeners, expected) in cases {
            let (next, not_applied) = rematch(&running, listeners);
            assert_eq!(kinds(&next), as_started, "{listeners:?}");
            assert_eq!(not_applied, expected, "{listeners:?}");
        }
    }
}
