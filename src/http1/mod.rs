//! HTTP/1 on the wire, as finguard speaks it: pure functions over bytes, no
//! sockets. The request head parsed once into a compact view ([`head`]), the
//! body's framing and the chunk scanner ([`framing`]), the backend's request
//! head written from that view ([`forward`]), and the backend's response
//! head judged and rewritten for the client ([`response`]).

pub mod forward;
pub mod framing;
pub mod head;
pub mod response;

/// Writes one header line.
pub(crate) fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
