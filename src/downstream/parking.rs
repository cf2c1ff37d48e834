//! The idle set: HTTP/1 keep-alive connections (plain and TLS) parked
//! without a task.
//!
//! An idle keep-alive connection waits, in its task, [`PARK_AFTER`] for the
//! client's next request (a busy client never leaves its task; one that
//! came back while parked waits longer next time: [`park_after`]); then its
//! socket is taken out of tokio's reactor and parked here, with only what
//! the next request needs ([`super::Held`]; a TLS connection also keeps its
//! rustls session): no task, no future, no buffer of finguard's, no tokio
//! registration. One per worker thread, one epoll instance (mio)
//! watching every parked socket; one driver task on the worker's runtime
//! waits on that epoll's descriptor (`AsyncFd`), on the earliest deadline,
//! on eviction requests and on the drain, and hands each connection that
//! must act back to a new task ([`super::resume`]) with why ([`Wake`]):
//! readable (a request, FIN or RST), its keep-alive deadline, asked to make
//! room, or draining. Those tasks go through the same keep-alive loop and
//! the same closes as a connection that never left its task.
//!
//! The registry still lists a parked connection (state `idle`), and its
//! `evict` reaches it through the set's [`ParkInbox`].
//!
//! This module never reads or writes a socket: it only watches them.

use super::Held;
use crate::registry::{ParkInbox, Registry};
use crate::stream::Unhooked;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// How long an idle keep-alive connection waits in its task before it is
/// parked. A busy client sends its next request well within it and never
/// pays the system calls of parking and waking (four `epoll_ctl` and a task
/// spawn): measured, wrk with 50 and with 1,000 connections made no
/// `epoll_ctl` call at all. A client that thinks for longer costs its task
/// only this long (100 ms here left ~0.3 KiB per connection more in RSS
/// after a burst of 2,000 new connections: the tasks of the last 100 ms).
pub const PARK_AFTER: Duration = Duration::from_millis(10);

/// A connection whose client came back while it was parked waits twice as
/// long before it is parked the next time, up to `PARK_AFTER` times two to
/// this power (160 ms). A client that thinks for longer than `PARK_AFTER`
/// but keeps coming back (1,000 wrk connections on a loaded machine send
/// one every 50 to 140 ms) was otherwise parked and woken on most
/// requests: 0.6 to 1.5 `epoll_ctl` calls per request, 0.11 with this. New connections still park after `PARK_AFTER`, and a
/// connection that truly idles is parked at most this much later.
pub const MAX_DOUBLINGS: u8 = 4;

/// The wait before parking for a connection its client came back to
/// `returns` times while it was parked.
pub fn park_after(returns: u8) -> Duration {
    PARK_AFTER * (1u32 << returns.min(MAX_DOUBLINGS))
}

/// Readiness events taken from the epoll instance per call.
const EVENTS: usize = 256;

/// Why a parked connection was handed back to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Bytes, a FIN or an RST arrived.
    Readable,
    /// Its keep-alive deadline passed.
    Timeout,
    /// Asked to make room for a newcomer.
    Evict,
    /// The process is draining.
    Drain,
}

/// One parked connection.
struct Parked {
    sock: Unhooked,
    deadline: Instant,
    held: Held,
}

struct Inner {
    conns: Slab<Parked>,
    /// `(deadline, key)`, earliest first.
    deadlines: BTreeSet<(Instant, usize)>,
    /// Draining or stopped: nothing more is parked.
    closed: bool,
}

/// One worker's idle set.
pub struct IdleSet {
    inner: Mutex<Inner>,
    /// Registers and deregisters parked sockets (the `Poll` is the driver's).
    registry: mio::Registry,
    inbox: Arc<ParkInbox>,
    /// This set's index in the client registry's inboxes.
    index: u32,
    /// Wakes the driver when a deadline earlier than its timer's is parked.
    sooner: tokio::sync::Notify,
}

thread_local! {
    /// The calling worker thread's idle set (none outside workers).
    static SET: RefCell<Option<Arc<IdleSet>>> = const { RefCell::new(None) };
}

/// Starts the calling worker thread's idle set, with room for `capacity`
/// connections (reserved, not touched: growing by doubling would leave the
/// old arrays' pages resident); its driver must then be run on this
/// thread's runtime ([`drive`]). `None`: no epoll instance could be made,
/// and connections stay in their tasks while idle.
pub fn start(clients: &Registry, capacity: usize) -> Option<(Arc<IdleSet>, Poll)> {
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "cannot create the idle set's epoll instance; idle connections keep their tasks");
            return None;
        }
    };
    let registry = poll.registry().try_clone().ok()?;
    let (index, inbox) = clients.add_inbox();
    let set = Arc::new(IdleSet {
        inner: Mutex::new(Inner {
            conns: Slab::with_capacity(capacity),
            deadlines: BTreeSet::new(),
            closed: false,
        }),
        registry,
        inbox,
        index,
        sooner: tokio::sync::Notify::new(),
    });
    SET.with(|s| *s.borrow_mut() = Some(set.clone()));
    Some((set, poll))
}

/// Parks `sock` until it is readable or `deadline`; gives it back when this
/// thread has no idle set or it is closed (draining).
pub(super) fn park(sock: Unhooked, held: Held, deadline: Instant) -> Result<(), (Unhooked, Held)> {
    let Some(set) = SET.with(|s| s.borrow().clone()) else {
        return Err((sock, held));
    };
    set.park(sock, held, deadline)
}

impl IdleSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn park(&self, sock: Unhooked, held: Held, deadline: Instant) -> Result<(), (Unhooked, Held)> {
        let mut inner = self.lock();
        if inner.closed || held.shared.draining.is_cancelled() {
            return Err((sock, held));
        }
        let entry = inner.conns.vacant_entry();
        let key = entry.key();
        let fd = sock.sock.as_raw_fd();
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), Token(key), Interest::READABLE)
        {
            debug!(error = %e, "cannot park an idle connection; it keeps its task");
            return Err((sock, held));
        }
        held.track.entry.set_parked(self.index, key);
        entry.insert(Parked { sock, deadline, held });
        let earliest = inner.deadlines.first().is_none_or(|(d, _)| deadline < *d);
        inner.deadlines.insert((deadline, key));
        drop(inner);
        if earliest {
            self.sooner.notify_one();
        }
        Ok(())
    }

    /// Takes connection `key` out of the set (if it is still there).
    fn take(&self, inner: &mut Inner, key: usize) -> Option<Parked> {
        let p = inner.conns.try_remove(key)?;
        inner.deadlines.remove(&(p.deadline, key));
        let fd = p.sock.sock.as_raw_fd();
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        p.held.track.entry.clear_parked();
        Some(p)
    }

    /// How many connections are parked.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs `set`'s driver until the process drains (every parked connection
/// handed back to close the configured way) or `stop` fires with nothing
/// parked. Resumed connections are spawned on `tracker`.
pub async fn drive(
    set: Arc<IdleSet>,
    poll: Poll,
    tracker: TaskTracker,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let mut afd = match crate::sys::watch_epoll(poll) {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot watch the idle set's epoll instance; idle connections keep their tasks");
            set.lock().closed = true;
            return;
        }
    };
    let mut events = Events::with_capacity(EVENTS);
    let mut stopping = false;
    loop {
        let next = set.lock().deadlines.first().map(|(d, _)| *d);
        tokio::select! {
            biased;
            () = draining.cancelled() => {
                let all: Vec<Parked> = {
                    let mut inner = set.lock();
                    inner.closed = true;
                    let keys: Vec<usize> = inner.conns.iter().map(|(k, _)| k).collect();
                    keys.into_iter().filter_map(|k| set.take(&mut inner, k)).collect()
                };
                for p in all {
                    hand_back(&tracker, p, Wake::Drain);
                }
                return;
            }
            ready = afd.readable_mut() => {
                let Ok(mut guard) = ready else { continue };
                loop {
                    events.clear();
                    if let Err(e) = guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        if e.kind() != std::io::ErrorKind::Interrupted {
                            warn!(error = %e, "the idle set's epoll failed");
                        }
                        break;
                    }
                    let woken: Vec<Parked> = {
                        let mut inner = set.lock();
                        events.iter().filter_map(|ev| set.take(&mut inner, ev.token().0)).collect()
                    };
                    for p in woken {
                        hand_back(&tracker, p, Wake::Readable);
                    }
                    if events.iter().count() < EVENTS {
                        guard.clear_ready();
                        break;
                    }
                }
            }
            () = sleep_until(next) => {
                let now = Instant::now();
                let due: Vec<Parked> = {
                    let mut inner = set.lock();
                    let mut due = Vec::new();
                    while let Some(&(d, key)) = inner.deadlines.first() {
                        if d > now {
                            break;
                        }
                        inner.deadlines.pop_first();
                        due.extend(set.take(&mut inner, key));
                    }
                    due
                };
                for p in due {
                    hand_back(&tracker, p, Wake::Timeout);
                }
            }
            () = set.inbox.notify.notified() => {
                let wanted = set.inbox.take();
                let out: Vec<Parked> = {
                    let mut inner = set.lock();
                    let mut out = Vec::new();
                    for (key, e) in wanted {
                        // The key may have been reused since it was asked.
                        if inner.conns.get(key).is_some_and(|p| Arc::ptr_eq(&p.held.track.entry, &e)) {
                            out.extend(set.take(&mut inner, key));
                        }
                    }
                    out
                };
                for p in out {
                    hand_back(&tracker, p, Wake::Evict);
                }
            }
            () = set.sooner.notified() => {}
            () = stop.cancelled(), if !stopping => stopping = true,
        }
        if stopping {
            let mut inner = set.lock();
            if inner.conns.is_empty() {
                inner.closed = true;
                return;
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A connection out of the set, to a task of its own again.
fn hand_back(tracker: &TaskTracker, p: Parked, why: Wake) {
    tracker.spawn(super::resume(p.sock, p.held, why, p.deadline));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_before_parking_doubles_with_each_return_to_a_cap() {
        let ms = |r| park_after(r).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3), ms(4)], [10, 20, 40, 80, 160]);
        assert_eq!(ms(5), 160);
        assert_eq!(ms(u8::MAX), 160);
    }
}
