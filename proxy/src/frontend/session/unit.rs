//! The unit of work and the transaction status: where the session stands between transaction
//! boundaries, and the gate a unit passes before it starts (holds, the lease, route changes).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Refusal, Session};
use crate::frontend::signal::{KILL, SHUTDOWN};
use crate::metrics::{add, sub};
use crate::protocol::tag::status;
use crate::Error;

/// The transaction status a ReadyForQuery reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    /// The status byte of a ReadyForQuery body. A missing byte reads as idle; a byte the
    /// protocol does not define as inside a transaction, so that nothing treats it as a boundary.
    pub(super) fn of(body: &[u8]) -> TxStatus {
        match body.first().copied().unwrap_or(status::IDLE) {
            status::IDLE => TxStatus::Idle,
            status::FAILED => TxStatus::Failed,
            _ => TxStatus::InTransaction,
        }
    }
}

/// Where the session stands: at a boundary, or inside a unit counted in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unit {
    /// At a transaction boundary: not counted in flight; a hold may start or a move happen.
    Boundary,
    Open { on: RunsOn, request: Request },
}

/// Which backend a unit runs on, and what it was found to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RunsOn {
    /// The primary, with statements that may write (or were not classified).
    Primary,
    /// The primary, with reads only (classified while reads are split): not a write for
    /// read-your-writes.
    PrimaryReads,
    /// The read endpoint.
    ReadEndpoint,
}

/// The client's request in progress inside a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Request {
    /// More of it may come.
    Open,
    /// Its Query or Sync went out: only answers are owed.
    Sealed,
}

impl Unit {
    /// A unit just through the gate: on the primary until routed.
    fn started() -> Unit {
        Unit::Open { on: RunsOn::Primary, request: Request::Open }
    }

    pub(super) fn is_open(self) -> bool {
        matches!(self, Unit::Open { .. })
    }

    pub(super) fn is_sealed(self) -> bool {
        matches!(self, Unit::Open { request: Request::Sealed, .. })
    }

    pub(super) fn on_read(self) -> bool {
        matches!(self, Unit::Open { on: RunsOn::ReadEndpoint, .. })
    }

    /// The unit may have written on the primary.
    pub(super) fn may_write(self) -> bool {
        matches!(self, Unit::Open { on: RunsOn::Primary, .. })
    }

    /// The request's last message went out.
    pub(super) fn seal(&mut self) {
        if let Unit::Open { request, .. } = self {
            *request = Request::Sealed;
        }
    }

    /// The request was answered (ReadyForQuery with nothing outstanding).
    pub(super) fn answered(&mut self) {
        if let Unit::Open { request, .. } = self {
            *request = Request::Open;
        }
    }

    pub(super) fn run_on(&mut self, runs_on: RunsOn) {
        if let Unit::Open { on, .. } = self {
            *on = runs_on;
        }
    }
}

/// A transaction waiting at a hold, counted in `held_now` from its start until it is dropped;
/// then its wait is added to the hold's totals and to the longest stall of the hold.
struct Held {
    shared: std::sync::Arc<crate::Shared>,
    since: Instant,
}

impl Held {
    fn start(shared: &std::sync::Arc<crate::Shared>) -> Held {
        add(&shared.metrics.held_now, 1);
        add(&shared.metrics.held_total, 1);
        Held { shared: shared.clone(), since: Instant::now() }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let m = &self.shared.metrics;
        let waited = self.since.elapsed().as_micros() as u64;
        add(&m.hold_time_us_total, waited);
        m.hold_longest_us.fetch_max(waited, Ordering::Relaxed);
        sub(&m.held_now, 1);
    }
}

impl Session {
    /// Wait while traffic is held or the lease is lost; then enter a unit and follow the route.
    pub(super) async fn gate(&mut self) -> Result<(), Error> {
        // Fast path: the route did not change, nothing is held, the lease holds. One atomic
        // increment and two loads per transaction.
        if !self.route_rx.has_changed().unwrap_or(true) && !self.route.hold && self.shared.gate.lease_ok() && self.shared.gate.try_enter() {
            self.unit = Unit::started();
            self.in_tx.store(true, Ordering::Relaxed);
            return Ok(());
        }
        // counted held until it runs again (on the new primary, if the route moved), however this
        // ends: refused, killed, or dropped with the session in the middle of its move
        let mut held: Option<Held> = None;
        let shared = self.shared.clone();
        let route = loop {
            self.route_rx.borrow_and_update();
            let route = shared.route();
            if shared.gate.lease_ok() && !route.hold && shared.gate.try_enter() {
                break route;
            }
            let since = held.get_or_insert_with(|| Held::start(&shared)).since;
            let Some(left) = shared.opts.hold_timeout.checked_sub(since.elapsed()) else {
                drop(held.take());
                self.refuse(Refusal::held_too_long(shared.gate.lease_ok(), shared.opts.hold_timeout)).await;
                return Err(Error::HeldTooLong(shared.opts.hold_timeout));
            };
            if self.restored.is_none() && route.hold {
                self.prepare_move(&route).await;
            }
            tokio::select! {
                _ = self.route_rx.changed() => {}
                _ = tokio::time::sleep(left.min(Duration::from_millis(2))) => {}
                _ = self.signal.wait(KILL | SHUTDOWN) => {
                    return Err(Error::Closed("ended while held".into()));
                }
            }
        };
        self.unit = Unit::started();
        self.in_tx.store(true, Ordering::SeqCst);
        let followed = if route.epoch != self.route.epoch { self.follow(route).await } else { Ok(()) };
        // the release's acknowledgement waits for the held ones and reports the longest stall
        // (`router::control`)
        drop(held);
        followed
    }

    /// Back at a boundary: no longer counted in flight.
    pub(super) fn leave_unit(&mut self) {
        self.unit = Unit::Boundary;
        left(&self.in_tx, &self.shared);
    }

    /// A ReadyForQuery arrived with `status`: the request is answered once nothing is outstanding,
    /// and an idle status ends the unit. True when the unit that ended ran on the read backend
    /// (nothing more is expected from it).
    pub(super) fn ready_for_query(&mut self, status: TxStatus) -> bool {
        self.status = status;
        self.outstanding = self.outstanding.saturating_sub(1);
        self.injected_answers = 0;
        if self.outstanding > 0 {
            return false;
        }
        self.unit.answered();
        if let Some(c) = self.capture.take() {
            self.shared.shadow.offer(c.finish(), &self.shared.metrics);
        }
        if self.status != TxStatus::Idle || !self.unit.is_open() {
            return false;
        }
        let on_read = self.unit.on_read();
        if self.route.mode == crate::router::Mode::SplitReads && self.unit.may_write() {
            self.wrote = true;
        }
        self.leave_unit();
        add(&self.shared.metrics.transactions_total, 1);
        on_read
    }
}

/// What leaving a unit tells the rest of the proxy: the session is out of its transaction, and the
/// gate counts one unit fewer in flight (a hold waits for that count).
pub(super) fn left(in_tx: &std::sync::atomic::AtomicBool, shared: &crate::Shared) {
    in_tx.store(false, Ordering::SeqCst);
    shared.gate.leave();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_sealed_by_its_request_and_opened_by_the_answer() {
        let mut u = Unit::started();
        assert!(u.is_open() && !u.is_sealed() && u.may_write() && !u.on_read());
        u.run_on(RunsOn::ReadEndpoint);
        u.seal();
        assert!(u.is_sealed() && u.on_read() && !u.may_write());
        u.answered();
        assert!(!u.is_sealed() && u.on_read());
        let mut b = Unit::Boundary;
        b.seal();
        assert_eq!(b, Unit::Boundary);
        assert_eq!(TxStatus::of(b"T"), TxStatus::InTransaction);
        assert_eq!(TxStatus::of(b""), TxStatus::Idle);
        assert_eq!(TxStatus::of(b"?"), TxStatus::InTransaction);
    }
}
