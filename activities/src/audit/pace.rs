//! The full compare gives way to replication: while sampled transactions take longer than
//! [`LATE`] to become visible on the target, the compare (whose hashing competes with the
//! target's apply for the same CPUs) waits between chunks, at most [`MOST_PER_CHUNK`] per chunk so
//! that it always gets on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A window past this is late: the goal the auditor holds replication to.
pub const LATE: Duration = Duration::from_millis(5);
/// How long after a late window the compare keeps waiting.
const RECENT: Duration = Duration::from_millis(200);
/// How long the compare waits before a chunk at most.
pub const MOST_PER_CHUNK: Duration = Duration::from_millis(500);
/// How often a waiting compare looks again.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// When a sampled window was last late, shared by the sampler's watcher and the compare.
#[derive(Debug)]
pub struct Pace {
    origin: Instant,
    /// Microseconds from `origin` to the last late window, plus one (0: none yet).
    late_at: AtomicU64,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace { origin: Instant::now(), late_at: AtomicU64::new(0) }
    }
}

impl Pace {
    /// The watcher timed a sample's window.
    pub fn observe(&self, window: Duration) {
        if window > LATE {
            self.late_at.store(self.origin.elapsed().as_micros() as u64 + 1, Ordering::Relaxed);
        }
    }

    /// A window was late within the last [`RECENT`].
    fn late(&self) -> bool {
        match self.late_at.load(Ordering::Relaxed) {
            0 => false,
            at => self.origin.elapsed().saturating_sub(Duration::from_micros(at - 1)) < RECENT,
        }
    }

    /// Before a chunk: wait while windows are late, at most [`MOST_PER_CHUNK`]; the time waited.
    pub async fn give_way(&self, cancel: &CancellationToken) -> Duration {
        let started = Instant::now();
        while self.late() && started.elapsed() < MOST_PER_CHUNK {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
        started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_compare_waits_while_windows_are_late_and_never_long() {
        let pace = Pace::default();
        let cancel = CancellationToken::new();
        assert!(pace.give_way(&cancel).await < Duration::from_millis(10), "no late window yet");
        pace.observe(Duration::from_millis(2));
        assert!(pace.give_way(&cancel).await < Duration::from_millis(10), "on time");
        pace.observe(Duration::from_millis(40));
        let waited = pace.give_way(&cancel).await;
        assert!(waited >= RECENT - LOOK_EVERY && waited < MOST_PER_CHUNK + Duration::from_secs(1), "{waited:?}");
        // kept late: the wait is bounded
        let keep = async {
            loop {
                pace.observe(Duration::from_millis(40));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let waited = tokio::select! { w = pace.give_way(&cancel) => w, _ = keep => unreachable!() };
        assert!(waited >= MOST_PER_CHUNK && waited < MOST_PER_CHUNK + Duration::from_secs(1), "{waited:?}");
    }
}
