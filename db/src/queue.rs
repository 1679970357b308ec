//! The activity queue: one apalis job per activity run, pushed inside the caller's transaction.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis::prelude::TaskBuilder;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// The apalis queue (job type) every activity job lives in.
pub const QUEUE: &str = "dmf::activity";

/// The payload of one activity job: run `phase` of `migration`, if it is still at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityJob {
    pub migration: Uuid,
    pub cluster: String,
    pub phase: String,
    pub epoch: i64,
    /// 0 for the job that entered the phase; then one per watch tick, retry or nudge.
    pub nudge: i64,
}

impl ActivityJob {
    /// `{migration}/{phase}/{epoch}` for the job that enters a phase, with `#nudge` after it for
    /// the follow-ups of the same epoch. A duplicate push of the same key is refused by the queue.
    pub fn idempotency_key(&self) -> String {
        if self.nudge == 0 {
            format!("{}/{}/{}", self.migration, self.phase, self.epoch)
        } else {
            format!("{}/{}/{}#{}", self.migration, self.phase, self.epoch, self.nudge)
        }
    }
}

/// The start time (Unix seconds) of a job pushed at `now` to run after `delay`. apalis keeps start
/// times in whole seconds, and its own `run_after` truncates `now + delay`: a follow-up due in
/// less than a second would start at once, again and again until its time came (the `flipped`
/// activity ran 55 times in its one-second settle). The time is rounded up instead; no delay stays
/// "now".
fn not_before(now: SystemTime, delay: Duration) -> u64 {
    let at = now.duration_since(UNIX_EPOCH).unwrap_or_default() + delay;
    if delay.is_zero() {
        return at.as_secs();
    }
    at.as_secs() + u64::from(at.subsec_nanos() > 0)
}

/// Push one job in the caller's transaction, to run after `delay`.
pub async fn push(conn: &mut sqlx::PgConnection, job: &ActivityJob, delay: Duration) -> Result<(), Error> {
    let args = serde_json::to_vec(job).map_err(|e| Error::Queue(e.to_string()))?;
    let task = TaskBuilder::new(args)
        .idempotency_key(job.idempotency_key())
        // Retries are decided by the state machine, not by apalis; a second attempt only happens
        // when a worker died holding the job.
        .max_attempts(3)
        .run_at_timestamp(not_before(SystemTime::now(), delay))
        .build();
    apalis_postgres::queries::push_tasks(conn, QUEUE, vec![task])
        .await
        .map_err(|e| Error::Queue(format!("push {}: {e}", job.idempotency_key())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_is_rounded_up_to_the_second_never_down() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_300);
        assert_eq!(not_before(now, Duration::ZERO), 1000, "no delay: due now");
        assert_eq!(not_before(now, Duration::from_millis(100)), 1001);
        assert_eq!(not_before(now, Duration::from_millis(700)), 1001, "exactly on a second");
        assert_eq!(not_before(now, Duration::from_millis(701)), 1002);
        assert_eq!(not_before(now, Duration::from_secs(5)), 1006);
    }
}
