//! PROXY protocol headers (v1 text, v2 binary) for new backend connections,
//! so that Apache's `mod_remoteip` (`RemoteIPProxyProtocol On`) sees the
//! client's address. Written by hand: both encodings are a few fixed fields.

use crate::config::ProxyProtocol;
use std::net::{IpAddr, SocketAddr};

const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// The header announcing a connection from `src` (the client) to `dst` (the
/// address the client connected to). Mixed families are sent as IPv6.
pub fn header(version: ProxyProtocol, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (s, d) = same_family(src.ip(), dst.ip());
    match version {
        ProxyProtocol::Off => Vec::new(),
        ProxyProtocol::V1 => {
            let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {fam} {s} {d} {} {}\r\n", src.port(), dst.port()).into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.push(0x21); // version 2, PROXY command
            match (s, d) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x11); // TCP over IPv4
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.push(0x21); // TCP over IPv6
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (IpAddr::V6(v6(a)), IpAddr::V6(v6(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2() {
        let src: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let dst: SocketAddr = "198.51.100.2:80".parse().unwrap();
        assert_eq!(
            header(ProxyProtocol::V1, src, dst),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 80\r\n"
        );
        let v2 = header(ProxyProtocol::V2, src, dst);
        assert_eq!(&v2[..12], &V2_SIGNATURE);
        assert_eq!(v2[12..16], [0x21, 0x11, 0, 12]);
        assert_eq!(&v2[16..20], &[192, 0, 2, 1]);
        assert_eq!(&v2[24..28], &[0x13, 0x88, 0, 80]);
        let v6src: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let mixed = header(ProxyProtocol::V1, v6src, dst);
        assert!(String::from_utf8(mixed)
            .unwrap()
            .starts_with("PROXY TCP6 2001:db8::1 ::ffff:198.51.100.2 "));
    }
}
