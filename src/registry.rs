//! The registry of open client connections: what `/connections` lists, what
//! the `finguard_client_connections{state}` gauge counts, and what the reaper
//! checks. Each connection holds a [`Tracked`] guard whose `Drop` removes it,
//! so no path can leak an entry or a gauge count.
//!
//! It is also where room is made when the house is full ([`Registry::evict`]):
//! idle HTTP/1 connections are asked to close, in the order of
//! [`EvictReason`] (a `reclaim_first` rule's clients, then connections that
//! never sent a byte, then the longest idle), never one that is reading,
//! active or lingering, and never one within `grace` of its last response.
//! The registry only asks (each entry's `evict` notification); the
//! connection decides at its idle wait and closes itself.

use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

pub use crate::metrics::{ClientState, EvictReason};

/// An HTTP/1 connection whose idle wait listens for [`Entry::evict`].
const EVICTABLE: u8 = 1;
/// Its client matched a `reclaim_first` rule.
const RECLAIM_FIRST: u8 = 2;
/// Asked to close; not asked again (nor counted as idle room) meanwhile.
const EVICTING: u8 = 4;
/// Ended by the reaper: stuck lingering past its deadline.
const KILLED: u8 = 8;
/// The process drains: an idle keep-alive connection ends its wait.
const DRAINING: u8 = 16;
/// Lingering, its close waits for the send queue to drain (a slow reader
/// still taking the response): not stuck, whatever its time.
const SENDING: u8 = 32;
/// Interned User-Agents above this count are swept of those no connection
/// holds any more (and the mark doubles with what is left).
const UA_SWEEP_FROM: usize = 1024;

/// What an idle connection was asked ([`Entry::asked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// The process drains.
    Drain,
    /// Close to make room for a newcomer.
    MakeRoom,
}

/// One open client connection, as `/connections` shows it.
pub struct Entry {
    pub peer: SocketAddr,
    started: Instant,
    state: AtomicU8,
    /// Microseconds after `started` at which the current state began
    /// (the line of idle connections is ordered by it).
    state_since_us: AtomicU64,
    pub requests: AtomicU32,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Shared by every connection that sent the same one ([`Registry::intern`]).
    pub user_agent: OnceLock<Arc<str>>,
    pub rules: OnceLock<Arc<[String]>>,
    /// The client socket's descriptor (-1: not known), for the abort of
    /// what is still in flight when `shutdown_timeout` ends the process.
    fd: AtomicI32,
    /// `EVICTABLE`, `RECLAIM_FIRST`, `EVICTING`, `KILLED`.
    flags: AtomicU8,
    /// Wakes the one wait of this connection that a registry request ends:
    /// its idle wait (asked to make room) or its lingering close (killed by
    /// the reaper). A waker, not a `Notify` or a `CancellationToken`: every
    /// open connection carries it.
    waker: atomic_waker::AtomicWaker,
    /// Where it is parked without a task: 0 when it is not, else its idle
    /// set's index plus one (high half) and its key there (low half).
    parked: AtomicU64,
}

/// Where an idle set hears which of its parked connections are asked to
/// make room (from any worker's accept loop).
#[derive(Default)]
pub struct ParkInbox {
    wanted: Mutex<Vec<(usize, Arc<Entry>)>>,
    /// Wakes the idle set's driver.
    pub notify: tokio::sync::Notify,
}

impl ParkInbox {
    fn want(&self, key: usize, e: Arc<Entry>) {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner()).push((key, e));
        self.notify.notify_one();
    }

    /// The connections asked since the last call, with their keys.
    pub fn take(&self) -> Vec<(usize, Arc<Entry>)> {
        std::mem::take(&mut *self.wanted.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Every open client connection. The state gauges are counted from it at
/// scrape time ([`Registry::count_by_state`]): a state change costs no shared
/// counter, which every request would otherwise bounce between cores.
pub struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Entry>>>,
    /// User-Agents of open connections, each stored once, and the count
    /// past which the next insert sweeps the unused ones.
    agents: Mutex<(std::collections::HashSet<Arc<str>>, usize)>,
    /// Each worker's idle set's inbox, by index.
    inboxes: std::sync::RwLock<Vec<Arc<ParkInbox>>>,
    /// Set once, when the process starts draining ([`Registry::drain`]).
    draining: AtomicBool,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry {
            next: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            agents: Mutex::new((std::collections::HashSet::new(), UA_SWEEP_FROM)),
            inboxes: std::sync::RwLock::new(Vec::new()),
            draining: AtomicBool::new(false),
        }
    }

    /// The process starts draining: every open connection is told (an idle
    /// one ends its wait, [`Entry::asked`]), and so is every one opened
    /// from now on. A flag and a waker per connection, where a
    /// `CancellationToken` cost two mutex locks on every request.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for e in self.lock().values() {
            e.flags.fetch_or(DRAINING, Ordering::AcqRel);
            e.waker.wake();
        }
    }

    /// Whether [`Registry::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A new idle set's inbox and its index (what [`Entry::set_parked`] takes).
    pub fn add_inbox(&self) -> (u32, Arc<ParkInbox>) {
        let mut v = self.inboxes.write().unwrap_or_else(|p| p.into_inner());
        let inbox = Arc::new(ParkInbox::default());
        v.push(inbox.clone());
        ((v.len() - 1) as u32, inbox)
    }

    /// `ua`, shared with every open connection that sent the same one:
    /// crawlers and clients with many connections send one User-Agent.
    pub fn intern(&self, ua: &str) -> Arc<str> {
        let mut guard = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let (set, mark) = &mut *guard;
        if let Some(a) = set.get(ua) {
            return a.clone();
        }
        if set.len() >= *mark {
            set.retain(|a| Arc::strong_count(a) > 1);
            *mark = (set.len() * 2).max(UA_SWEEP_FROM);
        }
        let a: Arc<str> = Arc::from(ua);
        set.insert(a.clone());
        a
    }

    /// Open connections in each state, indexed like [`ClientState::ALL`].
    pub fn count_by_state(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for e in self.lock().values() {
            n[e.state() as usize] += 1;
        }
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection, in state `Reading`.
    pub fn open(self: &Arc<Self>, peer: SocketAddr) -> Tracked {
        let entry = Arc::new(Entry {
            peer,
            started: Instant::now(),
            state: AtomicU8::new(ClientState::Reading as u8),
            state_since_us: AtomicU64::new(0),
            requests: AtomicU32::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            user_agent: OnceLock::new(),
            rules: OnceLock::new(),
            fd: AtomicI32::new(-1),
            flags: AtomicU8::new(0),
            waker: atomic_waker::AtomicWaker::new(),
            parked: AtomicU64::new(0),
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, entry.clone());
        // After the insert: a drain either saw the entry or is seen here.
        if self.draining.load(Ordering::SeqCst) {
            entry.flags.fetch_or(DRAINING, Ordering::AcqRel);
        }
        Tracked {
            registry: self.clone(),
            id,
            entry,
        }
    }

    /// A snapshot for `/connections`: each connection that would be closed
    /// to make room now carries its place in line (`evict_rank`, 1 first).
    pub fn snapshot(&self, grace: Duration) -> Vec<ConnView> {
        let now = Instant::now();
        let conns = self.lock();
        let mut line: Vec<(u64, Candidate)> = conns
            .iter()
            .filter_map(|(id, e)| e.candidate(now, grace).map(|c| (*id, c)))
            .collect();
        line.sort_unstable_by_key(|(_, c)| c.key());
        let ranks: HashMap<u64, (usize, EvictReason)> = line
            .iter()
            .enumerate()
            .map(|(rank, (id, c))| (*id, (rank + 1, c.reason)))
            .collect();
        let mut v: Vec<ConnView> = conns
            .iter()
            .map(|(id, e)| {
                let mut view = e.view();
                if let Some(&(rank, reason)) = ranks.get(id) {
                    view.evict_rank = Some(rank);
                    view.evict_reason = Some(reason.as_str());
                }
                view
            })
            .collect();
        drop(conns);
        v.sort_by_key(|c| std::cmp::Reverse(c.age_ms));
        v
    }

    /// Asks up to `need` idle connections to close, first in line first
    /// ([`Candidate::key`]), counting those already asked and not yet gone
    /// against `need`. The connections close themselves (and count their
    /// eviction) when their idle wait sees the request.
    pub fn evict(&self, need: usize, grace: Duration) -> Eviction {
        let now = Instant::now();
        let mut pending = 0;
        let mut line: Vec<(Candidate, Arc<Entry>)> = Vec::new();
        {
            let conns = self.lock();
            for e in conns.values() {
                if e.flags.load(Ordering::Relaxed) & EVICTING != 0 {
                    pending += 1;
                } else if let Some(c) = e.candidate(now, grace) {
                    line.push((c, e.clone()));
                }
            }
        }
        let take = need.saturating_sub(pending).min(line.len());
        if take > 0 && take < line.len() {
            line.select_nth_unstable_by_key(take - 1, |(c, _)| c.key());
        }
        line.truncate(take);
        line.sort_unstable_by_key(|(c, _)| c.key());
        let inboxes = self.inboxes.read().unwrap_or_else(|p| p.into_inner());
        for (_, e) in &line {
            e.flags.fetch_or(EVICTING, Ordering::Release);
            e.waker.wake();
            if let Some(inbox) = e.parked_at().and_then(|(i, key)| Some((inboxes.get(i as usize)?, key))) {
                inbox.0.want(inbox.1, e.clone());
            }
        }
        Eviction {
            pending,
            requested: line.len(),
        }
    }

    /// When `shutdown_timeout` ran out: every connection still reading a
    /// request or serving one is made to close with RST when the process
    /// exits (a clean close would pass a cut response off as whole, one
    /// that ends at the close above all); so is a lingering one whose
    /// client's stack no longer answers ([`crate::sys::peer_answers`]: its
    /// FIN or the end of its response unacknowledged, retransmitted to
    /// nobody), which the exit would otherwise leave the kernel as an
    /// orphan for minutes. A lingering client that still answers keeps the
    /// plain close: the kernel delivers what is queued. Returns how many.
    pub fn reset_in_flight(&self) -> usize {
        let mut n = 0;
        for e in self.lock().values() {
            let fd = e.fd.load(Ordering::Relaxed);
            let reset = match e.state() {
                ClientState::Reading | ClientState::Active => true,
                ClientState::Lingering => !crate::sys::peer_answers(&fd),
                _ => false,
            };
            if fd >= 0 && reset {
                crate::sys::reset_on_close(fd);
                n += 1;
            }
        }
        n
    }

    /// Cancels connections that have been lingering longer than `limit`;
    /// returns how many. A safety net: the lingering loop has its own
    /// deadline. One whose close waits for its send queue is not stuck: the
    /// close waits for a slow reader as long as it takes some within each
    /// `linger_time` (`linger::close`), and its clock restarts once the
    /// wait is over ([`Tracked::sending`]).
    pub fn reap_lingering(&self, limit: Duration) -> usize {
        let now = Instant::now();
        let stuck: Vec<Arc<Entry>> = self
            .lock()
            .values()
            .filter(|e| e.state() == ClientState::Lingering && e.in_state_for(now) > limit)
            .filter(|e| e.flags.load(Ordering::Acquire) & (KILLED | SENDING) == 0)
            .cloned()
            .collect();
        for e in &stuck {
            e.flags.fetch_or(KILLED, Ordering::Release);
            e.waker.wake();
        }
        stuck.len()
    }
}

impl Entry {
    /// Notes the client socket's descriptor (see [`Registry::reset_in_flight`]).
    pub fn set_fd(&self, fd: std::os::fd::RawFd) {
        self.fd.store(fd, Ordering::Relaxed);
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Where this connection stands in the line of those that may be
    /// closed to make room now; `None`: it may not be.
    fn candidate(&self, now: Instant, grace: Duration) -> Option<Candidate> {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & (EVICTABLE | EVICTING) != EVICTABLE {
            return None;
        }
        let waited = self.in_state_for(now);
        if waited < grace {
            return None;
        }
        let reason = match self.state() {
            ClientState::Idle if flags & RECLAIM_FIRST != 0 => EvictReason::ReclaimFirst,
            ClientState::Idle => EvictReason::Idle,
            ClientState::Reading
                if self.requests.load(Ordering::Relaxed) == 0 && self.bytes_in.load(Ordering::Relaxed) == 0 =>
            {
                EvictReason::NeverUsed
            }
            _ => return None,
        };
        Some(Candidate { reason, waited })
    }

    /// Resolves when this connection is asked to make room, or (`drain`)
    /// the process drains (at once if that happened before the wait
    /// began); a drain first. One connection waits on it at a time.
    pub fn asked(&self, drain: bool) -> impl std::future::Future<Output = Asked> + '_ {
        let watched = if drain { DRAINING | EVICTING } else { EVICTING };
        let seen = self.flagged(watched);
        async move {
            if seen.await & DRAINING != 0 {
                Asked::Drain
            } else {
                Asked::MakeRoom
            }
        }
    }

    /// Resolves when the reaper ends this connection (stuck lingering).
    pub fn kill_wanted(&self) -> impl std::future::Future<Output = ()> + '_ {
        let seen = self.flagged(KILLED);
        async move {
            seen.await;
        }
    }

    /// Whether the reaper ended it.
    pub fn killed(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & KILLED != 0
    }

    /// Resolves with those of `flags` that are set, once any is.
    fn flagged(&self, flags: u8) -> impl std::future::Future<Output = u8> + '_ {
        std::future::poll_fn(move |cx| {
            self.waker.register(cx.waker());
            // Looked at after registering: a request made meanwhile wakes it.
            match self.flags.load(Ordering::Acquire) & flags {
                0 => std::task::Poll::Pending,
                set => std::task::Poll::Ready(set),
            }
        })
    }

    /// Parked in idle set `inbox` under `key`, without a task: no waker
    /// of a task that is gone may be kept (it would keep the task's memory).
    pub fn set_parked(&self, inbox: u32, key: usize) {
        drop(self.waker.take());
        let at = (u64::from(inbox) + 1) << 32 | key as u64 & 0xffff_ffff;
        self.parked.store(at, Ordering::Release);
    }

    /// Taken out of its idle set.
    pub fn clear_parked(&self) {
        self.parked.store(0, Ordering::Release);
    }

    /// Its idle set's index and its key there, while parked.
    pub fn parked_at(&self) -> Option<(u32, usize)> {
        let at = self.parked.load(Ordering::Acquire);
        (at != 0).then(|| (((at >> 32) - 1) as u32, (at & 0xffff_ffff) as usize))
    }

    /// It was asked to make room, but a request is arriving: it stays.
    pub fn decline_eviction(&self) {
        // Looked at first: this runs for every request, and an atomic
        // read-modify-write costs more than a load.
        if self.flags.load(Ordering::Relaxed) & EVICTING != 0 {
            self.flags.fetch_and(!EVICTING, Ordering::Relaxed);
        }
    }

    /// Whether its client matched a `reclaim_first` rule.
    pub fn reclaim_first(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & RECLAIM_FIRST != 0
    }

    fn in_state_for(&self, now: Instant) -> Duration {
        let since = Duration::from_micros(self.state_since_us.load(Ordering::Relaxed));
        now.saturating_duration_since(self.started + since)
    }

    fn view(&self) -> ConnView {
        ConnView {
            peer: self.peer.to_string(),
            state: self.state(),
            age_ms: self.started.elapsed().as_millis() as u64,
            requests: self.requests.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            user_agent: self.user_agent.get().map(|a| a.to_string()),
            rules: self.rules.get().map(|r| r.to_vec()).unwrap_or_default(),
            evict_rank: None,
            evict_reason: None,
            evicting: self.flags.load(Ordering::Relaxed) & EVICTING != 0,
            parked: self.parked_at().is_some(),
        }
    }
}

/// A connection that may be closed to make room.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    reason: EvictReason,
    /// How long it has been idle (or, never used, open).
    waited: Duration,
}

impl Candidate {
    /// Sorts first in line first: by reason, then the longest waiting.
    fn key(&self) -> (EvictReason, std::cmp::Reverse<Duration>) {
        (self.reason, std::cmp::Reverse(self.waited))
    }
}

/// What one [`Registry::evict`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eviction {
    /// Connections asked before, not gone yet.
    pub pending: usize,
    /// Connections asked now.
    pub requested: usize,
}

impl Eviction {
    /// Whether any slot is on its way to being freed.
    pub fn room_coming(&self) -> bool {
        self.pending + self.requested > 0
    }
}

/// `/connections` JSON element.
#[derive(Debug, Serialize)]
pub struct ConnView {
    pub peer: String,
    pub state: ClientState,
    pub age_ms: u64,
    pub requests: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub user_agent: Option<String>,
    pub rules: Vec<String>,
    /// Its place in line to be closed to make room (1: next), when it may be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evict_rank: Option<usize>,
    /// Why it would be: `reclaim_first`, `never_used` or `idle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evict_reason: Option<&'static str>,
    /// Asked to make room and not gone yet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub evicting: bool,
    /// Idle and parked in its worker's idle set, without a task.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub parked: bool,
}

/// A connection's membership in the registry; dropping it removes the entry.
pub struct Tracked {
    registry: Arc<Registry>,
    id: u64,
    pub entry: Arc<Entry>,
}

impl Tracked {
    /// How long the connection has been in its current state.
    pub fn in_state_for(&self) -> Duration {
        self.entry.in_state_for(Instant::now())
    }

    /// An HTTP/1 connection: its idle wait listens for eviction.
    pub fn set_evictable(&self) {
        self.entry.flags.fetch_or(EVICTABLE, Ordering::Relaxed);
    }

    /// Its client matched a `reclaim_first` rule.
    pub fn set_reclaim_first(&self) {
        self.entry.flags.fetch_or(RECLAIM_FIRST, Ordering::Relaxed);
    }

    /// Its close waits for the send queue (`true`), or no longer: then the
    /// clock of its state restarts, the reaper's measure of what is left of
    /// the close (see [`Registry::reap_lingering`]).
    pub fn sending(&self, waits: bool) {
        if waits {
            self.entry.flags.fetch_or(SENDING, Ordering::Release);
        } else {
            self.restart_state_clock();
            self.entry.flags.fetch_and(!SENDING, Ordering::Release);
        }
    }

    fn restart_state_clock(&self) {
        let us = crate::clock::since(self.entry.started).as_micros() as u64;
        self.entry.state_since_us.store(us, Ordering::Relaxed);
    }

    pub fn set(&self, state: ClientState) {
        let old = self.entry.state.swap(state as u8, Ordering::Relaxed);
        if old != state as u8 {
            self.restart_state_clock();
            tracing::trace!(peer = %self.entry.peer, from = ClientState::from_u8(old).as_str(), to = state.as_str(), "client state");
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_lingering_past_the_limit_is_ended_once() {
        let r = Arc::new(Registry::new());
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let lingering = r.open(peer);
        lingering.set(ClientState::Lingering);
        let idle = r.open(peer);
        idle.set(ClientState::Idle);
        let limit = Duration::from_secs(10);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(r.reap_lingering(limit), 0, "not past the limit yet");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(r.reap_lingering(limit), 1);
        assert!(lingering.entry.killed());
        assert!(!idle.entry.killed(), "only lingering connections are ended");
        // The next sweeps do not count it again while it winds down.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(r.reap_lingering(limit), 0);
    }

    fn evictable(r: &Arc<Registry>, state: ClientState, served: bool) -> Tracked {
        let t = r.open("127.0.0.1:1".parse().unwrap());
        t.set_evictable();
        if served {
            t.entry.requests.store(1, Ordering::Relaxed);
            t.entry.bytes_in.store(40, Ordering::Relaxed);
        }
        t.set(state);
        t
    }

    fn asked(t: &Tracked) -> bool {
        t.entry.flags.load(Ordering::Relaxed) & EVICTING != 0
    }

    /// Reclaimable clients first, then never-used connections, then the
    /// longest idle; never one reading, active, lingering, not HTTP/1 or
    /// within the grace window.
    #[tokio::test(start_paused = true)]
    async fn victims_go_in_order_of_reason_then_idle_time() {
        let r = Arc::new(Registry::new());
        let grace = Duration::from_secs(1);
        let idle_old = evictable(&r, ClientState::Idle, true);
        tokio::time::advance(Duration::from_secs(1)).await;
        let never_used = evictable(&r, ClientState::Reading, false);
        let idle_young = evictable(&r, ClientState::Idle, true);
        let crawler = evictable(&r, ClientState::Idle, true);
        crawler.set_reclaim_first();
        let reading = evictable(&r, ClientState::Reading, true);
        let active = evictable(&r, ClientState::Active, true);
        let lingering = evictable(&r, ClientState::Lingering, true);
        let h2 = r.open("127.0.0.1:1".parse().unwrap());
        h2.set(ClientState::Idle);
        tokio::time::advance(Duration::from_secs(2)).await;
        let just_answered = evictable(&r, ClientState::Idle, true);
        just_answered.set_reclaim_first();
        tokio::time::advance(Duration::from_millis(500)).await;

        let ranks: Vec<(Option<usize>, Option<&str>)> = {
            let v = r.snapshot(grace);
            let mut by_age: Vec<_> = v.iter().map(|c| (c.age_ms, c.evict_rank, c.evict_reason)).collect();
            by_age.sort_by_key(|(age, _, _)| std::cmp::Reverse(*age));
            by_age.into_iter().map(|(_, rank, why)| (rank, why)).collect()
        };
        assert_eq!(ranks[0], (Some(3), Some("idle")), "the oldest idle: {ranks:?}");
        let listed = ranks.iter().filter(|(rank, _)| rank.is_some()).count();
        assert_eq!(listed, 4, "{ranks:?}");

        let first = r.evict(2, grace);
        assert_eq!(
            first,
            Eviction {
                pending: 0,
                requested: 2
            }
        );
        assert!(asked(&crawler) && asked(&never_used));
        assert!(!asked(&idle_old) && !asked(&idle_young));
        // Those asked count against the next need until they are gone.
        assert_eq!(
            r.evict(2, grace),
            Eviction {
                pending: 2,
                requested: 0
            }
        );
        drop((crawler, never_used));
        assert_eq!(
            r.evict(1, grace),
            Eviction {
                pending: 0,
                requested: 1
            }
        );
        assert!(asked(&idle_old) && !asked(&idle_young));
        drop(idle_old);
        assert_eq!(r.evict(32, grace).requested, 1);
        assert!(asked(&idle_young));
        for t in [&reading, &active, &lingering, &h2, &just_answered] {
            assert!(!asked(t), "never asked");
        }
        // One that declined (its request arrived) may be asked again.
        idle_young.entry.decline_eviction();
        assert_eq!(r.evict(1, grace).requested, 1);
    }
}
