//! The time as of a connection task's current poll.
//!
//! A keep-alive request read the clock a dozen times (its deadlines, the
//! backend's answer time, the pool's expiry checks, the registry's state
//! times): 2.4% of the CPU under 1,000 busy connections, for values that
//! differ by microseconds. Inside a [`Polled`] future the clock is read at
//! most once per poll, as nginx reads it once per turn of its event loop;
//! everywhere else [`now`] is `Instant::now`. Waits still end on the time
//! driver's own clock: a deadline taken from the poll's time is early by at
//! most that poll's length.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Instant;

#[derive(Clone, Copy)]
enum State {
    /// Not inside a [`Polled`] poll: every call reads the clock.
    Off,
    /// Inside one: the time, once read.
    On(Option<Instant>),
}

thread_local! {
    static STATE: Cell<State> = const { Cell::new(State::Off) };
}

/// The time: read once per poll of a [`Polled`] future, else now.
pub fn now() -> Instant {
    STATE.with(|s| match s.get() {
        State::Off => Instant::now(),
        State::On(Some(t)) => t,
        State::On(None) => {
            let t = Instant::now();
            s.set(State::On(Some(t)));
            t
        }
    })
}

/// Since `t`, as of [`now`] (zero if `t` is later).
pub fn since(t: Instant) -> std::time::Duration {
    now().saturating_duration_since(t)
}

pin_project_lite::pin_project! {
    /// A future whose polls each read the clock at most once ([`now`]).
    pub struct Polled<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Polled<F> {
    pub fn new(inner: F) -> Self {
        Polled { inner }
    }
}

/// Puts the state back as the poll found it, even when the poll panics
/// (a task's panic is caught and the thread goes on).
struct Restore(State);

impl Drop for Restore {
    fn drop(&mut self) {
        STATE.with(|s| s.set(self.0));
    }
}

impl<F: Future> Future for Polled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _restore = Restore(STATE.with(|s| s.replace(State::On(None))));
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_poll_sees_one_time_and_the_next_poll_a_later_one() {
        let seen = Polled::new(async {
            let a = now();
            tokio::time::advance(Duration::from_millis(5)).await;
            // Still the first poll's time until this poll began: the
            // advance above ended the first poll.
            let b = now();
            let c = now();
            (a, b, c)
        })
        .await;
        assert!(
            seen.1 >= seen.0 + Duration::from_millis(5),
            "a later poll reads the clock again"
        );
        assert_eq!(seen.1, seen.2, "one poll, one time");
    }

    #[tokio::test(start_paused = true)]
    async fn outside_a_polled_future_the_clock_is_read_each_time() {
        let a = now();
        tokio::time::advance(Duration::from_millis(3)).await;
        assert!(now() >= a + Duration::from_millis(3));
        let inside = Polled::new(async { now() }).await;
        tokio::time::advance(Duration::from_millis(3)).await;
        assert!(
            now() >= inside + Duration::from_millis(3),
            "the state was put back after the poll"
        );
    }
}
