//! Where the backend's response body ends, for both client sides: by its
//! length, its chunked framing (the chunk scanner, trailers bounded and
//! checked), or the backend's close. The HTTP/1 side writes what this says
//! belongs to the body to its client's socket; the HTTP/2 side hands it to
//! h2 as DATA frames. Neither decides framing on its own.

use crate::http1::framing::{BodyFault, ChunkScanner, Framing};
use crate::http1::response::BodyMode;
use std::ops::Range;

/// How much of a response body is still to come.
#[derive(Debug, Clone)]
pub enum Rest {
    Empty,
    Length(u64),
    Chunked(ChunkScanner),
    ToClose,
}

impl Rest {
    pub fn new(mode: BodyMode) -> Rest {
        match mode {
            BodyMode::Empty | BodyMode::Length(0) => Rest::Empty,
            BodyMode::Length(n) => Rest::Length(n),
            BodyMode::Chunked => match Framing::chunked(u64::MAX) {
                Framing::Chunked(c) => Rest::Chunked(c),
                Framing::Length(_) => Rest::Empty,
            },
            BodyMode::Close => Rest::ToClose,
        }
    }

    /// Of `buf`, how many bytes belong to the body, and whether the body
    /// ends with them. A chunked body's data runs (without their framing) go
    /// to `on_data` as ranges of `buf`, its trailer section's bytes to
    /// `on_trailer`; a body with a length or to close is all data.
    pub fn take(
        &mut self,
        buf: &[u8],
        mut on_data: impl FnMut(Range<usize>),
        on_trailer: impl FnMut(u8),
    ) -> Result<(usize, bool), &'static str> {
        Ok(match self {
            Rest::Empty => (0, true),
            Rest::Length(n) => {
                let k = (*n).min(buf.len() as u64);
                *n -= k;
                on_data(0..k as usize);
                let done = *n == 0;
                if done {
                    *self = Rest::Empty;
                }
                (k as usize, done)
            }
            Rest::Chunked(c) => {
                let used = c.consume_parts(buf, on_data, on_trailer).map_err(|f| match f {
                    BodyFault::Malformed => "malformed chunked body",
                    _ => "chunked body over its limit",
                })?;
                let done = c.is_done();
                if done {
                    *self = Rest::Empty;
                }
                (used, done)
            }
            Rest::ToClose => {
                on_data(0..buf.len());
                (buf.len(), false)
            }
        })
    }

    /// The body ends when the backend closes.
    pub fn ends_at_close(&self) -> bool {
        matches!(self, Rest::ToClose)
    }

    pub fn is_chunked(&self) -> bool {
        matches!(self, Rest::Chunked(_))
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Rest::Empty)
    }
}
