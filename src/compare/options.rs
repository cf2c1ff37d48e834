//! What `finguard compare` runs, and the parsers of its arguments: every
//! error is one line naming the argument and the reason.

use super::{DEFAULT_DURATION, DEFAULT_LOAD_CONNECTIONS, DEFAULT_MIX_COUNT, DEFAULT_RATE};
use super::{MAX_LOAD_CONNECTIONS, MAX_RATE, MAX_TARGETS};
use crate::simulate::{self, Scenario};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A target the user named: only this address is contacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
}

/// One buggy scenario of the mix and its connection count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MixItem {
    pub scenario: Scenario,
    pub connections: usize,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub targets: Vec<Target>,
    pub mix: Vec<MixItem>,
    /// Well-behaved requests per second (open loop).
    pub rate: f64,
    /// Per target.
    pub duration: Duration,
    /// Keep-alive connections the well-behaved load may use.
    pub connections: usize,
    pub path: String,
    /// Target name → the port whose server side is counted.
    pub census_ports: BTreeMap<String, u16>,
    /// The command line, written into the report.
    pub command: String,
}

impl Options {
    pub fn new(targets: Vec<Target>) -> Self {
        Options {
            targets,
            mix: Vec::new(),
            rate: DEFAULT_RATE,
            duration: DEFAULT_DURATION,
            connections: DEFAULT_LOAD_CONNECTIONS,
            path: "/".into(),
            census_ports: BTreeMap::new(),
            command: String::new(),
        }
    }

    /// Applies the hard caps (the CLI refuses values past them first).
    pub fn bounded(mut self) -> Self {
        self.targets.truncate(MAX_TARGETS);
        self.rate = self.rate.clamp(0.1, MAX_RATE);
        self.duration = self.duration.clamp(Duration::from_millis(100), simulate::MAX_DURATION);
        self.connections = self.connections.clamp(1, MAX_LOAD_CONNECTIONS);
        let mut budget = simulate::MAX_CONNECTIONS;
        for m in &mut self.mix {
            m.connections = m.connections.min(budget);
            budget -= m.connections;
        }
        self.mix.retain(|m| m.connections > 0);
        self
    }

    /// Checks what `bounded` would otherwise cut, naming the argument.
    pub fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("--target: at least one NAME=HOST:PORT is needed".into());
        }
        if self.targets.len() > MAX_TARGETS {
            return Err(format!("--target: at most {MAX_TARGETS} targets"));
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].iter().any(|o| o.name == t.name) {
                return Err(format!("--target: the name {:?} is given twice", t.name));
            }
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE) {
            return Err(format!("--rate: must be above 0 and at most {MAX_RATE} requests/s"));
        }
        if self.duration.is_zero() || self.duration > simulate::MAX_DURATION {
            return Err(format!(
                "--duration: must be above 0 and at most {}",
                humantime::format_duration(simulate::MAX_DURATION)
            ));
        }
        if self.connections == 0 || self.connections > MAX_LOAD_CONNECTIONS {
            return Err(format!("--connections: must be 1 to {MAX_LOAD_CONNECTIONS}"));
        }
        let buggy: usize = self.mix.iter().map(|m| m.connections).sum();
        if buggy > simulate::MAX_CONNECTIONS {
            return Err(format!(
                "--mix: {buggy} connections in all; at most {}",
                simulate::MAX_CONNECTIONS
            ));
        }
        for name in self.census_ports.keys() {
            if !self.targets.iter().any(|t| &t.name == name) {
                return Err(format!("--census-port: {name:?} is not the name of a --target"));
            }
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `NAME=HOST:PORT`; the host is resolved once, its first address used.
pub fn parse_target(s: &str) -> Result<Target, String> {
    let (name, hostport) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=HOST:PORT"))?;
    if !valid_name(name) {
        return Err(format!(
            "{name:?}: a target name is 1-32 letters, digits, '-', '_' or '.'"
        ));
    }
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{hostport:?} is not a HOST:PORT that resolves"))?;
    Ok(Target {
        name: name.to_string(),
        addr,
    })
}

/// `NAME=PORT`.
pub fn parse_census_port(s: &str) -> Result<(String, u16), String> {
    let (name, port) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=PORT"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
    Ok((name.to_string(), port))
}

/// `SCENARIO[:N],...` — scenarios by the simulator's names; `well-behaved`
/// is the `--rate` load itself, so it is not one of them.
pub fn parse_mix(s: &str) -> Result<Vec<MixItem>, String> {
    let mut mix: Vec<MixItem> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, count) = match item.split_once(':') {
            Some((n, c)) => {
                let c = c
                    .parse::<usize>()
                    .ok()
                    .filter(|c| (1..=simulate::MAX_CONNECTIONS).contains(c))
                    .ok_or_else(|| format!("{item:?}: the count must be 1 to {}", simulate::MAX_CONNECTIONS))?;
                (n, c)
            }
            None => (item, DEFAULT_MIX_COUNT),
        };
        let scenario = Scenario::from_name(name)
            .filter(|s| *s != Scenario::WellBehaved)
            .ok_or_else(|| {
                let known: Vec<&str> = Scenario::ALL
                    .iter()
                    .filter(|s| **s != Scenario::WellBehaved)
                    .map(|s| s.name())
                    .collect();
                format!("{name:?} is not a scenario; known: {}", known.join(", "))
            })?;
        if mix.iter().any(|m| m.scenario == scenario) {
            return Err(format!("{name:?} is given twice"));
        }
        mix.push(MixItem {
            scenario,
            connections: count,
        });
    }
    Ok(mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_takes_the_simulators_names_and_counts() {
        let m = parse_mix("never-close:5,half-close").unwrap();
        assert_eq!(m[0].scenario, Scenario::NeverClose);
        assert_eq!(m[0].connections, 5);
        assert_eq!(m[1].connections, DEFAULT_MIX_COUNT);
        assert!(parse_mix("never-close:0").unwrap_err().contains("count"));
        assert!(parse_mix("never-close:x").is_err());
        assert!(parse_mix("bogus").unwrap_err().contains("known: never-close"));
        assert!(parse_mix("well-behaved").is_err());
        assert!(parse_mix("slowloris,slowloris").unwrap_err().contains("twice"));
        assert!(parse_mix("").unwrap().is_empty());
    }

    #[test]
    fn targets_and_census_ports() {
        let t = parse_target("apache=127.0.0.1:8081").unwrap();
        assert_eq!((t.name.as_str(), t.addr.port()), ("apache", 8081));
        assert!(parse_target("127.0.0.1:8081").is_err());
        assert!(parse_target("a b=127.0.0.1:1").is_err());
        assert!(parse_target("x=nowhere").is_err());
        assert_eq!(parse_census_port("fg=8081").unwrap(), ("fg".into(), 8081));
        assert!(parse_census_port("fg=0").is_err());
        let mut o = Options::new(vec![t.clone(), t]);
        assert!(o.validate().unwrap_err().contains("twice"));
        o.targets.pop();
        o.census_ports.insert("nginx".into(), 1);
        assert!(o.validate().unwrap_err().contains("--census-port"));
    }
}
