//! Response buffering, for both client sides: a task of its own reads the
//! backend's response body at the backend's speed into a [`spool`], by its
//! framing ([`Rest`]), and gives the backend connection back to the pool
//! the moment the body's last byte is read, not when the client has it.
//! The client side (an HTTP/1 socket, an HTTP/2 stream) drains the spool at
//! its own pace, so a slow client holds a spool, never a backend connection.
//!
//! Every read of the backend has `response_timeout` as its deadline; the
//! task waits on the client side only through the spool, and only while
//! the client side takes something within each `body_timeout` (an HTTP/2
//! stream whose window stays shut is never polled, so its reader alone
//! would not bound the wait); dropping the reader ends this task.

use super::body::Rest;
use super::upload::RESP_BUF;
use crate::http1::response::ReuseHint;
use crate::spool::{self, Reader, Writer};
use crate::upstream::{RawConn, Upstream};
use bytes::{Buf, Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A response body still to be read from its backend connection.
pub struct Pump {
    pub conn: RawConn,
    /// Read past what was taken already.
    pub buf: BytesMut,
    pub rest: Rest,
    /// Where the connection goes back when the body ended cleanly.
    pub pool: Option<Arc<Upstream>>,
    pub reuse: ReuseHint,
    /// Only the data of a chunked body (an HTTP/1.0 client, HTTP/2);
    /// else the body's bytes as they came.
    pub data_only: bool,
    /// `response_timeout`: the longest wait for the backend's next bytes.
    pub gap: Duration,
    /// `body_timeout`: the longest wait for the client side to take
    /// something from a spool that can take nothing more.
    pub stall: Duration,
}

impl Pump {
    /// Starts reading; the client side drains the returned spool.
    pub fn start(self, cfg: Arc<crate::config::buffer::BufferConfig>, metrics: Arc<crate::metrics::Metrics>) -> Reader {
        let (w, r) = spool::channel(cfg, metrics);
        tokio::spawn(self.run(w));
        r
    }

    /// Starts relaying without buffering: one chunk in hand, the next read
    /// only when the client side took it (within each `stall`).
    pub fn start_streaming(
        self,
        cfg: Arc<crate::config::buffer::BufferConfig>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Reader {
        let (w, r) = spool::streaming(cfg, metrics);
        tokio::spawn(self.run(w));
        r
    }

    async fn run(self, mut w: Writer) {
        let mut trailer = Vec::new();
        let end = self.drive(&mut w, &mut trailer).await;
        w.finish(end, trailer);
    }

    async fn drive(mut self, w: &mut Writer, trailer: &mut Vec<u8>) -> Result<(), &'static str> {
        loop {
            let (data, done) = self.take(trailer)?;
            if done {
                // Released before the client has the last bytes (closed if
                // anything followed the body).
                if let (Some(pool), true) = (self.pool.take(), self.buf.is_empty()) {
                    pool.checkin_raw(self.conn, self.reuse);
                }
                return w.push(data, self.stall).await.map_err(|r| r.why());
            }
            w.push(data, self.stall).await.map_err(|r| r.why())?;
            self.buf.reserve(RESP_BUF);
            let read = tokio::time::timeout(self.gap, self.conn.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => return Err("stalled inside the response body"),
                Ok(Ok(0)) if self.rest.ends_at_close() => return Ok(()),
                Ok(Ok(0)) => return Err("closed inside the response body"),
                Ok(Err(_)) => return Err("connection failed inside the response body"),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// What of the buffer belongs to the body, and whether it ended.
    fn take(&mut self, trailer: &mut Vec<u8>) -> Result<(Bytes, bool), &'static str> {
        let chunked = self.data_only && self.rest.is_chunked();
        let mut data = BytesMut::new();
        let wire: &[u8] = &self.buf;
        let (used, done) = self.rest.take(
            wire,
            |r| {
                if chunked {
                    data.extend_from_slice(&wire[r]);
                }
            },
            |b| trailer.push(b),
        )?;
        Ok(if chunked {
            self.buf.advance(used);
            (data.freeze(), done)
        } else {
            (self.buf.split_to(used).freeze(), done)
        })
    }
}
