//! The reconciler: finds migrations that nothing will move (their job was lost with a dead worker
//! and apalis gave up on it) and nudges them. The control plane, not the queue, is the truth.

use std::sync::Arc;
use std::time::Duration;

use dmf_db::{Again, FollowUp};
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// How long one migration's secrets may take to read in a reconciler tick.
const SECRETS_WITHIN: Duration = Duration::from_secs(10);

/// How often this worker folds aged lag history (one worker at a time does it).
const DOWNSAMPLE_EVERY: Duration = Duration::from_secs(60);

pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut downsampled: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(shared.opts.reconcile_interval) => {}
        }
        // connections kept for migrations this worker no longer watches close here too
        shared.opts.activities.conns.sweep();
        if let Err(e) = tick(&shared).await {
            shared.metrics.inc(crate::metrics::CONTROL_PLANE_ERRORS, &[]);
            tracing::debug!(error = %e, "reconciler tick failed; next tick retries");
        }
        if downsampled.is_none_or(|at| at.elapsed() >= DOWNSAMPLE_EVERY) {
            downsampled = Some(std::time::Instant::now());
            match shared.db.downsample_lag(shared.opts.lag_retention).await {
                Ok(n) if n > 0 => tracing::debug!(folded = n, "lag history downsampled"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "lag history not downsampled; a later tick retries"),
            }
        }
    }
}

async fn tick(shared: &Shared) -> Result<(), dmf_db::Error> {
    // slots of a migration left in failed before the flip pin WAL on the production source
    if let Some(after) = shared.opts.activities.drop_slots_after_failed {
        for m in shared.db.failed_before_flip(after).await? {
            // (this worker may not have read the migration's AWS secrets since it started; an
            // unreachable Secrets Manager must not hold up the tick: the drop then says why)
            let _ = tokio::time::timeout(SECRETS_WITHIN, dmf_activities::fetch_secrets(&m, &shared.opts.activities.aws)).await;
            match dmf_activities::slots::drop_after_failure(&shared.db, &m, after).await {
                Ok(dropped) => tracing::warn!(cluster = %m.cluster, migration = %m.id, slots = ?dropped, "failed before the flip too long ago: its replication slots were dropped"),
                Err(e) => tracing::warn!(cluster = %m.cluster, migration = %m.id, error = %e, "could not drop the slots of a long-failed migration; next tick retries"),
            }
        }
    }
    let quiet_for = shared.opts.reconcile_interval.max(Duration::from_secs(5));
    for m in shared.db.stranded_migrations(quiet_for).await? {
        let Ok(phase) = m.phase() else { continue };
        tracing::warn!(cluster = %m.cluster, migration = %m.id, phase = %phase, epoch = m.epoch, "stranded migration: nudging");
        let again = FollowUp { phase, epoch: m.epoch, delay: Duration::ZERO, why: Again::Nudge, actor: &shared.opts.name, release_lease: None };
        shared.db.follow_up(m.id, &again).await?;
    }
    Ok(())
}
