//! Phases of one cluster's migration and the transition function between them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::guard::AbortReason;

/// Where one cluster's migration stands. The string form is what the control plane stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Preflight,
    Provisioning,
    Schema,
    Hydrating,
    Replicating,
    Validating,
    /// Reads go to the target (read-your-writes), writes stay on the source; guards still watched.
    ShadowReads,
    /// The final flip: hold, fence, catch up, sequences, reverse replication, route, release.
    Flipping,
    /// Traffic is on the target, reverse replication keeps the source current (soak).
    Flipped,
    /// Soak over, forward and reverse replication cleaned up per policy; the source is kept read-only.
    Completed,
    /// The flip in reverse, over the reverse replication.
    RollingBack,
    /// Traffic is back on the source with every write made on the target.
    RolledBack,
    Aborting,
    Aborted,
    Failed,
}

/// The forward pipeline, in order; everything else in this crate follows from this list.
const PIPELINE: &[Phase] = &[
    Phase::Pending,
    Phase::Preflight,
    Phase::Provisioning,
    Phase::Schema,
    Phase::Hydrating,
    Phase::Replicating,
    Phase::Validating,
    Phase::ShadowReads,
    Phase::Flipping,
    Phase::Flipped,
    Phase::Completed,
];

/// Where the flip sits in the pipeline: phases before it can abort. Computed when compiling (a
/// pipeline without the flip does not compile).
const FLIP_INDEX: usize = {
    let mut i = 0;
    while PIPELINE[i] as u8 != Phase::Flipping as u8 {
        i += 1;
    }
    i
};

impl Phase {
    pub const ALL: &'static [Phase] = &[
        Phase::Pending,
        Phase::Preflight,
        Phase::Provisioning,
        Phase::Schema,
        Phase::Hydrating,
        Phase::Replicating,
        Phase::Validating,
        Phase::ShadowReads,
        Phase::Flipping,
        Phase::Flipped,
        Phase::Completed,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Aborting,
        Phase::Aborted,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Preflight => "preflight",
            Phase::Provisioning => "provisioning",
            Phase::Schema => "schema",
            Phase::Hydrating => "hydrating",
            Phase::Replicating => "replicating",
            Phase::Validating => "validating",
            Phase::ShadowReads => "shadow_reads",
            Phase::Flipping => "flipping",
            Phase::Flipped => "flipped",
            Phase::Completed => "completed",
            Phase::RollingBack => "rolling_back",
            Phase::RolledBack => "rolled_back",
            Phase::Aborting => "aborting",
            Phase::Aborted => "aborted",
            Phase::Failed => "failed",
        }
    }

    /// The phase a successful activity leads to; `None` for steady and terminal phases.
    pub fn next(self) -> Option<Phase> {
        match self {
            Phase::Aborting => return Some(Phase::Aborted),
            Phase::RollingBack => return Some(Phase::RolledBack),
            _ => {}
        }
        let i = PIPELINE.iter().position(|p| *p == self)?;
        PIPELINE.get(i + 1).copied()
    }

    /// A phase whose activity runs again and again (re-checking guards, auditing, soaking) until
    /// it reports Done.
    pub fn is_steady(self) -> bool {
        matches!(self, Phase::Replicating | Phase::Validating | Phase::ShadowReads | Phase::Flipped)
    }

    /// Where `self` sits in the forward pipeline (None for aborting, aborted, failed).
    fn pipeline_index(self) -> Option<usize> {
        PIPELINE.iter().position(|p| *p == self)
    }

    /// Whether going from this phase to `to` is a step back (a flip or a rollback that returned
    /// traffic where it was): its reason is kept as the migration's last error.
    pub fn is_step_back(self, to: Phase) -> bool {
        match (self.pipeline_index(), to.pipeline_index()) {
            (Some(from), Some(next)) => next < from,
            _ => self == Phase::RollingBack && to == Phase::Flipped,
        }
    }

    /// Whether an activity job runs in this phase. `pending` waits for the scheduler, `failed` for an
    /// operator; `completed`, `rolled_back` and `aborted` are done.
    pub fn runs_activity(self) -> bool {
        !matches!(self, Phase::Pending | Phase::Failed | Phase::Aborted | Phase::Completed | Phase::RolledBack)
    }

    /// Whether writes may have reached the target once this phase ran: from the flip on (its route
    /// move may have happened before it failed).
    pub fn may_have_moved_writes(self) -> bool {
        self.pipeline_index().is_some_and(|i| i >= FLIP_INDEX) || matches!(self, Phase::RollingBack | Phase::RolledBack)
    }

    /// Abort tears the target down, so it is allowed only while writes never left the source: from
    /// every phase before the flip, and from `failed` when it failed before the flip (`failed_in`).
    /// The flip itself returns to `shadow_reads` on failure instead.
    pub fn can_abort(self, failed_in: Option<Phase>) -> bool {
        match self {
            Phase::Failed => !failed_in.is_some_and(Phase::may_have_moved_writes),
            p => p.pipeline_index().is_some_and(|i| i < FLIP_INDEX),
        }
    }

    /// Rollback is the flip in reverse, possible once traffic may be on the target: flipped,
    /// completed, or failed at or after the flip.
    pub fn can_roll_back(self, failed_in: Option<Phase>) -> bool {
        match self {
            Phase::Flipped | Phase::Completed => true,
            Phase::Failed => failed_in.is_some_and(Phase::may_have_moved_writes),
            _ => false,
        }
    }

    /// Heavy phases count against the scheduler's concurrency limits.
    pub fn is_in_flight(self) -> bool {
        matches!(self, Phase::Preflight | Phase::Provisioning | Phase::Schema | Phase::Hydrating)
    }

    /// A wave is finished when none of its clusters is pending or in flight.
    pub fn is_settled(self) -> bool {
        !self.is_in_flight() && self != Phase::Pending && self != Phase::Aborting
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown phase {0:?}; expected one of: pending, preflight, provisioning, schema, hydrating, replicating, validating, shadow_reads, flipping, flipped, completed, rolling_back, rolled_back, aborting, aborted, failed")]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_string()))
    }
}

/// What an activity reports back to the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The phase's work is done; move on.
    Done,
    /// Steady phase: all guards fine, look again after this long.
    Watch(Duration),
    /// A transient problem (network, lock, busy lease): try the same phase again.
    Retry { error: String },
    /// A guard tripped: tear down and stop.
    Abort { reason: AbortReason, detail: String },
    /// Something an operator must look at (bad credentials, a bug): stop without tearing down.
    Fail { error: String },
    /// The flip (or rollback) could not finish and traffic is back where it was: return to `to`
    /// with the reason recorded as the last error.
    Revert { to: Phase, reason: String },
}

/// Limits the worker applies when turning an outcome into a decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Attempts of one phase before the migration is marked failed.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { max_attempts: 5, base_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(60) }
    }
}

/// What the worker must make durable next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Compare-and-set to `to`, enqueue its activity (if any).
    Transition { to: Phase, abort_reason: Option<AbortReason>, note: String },
    /// Stay in the phase, same epoch; run the activity again after `after` (steady watch).
    Watch { after: Duration },
    /// Stay in the phase; record the error, run again after `after`.
    Retry { after: Duration, error: String },
}

impl Policy {
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
        self.base_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// Turn the outcome of attempt number `attempt` (1-based) of `phase` into a decision.
    pub fn decide(&self, phase: Phase, outcome: Outcome, attempt: u32) -> Decision {
        match outcome {
            Outcome::Done => match phase.next() {
                Some(to) => Decision::Transition { to, abort_reason: None, note: format!("{phase} done") },
                // A steady phase that reports Done keeps watching; a terminal phase never runs.
                None => Decision::Watch { after: self.base_backoff },
            },
            Outcome::Watch(after) => Decision::Watch { after },
            Outcome::Retry { error } if phase == Phase::Aborting => {
                // Cleanup must finish: it never gives up on its own, it backs off.
                Decision::Retry { after: self.backoff(attempt), error }
            }
            Outcome::Retry { error } if attempt >= self.max_attempts => Decision::Transition {
                to: Phase::Failed,
                abort_reason: None,
                note: format!("{phase} failed after {attempt} attempts: {error}"),
            },
            Outcome::Retry { error } => Decision::Retry { after: self.backoff(attempt), error },
            Outcome::Abort { reason, detail } if phase.can_abort(None) => {
                Decision::Transition { to: Phase::Aborting, abort_reason: Some(reason), note: detail }
            }
            Outcome::Abort { reason, detail } => Decision::Transition {
                to: Phase::Failed,
                abort_reason: Some(reason),
                note: format!("abort requested in {phase}, which cannot abort: {detail}"),
            },
            Outcome::Fail { error } => Decision::Transition { to: Phase::Failed, abort_reason: None, note: error },
            Outcome::Revert { to, reason } => Decision::Transition { to, abort_reason: None, note: reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_runs_in_order_and_replicating_is_steady() {
        let mut p = Phase::Pending;
        let mut seen = vec![p];
        while let Some(n) = p.next() {
            p = n;
            seen.push(p);
        }
        assert_eq!(
            seen,
            vec![
                Phase::Pending,
                Phase::Preflight,
                Phase::Provisioning,
                Phase::Schema,
                Phase::Hydrating,
                Phase::Replicating,
                Phase::Validating,
                Phase::ShadowReads,
                Phase::Flipping,
                Phase::Flipped,
                Phase::Completed
            ]
        );
        assert_eq!(PIPELINE[FLIP_INDEX], Phase::Flipping);
        assert_eq!(Phase::RollingBack.next(), Some(Phase::RolledBack));
        assert!(Phase::Replicating.is_steady());
        assert!(Phase::Validating.is_steady());
        assert_eq!(Phase::Aborting.next(), Some(Phase::Aborted));
        assert_eq!(Phase::Aborted.next(), None);
    }

    #[test]
    fn phase_strings_round_trip() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().ok(), Some(*p));
        }
        assert!("flipped_over".parse::<Phase>().is_err());
    }

    #[test]
    fn abort_allowed_before_the_flip_and_rollback_after_it() {
        let before = [Phase::Preflight, Phase::Provisioning, Phase::Schema, Phase::Hydrating, Phase::Replicating, Phase::Validating, Phase::ShadowReads];
        for p in before.iter().copied().chain([Phase::Pending]) {
            assert!(p.can_abort(None), "{p}");
            assert!(!p.can_roll_back(None), "{p}");
        }
        for p in [Phase::Flipping, Phase::Flipped, Phase::Completed, Phase::RollingBack, Phase::RolledBack, Phase::Aborting, Phase::Aborted] {
            assert!(!p.can_abort(None), "{p}");
        }
        assert!(Phase::Flipped.can_roll_back(None));
        assert!(Phase::Completed.can_roll_back(None));
        assert!(!Phase::Flipping.can_roll_back(None));
        // failed: abort only when it failed before the flip, rollback only when at or after it
        for p in before {
            assert!(Phase::Failed.can_abort(Some(p)), "failed in {p}");
            assert!(!Phase::Failed.can_roll_back(Some(p)), "failed in {p}");
        }
        for p in [Phase::Flipping, Phase::Flipped, Phase::RollingBack] {
            assert!(!Phase::Failed.can_abort(Some(p)), "failed in {p}");
            assert!(Phase::Failed.can_roll_back(Some(p)), "failed in {p}");
        }
    }

    #[test]
    fn a_failed_flip_reverts_with_its_reason() {
        let d = Policy::default().decide(Phase::Flipping, Outcome::Revert { to: Phase::ShadowReads, reason: "lag 40 ms".into() }, 1);
        assert_eq!(d, Decision::Transition { to: Phase::ShadowReads, abort_reason: None, note: "lag 40 ms".into() });
    }

    #[test]
    fn retries_back_off_then_fail_at_the_cap() {
        let policy = Policy { max_attempts: 3, base_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(3) };
        let retry = |a| policy.decide(Phase::Schema, Outcome::Retry { error: "boom".into() }, a);
        assert_eq!(retry(1), Decision::Retry { after: Duration::from_secs(1), error: "boom".into() });
        assert_eq!(retry(2), Decision::Retry { after: Duration::from_secs(2), error: "boom".into() });
        match retry(3) {
            Decision::Transition { to: Phase::Failed, note, .. } => assert!(note.contains("3 attempts")),
            other => panic!("expected failed, got {other:?}"),
        }
    }

    #[test]
    fn cleanup_never_gives_up_and_caps_its_backoff() {
        let policy = Policy { max_attempts: 2, base_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(8) };
        let d = policy.decide(Phase::Aborting, Outcome::Retry { error: "source down".into() }, 40);
        assert_eq!(d, Decision::Retry { after: Duration::from_secs(8), error: "source down".into() });
    }

    #[test]
    fn guard_abort_carries_its_reason() {
        let d = Policy::default().decide(
            Phase::Replicating,
            Outcome::Abort { reason: AbortReason::SlotLost, detail: "slot dmf_x gone".into() },
            1,
        );
        assert_eq!(
            d,
            Decision::Transition { to: Phase::Aborting, abort_reason: Some(AbortReason::SlotLost), note: "slot dmf_x gone".into() }
        );
    }

    #[test]
    fn done_advances_and_steady_done_keeps_watching() {
        let p = Policy::default();
        assert!(matches!(p.decide(Phase::Hydrating, Outcome::Done, 1), Decision::Transition { to: Phase::Replicating, .. }));
        assert!(matches!(p.decide(Phase::Replicating, Outcome::Done, 1), Decision::Transition { to: Phase::Validating, .. }));
        assert!(matches!(p.decide(Phase::Validating, Outcome::Done, 1), Decision::Transition { to: Phase::ShadowReads, .. }));
        assert!(matches!(p.decide(Phase::Flipped, Outcome::Done, 1), Decision::Transition { to: Phase::Completed, .. }));
        assert!(matches!(p.decide(Phase::Aborting, Outcome::Done, 1), Decision::Transition { to: Phase::Aborted, .. }));
    }
}
