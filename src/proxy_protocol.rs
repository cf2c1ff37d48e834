//! PROXY protocol headers (v1 text, v2 binary), both ways: written on new
//! backend connections, so that Apache's `mod_remoteip`
//! (`RemoteIPProxyProtocol On`) sees the client's address, and read on a
//! listener behind a load balancer (HAProxy's `accept-proxy`, nginx's
//! `listen ... proxy_protocol`). The encoder is written by hand (a few fixed
//! fields, no allocation beyond the header); the decoder is the `ppp` crate's.

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

/// What the first bytes of a connection say, read as a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Not enough bytes yet to tell.
    Incomplete,
    /// A whole header of `len` bytes. `peer` is the original client and
    /// `local` the address it connected to; `None` for a `LOCAL` (v2) or
    /// `UNKNOWN` (v1) header, whose connection speaks for itself (a health
    /// check from the balancer).
    Header {
        len: usize,
        peer: Option<(SocketAddr, SocketAddr)>,
    },
    /// Not a PROXY header, or a malformed one.
    Invalid(String),
}

/// The longest v1 header (the spec's 107 bytes) and v2 header this reads.
pub const MAX_V1: usize = 107;
pub const MAX_V2: usize = 16 + 536;

/// Reads a PROXY header (either version) at the start of `buf`.
///
/// Where a header ends is decided here (the v1 line's CRLF, the v2 length
/// field), and only a whole header is handed to the parser: `ppp` judges a
/// v1 line cut inside its last port as an invalid port, so fed the bytes as
/// they arrive it would refuse a good header split by the network.
pub fn decode(buf: &[u8]) -> Decoded {
    let sig = &V2_SIGNATURE[..buf.len().min(V2_SIGNATURE.len())];
    if buf.is_empty() {
        Decoded::Incomplete
    } else if buf.starts_with(sig) {
        let Some(n) = v2_len(buf) else {
            return Decoded::Incomplete;
        };
        if n > MAX_V2 {
            Decoded::Invalid(format!("v2 header of {n} bytes (at most {MAX_V2})"))
        } else if buf.len() < n {
            Decoded::Incomplete
        } else {
            v2(&buf[..n])
        }
    } else if b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
        match buf.iter().take(MAX_V1).position(|&b| b == b'\n') {
            Some(i) if i > 0 && buf[i - 1] == b'\r' => v1(&buf[..=i]),
            Some(_) => Decoded::Invalid("v1 header ends without CRLF".into()),
            None if buf.len() >= MAX_V1 => Decoded::Invalid(format!("v1 header longer than {MAX_V1} bytes")),
            None => Decoded::Incomplete,
        }
    } else {
        Decoded::Invalid("not a PROXY protocol header".into())
    }
}

/// Reads a PROXY header off the start of a connection, and not one byte
/// more: what follows belongs to the protocol after it. Returns the original
/// client and the address it connected to, or `None` for a `LOCAL`/`UNKNOWN`
/// header. The caller bounds the wait.
pub async fn read(stream: &mut tokio::net::TcpStream) -> Result<Option<(SocketAddr, SocketAddr)>, String> {
    use tokio::io::AsyncReadExt;
    // The shortest header of either version ("PROXY UNKNOWN\r\n") is 15
    // bytes; past those, v1 goes a byte at a time to its line end and v2
    // reads what its length field announces.
    let mut buf = vec![0u8; 15];
    let eof = |e: std::io::Error| format!("connection ended inside the PROXY header: {e}");
    stream.read_exact(&mut buf).await.map_err(eof)?;
    loop {
        let want = match decode(&buf) {
            Decoded::Header { peer, .. } => return Ok(peer),
            Decoded::Invalid(why) => return Err(why),
            Decoded::Incomplete if buf.starts_with(&V2_SIGNATURE) => v2_len(&buf).unwrap_or(16),
            Decoded::Incomplete => buf.len() + 1,
        };
        let at = buf.len();
        buf.resize(want, 0);
        stream.read_exact(&mut buf[at..]).await.map_err(eof)?;
    }
}

/// A v2 header's whole length, once its fixed 16 bytes are in.
fn v2_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 16).then(|| 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize)
}

/// `ppp`'s address pair (its IPv4 and IPv6 types have the same fields) as
/// (client, the address it connected to).
macro_rules! pair {
    ($a:expr) => {
        Some((
            SocketAddr::from(($a.source_address, $a.source_port)),
            SocketAddr::from(($a.destination_address, $a.destination_port)),
        ))
    };
}

fn v1(line: &[u8]) -> Decoded {
    use ppp::v1::{Addresses, Header};
    match Header::try_from(line) {
        Ok(h) => {
            let peer = match h.addresses {
                Addresses::Tcp4(a) => pair!(a),
                Addresses::Tcp6(a) => pair!(a),
                Addresses::Unknown => None,
            };
            Decoded::Header { len: line.len(), peer }
        }
        Err(e) => Decoded::Invalid(format!("v1: {e}")),
    }
}

fn v2(whole: &[u8]) -> Decoded {
    use ppp::v2::{Addresses, Command, Header};
    match Header::try_from(whole) {
        Ok(h) => {
            let peer = match (h.command, h.addresses) {
                (Command::Local, _) => None,
                (_, Addresses::IPv4(a)) => pair!(a),
                (_, Addresses::IPv6(a)) => pair!(a),
                (_, Addresses::Unspecified | Addresses::Unix(_)) => None,
            };
            Decoded::Header { len: whole.len(), peer }
        }
        Err(e) => Decoded::Invalid(format!("v2: {e}")),
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
    fn decodes_what_it_encodes_and_refuses_what_is_not_a_header() {
        let src: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let dst: SocketAddr = "198.51.100.2:80".parse().unwrap();
        for v in [ProxyProtocol::V1, ProxyProtocol::V2] {
            let mut h = header(v, src, dst);
            let len = h.len();
            for cut in 0..len {
                assert_eq!(decode(&h[..cut]), Decoded::Incomplete, "{v:?} cut at {cut}");
            }
            h.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                decode(&h),
                Decoded::Header {
                    len,
                    peer: Some((src, dst))
                }
            );
        }
        assert!(matches!(
            decode(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Decoded::Invalid(_)
        ));
        assert!(matches!(
            decode(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
            Decoded::Invalid(_)
        ));
        assert!(matches!(decode(&[b'P'; 200]), Decoded::Invalid(_)));
        assert_eq!(decode(b"PROXY UNKNOWN\r\n"), Decoded::Header { len: 15, peer: None });
    }

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
