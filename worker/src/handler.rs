//! One activity job: check it is current, take the lease, run the activity with its deadline while
//! renewing the lease, then make the decision durable.

use std::time::{Duration, Instant};

use dmf_activities::lease::LeaseClock;
use futures::FutureExt;
use tokio_util::task::AbortOnDropHandle;
use dmf_activities::Context;
use dmf_db::lease::LeaseToken;
use dmf_db::{ActivityJob, Again, FollowUp};
use dmf_workflows::{AbortReason, Decision, Outcome, Phase};
use tokio_util::sync::CancellationToken;

use crate::{metrics, Error, Shared};

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
    // a job older than the migration's last follow-up was superseded (the reconciler nudged past a
    // worker that stalled with it): running both would double every later job
    if m.phase != job.phase || m.epoch != job.epoch || m.paused || job.nudge < m.nudge {
        shared.metrics.inc(metrics::JOBS, &[("phase", phase.as_str()), ("outcome", "stale")]);
        tracing::debug!(cluster = %job.cluster, migration = %job.migration, %key, now = %m.phase, "stale job: nothing to do");
        return Ok(());
    }
    let holder = format!("{}:{key}", shared.opts.name);
    let ttl = shared.opts.lease_ttl;
    let asked = Instant::now();
    if !shared.db.acquire_lease(m.id, &holder, m.epoch, ttl).await? {
        // Someone runs this migration right now (a duplicate, or the previous phase still winding
        // down). Look again once their lease could have expired.
        tracing::debug!(cluster = %m.cluster, migration = %m.id, %key, "lease busy; retrying later");
        shared.metrics.inc(metrics::JOBS, &[("phase", phase.as_str()), ("outcome", "lease_busy")]);
        let again = FollowUp { phase, epoch: m.epoch, delay: ttl / 3, why: Again::Nudge, actor: &shared.opts.name, release_lease: None };
        shared.db.follow_up(m.id, &again).await?;
        return Ok(());
    }
    let clock = LeaseClock::new(asked, ttl);
    // every log line of the activity carries these (`--log-format json`: under "span")
    let span = tracing::info_span!("activity", cluster = %m.cluster, migration = %m.id, phase = %phase, epoch = m.epoch);
    let result = tracing::Instrument::instrument(run_leased(shared, &job, phase, &holder, clock), span).await;
    if let Err(e) = shared.db.release_lease(m.id, &holder).await {
        tracing::warn!(cluster = %m.cluster, migration = %m.id, error = %e, "could not release lease; it expires on its own");
    }
    result
}

async fn run_leased(shared: &Shared, job: &ActivityJob, phase: Phase, holder: &str, clock: LeaseClock) -> Result<(), Error> {
    // Re-read under the lease: the migration may have moved while we waited for it.
    let m = shared.db.migration(job.migration).await?;
    if m.phase != job.phase || m.epoch != job.epoch {
        return Ok(());
    }
    let Some(attempt) = shared.db.begin_attempt(m.id, phase, m.epoch).await? else { return Ok(()) };
    let cancel = shared.hard_stop.child_token();
    // aborted however this function ends, a panic included: a renewer that outlived its activity
    // would keep the migration's lease forever
    let renewer = AbortOnDropHandle::new(tokio::spawn(renew(shared.db.clone(), m.id, holder.to_string(), job.phase.clone(), m.epoch, (shared.opts.lease_ttl, clock.clone()), cancel.clone())));
    // every control-plane write the activity makes holds only while this lease does
    let db = shared.db.leased(LeaseToken { migration: m.id, holder: holder.to_string(), epoch: m.epoch });

    let elapsed = (chrono::Utc::now() - m.phase_started_at).to_std().unwrap_or_default();
    let deadline = shared.opts.phase_timeouts.get(&phase).copied();
    let started = Instant::now();
    tracing::info!(cluster = %m.cluster, migration = %m.id, phase = %phase, epoch = m.epoch, attempt, "activity started");
    let _running = metrics::Running::start(&shared.metrics);
    dmf_activities::fetch_secrets(&m, &shared.opts.activities.aws).await;
    let (outcome, panicked) = match Context::new(db, m.clone(), cancel.clone(), shared.opts.activities.clone()) {
        Err(e) => (e.into_outcome(), false),
        Ok(mut ctx) => {
            ctx.lease = Some(clock);
            match deadline {
                Some(limit) if elapsed >= limit => (timeout_outcome(phase, limit), false),
                Some(limit) => tokio::select! {
                    o = unwound(phase, &ctx) => o,
                    _ = tokio::time::sleep(limit - elapsed) => (timeout_outcome(phase, limit), false),
                },
                None => unwound(phase, &ctx).await,
            }
        }
    };
    let cancelled = cancel.is_cancelled();
    renewer.abort();
    let labels = [("phase", phase.as_str()), ("outcome", if cancelled { "cancelled" } else { metrics::outcome(&outcome) })];
    shared.metrics.inc(metrics::JOBS, &labels);
    shared.metrics.observe(metrics::ACTIVITY_SECONDS, &labels[..1], started.elapsed().as_secs_f64());
    if cancelled && !shared.hard_stop.is_cancelled() {
        shared.metrics.inc(metrics::LEASE_LOSSES, &[]);
    }
    if cancelled {
        // Lease lost, migration moved on (an abort), or shutdown: the decision is someone else's.
        tracing::info!(cluster = %m.cluster, migration = %m.id, phase = %phase, "activity cancelled; leaving the decision to the next run");
        return Ok(());
    }
    let decision = match &outcome {
        // a flip that panicked may hold traffic and fence a side: like a crash, it is run again at
        // once (whatever the attempt count), and that run undoes it first
        Outcome::Retry { error } if panicked && matches!(phase, Phase::Flipping | Phase::RollingBack) => Decision::Retry { after: Duration::ZERO, error: error.clone() },
        _ => shared.opts.policy.decide(phase, outcome.clone(), attempt as u32),
    };
    match &outcome {
        Outcome::Watch(_) => tracing::debug!(cluster = %m.cluster, migration = %m.id, phase = %phase, "watch"),
        _ => tracing::info!(cluster = %m.cluster, migration = %m.id, phase = %phase, took_ms = started.elapsed().as_millis() as u64, ?outcome, "activity finished"),
    }
    apply(shared, &m, phase, decision, holder).await
}

/// Run the activity; a panic in it is an error of this attempt (retried, then failed at the cap),
/// recorded with the phase, never a worker that keeps the lease without running anything. Returns
/// whether it panicked.
async fn unwound(phase: Phase, ctx: &Context) -> (Outcome, bool) {
    // boxed: the activities' futures nest deep, and the handler's future type with them
    match std::panic::AssertUnwindSafe(Box::pin(dmf_activities::run(phase, ctx))).catch_unwind().await {
        Ok(outcome) => (outcome, false),
        Err(payload) => {
            let what = payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "no message".into());
            tracing::error!(cluster = %ctx.cluster(), migration = %ctx.migration.id, phase = %phase, panic = %what, "the activity panicked");
            (Outcome::Retry { error: format!("the {phase} activity panicked: {what}") }, true)
        }
    }
}

fn timeout_outcome(phase: Phase, limit: Duration) -> Outcome {
    Outcome::Abort { reason: AbortReason::PhaseTimeout, detail: format!("{phase} took longer than {}s", limit.as_secs()) }
}

/// Make the decision durable, retrying through a short control-plane outage. If it never lands,
/// the reconciler runs the (idempotent) activity again later.
async fn apply(shared: &Shared, m: &dmf_db::MigrationRow, phase: Phase, decision: Decision, holder: &str) -> Result<(), Error> {
    let actor = shared.opts.name.clone();
    if let Decision::Retry { .. } = &decision {
        shared.metrics.inc(metrics::RETRIES, &[("phase", phase.as_str())]);
    }
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
            Err(e @ dmf_db::Error::LeaseLost { .. }) => {
                shared.metrics.inc(metrics::LEASE_LOSSES, &[]);
                // this worker stalled past its lease: another may run the migration now
                tracing::warn!(cluster = %m.cluster, migration = %m.id, phase = %phase, error = %e, "decision not recorded: the lease was lost");
                return Ok(());
            }
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
async fn renew(db: dmf_db::Db, id: uuid::Uuid, holder: String, phase: String, epoch: i64, (ttl, clock): (Duration, LeaseClock), cancel: CancellationToken) {
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        let sent = Instant::now();
        // a renewal that hangs (a stalled control plane) is as good as a failed one
        let renewed = tokio::time::timeout(ttl / 3, db.renew_lease(id, &holder, ttl))
            .await
            .unwrap_or_else(|_| Err(dmf_db::Error::Conflict("lease renewal timed out".into())));
        match renewed {
            Ok(r) if r.held && r.phase == phase && r.epoch == epoch => {
                clock.renewed(sent, ttl);
                last_ok = Instant::now();
            }
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
