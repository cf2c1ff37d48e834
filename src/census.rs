//! The TCP census: sockets by state, read from `/proc/net/tcp` and
//! `/proc/net/tcp6` — `netstat`, aimed at FIN_WAIT_2 and CLOSE_WAIT.
//!
//! Pure parsing plus one file read; used by `finguard census`, the admin
//! `/census` endpoint and the `finguard_tcp_sockets` gauge.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The kernel's TCP states, by their `/proc/net/tcp` code.
pub const STATES: [&str; 12] = [
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

/// One socket of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Socket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: &'static str,
    /// 0 when no process holds it any more (an orphan the kernel times out).
    pub inode: u64,
}

/// Counts by state name.
pub type Counts = BTreeMap<&'static str, u64>;

/// Every TCP socket of the host (IPv4 and IPv6).
pub fn sockets() -> Vec<Socket> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(text.lines().skip(1).filter_map(|l| parse_line(l, v6)));
        }
    }
    out
}

fn parse_line(line: &str, v6: bool) -> Option<Socket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    let state = u8::from_str_radix(f[3], 16).ok()?;
    Some(Socket {
        local: parse_addr(f[1], v6)?,
        remote: parse_addr(f[2], v6)?,
        state: STATES.get(state as usize).copied().unwrap_or("UNKNOWN"),
        inode: f[9].parse().unwrap_or(0),
    })
}

/// `0100007F:1F90` (IPv4, host-order words) or 32 hex digits (IPv6, four
/// host-order words) then the port.
fn parse_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word =
        |i: usize| -> Option<[u8; 4]> { Some(u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?.to_le_bytes()) };
    let ip = if v6 {
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        let a = Ipv6Addr::from(b);
        a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
    } else {
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some(SocketAddr::new(ip, port))
}

/// Counts by state of the sockets whose local or remote port is in `ports`
/// (all sockets when `ports` is empty).
pub fn count_ports(all: &[Socket], ports: &[u16]) -> Counts {
    count(
        all.iter()
            .filter(|s| ports.is_empty() || ports.contains(&s.local.port()) || ports.contains(&s.remote.port())),
    )
}

pub fn count<'a>(it: impl Iterator<Item = &'a Socket>) -> Counts {
    let mut c = Counts::new();
    for s in it {
        *c.entry(s.state).or_default() += 1;
    }
    c
}

/// finguard's own sockets: the client side (local port is a listener port)
/// and the backend side (remote is a backend address).
#[derive(Debug, Default, Serialize)]
pub struct SideCensus {
    pub client: Counts,
    pub backend: Counts,
}

pub fn sides(all: &[Socket], listeners: &[SocketAddr], backends: &[SocketAddr]) -> SideCensus {
    let client = count(
        all.iter()
            .filter(|s| listeners.iter().any(|l| l.port() == s.local.port()) && s.state != "LISTEN"),
    );
    let backend = count(all.iter().filter(|s| backends.contains(&s.remote)));
    SideCensus { client, backend }
}

/// A readable table: one state per line, busiest first.
pub fn table(c: &Counts) -> String {
    let mut rows: Vec<_> = c.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut out = format!("{:<12} {:>8}\n", "STATE", "COUNT");
    for (state, n) in rows {
        out.push_str(&format!("{state:<12} {n:>8}\n"));
    }
    let total: u64 = c.values().sum();
    out.push_str(&format!("{:<12} {total:>8}\n", "TOTAL"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_lines() {
        let v4 = "   0: 0100007F:1F90 0100007F:D431 08 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 0 10 -1";
        let s = parse_line(v4, false).unwrap();
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote.port(), 0xD431);
        assert_eq!(s.state, "CLOSE_WAIT");
        assert_eq!(s.inode, 12345);
        let v6 = "   1: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000001000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        let s = parse_line(v6, true).unwrap();
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote, "[::1]:0".parse().unwrap());
        assert_eq!(s.state, "LISTEN");
    }

    #[test]
    fn counts_by_port() {
        let mk = |l: &str, r: &str, st| Socket {
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
            state: st,
            inode: 1,
        };
        let all = vec![
            mk("127.0.0.1:80", "127.0.0.1:5000", "ESTABLISHED"),
            mk("127.0.0.1:80", "127.0.0.1:5001", "FIN_WAIT2"),
            mk("127.0.0.1:6000", "127.0.0.1:80", "CLOSE_WAIT"),
            mk("127.0.0.1:22", "127.0.0.1:7000", "ESTABLISHED"),
        ];
        let c = count_ports(&all, &[80]);
        assert_eq!(c.get("FIN_WAIT2"), Some(&1));
        assert_eq!(c.values().sum::<u64>(), 3);
        assert!(table(&c).contains("TOTAL               3"));
    }
}
