//! The reconciler: finds migrations that nothing will move (their job was lost with a dead worker
//! and apalis gave up on it) and nudges them. The control plane, not the queue, is the truth.

use std::sync::Arc;
use std::time::Duration;

use dmf_db::{Again, FollowUp};
use tokio_util::sync::CancellationToken;

use crate::Shared;

pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(shared.opts.reconcile_interval) => {}
        }
        if let Err(e) = tick(&shared).await {
            tracing::debug!(error = %e, "reconciler tick failed; next tick retries");
        }
    }
}

async fn tick(shared: &Shared) -> Result<(), dmf_db::Error> {
    let quiet_for = shared.opts.reconcile_interval.max(Duration::from_secs(5));
    for m in shared.db.stranded_migrations(quiet_for).await? {
        let Ok(phase) = m.phase() else { continue };
        tracing::warn!(cluster = %m.cluster, migration = %m.id, phase = %phase, epoch = m.epoch, "stranded migration: nudging");
        let again = FollowUp { phase, epoch: m.epoch, delay: Duration::ZERO, why: Again::Nudge, actor: &shared.opts.name, release_lease: None };
        shared.db.follow_up(m.id, &again).await?;
    }
    Ok(())
}
