//! Migrations: loading them, and the phase compare-and-set that moves them (with its event and the
//! next job) in one control-plane transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dmf_workflows::{AbortReason, Phase};
use serde::Serialize;
use uuid::Uuid;

use crate::queue::{self, ActivityJob};
use crate::secret::{login, PasswordRef};
use crate::state::{Patch, Record, Reverse, State};
use crate::lease::{hold, release_in, LeaseToken};
use crate::{Db, Error, Event};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MigrationRow {
    pub id: Uuid,
    pub cluster: String,
    pub phase: String,
    pub epoch: i64,
    pub nudge: i64,
    pub attempts: i32,
    pub phase_started_at: DateTime<Utc>,
    pub failed_phase: Option<String>,
    pub last_error: Option<String>,
    pub abort_reason: Option<String>,
    pub pause_before: Vec<String>,
    pub paused: bool,
    /// What the activities recorded; read it with [`MigrationRow::record`].
    #[sqlx(json)]
    pub state: State,
    pub lag_ms: Option<i64>,
    pub lag_bytes: Option<i64>,
    pub lag_over_since: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub source_dsn: String,
    pub target_dsn: Option<String>,
    pub provider: String,
    pub settings: serde_json::Value,
}

impl MigrationRow {
    pub fn phase(&self) -> Result<Phase, Error> {
        self.phase.parse().map_err(|e| Error::Corrupt(format!("migration of {}: {e}", self.cluster)))
    }

    /// The record `R` of this migration's durable state (its default when none was written).
    pub fn record<R: Record>(&self) -> Result<R, Error> {
        self.state.record_of::<R>(&self.cluster)
    }

    /// Put into `source_dsn` and an adopted `target_dsn` the passwords their references in the
    /// settings (`source_password`, `target_password`) point at, resolved now by this process
    /// (`who`: "worker"). A row read from the control plane holds only the references; a
    /// resolved row is for connecting and is never written back.
    pub fn resolve_logins(&mut self, who: &str) -> Result<(), Error> {
        let bad = |side: &str, why: String| Error::Secret(format!("cluster {}: {side}: {why}", self.cluster));
        let source = PasswordRef::from_json(self.settings.get("source_password")).map_err(|w| bad("source_password", w))?;
        self.source_dsn = login(&self.source_dsn, source.as_ref(), who).map_err(|w| bad("source", w))?;
        let target = PasswordRef::from_json(self.settings.get("target_password")).map_err(|w| bad("target_password", w))?;
        if let Some(t) = &self.target_dsn {
            self.target_dsn = Some(login(t, target.as_ref(), who).map_err(|w| bad("target", w))?);
        }
        Ok(())
    }

    /// The phase a failed migration failed in (None when it is not failed or did not say).
    pub fn failed_in(&self) -> Result<Option<Phase>, Error> {
        if self.phase != Phase::Failed.as_str() {
            return Ok(None);
        }
        self.failed_phase.as_deref().map(|p| p.parse::<Phase>().map_err(|e| Error::Corrupt(format!("cluster {}: failed_phase: {e}", self.cluster)))).transpose()
    }

    fn wrong_phase(&self, what: &str) -> Error {
        Error::WrongPhase { cluster: self.cluster.clone(), phase: self.phase.clone(), what: what.into() }
    }
}

/// A compare-and-set from (`from`, `epoch`) to `to`.
#[derive(Debug, Clone)]
pub struct TransitionRequest {
    pub from: Phase,
    pub epoch: i64,
    pub to: Phase,
    pub actor: String,
    pub note: String,
    pub abort_reason: Option<AbortReason>,
    pub last_error: Option<String>,
    /// The lease holder making this transition: its lease is released in the same transaction, so
    /// the next phase's job can take it at once.
    pub release_lease: Option<String>,
}

/// Why a (phase, epoch) runs again without moving on.
#[derive(Debug, Clone, Copy)]
pub enum Again<'a> {
    /// Nothing ran: the lease was busy, or the reconciler found the migration stranded.
    Nudge,
    /// The activity ran and is fine (a watch tick). Resets the attempt count, so that the cap
    /// counts consecutive failures and a long wait (a steady phase, AWS provisioning) does not use
    /// it up.
    Healthy,
    /// The activity failed with this error, recorded as the last error and as a `retry` event.
    Failed(&'a str),
}

/// Run (`phase`, `epoch`) again after `delay`, as `actor`.
#[derive(Debug, Clone, Copy)]
pub struct FollowUp<'a> {
    pub phase: Phase,
    pub epoch: i64,
    pub delay: Duration,
    pub why: Again<'a>,
    pub actor: &'a str,
    /// The lease holder asking: its lease is released in the same transaction.
    pub release_lease: Option<&'a str>,
}

impl TransitionRequest {
    /// A plain transition: no abort reason, no error, no lease to release.
    pub fn new(from: Phase, epoch: i64, to: Phase, actor: &str, note: impl Into<String>) -> TransitionRequest {
        TransitionRequest {
            from,
            epoch,
            to,
            actor: actor.to_string(),
            note: note.into(),
            abort_reason: None,
            last_error: None,
            release_lease: None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct Moved {
    cluster: String,
    epoch: i64,
    paused: bool,
}

impl Db {
    pub async fn migration(&self, id: Uuid) -> Result<MigrationRow, Error> {
        sqlx::query_as(concat!(include_str!("queries/select_migration.sql"), " WHERE m.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("migration {id} vanished")))
    }

    pub async fn migration_by_cluster(&self, cluster: &str) -> Result<MigrationRow, Error> {
        sqlx::query_as(concat!(include_str!("queries/select_migration.sql"), " WHERE m.cluster = $1"))
            .bind(cluster)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::UnknownCluster(cluster.to_string()))
    }

    /// The phase compare-and-set, its event and the next job, in one transaction.
    ///
    /// `Ok(None)`: the migration had already moved on (a stale or duplicate job) and nothing changed.
    /// `Ok(Some(job))`: moved; `job` is what was enqueued for the new phase (None when the new phase
    /// runs no activity or is paused).
    pub async fn transition(&self, id: Uuid, req: &TransitionRequest) -> Result<Option<Option<ActivityJob>>, Error> {
        let mut tx = self.begin().await?;
        if let Some(holder) = &req.release_lease {
            // a worker that lost its lease (it stalled past it) decides nothing
            hold(&mut tx, &LeaseToken { migration: id, holder: holder.clone(), epoch: req.epoch }).await?;
        }
        let moved: Option<Moved> = sqlx::query_as(include_str!("queries/transition.sql"))
            .bind(id)
            .bind(req.from.as_str())
            .bind(req.epoch)
            .bind(req.to.as_str())
            .bind(req.abort_reason.map(|r| r.as_str()))
            .bind(req.last_error.as_deref().map(|e| crate::secret::redact(e)))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(moved) = moved else {
            return Ok(None);
        };
        if let Some(holder) = &req.release_lease {
            release_in(&mut tx, id, holder).await?;
        }
        Event {
            migration: Some(id),
            cluster: Some(&moved.cluster),
            kind: "transition",
            from: Some(req.from.as_str()),
            to: Some(req.to.as_str()),
            epoch: Some(moved.epoch),
            actor: &req.actor,
            detail: &req.note,
        }
        .insert(&mut tx)
        .await?;
        let job = if req.to.runs_activity() && !moved.paused {
            let job = ActivityJob {
                migration: id,
                cluster: moved.cluster.clone(),
                phase: req.to.as_str().to_string(),
                epoch: moved.epoch,
                nudge: 0,
            };
            queue::push(&mut tx, &job, Duration::ZERO).await?;
            Some(job)
        } else {
            None
        };
        tx.commit().await?;
        tracing::info!(cluster = %moved.cluster, migration = %id, from = %req.from, to = %req.to, epoch = moved.epoch, "transition");
        Ok(Some(job))
    }

    /// Count one more attempt of the current (phase, epoch). `None` if the migration moved on.
    pub async fn begin_attempt(&self, id: Uuid, phase: Phase, epoch: i64) -> Result<Option<i32>, Error> {
        Ok(sqlx::query_scalar(
            "UPDATE dmf.migrations SET attempts = attempts + 1, updated_at = now() \
             WHERE id = $1 AND phase = $2 AND epoch = $3 RETURNING attempts",
        )
        .bind(id)
        .bind(phase.as_str())
        .bind(epoch)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Run the same (phase, epoch) again after `req.delay`: a watch tick, a retry or a nudge (see
    /// [`Again`]). `false` if the migration moved on.
    pub async fn follow_up(&self, id: Uuid, req: &FollowUp<'_>) -> Result<bool, Error> {
        let FollowUp { phase, epoch, delay, why, actor, release_lease } = *req;
        let (error, healthy) = match why {
            Again::Nudge => (None, false),
            Again::Healthy => (None, true),
            Again::Failed(error) => (Some(error), false),
        };
        let mut tx = self.begin().await?;
        if let Some(holder) = release_lease {
            // a worker that lost its lease (it stalled past it) decides nothing
            hold(&mut tx, &LeaseToken { migration: id, holder: holder.to_string(), epoch }).await?;
        }
        let row: Option<(String, i64)> = sqlx::query_as(include_str!("queries/follow_up.sql"))
            .bind(id)
            .bind(phase.as_str())
            .bind(epoch)
            .bind(error.map(|e| crate::secret::redact(e)))
            .bind(healthy)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((cluster, nudge)) = row else {
            return Ok(false);
        };
        if let Some(holder) = release_lease {
            release_in(&mut tx, id, holder).await?;
        }
        if let Some(error) = error {
            let p = phase.as_str();
            Event { migration: Some(id), cluster: Some(&cluster), kind: "retry", from: Some(p), to: Some(p), epoch: Some(epoch), actor, detail: error }
                .insert(&mut tx)
                .await?;
        }
        let job = ActivityJob { migration: id, cluster, phase: phase.as_str().to_string(), epoch, nudge };
        queue::push(&mut tx, &job, delay).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Write the records in `patch` into the migration's durable activity state, each whole.
    pub async fn merge_state(&self, id: Uuid, patch: Patch) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        sqlx::query(include_str!("queries/merge_state.sql")).bind(id).bind(patch.into_json()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Record one replication lag sample and the guard's "over the limit since" marker.
    pub async fn record_lag(
        &self,
        id: Uuid,
        lag_ms: Option<i64>,
        lag_bytes: Option<i64>,
        retained_bytes: Option<i64>,
        over_limit: bool,
    ) -> Result<Option<DateTime<Utc>>, Error> {
        let mut tx = self.begin().await?;
        let since = sqlx::query_scalar(include_str!("queries/record_lag.sql"))
            .bind(id)
            .bind(lag_ms)
            .bind(lag_bytes)
            .bind(over_limit)
            .fetch_one(&mut *tx)
            .await?;
        // the history the dashboard charts (downsampled as it ages: `downsample_lag`)
        sqlx::query(include_str!("queries/insert_lag_sample.sql")).bind(id).bind(lag_ms).bind(lag_bytes).bind(retained_bytes).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(since)
    }

    /// `dmf abort`: move a cluster to `aborting` from any phase that allows it.
    pub async fn request_abort(&self, cluster: &str, actor: &str) -> Result<MigrationRow, Error> {
        // A route whose primary is no longer the source sends writes to the target: tearing it
        // down would lose them, whatever the phase says.
        let route = self.route(cluster).await?;
        self.request(cluster, [Phase::Aborting, Phase::Aborted], |m, phase| {
            let failed_in = m.failed_in()?;
            if route.as_ref().is_some_and(|r| crate::route::endpoint(&r.primary_endpoint) != crate::route::endpoint(&m.source_dsn)) {
                return Err(m.wrong_phase(
                    "the route's primary is no longer the source, so writes go to the target and abort would tear down the database that has them; `dmf rollback` moves traffic back to the source with every write, `dmf resume` retries",
                ));
            }
            if !phase.can_abort(failed_in) {
                return Err(m.wrong_phase(&match failed_in {
                    Some(p) if phase == Phase::Failed => format!(
                        "it failed in {p}, so writes may be on the target and abort would tear down the database that has them; `dmf rollback` moves traffic back to the source with every write, `dmf resume` retries {p}"
                    ),
                    _ => "abort is only possible before traffic moves; after the flip, `dmf rollback` moves traffic back to the source with every write, `dmf resume` retries a failed phase".into(),
                }));
            }
            Ok(TransitionRequest {
                abort_reason: Some(AbortReason::Operator),
                ..TransitionRequest::new(phase, m.epoch, Phase::Aborting, actor, format!("abort requested by {actor}"))
            })
        })
        .await
    }

    /// `dmf rollback`: move a flipped (or completed, while reverse replication is kept) cluster to
    /// `rolling_back`. A cluster already rolling back or rolled back is returned as it is.
    pub async fn request_rollback(&self, cluster: &str, actor: &str) -> Result<MigrationRow, Error> {
        self.request(cluster, [Phase::RollingBack, Phase::RolledBack], |m, phase| {
            if !phase.can_roll_back(m.failed_in()?) {
                return Err(m.wrong_phase(
                    "rollback is only possible once traffic is on the target (flipped, or completed with reverse replication kept); before that, abort",
                ));
            }
            if phase == Phase::Completed && !m.record::<Reverse>()?.kept {
                return Err(m.wrong_phase(
                    "reverse replication was removed at completion (policy keep_reverse_replication = false): a rollback would lose the writes made on the target",
                ));
            }
            Ok(TransitionRequest::new(phase, m.epoch, Phase::RollingBack, actor, format!("rollback requested by {actor}")))
        })
        .await
    }

    /// An operator's request: unless the cluster is already in one of `arrived`, make the
    /// transition `plan` asks for (or refuses); a race lost to a worker's transition looks again.
    async fn request(
        &self,
        cluster: &str,
        arrived: [Phase; 2],
        plan: impl Fn(&MigrationRow, Phase) -> Result<TransitionRequest, Error>,
    ) -> Result<MigrationRow, Error> {
        loop {
            let m = self.migration_by_cluster(cluster).await?;
            let phase = m.phase()?;
            if arrived.contains(&phase) {
                return Ok(m);
            }
            let req = plan(&m, phase)?;
            if self.transition(m.id, &req).await?.is_some() {
                return self.migration(m.id).await;
            }
        }
    }

    /// `dmf resume`: a failed migration re-enters the phase it failed in; a paused one runs.
    pub async fn resume(&self, cluster: &str, actor: &str) -> Result<MigrationRow, Error> {
        let m = self.migration_by_cluster(cluster).await?;
        let phase = m.phase()?;
        if phase == Phase::Failed {
            if let Some(d) = m.state.record_of::<crate::state::SlotsDropped>(&m.cluster)?.slots_dropped {
                return Err(m.wrong_phase(&format!(
                    "its replication slots were dropped ({}); it cannot go on: `dmf abort {cluster}` and enqueue it again",
                    d.reason
                )));
            }
            let to: Phase = m
                .failed_phase
                .as_deref()
                .unwrap_or("preflight")
                .parse()
                .map_err(|e| Error::Corrupt(format!("{e}")))?;
            let req = TransitionRequest::new(phase, m.epoch, to, actor, format!("resumed by {actor}"));
            if self.transition(m.id, &req).await?.is_none() {
                return Err(Error::Conflict(format!("cluster {cluster:?} moved while resuming; look again")));
            }
            // A resumed migration that is told to pause before this phase should not stop again.
            self.unpause(&m, actor).await?;
            return self.migration(m.id).await;
        }
        if m.paused {
            self.unpause(&m, actor).await?;
            return self.migration(m.id).await;
        }
        Err(Error::WrongPhase {
            cluster: cluster.into(),
            phase: m.phase.clone(),
            what: "only failed or paused migrations can be resumed".into(),
        })
    }

    async fn unpause(&self, m: &MigrationRow, actor: &str) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "UPDATE dmf.migrations SET paused = false, nudge = nudge + 1, updated_at = now() \
             WHERE id = $1 AND paused RETURNING phase, epoch, nudge",
        )
        .bind(m.id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((phase, epoch, nudge)) = row {
            Event {
                migration: Some(m.id),
                cluster: Some(&m.cluster),
                kind: "resume",
                from: Some(&phase),
                to: Some(&phase),
                epoch: Some(epoch),
                actor,
                detail: "pause lifted",
            }
            .insert(&mut tx)
            .await?;
            let job = ActivityJob { migration: m.id, cluster: m.cluster.clone(), phase, epoch, nudge };
            queue::push(&mut tx, &job, Duration::ZERO).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Db {
    /// When each phase of a migration was entered, oldest first.
    pub async fn phase_entries(&self, id: Uuid) -> Result<Vec<(String, DateTime<Utc>)>, Error> {
        Ok(sqlx::query_as(
            "SELECT to_phase, at FROM dmf.events WHERE migration = $1 AND kind = 'transition' AND to_phase IS NOT NULL ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }
}
