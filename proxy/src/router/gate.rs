//! The gate every unit of work passes: the route in force and its changes, the hold, the count of
//! sessions in flight that a hold waits for, the lease, and how far the read endpoint has applied
//! the primary's WAL. Sessions read it on every transaction; the control task and the LSN tracker
//! write it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::Route;

pub struct Gate {
    route: RwLock<Arc<Route>>,
    /// Bumped to the new epoch on every route change.
    changes: tokio::sync::watch::Sender<u64>,
    /// Set while a route asks to hold (read together with `inflight`: see [`Gate::try_enter`]).
    hold: AtomicBool,
    /// Sessions inside a unit, and connections opening their backend.
    inflight: AtomicUsize,
    lease: Duration,
    /// When the lease runs out: milliseconds since `started`, pushed forward by each heartbeat.
    lease_until_ms: AtomicU64,
    started: Instant,
    /// The read endpoint's applied LSN (0 when unknown: reads after writes go to the primary).
    read_applied_lsn: AtomicU64,
}

impl Gate {
    /// A gate on `route`, with no lease yet.
    pub fn new(route: Arc<Route>, lease: Duration) -> Gate {
        let (changes, _) = tokio::sync::watch::channel(route.epoch);
        Gate {
            hold: AtomicBool::new(route.hold),
            route: RwLock::new(route),
            changes,
            inflight: AtomicUsize::new(0),
            lease,
            lease_until_ms: AtomicU64::new(0),
            started: Instant::now(),
            read_applied_lsn: AtomicU64::new(0),
        }
    }

    /// The route in force now.
    pub fn route(&self) -> Arc<Route> {
        match self.route.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Publish a new route. Its hold is set first: a hold is in force before any session sees
    /// the route that asks for it, and lifted before any session wakes to the route that lifts it.
    pub(crate) fn publish(&self, route: Arc<Route>) {
        self.hold.store(route.hold, Ordering::SeqCst);
        let epoch = route.epoch;
        match self.route.write() {
            Ok(mut r) => *r = route,
            Err(poisoned) => *poisoned.into_inner() = route,
        }
        self.changes.send_replace(epoch);
    }

    /// Wakes on every route change from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether the control plane answered a heartbeat within the lease: without it, nothing is
    /// sent anywhere (a flip may go ahead without this proxy).
    pub fn lease_ok(&self) -> bool {
        (self.started.elapsed().as_millis() as u64) < self.lease_until_ms.load(Ordering::Acquire)
    }

    /// A heartbeat sent at `sent` succeeded: the lease runs until `sent + lease`.
    pub(crate) fn extend_lease(&self, sent: Instant) {
        let until = sent.saturating_duration_since(self.started) + self.lease;
        self.lease_until_ms.fetch_max(until.as_millis() as u64, Ordering::AcqRel);
    }

    /// Count one more in flight unless traffic is held; true when counted. Counting first and
    /// then looking at the hold flag means a hold that starts now either sees this one in flight
    /// or is seen here.
    pub(crate) fn try_enter(&self) -> bool {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        if !self.hold.load(Ordering::SeqCst) {
            return true;
        }
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        false
    }

    /// A hold is in force.
    pub(crate) fn held(&self) -> bool {
        self.hold.load(Ordering::SeqCst)
    }

    /// One fewer in flight (after a successful [`Gate::try_enter`]).
    pub(crate) fn leave(&self) {
        self.inflight.fetch_sub(1, Ordering::SeqCst);
    }

    /// How many are in flight: a hold waits for zero.
    pub fn in_flight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    pub fn read_applied_lsn(&self) -> u64 {
        self.read_applied_lsn.load(Ordering::Acquire)
    }

    pub(crate) fn set_read_applied_lsn(&self, lsn: u64) {
        self.read_applied_lsn.store(lsn, Ordering::Release);
    }
}
