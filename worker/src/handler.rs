//! One activity job: check it is current, take the lease, run the activity with its deadline while
//! renewing the lease, then make the decision durable.

use std::time::{Duration, Instant};

use dmf_activities::Context;
use dmf_db::{ActivityJob, Again, FollowUp};
use dmf_workflows::{AbortReason, Decision, Outcome, Phase};
use tokio_util::sync::CancellationToken;

use crate::{Error, Shared};

pub(crate) async fn handle(shared: &Shared, job: ActivityJob) -> Result<(), Error> {
    let key = job.idempotency_key();
    let _permit = shared.permits.acquire().await.map_err(|e| Error::Job { key: key.clone(), message: e.to_string() })?;
    let phase: Phase = job.phase.parse().map_err(|e| Error::Job { key: key.clone(), message: format!("{e}") })?;
    if !phase.runs_activity() {
        // a finished (or waiting) migration is never moved by a job: it would fail a completed
        // migration whose databases now take the writes
        tracing::warn!(cluster = %job.cluster, migration = %job.migration, %key, phase = %phase, "job for a phase without an activity ignored");
        return Ok(());
    }
    let m = shared.db.migration(job.migration).await?;
    if m.phase != job.phase || m.epoch != job.epoch || m.paused {
        tracing::debug!(cluster = %job.cluster, migration = %job.migration, %key, now = %m.phase, "stale job: nothing to do");
        return Ok(());
    }
    let holder = format!("{}:{key}", shared.opts.name);
    let ttl = shared.opts.lease_ttl;
    if !shared.db.acquire_lease(m.id, &holder, m.epoch, ttl).await? {
        // Someone runs this migration right now (a duplicate, or the previous phase still winding
        // down). Look again once their lease could have expired.
        tracing::debug!(cluster = %m.cluster, migration = %m.id, %key, "lease busy; retrying later");
        let again = FollowUp { phase, epoch: m.epoch, delay: ttl / 3, why: Again::Nudge, actor: &shared.opts.name, release_lease: None };
        shared.db.follow_up(m.id, &again).await?;
        return Ok(());
    }
    let result = run_leased(shared, &job, phase, &holder).await;
    if let Err(e) = shared.db.release_lease(m.id, &holder).await {
        tracing::warn!(cluster = %m.cluster, migration = %m.id, error = %e, "could not release lease; it expires on its own");
    }
    result
}

async fn run_leased(shared: &Shared, job: &ActivityJob, phase: Phase, holder: &str) -> Result<(), Error> {
    // Re-read under the lease: the migration may have moved while we waited for it.
    let m = shared.db.migration(job.migration).await?;
    if m.phase != job.phase || m.epoch != job.epoch {
        return Ok(());
    }
    let Some(attempt) = shared.db.begin_attempt(m.id, phase, m.epoch).await? else { return Ok(()) };
    let cancel = shared.hard_stop.child_token();
    let renewer = tokio::spawn(renew(shared.db.clone(), m.id, holder.to_string(), job.phase.clone(), m.epoch, shared.opts.lease_ttl, cancel.clone()));

    let elapsed = (chrono::Utc::now() - m.phase_started_at).to_std().unwrap_or_default();
    let deadline = shared.opts.phase_timeouts.get(&phase).copied();
    let started = Instant::now();
    tracing::info!(cluster = %m.cluster, migration = %m.id, phase = %phase, epoch = m.epoch, attempt, "activity started");
    let outcome = match Context::new(shared.db.clone(), m.clone(), cancel.clone(), shared.opts.activities.clone()) {
        Err(e) => e.into_outcome(),
        Ok(ctx) => match deadline {
            Some(limit) if elapsed >= limit => timeout_outcome(phase, limit),
            Some(limit) => tokio::select! {
                o = dmf_activities::run(phase, &ctx) => o,
                _ = tokio::time::sleep(limit - elapsed) => timeout_outcome(phase, limit),
            },
            None => dmf_activities::run(phase, &ctx).await,
        },
    };
    let cancelled = cancel.is_cancelled();
    renewer.abort();
    if cancelled {
        // Lease lost, migration moved on (an abort), or shutdown: the decision is someone else's.
        tracing::info!(cluster = %m.cluster, migration = %m.id, phase = %phase, "activity cancelled; leaving the decision to the next run");
        return Ok(());
    }
    let decision = shared.opts.policy.decide(phase, outcome.clone(), attempt as u32);
    match &outcome {
        Outcome::Watch(_) => tracing::debug!(cluster = %m.cluster, migration = %m.id, phase = %phase, "watch"),
        _ => tracing::info!(cluster = %m.cluster, migration = %m.id, phase = %phase, took_ms = started.elapsed().as_millis() as u64, ?outcome, "activity finished"),
    }
    apply(shared, &m, phase, decision, holder).await
}

fn timeout_outcome(phase: Phase, limit: Duration) -> Outcome {
    Outcome::Abort { reason: AbortReason::PhaseTimeout, detail: format!("{phase} took longer than {}s", limit.as_secs()) }
}

/// Make the decision durable, retrying through a short control-plane outage. If it never lands,
/// the reconciler runs the (idempotent) activity again later.
async fn apply(shared: &Shared, m: &dmf_db::MigrationRow, phase: Phase, decision: Decision, holder: &str) -> Result<(), Error> {
    let actor = shared.opts.name.clone();
    let mut wait = Duration::from_millis(200);
    loop {
        let r = match &decision {
            Decision::Transition { to, abort_reason, note } => {
                let backwards = phase.is_step_back(*to);
                let req = dmf_db::TransitionRequest {
                    abort_reason: *abort_reason,
                    last_error: if *to == Phase::Failed || *to == Phase::Aborting || backwards { Some(note.clone()) } else { None },
                    release_lease: Some(holder.to_string()),
                    ..dmf_db::TransitionRequest::new(phase, m.epoch, *to, &actor, note.clone())
                };
                shared.db.transition(m.id, &req).await.map(|_| ())
            }
            Decision::Watch { after } => {
                let again = FollowUp { phase, epoch: m.epoch, delay: *after, why: Again::Healthy, actor: &actor, release_lease: Some(holder) };
                shared.db.follow_up(m.id, &again).await.map(|_| ())
            }
            Decision::Retry { after, error } => {
                tracing::warn!(cluster = %m.cluster, migration = %m.id, phase = %phase, error = %error, retry_in_ms = after.as_millis() as u64, "activity will retry");
                let again = FollowUp { phase, epoch: m.epoch, delay: *after, why: Again::Failed(error), actor: &actor, release_lease: Some(holder) };
                shared.db.follow_up(m.id, &again).await.map(|_| ())
            }
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if e.is_unavailable() && wait < Duration::from_secs(20) => {
                tracing::warn!(cluster = %m.cluster, migration = %m.id, error = %e, "control plane unavailable; retrying the decision");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Renew the lease every third of its life; cancel the activity when the lease is lost, the
/// migration moved on, or renewals failed for longer than two thirds of the lease.
async fn renew(db: dmf_db::Db, id: uuid::Uuid, holder: String, phase: String, epoch: i64, ttl: Duration, cancel: CancellationToken) {
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        match db.renew_lease(id, &holder, ttl).await {
            Ok(r) if r.held && r.phase == phase && r.epoch == epoch => last_ok = Instant::now(),
            Ok(r) => {
                tracing::info!(migration = %id, held = r.held, now = %r.phase, "lease lost or migration moved; cancelling activity");
                cancel.cancel();
                return;
            }
            Err(e) => {
                if last_ok.elapsed() > ttl * 2 / 3 {
                    tracing::warn!(migration = %id, error = %e, "cannot renew lease; cancelling activity before it expires");
                    cancel.cancel();
                    return;
                }
            }
        }
    }
}
