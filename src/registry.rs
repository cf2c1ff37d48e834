//! The registry of open client connections: what `/connections` lists, what
//! the `finguard_client_connections{state}` gauge counts, and what the reaper
//! checks. Each connection holds a [`Tracked`] guard whose `Drop` removes it,
//! so no path can leak an entry or a gauge count.

use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::metrics::ClientState;

/// One open client connection, as `/connections` shows it.
pub struct Entry {
    pub peer: SocketAddr,
    started: Instant,
    state: AtomicU8,
    /// Milliseconds after `started` at which the current state began.
    state_since_ms: AtomicU64,
    pub requests: AtomicU32,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub user_agent: OnceLock<String>,
    pub rules: OnceLock<Vec<String>>,
    /// Cancelled by the reaper to end a connection stuck past its deadline.
    pub kill: CancellationToken,
}

/// Every open client connection. The state gauges are counted from it at
/// scrape time ([`Registry::count_by_state`]): a state change costs no shared
/// counter, which every request would otherwise bounce between cores.
pub struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Entry>>>,
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
        }
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
            state_since_ms: AtomicU64::new(0),
            requests: AtomicU32::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            user_agent: OnceLock::new(),
            rules: OnceLock::new(),
            kill: CancellationToken::new(),
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, entry.clone());
        Tracked {
            registry: self.clone(),
            id,
            entry,
        }
    }

    /// A snapshot for `/connections`.
    pub fn snapshot(&self) -> Vec<ConnView> {
        let mut v: Vec<ConnView> = self.lock().values().map(|e| e.view()).collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.age_ms));
        v
    }

    /// Cancels connections that have been lingering longer than `limit`;
    /// returns how many. A safety net: the lingering loop has its own deadline.
    pub fn reap_lingering(&self, limit: Duration) -> usize {
        let now = Instant::now();
        let stuck: Vec<Arc<Entry>> = self
            .lock()
            .values()
            .filter(|e| e.state() == ClientState::Lingering && e.in_state_for(now) > limit && !e.kill.is_cancelled())
            .cloned()
            .collect();
        for e in &stuck {
            e.kill.cancel();
        }
        stuck.len()
    }
}

impl Entry {
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn in_state_for(&self, now: Instant) -> Duration {
        let since = Duration::from_millis(self.state_since_ms.load(Ordering::Relaxed));
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
            user_agent: self.user_agent.get().cloned(),
            rules: self.rules.get().cloned().unwrap_or_default(),
        }
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

    pub fn set(&self, state: ClientState) {
        let old = self.entry.state.swap(state as u8, Ordering::Relaxed);
        if old != state as u8 {
            let ms = self.entry.started.elapsed().as_millis() as u64;
            self.entry.state_since_ms.store(ms, Ordering::Relaxed);
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
        assert!(lingering.entry.kill.is_cancelled());
        assert!(!idle.entry.kill.is_cancelled(), "only lingering connections are ended");
        // The next sweeps do not count it again while it winds down.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(r.reap_lingering(limit), 0);
    }
}
