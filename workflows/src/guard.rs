//! Abort criteria: named guards whose name becomes the migration's abort reason.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a migration was aborted. The string form is stored as `migrations.abort_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// `dmf abort` by an operator.
    Operator,
    PreflightFailed,
    SlotLost,
    SlotInactive,
    ReplicationLag,
    PhaseTimeout,
    AuditMismatch,
    SchemaDrift,
    /// DMS replication failed, stopped or vanished.
    ReplicationStopped,
    /// A slot keeps more WAL on the source than allowed, or its server may drop WAL it needs.
    SlotRetainedWal,
}

impl AbortReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::Operator => "operator",
            AbortReason::PreflightFailed => "preflight_failed",
            AbortReason::SlotLost => "slot_lost",
            AbortReason::SlotInactive => "slot_inactive",
            AbortReason::ReplicationLag => "replication_lag",
            AbortReason::PhaseTimeout => "phase_timeout",
            AbortReason::AuditMismatch => "audit_mismatch",
            AbortReason::SchemaDrift => "schema_drift",
            AbortReason::ReplicationStopped => "replication_stopped",
            AbortReason::SlotRetainedWal => "slot_retained_wal",
        }
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AbortReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use AbortReason::*;
        [Operator, PreflightFailed, SlotLost, SlotInactive, ReplicationLag, PhaseTimeout, AuditMismatch, SchemaDrift, ReplicationStopped, SlotRetainedWal]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown abort reason {s:?}"))
    }
}

/// "Lag above the limit for longer than the window": one bad sample is noise, a sustained one aborts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagGuard {
    pub limit: Duration,
    pub window: Duration,
}

/// The guard's verdict on one sample, given since when lag has been over the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LagVerdict {
    /// Under the limit: clear the "over since" marker.
    Healthy,
    /// Over the limit for `for_how_long`, still inside the window.
    Over { for_how_long: Duration },
    /// Over the limit for longer than the window: abort with `replication_lag`.
    Trip { for_how_long: Duration },
}

impl LagGuard {
    /// `over_for` is how long lag has already been above the limit before this sample (None if it
    /// was not).
    pub fn evaluate(&self, lag: Duration, over_for: Option<Duration>) -> LagVerdict {
        if lag <= self.limit {
            return LagVerdict::Healthy;
        }
        let for_how_long = over_for.unwrap_or_default();
        if for_how_long > self.window {
            LagVerdict::Trip { for_how_long }
        } else {
            LagVerdict::Over { for_how_long }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_guard_trips_only_after_the_window() {
        let g = LagGuard { limit: Duration::from_millis(500), window: Duration::from_secs(30) };
        assert_eq!(g.evaluate(Duration::from_millis(100), Some(Duration::from_secs(99))), LagVerdict::Healthy);
        assert_eq!(g.evaluate(Duration::from_secs(2), None), LagVerdict::Over { for_how_long: Duration::ZERO });
        assert_eq!(
            g.evaluate(Duration::from_secs(2), Some(Duration::from_secs(10))),
            LagVerdict::Over { for_how_long: Duration::from_secs(10) }
        );
        assert_eq!(
            g.evaluate(Duration::from_secs(2), Some(Duration::from_secs(31))),
            LagVerdict::Trip { for_how_long: Duration::from_secs(31) }
        );
    }

    #[test]
    fn abort_reasons_round_trip() {
        for r in ["operator", "preflight_failed", "slot_lost", "slot_inactive", "replication_lag", "phase_timeout"] {
            assert_eq!(r.parse::<AbortReason>().map(|r| r.as_str()), Ok(r));
        }
    }
}
