//! The worker's own bound on its lease: until when, by its monotonic clock, it may still act for a
//! migration. A worker that was stopped (SIGSTOP, a long pause) past its lease finds out here,
//! before it touches a database, without asking the control plane (whose writes also refuse it,
//! see `dmf_db::lease`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LeaseClock {
    base: Instant,
    /// Microseconds after `base` when the lease may have expired.
    until_us: Arc<AtomicU64>,
}

impl LeaseClock {
    /// A lease taken at `taken` (before the request was sent) for `ttl`.
    pub fn new(taken: Instant, ttl: Duration) -> LeaseClock {
        let clock = LeaseClock { base: taken, until_us: Arc::new(AtomicU64::new(0)) };
        clock.renewed(taken, ttl);
        clock
    }

    /// A renewal sent at `sent` succeeded: the control plane extended the lease from a moment
    /// after `sent`, so counting from `sent` errs on the safe side.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        let until = sent.saturating_duration_since(self.base) + ttl;
        self.until_us.fetch_max(until.as_micros() as u64, Ordering::SeqCst);
    }

    /// Whether the lease still holds by this worker's clock.
    pub fn valid(&self) -> bool {
        let until = self.base + Duration::from_micros(self.until_us.load(Ordering::SeqCst));
        Instant::now() < until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_out_unless_renewed() {
        let clock = LeaseClock::new(Instant::now(), Duration::from_millis(40));
        assert!(clock.valid());
        std::thread::sleep(Duration::from_millis(30));
        clock.renewed(Instant::now(), Duration::from_millis(40));
        std::thread::sleep(Duration::from_millis(20));
        assert!(clock.valid(), "renewed");
        // an old renewal never shortens it
        clock.renewed(clock.base, Duration::from_millis(1));
        assert!(clock.valid());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!clock.valid(), "expired");
    }
}
