//! Where a request body ends.
//!
//! finguard relays a body as it came; it only needs to know where the body
//! ends, so that no byte of the next pipelined request is relayed as body
//! (those go through the head check first), and to catch a malformed or
//! oversized chunked body as it streams: chunk extensions are bounded, and
//! trailer lines are held to what a header line may be (no obs-fold, no
//! control bytes, a `name:`), within a size limit, so that no trailer can
//! carry a request or a smuggled header past finguard. The chunk scanner is
//! written by hand: hyper's decoder is private, and the scanner is a small
//! state machine over bytes.

/// A body that cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// Over `max_body_bytes` (413).
    TooLarge,
    /// Bad chunked syntax (400).
    Malformed,
    /// The client went silent for `body_timeout` (408).
    Timeout,
    /// The client closed before the end of the body.
    Truncated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At the start of a chunk-size line.
    SizeStart,
    Size,
    /// Optional whitespace after the size: only `;` or CR may follow.
    SizeWs,
    /// Chunk extensions (after `;`), ignored up to CR.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line or the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkScanner {
    state: Chunk,
    /// Size of the current chunk (while parsing) or bytes left in it.
    size: u64,
    digits: u8,
    total: u64,
    max: u64,
    /// Bytes of chunk extensions so far (all ignored).
    ext: u32,
    /// Bytes of the trailer section so far, and its limit.
    trailer: u32,
    max_trailer: u32,
    /// A request's trailers may not carry fields that frame, route or
    /// authorise the request ([`forbidden_trailer`]): set by `limit_trailers`.
    strict_trailers: bool,
    /// The current trailer field's name, lowercased, while it is short
    /// enough to be a forbidden one (`name_len` past the array: it is not).
    name: [u8; NAME_MAX],
    name_len: u8,
}

/// The longest forbidden trailer name, `proxy-authorization`, fits.
const NAME_MAX: usize = 20;

/// Chunk extensions a body may carry in all (hyper's limit): finguard
/// ignores them, so they are bounded rather than relayed without end.
const MAX_EXTENSIONS: u32 = 16 * 1024;
/// The trailer section's limit unless one is set: a response head's.
const DEFAULT_MAX_TRAILER: u32 = 64 * 1024;

#[derive(Debug, Clone)]
pub enum Framing {
    /// Bytes of the body still to come (0: no body, or all read).
    Length(u64),
    Chunked(ChunkScanner),
}

impl Framing {
    pub fn chunked(max: u64) -> Self {
        Framing::Chunked(ChunkScanner {
            state: Chunk::SizeStart,
            size: 0,
            digits: 0,
            total: 0,
            max,
            ext: 0,
            trailer: 0,
            max_trailer: DEFAULT_MAX_TRAILER,
            strict_trailers: false,
            name: [0; NAME_MAX],
            name_len: 0,
        })
    }

    /// Holds a request's chunked trailer section to `max` bytes (counted
    /// against `max_header_bytes`) and refuses trailer fields a request may
    /// not carry there ([`forbidden_trailer`]).
    pub fn limit_trailers(&mut self, max: usize) {
        if let Framing::Chunked(c) = self {
            c.max_trailer = u32::try_from(max).unwrap_or(u32::MAX);
            c.strict_trailers = true;
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            Framing::Length(n) => *n == 0,
            Framing::Chunked(c) => c.state == Chunk::Done,
        }
    }

    /// Whether the request carries a body at all.
    pub fn has_body(&self) -> bool {
        !matches!(self, Framing::Length(0))
    }

    /// Feeds body bytes; returns how many belong to this body (the rest, if
    /// any, is the next request).
    pub fn consume(&mut self, data: &[u8]) -> Result<usize, BodyFault> {
        match self {
            Framing::Length(n) => {
                let take = (*n).min(data.len() as u64);
                *n -= take;
                Ok(take as usize)
            }
            Framing::Chunked(c) => c.consume(data),
        }
    }
}

impl ChunkScanner {
    /// The last chunk and the trailers have been seen.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    fn consume(&mut self, data: &[u8]) -> Result<usize, BodyFault> {
        self.consume_spans(data, |_| {})
    }

    /// Like `consume`, and reports each run of chunk data (without the
    /// chunked framing) as a range of `data`: what a client that cannot take
    /// chunked encoding is sent.
    pub fn consume_spans(
        &mut self,
        data: &[u8],
        on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<usize, BodyFault> {
        self.consume_parts(data, on_data, |_| {})
    }

    /// Like `consume_spans`, and hands each byte of the trailer section
    /// (after the last chunk's size line, up to and including the final
    /// CRLF) to `on_trailer`.
    pub fn consume_parts(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(std::ops::Range<usize>),
        mut on_trailer: impl FnMut(u8),
    ) -> Result<usize, BodyFault> {
        let mut i = 0;
        while i < data.len() && self.state != Chunk::Done {
            if self.state == Chunk::Data {
                let take = self.size.min((data.len() - i) as u64);
                self.size -= take;
                on_data(i..i + take as usize);
                i += take as usize;
                if self.size == 0 {
                    self.state = Chunk::DataCr;
                }
                continue;
            }
            if matches!(
                self.state,
                Chunk::TrailerStart | Chunk::TrailerName | Chunk::TrailerValue | Chunk::TrailerLf | Chunk::EndLf
            ) {
                self.trailer += 1;
                if self.trailer > self.max_trailer {
                    return Err(BodyFault::Malformed);
                }
                on_trailer(data[i]);
            }
            self.step(data[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn step(&mut self, b: u8) -> Result<(), BodyFault> {
        use Chunk::*;
        self.state = match (self.state, b) {
            (SizeStart | Size, b) if b.is_ascii_hexdigit() => {
                self.digits += 1;
                if self.digits > 15 {
                    return Err(BodyFault::Malformed);
                }
                self.size = self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                Size
            }
            // RFC 9112 §7.1.1: `chunk-size [ BWS ";" ext ]`: whitespace after
            // the size may only lead to `;` or the line end. Anything else
            // (`b /smuggled HTTP/1.1`) is a malformed body, not an extension.
            (Size | SizeWs, b' ' | b'\t') => {
                self.extension()?; // bounded as extensions are
                SizeWs
            }
            (Size | SizeWs | Ext, b';') => self.extension()?,
            (Size | SizeWs | Ext, b'\r') => SizeLf,
            (Ext, b) if b != b'\n' && (b == b'\t' || !b.is_ascii_control()) => self.extension()?,
            (SizeLf, b'\n') => self.end_of_size_line()?,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => SizeStart,
            (TrailerStart, b'\r') => EndLf,
            // A trailer line is a header line: a token, a colon, a value
            // of visible bytes, spaces and tabs (RFC 9110 §5.5). A line
            // starting with whitespace (obs-fold) or a control byte, or
            // one without a colon, is no header.
            (TrailerStart | TrailerName, b) if is_tchar(b) => {
                self.name_byte(b);
                TrailerName
            }
            (TrailerName, b':') => self.end_of_trailer_name()?,
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, b) if b == b'\t' || b >= 0x20 && b != 0x7f => TrailerValue,
            (TrailerLf, b'\n') => TrailerStart,
            (EndLf, b'\n') => Done,
            _ => return Err(BodyFault::Malformed),
        };
        Ok(())
    }

    fn extension(&mut self) -> Result<Chunk, BodyFault> {
        self.ext += 1;
        if self.ext > MAX_EXTENSIONS {
            return Err(BodyFault::Malformed);
        }
        Ok(Chunk::Ext)
    }

    fn name_byte(&mut self, b: u8) {
        if let Some(slot) = self.name.get_mut(usize::from(self.name_len)) {
            *slot = b.to_ascii_lowercase();
        }
        self.name_len = self.name_len.saturating_add(1);
    }

    fn end_of_trailer_name(&mut self) -> Result<Chunk, BodyFault> {
        let name = self.name.get(..usize::from(self.name_len)).unwrap_or_default();
        self.name_len = 0;
        if self.strict_trailers && forbidden_trailer(name) {
            return Err(BodyFault::Malformed);
        }
        Ok(Chunk::TrailerValue)
    }

    fn end_of_size_line(&mut self) -> Result<Chunk, BodyFault> {
        self.digits = 0;
        if self.size == 0 {
            return Ok(Chunk::TrailerStart);
        }
        self.total = self.total.saturating_add(self.size);
        if self.total > self.max {
            return Err(BodyFault::TooLarge);
        }
        Ok(Chunk::Data)
    }
}

/// Fields that may not be sent in a trailer section (RFC 9110 §6.5.1):
/// those that frame the message, route it, authorise it, say how to read
/// its content, or belong to one connection. A backend that merges
/// trailers into the head would otherwise take them as the request's; the
/// same goes for the client-address fields finguard itself writes in the
/// head, which a backend may authorise on (mod_remoteip, `Require ip`).
pub fn forbidden_trailer(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 21] = [
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        b"host",
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"set-cookie",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// A byte of a token (RFC 9110 §5.6.2): what a field name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_bytewise(body: &[u8], max: u64) -> Result<usize, BodyFault> {
        let mut f = Framing::chunked(max);
        let mut used = 0;
        for b in body {
            used += f.consume(std::slice::from_ref(b))?;
            if f.is_done() {
                break;
            }
        }
        Ok(used)
    }

    #[test]
    fn finds_the_end_of_chunked_bodies() {
        let body = b"5\r\nhello\r\n0;ext=1\r\nX-T: 1\r\n\r\nGET /next";
        let mut f = Framing::chunked(100);
        let n = f.consume(body).unwrap();
        assert!(f.is_done());
        assert_eq!(&body[n..], b"GET /next");
        assert_eq!(scan_bytewise(body, 100), Ok(n));
        let mut f = Framing::chunked(100);
        assert_eq!(f.consume(b"A\r\n0123456789\r\n0\r\n\r\n"), Ok(20));
        assert!(f.is_done());
    }

    #[test]
    fn refuses_bad_chunks() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\nhello",
            b"5\r\nhelloX\r\n",
            b"-1\r\n",
            b"1234567890abcdef0\r\n",
            b"b /smuggled HTTP/1.1\r\n",
            b"5 x\r\n",
            b"5 \t x;a\r\n",
        ] {
            assert_eq!(
                Framing::chunked(1 << 40).consume(bad),
                Err(BodyFault::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(Framing::chunked(4).consume(b"5\r\nhello\r\n"), Err(BodyFault::TooLarge));
    }

    #[test]
    fn trailers_are_header_lines_within_a_limit_and_extensions_are_bounded() {
        for bad in [
            &b"0\r\nGET /smuggled HTTP/1.1\r\n\r\n"[..],
            b"0\r\nX-T: a\0b\r\n\r\n",
            b"0\r\nX-T: a\r\n folded\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
            b"0\r\n: no name\r\n\r\n",
            b"0\r\nX-T: a\nX-U: b\r\n\r\n",
        ] {
            assert_eq!(Framing::chunked(100).consume(bad), Err(BodyFault::Malformed), "{bad:?}");
        }
        let ok = b"0\r\nX-T: a\tb \x80\r\nY:\r\n\r\n";
        assert_eq!(Framing::chunked(100).consume(ok), Ok(ok.len()));
        let mut f = Framing::chunked(100);
        f.limit_trailers(16);
        let long = format!("0\r\nX-T: {}\r\n\r\n", "a".repeat(20));
        assert_eq!(f.consume(long.as_bytes()), Err(BodyFault::Malformed));
        let ws = format!("1{}\r\nx\r\n", " ".repeat(MAX_EXTENSIONS as usize + 1));
        assert_eq!(Framing::chunked(100).consume(ws.as_bytes()), Err(BodyFault::Malformed));
        let ext = format!("1;{}\r\nx\r\n", "e".repeat(MAX_EXTENSIONS as usize));
        assert_eq!(Framing::chunked(100).consume(ext.as_bytes()), Err(BodyFault::Malformed));
        let small = "1;e=1\r\nx\r\n".repeat(100) + "0\r\n\r\n";
        assert_eq!(Framing::chunked(1000).consume(small.as_bytes()), Ok(small.len()));
    }

    #[test]
    fn a_request_trailer_may_not_frame_route_or_authorise() {
        for name in [
            "Host",
            "content-length",
            "Authorization",
            "PROXY-AUTHORIZATION",
            "Transfer-Encoding",
        ] {
            let body = format!("1\r\nx\r\n0\r\nX-Ok: 1\r\n{name}: v\r\n\r\n");
            let mut f = Framing::chunked(100);
            f.limit_trailers(1024);
            assert_eq!(f.consume(body.as_bytes()), Err(BodyFault::Malformed), "{name}");
            assert_eq!(
                scan_bytewise(body.as_bytes(), 100).map(|_| ()),
                Ok(()),
                "a response's are relayed"
            );
        }
        let ok = b"0\r\nX-Checksum: 1\r\nHostname-Like-But-Longer-Than-Twenty: 2\r\nHosts: 3\r\n\r\n";
        let mut f = Framing::chunked(100);
        f.limit_trailers(1024);
        assert_eq!(f.consume(ok), Ok(ok.len()));
    }

    #[test]
    fn whitespace_before_an_extension_is_allowed() {
        let body = b"1 ;a=b\r\nx\r\n1\t\r\ny\r\n0\r\n\r\n";
        let mut f = Framing::chunked(100);
        assert_eq!(f.consume(body), Ok(body.len()));
        assert!(f.is_done());
    }

    #[test]
    fn reports_the_data_of_a_chunked_body() {
        let body = b"5\r\nhello\r\n3;x=1\r\nabc\r\n0\r\nT: 1\r\n\r\n";
        let mut whole = Vec::new();
        let Framing::Chunked(mut c) = Framing::chunked(100) else {
            unreachable!()
        };
        for piece in body.chunks(3) {
            c.consume_spans(piece, |r| whole.extend_from_slice(&piece[r])).unwrap();
        }
        assert_eq!(whole, b"helloabc");
    }

    #[test]
    fn counts_lengths() {
        let mut f = Framing::Length(3);
        assert_eq!(f.consume(b"abcdef"), Ok(3));
        assert!(f.is_done());
    }
}
