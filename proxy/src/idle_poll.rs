//! Idle polling: after traffic, a relay thread keeps polling its sockets for a short, adaptive
//! window instead of going to sleep in `epoll_wait` at once.
//!
//! Why: every relayed statement makes the proxy wait twice, for the server's answer and then for
//! the client's next statement. A wait that ends in sleep costs a wake-up, and where idle CPUs
//! halt (a virtual machine without guest halt-polling, a host in a deep C-state) waking costs more
//! than everything the proxy does for the statement. Polling through short waits removes those
//! wake-ups, and keeps the CPU awake for the client and server processes the proxy wakes.
//!
//! How: sessions `touch` their relay thread's poller on every read. After a touch the thread's
//! `proxy-idle-poll` task keeps yielding: each yield lets the runtime poll the sockets without
//! blocking, and when that found nothing, `sched_yield` lets other threads waiting for this CPU
//! run first. Polling is CPU time all the same, and counts against a cgroup's CPU quota
//! (`--idle-poll-us 0` turns it off). It stops once nothing has been read for the current window,
//! and the task sleeps until the next touch.
//!
//! The window adapts the way Linux's guest halt-polling does: a sleep shorter than the maximum
//! (longer polling would have caught it) doubles the window, up to the maximum; a longer sleep
//! halves it, down to nothing. Traffic with long gaps (a distant server, an idle application)
//! therefore turns polling off by itself. Each relay thread (`relay`) polls on its own; only a
//! current-thread runtime polls at all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;

use crate::metrics::{add, sub};
use crate::Shared;

/// The window polling starts from after a short sleep.
const MIN_WINDOW: Duration = Duration::from_micros(10);

/// What the sessions of one relay thread tell its poller.
#[derive(Debug)]
pub struct IdlePoll {
    max: Duration,
    /// Set by the poller once it runs (on a current-thread runtime): until then sessions count
    /// nothing.
    enabled: AtomicBool,
    /// The current window, microseconds (the metrics sum these up, `metrics::refresh`).
    pub window_us: AtomicU64,
    /// Microseconds spent in polling mode (wall time, relaying included), for the metrics.
    pub polled_us: AtomicU64,
    /// Reads by all sessions: the poller keeps polling while this moves.
    reads: AtomicU64,
    /// Set while the poller sleeps: the next read wakes it.
    asleep: AtomicBool,
    wake: Notify,
}

impl IdlePoll {
    /// Polling for at most `max`, once `enable_here` found a current-thread runtime.
    pub fn new(max: Duration) -> IdlePoll {
        IdlePoll {
            max,
            enabled: AtomicBool::new(false),
            window_us: AtomicU64::new(0),
            polled_us: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Turn polling on if this runs on a current-thread runtime and the maximum is not zero. On
    /// a multi-thread runtime another worker waits in `epoll_wait`, and polling would only burn a
    /// CPU: sessions then do not even count their reads.
    pub fn enable_here(&self) -> bool {
        let current_thread = Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
        let on = current_thread && !self.max.is_zero();
        self.enabled.store(on, Ordering::Relaxed);
        on
    }

    /// A session read from its client or its server.
    #[inline]
    pub fn touch(&self) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        // one wake per sleep: a second notify would leave a permit that ends the next sleep at once
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }
}

/// The window after a sleep of `slept` between two reads (a gap polling did not cover).
fn adapt(window: Duration, slept: Duration, max: Duration) -> Duration {
    if slept <= max {
        (window * 2).max(MIN_WINDOW).min(max)
    } else if window / 2 < MIN_WINDOW {
        Duration::ZERO
    } else {
        window / 2
    }
}

/// The `proxy-idle-poll` task of relay thread `thread`, run on that thread.
pub async fn run(shared: Arc<Shared>, thread: usize) {
    let Some(p) = shared.relays.get(thread).map(|r| &r.poll) else { return };
    if !p.enable_here() {
        if !shared.opts.idle_poll.is_zero() {
            tracing::info!(cluster = %shared.opts.cluster, thread, "idle polling is off: this runtime has more than one thread");
        }
        return;
    }
    let m = &shared.metrics;
    let mut window = Duration::ZERO;
    let mut last_read = Instant::now();
    let mut seen = p.reads.load(Ordering::Relaxed);
    loop {
        p.asleep.store(true, Ordering::SeqCst);
        // a read that came after the last look but before `asleep` was set did not wake anyone
        if p.reads.load(Ordering::SeqCst) == seen {
            tokio::select! {
                _ = p.wake.notified() => {}
                _ = shared.shutdown.cancelled() => return,
            }
        }
        p.asleep.store(false, Ordering::Relaxed);
        let start = Instant::now();
        window = adapt(window, start - last_read, p.max);
        p.window_us.store(window.as_micros() as u64, Ordering::Relaxed);
        seen = p.reads.load(Ordering::Relaxed);
        last_read = start;
        if window.is_zero() {
            continue;
        }
        add(&m.idle_polling, 1);
        loop {
            tokio::task::yield_now().await;
            let reads = p.reads.load(Ordering::Relaxed);
            if reads != seen {
                // busy: the sessions have work, and nothing else needs the CPU more than they do
                seen = reads;
                last_read = Instant::now();
                continue;
            }
            if last_read.elapsed() >= window || shared.shutdown.is_cancelled() {
                break;
            }
            std::thread::yield_now();
        }
        sub(&m.idle_polling, 1);
        // wall time in polling mode, the relay work done meanwhile included
        add(&p.polled_us, start.elapsed().as_micros() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(200);

    #[test]
    fn short_sleeps_grow_the_window_to_the_maximum_and_long_ones_turn_polling_off() {
        let mut w = Duration::ZERO;
        let mut grown = vec![];
        for _ in 0..6 {
            w = adapt(w, Duration::from_micros(30), MAX);
            grown.push(w.as_micros());
        }
        assert_eq!(grown, [10, 20, 40, 80, 160, 200]);
        let mut shrunk = vec![];
        for _ in 0..6 {
            w = adapt(w, Duration::from_millis(2), MAX);
            shrunk.push(w.as_micros());
        }
        assert_eq!(shrunk, [100, 50, 25, 12, 0, 0]);
        // a sleep of exactly the maximum would have been caught by polling that long
        assert_eq!(adapt(Duration::ZERO, MAX, MAX), MIN_WINDOW);
        // a maximum below the smallest window is the limit
        let tiny = Duration::from_micros(5);
        assert_eq!(adapt(Duration::ZERO, Duration::from_micros(3), tiny), tiny);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_thread_runtime_does_not_poll() {
        let p = IdlePoll::new(MAX);
        assert!(!p.enable_here());
        p.touch();
        assert_eq!(p.reads.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_polls_unless_the_maximum_is_zero() {
        let p = IdlePoll::new(MAX);
        p.touch();
        assert_eq!(p.reads.load(Ordering::Relaxed), 0, "counted before the poller ran");
        assert!(p.enable_here());
        p.touch();
        assert_eq!(p.reads.load(Ordering::Relaxed), 1);
        let off = IdlePoll::new(Duration::ZERO);
        assert!(!off.enable_here());
        off.touch();
        assert_eq!(off.reads.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_wake_per_sleep() {
        let p = IdlePoll::new(MAX);
        assert!(p.enable_here());
        p.asleep.store(true, Ordering::SeqCst);
        p.touch();
        p.touch();
        assert!(!p.asleep.load(Ordering::SeqCst));
        // the first touch left its permit; the second must not have left another
        p.wake.notified().await;
        let again = tokio::time::timeout(Duration::from_millis(20), p.wake.notified()).await;
        assert!(again.is_err(), "a second permit was left behind");
    }
}
