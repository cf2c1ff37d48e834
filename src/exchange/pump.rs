//! Response buffering, for both client sides: a task of its own reads the
//! backend's response body at the backend's speed into a [`spool`], by its
//! framing ([`Rest`]), and gives the backend connection back to the pool
//! the moment the body's last byte is read, not when the client has it.
//! The client side (an HTTP/1 socket, an HTTP/2 stream) drains the spool at
//! its own pace, so a slow client holds a spool, never a backend connection.
//!
//! Every read of the backend has `response_timeout` as its deadline; the
//! task waits on the client side only through the spool. An HTTP/1 client
//! side must take something within each `body_timeout`; an HTTP/2 stream's
//! reader is waited for as long as it lives: the stream's own watch
//! ([`StreamAbort`]) ends it when a frame it handed to h2 waits
//! `body_timeout` for the client's window, and dropping the reader ends
//! this task.

use super::body::Rest;
use super::upload::RESP_BUF;
use crate::http1::response::ReuseHint;
use crate::spool::{self, Reader, Writer};
use crate::upstream::{RawConn, Upstream};
use bytes::{Buf, Bytes, BytesMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncReadExt;

tokio::task_local! {
    /// The abort of the HTTP/2 stream whose task this is (set by the
    /// HTTP/2 side's executor around each stream's task).
    static STREAM_ABORT: Arc<StreamAbort>;
}

/// Ends an HTTP/2 stream from outside it: its task drops the stream's
/// response (h2 then sends RST_STREAM, the stream's slot is free).
///
/// hyper polls a response body only when the stream has flow-control
/// window: a frame taken from the body waits in hyper for window before
/// the body is polled again. A body that fails while the client keeps the
/// window shut is never polled, so its error would never become a reset
/// (the client waits with no signal, its concurrent-stream slot held).
/// Dropping the stream's task drops hyper's `SendStream` and the body: h2
/// resets a stream nobody holds (RST_STREAM CANCEL) at once, window or not.
///
/// The same shut window holds a frame hyper took: each frame the body
/// hands over ([`StreamAbort::handed`]) must be taken (the body polled
/// again, or dropped once h2 has it all) within its `body_timeout`, or the
/// stream's task ends it ([`StreamAbort::guard`]).
#[derive(Default)]
pub struct StreamAbort {
    fired: AtomicBool,
    /// The stream's task (see [`StreamAbort::guard`]).
    waker: atomic_waker::AtomicWaker,
    /// How long the frame handed last may wait for the client (in
    /// nanoseconds; 0: none waits).
    waits: AtomicU64,
    /// Counts the frames handed: each one's wait starts afresh.
    handed: AtomicU64,
}

impl StreamAbort {
    /// The abort of the current task's stream, if it runs one.
    pub fn current() -> Option<Arc<StreamAbort>> {
        STREAM_ABORT.try_with(|a| a.clone()).ok()
    }

    /// Ends the stream (no-op once it ended).
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the stream was ended by [`StreamAbort::fire`].
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// A frame went to h2 and waits for the client's window; if it is not
    /// taken within `limit`, the stream ends.
    pub fn handed(&self, limit: Duration) {
        let nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.waits.store(nanos, Ordering::Release);
        self.handed.fetch_add(1, Ordering::AcqRel);
    }

    /// The frame handed last was taken.
    pub fn taken(&self) {
        self.waits.store(0, Ordering::Release);
    }

    /// Runs `fut` (a stream's task) with its abort reachable through
    /// [`StreamAbort::current`]; it is dropped when the abort fires, or when
    /// a frame handed to h2 was not taken in time. The body is polled
    /// inside `fut`, so the wait is looked at after each poll: a timer only
    /// when a frame is still waiting then (a client with window takes it
    /// at once), re-armed when it is a new frame.
    pub async fn guard<F: std::future::Future<Output = ()>>(fut: F) {
        let abort = Arc::new(StreamAbort::default());
        let me = abort.clone();
        STREAM_ABORT
            .scope(abort, async move {
                let mut fut = std::pin::pin!(fut);
                let mut timer: Option<(u64, Pin<Box<tokio::time::Sleep>>)> = None;
                std::future::poll_fn(|cx| {
                    if me.fired() || fut.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    me.waker.register(cx.waker());
                    if me.fired() {
                        return Poll::Ready(());
                    }
                    match me.waits.load(Ordering::Acquire) {
                        0 => timer = None,
                        nanos => {
                            let frame = me.handed.load(Ordering::Acquire);
                            let deadline = tokio::time::Instant::now() + Duration::from_nanos(nanos);
                            match &mut timer {
                                Some((armed, t)) if *armed != frame => {
                                    *armed = frame;
                                    t.as_mut().reset(deadline);
                                }
                                Some(_) => {}
                                None => timer = Some((frame, Box::pin(tokio::time::sleep_until(deadline)))),
                            }
                            if let Some((_, t)) = &mut timer {
                                if std::future::Future::poll(t.as_mut(), cx).is_ready() {
                                    me.fire();
                                    return Poll::Ready(());
                                }
                            }
                        }
                    }
                    Poll::Pending
                })
                .await
            })
            .await;
    }
}

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
    /// something from a spool that can take nothing more; `None` (an
    /// HTTP/2 stream): as long as the reader lives.
    pub stall: Option<Duration>,
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
