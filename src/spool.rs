//! A spool: the bytes of one body in transit between a fast side and a slow
//! one, first in memory, then in a temporary file, in order (one writer, one
//! reader). Response buffering writes the backend's body into it at the
//! backend's speed while the client side reads it at the client's; request
//! buffering fills one from the client before the backend is contacted.
//!
//! - Memory first, up to `memory_per_exchange`. When that is full the writer
//!   waits [`SPILL_PATIENCE`] for the reader; a client that keeps up never
//!   makes it spill. Then an unlinked temporary file in `dir`
//!   (`tempfile::tempfile_in`: nothing is left behind after a crash), up to
//!   `file_per_exchange`; past it the writer waits for the reader, as an
//!   unbuffered relay would.
//! - While the file holds unread bytes everything new goes behind them into
//!   the file; once it is drained, memory again. The file only grows
//!   (offsets are never reused), so `file_per_exchange` caps what one
//!   exchange may ever write to disk.
//! - The process-wide budgets (`memory_total`, `file_total`) are the
//!   `finguard_buffered_bytes` gauges themselves. When one is out the
//!   exchange falls back to streaming (one chunk in hand, the writer waits
//!   for the reader), counted once in `finguard_buffer_fallbacks_total`;
//!   a full buffer is never an error.
//! - What is counted is what is held: a small chunk is copied into a tail
//!   buffer (grown by doubling up to 16 KiB) rather than kept as a slice
//!   that would hold its whole read buffer allocated.
//! - A writer that waits for its reader waits for its progress: when the
//!   reader takes nothing for the writer's `stall` limit (the client's
//!   `body_timeout`), the push gives up. An HTTP/2 stream whose window
//!   stays shut is never polled, so without this bound a spool that cannot
//!   grow (a budget out, the file at its cap) would hold its backend
//!   connection for as long as the client keeps the connection alive.
//! - File reads and writes run on the blocking pool (`spawn_blocking`,
//!   positioned `pread`/`pwrite`): the event loop never waits on the disk.
//!
//! The spool never touches a socket; who fills and who drains it decide
//! the deadlines (the writer waits on the reader only while the reader is
//! alive, and a reader bounded by its client's deadlines drops it).

use crate::config::buffer::BufferConfig;
use crate::metrics::{Fallback, Held, Metrics};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a full memory buffer waits for its reader before it spills to
/// disk: a client that keeps up takes a chunk in microseconds, so only a
/// client really slower than its backend costs disk I/O (nginx spills as
/// soon as its few buffers fill).
pub const SPILL_PATIENCE: Duration = Duration::from_millis(20);
/// One read from the temporary file takes at most this much: a few socket
/// writes' worth, one trip to the blocking pool.
const FILE_READ: usize = 64 * 1024;
/// A chunk smaller than this is copied into the spool's tail when it is
/// held in memory, not kept as it came: a chunk is a slice of the read
/// buffer it arrived in (16 KiB from a client socket, 32 KiB from a
/// backend), which it keeps allocated whole. A client or backend that
/// trickles 64-byte writes would otherwise make each counted 64 bytes hold
/// a whole read buffer (RSS grew by hundreds of times what the budget
/// counted). A larger chunk fills at least half of its buffer.
const COALESCE_BELOW: usize = 16 * 1024;
/// The tail grows by doubling up to this, then is queued whole and a new
/// one begins: memory held is at most twice what is counted, and a chunk
/// is copied at most once more than its size in reallocations.
const TAIL_MAX: usize = 16 * 1024;
/// The tail's first allocation, at least.
const TAIL_MIN: usize = 512;

/// Why a push gave up.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The reader is gone: nothing more is wanted.
    Gone,
    /// The spool could take nothing more and the reader took nothing for
    /// the whole `stall` limit.
    Stalled,
}

impl Refused {
    /// For the log.
    pub fn why(&self) -> &'static str {
        match self {
            Refused::Gone => "the client went away",
            Refused::Stalled => "the client took nothing for body_timeout",
        }
    }
}

/// Makes an empty spool: its writing and its reading end.
pub fn channel(cfg: Arc<BufferConfig>, metrics: Arc<Metrics>) -> (Writer, Reader) {
    make(cfg, metrics, false)
}

/// A spool that never buffers: one chunk in hand, the writer waiting for
/// the reader (within each `stall`), as an unbuffered relay holds. For a
/// response that must not be buffered (`X-Accel-Buffering: no`, a route's
/// `response_buffering = false`) whose client side is only polled when it
/// wants bytes (an HTTP/2 stream): the writer's task still bounds the
/// wait, which a stream whose window stays shut never would.
pub fn streaming(cfg: Arc<BufferConfig>, metrics: Arc<Metrics>) -> (Writer, Reader) {
    make(cfg, metrics, true)
}

fn make(cfg: Arc<BufferConfig>, metrics: Arc<Metrics>, streaming: bool) -> (Writer, Reader) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::default()),
        data: Notify::new(),
        space: Notify::new(),
        cfg,
        metrics,
        streaming,
    });
    (Writer { inner: inner.clone() }, Reader { inner })
}

struct Inner {
    state: Mutex<State>,
    /// Woken when bytes (or the end) arrive.
    data: Notify,
    /// Woken when the reader took bytes or left.
    space: Notify,
    cfg: Arc<BufferConfig>,
    metrics: Arc<Metrics>,
    /// Never buffers ([`streaming`]).
    streaming: bool,
}

#[derive(Default)]
struct State {
    /// Chunks in order; `true`: counted in the memory budget.
    mem: VecDeque<(Bytes, bool)>,
    /// Small chunks copied together, after `mem` (counted).
    tail: Vec<u8>,
    /// Bytes in `mem` and `tail`.
    mem_len: usize,
    /// Held from the memory budget.
    budgeted: u64,
    file: Option<Arc<File>>,
    /// Reserved (being written) end, written end, read position.
    file_end: u64,
    file_ready: u64,
    file_read: u64,
    /// Held from the disk budget (the file's size).
    disk_held: u64,
    end: Option<Result<(), &'static str>>,
    /// A chunked body's trailer section, handed on at the end.
    trailer: Vec<u8>,
    reader_gone: bool,
    /// The memory buffer was full for longer than the patience: spill.
    impatient: bool,
    /// No (more) file: it failed, or reached `file_per_exchange`.
    no_file: bool,
    spilled: bool,
    fell_back: bool,
}

impl State {
    fn file_pending(&self) -> bool {
        self.file_end > self.file_read
    }

    /// Queues the tail (when it holds anything) behind `mem`.
    fn queue_tail(&mut self) {
        if !self.tail.is_empty() {
            let t = std::mem::take(&mut self.tail);
            self.mem.push_back((Bytes::from(t), true));
        }
    }

    /// Copies `data` into the tail, queueing each tail that is full.
    fn coalesce(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.tail.len() == TAIL_MAX {
                self.queue_tail();
            }
            let n = data.len().min(TAIL_MAX - self.tail.len());
            if self.tail.capacity() - self.tail.len() < n {
                let want = (self.tail.len() + n)
                    .max(2 * self.tail.capacity())
                    .clamp(TAIL_MIN, TAIL_MAX);
                self.tail.reserve_exact(want - self.tail.len());
            }
            self.tail.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    /// The oldest bytes held in memory, and whether they are counted.
    fn pop_mem(&mut self) -> Option<(Bytes, bool)> {
        if let Some(front) = self.mem.pop_front() {
            return Some(front);
        }
        (!self.tail.is_empty()).then(|| (Bytes::from(std::mem::take(&mut self.tail)), true))
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counted once per spool.
    fn fall_back(&self, st: &mut State, why: Fallback) {
        if !std::mem::replace(&mut st.fell_back, true) {
            self.metrics.buffer.fell_back(why);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self.lock();
        let (mem, disk) = (st.budgeted, st.disk_held);
        drop(st);
        self.metrics.buffer.release(Held::Memory, mem);
        self.metrics.buffer.release(Held::Disk, disk);
    }
}

/// Where the next chunk goes.
enum Place {
    Taken,
    Gone,
    File(Arc<File>, u64),
    NewFile,
    /// For the reader; `true`: at most the patience, then spill.
    Wait(bool),
}

/// The writing end.
pub struct Writer {
    inner: Arc<Inner>,
}

impl Writer {
    /// Appends `b`; waits while the spool cannot take it, as long as the
    /// reader takes something within each `stall` (`None`: as long as the
    /// reader lives).
    pub async fn push(&mut self, mut b: Bytes, stall: Option<Duration>) -> Result<(), Refused> {
        if b.is_empty() {
            return Ok(());
        }
        loop {
            let space = self.inner.space.notified();
            match self.place(&b) {
                Place::Taken => return Ok(()),
                Place::Gone => return Err(Refused::Gone),
                Place::File(f, off) => match self.write_file(f, off, b).await {
                    Ok(()) => return Ok(()),
                    Err(Some(back)) => b = back,
                    Err(None) => return Err(Refused::Gone),
                },
                Place::NewFile => self.make_file().await,
                Place::Wait(true) => {
                    if tokio::time::timeout(SPILL_PATIENCE, space).await.is_err() {
                        self.inner.lock().impatient = true;
                    }
                }
                Place::Wait(false) => match stall {
                    Some(stall) => {
                        if tokio::time::timeout(stall, space).await.is_err() {
                            return Err(Refused::Stalled);
                        }
                    }
                    None => space.await,
                },
            }
        }
    }

    /// Appends `b` without waiting for the reader (who is not reading
    /// yet: request buffering): memory, else the file at once. Gives `b`
    /// back when it would have to wait; `None` when it was lost.
    pub async fn push_now(&mut self, mut b: Bytes) -> Result<(), Option<Bytes>> {
        self.inner.lock().impatient = true;
        loop {
            match self.place(&b) {
                Place::Taken => return Ok(()),
                Place::Gone | Place::Wait(_) => return Err(Some(b)),
                Place::File(f, off) => match self.write_file(f, off, b).await {
                    Ok(()) => return Ok(()),
                    Err(Some(back)) => b = back,
                    Err(None) => return Err(None),
                },
                Place::NewFile => self.make_file().await,
            }
        }
    }

    fn place(&self, b: &Bytes) -> Place {
        let (cfg, m) = (&self.inner.cfg, &self.inner.metrics.buffer);
        let mut st = self.inner.lock();
        if st.reader_gone {
            return Place::Gone;
        }
        if self.inner.streaming {
            return if st.mem_len == 0 {
                self.to_memory(&mut st, b, false)
            } else {
                Place::Wait(false)
            };
        }
        let len = b.len();
        if !st.file_pending() {
            let fits = st.mem_len == 0 || st.mem_len + len <= cfg.memory_per_exchange;
            if fits && m.try_hold(Held::Memory, len as u64, cfg.memory_total) {
                return self.to_memory(&mut st, b, true);
            }
            if fits {
                self.inner.fall_back(&mut st, Fallback::MemoryTotal);
            }
            if st.mem_len == 0 {
                // Streaming: one chunk in hand, as an unbuffered relay holds.
                return self.to_memory(&mut st, b, false);
            }
            if !st.impatient {
                return Place::Wait(true);
            }
        }
        if st.no_file || !cfg.uses_disk() {
            return Place::Wait(false);
        }
        if st.file_end + len as u64 > cfg.file_per_exchange {
            st.no_file = true;
            return Place::Wait(false);
        }
        let Some(f) = st.file.clone() else {
            return Place::NewFile;
        };
        if !m.try_hold(Held::Disk, len as u64, cfg.file_total) {
            self.inner.fall_back(&mut st, Fallback::FileTotal);
            return Place::Wait(false);
        }
        st.disk_held += len as u64;
        let off = st.file_end;
        st.file_end += len as u64;
        if !std::mem::replace(&mut st.spilled, true) {
            m.spilled();
        }
        Place::File(f, off)
    }

    fn to_memory(&self, st: &mut State, b: &Bytes, counted: bool) -> Place {
        st.mem_len += b.len();
        if counted {
            st.budgeted += b.len() as u64;
        }
        if counted && b.len() < COALESCE_BELOW {
            // Copied: `b`'s read buffer is free again at once.
            st.coalesce(b);
        } else {
            st.queue_tail();
            st.mem.push_back((b.clone(), counted));
        }
        self.inner.data.notify_one();
        Place::Taken
    }

    /// Writes `b` at `off`; on failure gives it back (the file is given
    /// up, `b` goes behind what the file still holds for the reader), or
    /// `None` when it was lost with the blocking task (at shutdown).
    async fn write_file(&self, f: Arc<File>, off: u64, b: Bytes) -> Result<(), Option<Bytes>> {
        let len = b.len() as u64;
        let res = tokio::task::spawn_blocking(move || {
            let r = f.write_all_at(&b, off);
            (b, r)
        })
        .await;
        let mut st = self.inner.lock();
        match res {
            Ok((_, Ok(()))) => {
                st.file_ready = off + len;
                self.inner.data.notify_one();
                Ok(())
            }
            Ok((b, Err(e))) => {
                tracing::warn!(error = %e, "temporary file write failed; relaying at the client's pace");
                // Writes are in order: everything before `off` is written.
                st.file_end = off;
                st.disk_held -= len;
                self.inner.metrics.buffer.release(Held::Disk, len);
                st.no_file = true;
                self.inner.fall_back(&mut st, Fallback::FileError);
                Err(Some(b))
            }
            Err(_) => Err(None),
        }
    }

    /// Makes the temporary file (unlinked at once) on the blocking pool.
    async fn make_file(&self) {
        let dir = self.inner.cfg.dir.clone();
        let made = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir)).await;
        let mut st = self.inner.lock();
        match made {
            Ok(Ok(f)) => st.file = Some(Arc::new(f)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, dir = %self.inner.cfg.dir.display(), "cannot make a temporary file; relaying at the client's pace");
                st.no_file = true;
                self.inner.fall_back(&mut st, Fallback::FileError);
            }
            Err(_) => st.no_file = true,
        }
    }

    /// The body is over: `Ok` at its end, or why it broke off; a chunked
    /// body's trailer section goes with it.
    pub fn finish(self, end: Result<(), &'static str>, trailer: Vec<u8>) {
        let mut st = self.inner.lock();
        st.end = Some(end);
        st.trailer = trailer;
        self.inner.data.notify_one();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if st.end.is_none() {
            st.end = Some(Err("the body's source went away"));
        }
        self.inner.data.notify_one();
    }
}

enum Next {
    Ready(Option<Result<Bytes, &'static str>>),
    File(Arc<File>, u64, usize),
    Wait,
}

/// The reading end.
pub struct Reader {
    inner: Arc<Inner>,
}

impl Reader {
    /// The next bytes in order; `None` at a clean end, `Err` when the body
    /// broke off.
    pub async fn next(&mut self) -> Option<Result<Bytes, &'static str>> {
        loop {
            let data = self.inner.data.notified();
            match self.poll_state() {
                Next::Ready(r) => return r,
                Next::File(f, off, n) => return Some(self.read_file(f, off, n).await),
                Next::Wait => data.await,
            }
        }
    }

    /// What the spool holds for the reader now.
    fn poll_state(&self) -> Next {
        let mut st = self.inner.lock();
        if let Some((b, counted)) = st.pop_mem() {
            st.mem_len -= b.len();
            if counted {
                st.budgeted -= b.len() as u64;
                self.inner.metrics.buffer.release(Held::Memory, b.len() as u64);
            }
            self.inner.space.notify_one();
            return Next::Ready(Some(Ok(b)));
        }
        match (&st.file, st.file_ready > st.file_read) {
            (Some(f), true) => {
                let n = (st.file_ready - st.file_read).min(FILE_READ as u64);
                Next::File(f.clone(), st.file_read, n as usize)
            }
            _ => match st.end {
                Some(end) => Next::Ready(end.err().map(Err)),
                None => Next::Wait,
            },
        }
    }

    async fn read_file(&self, f: Arc<File>, off: u64, n: usize) -> Result<Bytes, &'static str> {
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            f.read_exact_at(&mut buf, off).map(|()| buf)
        })
        .await;
        let Ok(Ok(buf)) = read else {
            return Err("temporary file read failed");
        };
        let mut st = self.inner.lock();
        st.file_read += n as u64;
        if !st.file_pending() {
            // Drained: memory again, with patience again.
            st.impatient = false;
        }
        self.inner.space.notify_one();
        Ok(Bytes::from(buf))
    }

    /// What is known to follow the bytes taken last: `Some(true)` more
    /// bytes (held now), `Some(false)` the clean end (they were the last),
    /// `None` not known yet.
    pub fn after(&self) -> Option<bool> {
        let st = self.inner.lock();
        if !st.mem.is_empty() || !st.tail.is_empty() || st.file_pending() {
            return Some(true);
        }
        matches!(st.end, Some(Ok(()))).then_some(false)
    }

    /// A chunked body's trailer section, once the body ended.
    pub fn take_trailer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.inner.lock().trailer)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.inner.lock().reader_gone = true;
        self.inner.space.notify_one();
    }
}
