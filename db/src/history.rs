//! What happened to each migration, kept for the operator and for incident reviews: replication
//! lag over time (downsampled as it ages), one cutover record per run of the flip or the rollback,
//! and the event log as the dashboard and `dmf report` read it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{Db, Error};

/// How lag history ages: raw samples for `raw`, then one a minute until `coarse_after`, then one
/// every ten minutes until `retention`, then none.
#[derive(Debug, Clone, Copy)]
pub struct LagRetention {
    pub raw: Duration,
    pub coarse_after: Duration,
    pub retention: Duration,
}

impl Default for LagRetention {
    fn default() -> Self {
        LagRetention { raw: Duration::from_secs(15 * 60), coarse_after: Duration::from_secs(24 * 3600), retention: Duration::from_secs(14 * 24 * 3600) }
    }
}

/// One point of a migration's lag history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LagSample {
    pub at: DateTime<Utc>,
    pub lag_ms: Option<i64>,
    pub lag_bytes: Option<i64>,
    pub retained_bytes: Option<i64>,
    /// Raw samples this point stands for (1 unless downsampled).
    pub samples: i32,
}

/// One run of the flip or the rollback, as recorded when it ended.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Cutover {
    pub id: i64,
    pub migration: Uuid,
    pub cluster: String,
    /// `flip` or `rollback`.
    pub way: String,
    /// `moved` or `undone`.
    pub outcome: String,
    pub hold_epoch: Option<i64>,
    pub worker: Option<String>,
    pub at: DateTime<Utc>,
    /// The run's record (dmf-activities' `FlipRecord`, with what the report adds).
    pub record: serde_json::Value,
}

/// What a new cutover record says.
#[derive(Debug, Clone)]
pub struct NewCutover<'a> {
    pub migration: Uuid,
    pub cluster: &'a str,
    pub way: &'a str,
    pub outcome: &'a str,
    pub hold_epoch: Option<i64>,
    pub worker: Option<&'a str>,
    pub record: serde_json::Value,
}

/// One row of the event log.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub kind: String,
    pub from_phase: Option<String>,
    pub to_phase: Option<String>,
    pub epoch: Option<i64>,
    pub actor: String,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

impl Db {
    /// Fold aged lag samples (`LagRetention`). One process at a time does it; the others skip.
    pub async fn downsample_lag(&self, keep: LagRetention) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('dmf.lag_samples'))").fetch_one(&mut *tx).await?;
        if !mine {
            return Ok(0);
        }
        let secs = |d: Duration| d.as_secs_f64();
        let folded = sqlx::query(include_str!("queries/downsample_lag.sql"))
            .bind(secs(keep.raw))
            .bind(secs(keep.coarse_after.max(keep.raw)))
            .bind(secs(keep.retention.max(keep.coarse_after).max(keep.raw)))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(folded)
    }

    /// A migration's lag history since `since`, oldest first.
    pub async fn lag_history(&self, migration: Uuid, since: DateTime<Utc>) -> Result<Vec<LagSample>, Error> {
        Ok(sqlx::query_as("SELECT at, lag_ms, lag_bytes, retained_bytes, samples FROM dmf.lag_samples WHERE migration = $1 AND at >= $2 ORDER BY at")
            .bind(migration)
            .bind(since)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Record a run of the flip or the rollback; a run already recorded (same hold) is kept as it
    /// was. Written whatever lease this handle holds: the record describes what already happened.
    pub async fn record_cutover(&self, c: &NewCutover<'_>) -> Result<(), Error> {
        sqlx::query(include_str!("queries/insert_cutover.sql"))
            .bind(c.migration)
            .bind(c.cluster)
            .bind(c.way)
            .bind(c.outcome)
            .bind(c.hold_epoch)
            .bind(c.worker)
            .bind(&c.record)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Cutover records of `cluster`, oldest first.
    pub async fn cutovers(&self, cluster: &str) -> Result<Vec<Cutover>, Error> {
        Ok(sqlx::query_as("SELECT id, migration, cluster, way, outcome, hold_epoch, worker, at, record FROM dmf.cutovers WHERE cluster = $1 ORDER BY id")
            .bind(cluster)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Cutover records of every cluster of `fleet`, by wave and cluster, oldest first.
    pub async fn fleet_cutovers(&self, fleet: &str) -> Result<Vec<(i32, Cutover)>, Error> {
        #[derive(sqlx::FromRow)]
        struct Row {
            wave: i32,
            #[sqlx(flatten)]
            cutover: Cutover,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT c.wave, k.id, k.migration, k.cluster, k.way, k.outcome, k.hold_epoch, k.worker, k.at, k.record \
             FROM dmf.cutovers k JOIN dmf.clusters c ON c.name = k.cluster WHERE c.fleet = $1 ORDER BY c.wave, k.cluster, k.id",
        )
        .bind(fleet)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.wave, r.cutover)).collect())
    }

    /// The newest `limit` events of `migration`, newest first.
    pub async fn events(&self, migration: Uuid, limit: i64) -> Result<Vec<EventRow>, Error> {
        Ok(sqlx::query_as("SELECT id, kind, from_phase, to_phase, epoch, actor, detail, at FROM dmf.events WHERE migration = $1 ORDER BY id DESC LIMIT $2")
            .bind(migration)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Every phase change of `migration`, oldest first: its timeline.
    pub async fn transitions(&self, migration: Uuid) -> Result<Vec<EventRow>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, kind, from_phase, to_phase, epoch, actor, detail, at FROM dmf.events WHERE migration = $1 AND to_phase IS NOT NULL ORDER BY id",
        )
        .bind(migration)
        .fetch_all(&self.pool)
        .await?)
    }

    /// When each migration completed (its first entry into `completed`), oldest first: the
    /// fleet's progress over time (`events_completed_idx`).
    pub async fn completions(&self) -> Result<Vec<DateTime<Utc>>, Error> {
        Ok(sqlx::query_scalar("SELECT min(at) FROM dmf.events WHERE to_phase = 'completed' AND migration IS NOT NULL GROUP BY migration ORDER BY 1")
            .fetch_all(&self.pool)
            .await?)
    }

    /// A mark that changes whenever anything the dashboard shows may have: the newest event,
    /// migration update (lag samples move it), audit sample, difference and copy progress.
    pub async fn change_mark(&self) -> Result<String, Error> {
        Ok(sqlx::query_scalar(include_str!("queries/change_mark.sql")).fetch_one(&self.pool).await?)
    }
}
