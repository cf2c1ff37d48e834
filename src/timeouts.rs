//! Every deadline of a client connection and of an exchange, in one value
//! built from the client's policy and, once a backend is chosen, the
//! backend's config. Each network await of the connection loop and of the
//! exchange is bounded by one of these; nothing else spells a timeout.
//! (The backend pool's own `connect_timeout` and `queue_timeout` bound its
//! checkout, and the lingering close its own reads: each in one place.)

use crate::config::{BackendConfig, ClientSettings};
use std::time::Duration;

/// How long finguard keeps reading what a backend left in its socket after
/// it refused the rest of an upload (an early answer, then a close): each
/// read may wait this long, and at most [`LEFTOVER_READS`] reads are made.
/// The answer was sent before the refusal, so it is already in the socket
/// queue; the wait only covers its last segments' arrival on a busy host.
pub const LEFTOVER_READ: Duration = Duration::from_millis(100);
/// At most this many reads of what a backend left (see [`LEFTOVER_READ`]).
pub const LEFTOVER_READS: usize = 64;

/// The client's deadlines, known before any backend is chosen.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// `header_timeout`: a request head, from its first byte (the first
    /// head of a connection: from accept).
    pub head: Duration,
    /// `keepalive_timeout`: idle between two requests.
    pub idle: Duration,
    /// `body_timeout`: the longest gap between two reads of a request body,
    /// and the longest a write to the client may make no progress (a client
    /// that stopped reading).
    pub gap: Duration,
    /// `upgrade_idle_timeout`: a tunnel where neither side moves.
    pub upgrade_idle: Duration,
}

impl ClientTimeouts {
    pub fn new(client: &ClientSettings) -> ClientTimeouts {
        ClientTimeouts {
            head: client.header_timeout,
            idle: client.keepalive_timeout,
            gap: client.body_timeout,
            upgrade_idle: client.upgrade_idle_timeout,
        }
    }
}

/// An exchange's deadlines: the client's, and its backend's.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub client: ClientTimeouts,
    /// `response_timeout`: from the end of the request to the backend's
    /// response head (504), and the longest gap between two reads of the
    /// response body or a write to the backend that makes no progress.
    pub response: Duration,
}

impl Timeouts {
    pub fn new(client: &ClientSettings, backend: &BackendConfig) -> Timeouts {
        Timeouts {
            client: ClientTimeouts::new(client),
            response: backend.response_timeout,
        }
    }
}

/// One timer for a run of waits, each with its own deadline (a connection's
/// idle waits between requests, a backend connection's waits for answers):
/// where `timeout_at` put a new entry in the time driver's wheel and took
/// it out again, under the driver's lock, twice a request, a later deadline
/// here only moves the armed entry's expiry (one atomic operation; the
/// wheel re-files it when its old time comes). Boxed, and made at the
/// first wait: one allocation for the connection's life.
#[derive(Debug, Default)]
pub struct Timer(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl Timer {
    /// `f`'s output, or `None` if `deadline` comes first.
    pub async fn timeout<F: std::future::Future>(&mut self, deadline: tokio::time::Instant, f: F) -> Option<F::Output> {
        use std::future::Future;
        use std::task::Poll;
        let sleep = match &mut self.0 {
            Some(s) => {
                if s.deadline() != deadline {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => self.0.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await
    }

    /// Forgets the waker the last wait left in the timer: a connection
    /// back in its pool must not keep the task that used it (its memory)
    /// alive until the timer's deadline.
    pub fn release(&mut self) {
        if let Some(s) = &mut self.0 {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            // Outside the task's budget: a poll refused for want of budget
            // would keep the old waker.
            let swap = std::future::poll_fn(|cx| {
                let _ = std::future::Future::poll(s.as_mut(), cx);
                std::task::Poll::Ready(())
            });
            let _ = std::future::Future::poll(std::pin::pin!(tokio::task::unconstrained(swap)), &mut cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Arc;
    use tokio::time::Instant;

    struct Counted;
    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {}
    }

    /// A timer armed for a minute by a wait polled once with a waker of
    /// its own (the `Counted`, whose references tell who holds it).
    fn armed() -> (Timer, Arc<Counted>) {
        let mut t = Timer::default();
        let counted = Arc::new(Counted);
        let waker = std::task::Waker::from(counted.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        {
            let wait = t.timeout(Instant::now() + Duration::from_secs(60), std::future::pending::<()>());
            let mut wait = std::pin::pin!(wait);
            assert!(wait.as_mut().poll(&mut cx).is_pending());
        }
        (t, counted)
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_ends_at_its_own_deadline_earlier_or_later() {
        let mut t = Timer::default();
        let start = Instant::now();
        let never = std::future::pending::<()>;
        assert_eq!(t.timeout(start + Duration::from_secs(5), never()).await, None);
        assert_eq!(Instant::now(), start + Duration::from_secs(5));
        // A later deadline, then an earlier one than the armed timer's.
        assert_eq!(t.timeout(start + Duration::from_secs(60), async { 7 }).await, Some(7));
        assert_eq!(t.timeout(start + Duration::from_secs(6), never()).await, None);
        assert_eq!(Instant::now(), start + Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_timer_keeps_no_waker() {
        let (mut t, counted) = armed();
        assert_eq!(Arc::strong_count(&counted), 2, "the armed timer holds the waker");
        t.release();
        assert_eq!(Arc::strong_count(&counted), 1, "only `counted` is left");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_released_by_a_task_out_of_budget_keeps_no_waker() {
        let (mut t, counted) = armed();
        std::future::poll_fn(|cx| {
            // The task spends its budget, as a long relay does, then
            // checks the connection in.
            while std::pin::pin!(tokio::task::consume_budget()).poll(cx).is_ready() {}
            t.release();
            std::task::Poll::Ready(())
        })
        .await;
        assert_eq!(Arc::strong_count(&counted), 1, "the waker was dropped all the same");
    }
}
