//! The activity queue: one apalis job per activity run, pushed inside the caller's transaction.

use std::time::Duration;

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

/// Push one job in the caller's transaction, to run after `delay`.
pub async fn push(conn: &mut sqlx::PgConnection, job: &ActivityJob, delay: Duration) -> Result<(), Error> {
    let args = serde_json::to_vec(job).map_err(|e| Error::Queue(e.to_string()))?;
    let task = TaskBuilder::new(args)
        .idempotency_key(job.idempotency_key())
        // Retries are decided by the state machine, not by apalis; a second attempt only happens
        // when a worker died holding the job.
        .max_attempts(3)
        .run_after(delay)
        .build();
    apalis_postgres::queries::push_tasks(conn, QUEUE, vec![task])
        .await
        .map_err(|e| Error::Queue(format!("push {}: {e}", job.idempotency_key())))
}
