//! The auditor's durable state: full-compare runs and their chunks (so that a crash loses at most
//! the chunks in flight), continuous samples (consistency window) and confirmed differences.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{Db, Error};

/// A chunk of a full compare: a key range of one table.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditChunk {
    pub run: i64,
    pub table_name: String,
    pub chunk: i32,
    pub lo: Option<Vec<String>>,
    pub hi: Option<Vec<String>>,
    pub status: String,
    pub attempts: i32,
}

/// One planned chunk, before it is stored.
#[derive(Debug, Clone)]
pub struct PlannedChunk {
    pub table: String,
    pub lo: Option<Vec<String>>,
    pub hi: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRun {
    pub id: i64,
    pub status: String,
    pub source_lsn: Option<String>,
    pub chunks_total: i32,
    pub chunks_done: i64,
    pub chunks_unsettled: i64,
    pub rows_compared: i64,
    pub mismatches: i64,
    pub requested_by: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A confirmed difference between source and target.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Difference {
    pub id: i64,
    pub run: Option<i64>,
    /// `full` (found by a full compare) or `sample` (by continuous validation).
    pub found_by: String,
    /// `missing_on_target`, `missing_on_source` or `value`.
    pub kind: String,
    pub table_name: Option<String>,
    pub key: Option<serde_json::Value>,
    pub columns: Option<Vec<String>>,
    pub lsn: Option<String>,
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// A difference to record.
#[derive(Debug, Clone)]
pub struct NewDifference {
    pub kind: String,
    pub table: String,
    pub key: serde_json::Value,
    pub columns: Vec<String>,
    pub lsn: String,
    pub detail: serde_json::Value,
}

/// The continuous sampler's figures over its recent history.
#[derive(Debug, Clone, Default, Serialize, sqlx::FromRow)]
pub struct SampleSummary {
    pub samples: i64,
    pub matched: i64,
    pub mismatched: i64,
    pub unsettled: i64,
    /// Timed, their rows not re-checked (the slice had its re-checks).
    pub timed_only: i64,
    /// Not applied on the target within the fence timeout: no window.
    pub untimed: i64,
    pub window_p50_ms: Option<f64>,
    pub window_p99_ms: Option<f64>,
    pub first_at: Option<DateTime<Utc>>,
}

impl Db {
    /// The newest full-compare run of a migration, with its progress.
    pub async fn latest_audit_run(&self, migration: Uuid) -> Result<Option<AuditRun>, Error> {
        Ok(sqlx::query_as(include_str!("queries/audit_run.sql")).bind(migration).bind(None::<i64>).fetch_optional(&self.pool).await?)
    }

    pub async fn audit_run(&self, migration: Uuid, run: i64) -> Result<Option<AuditRun>, Error> {
        Ok(sqlx::query_as(include_str!("queries/audit_run.sql")).bind(migration).bind(Some(run)).fetch_optional(&self.pool).await?)
    }

    /// Store a planned full compare: the run and all of its chunks, in one transaction.
    pub async fn create_audit_run(&self, migration: Uuid, source_lsn: &str, chunks: &[PlannedChunk], requested_by: &str) -> Result<i64, Error> {
        let mut tx = self.begin().await?;
        let run: i64 = sqlx::query_scalar(
            "INSERT INTO dmf.audit_runs (migration, source_lsn, chunks_total, requested_by) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(migration)
        .bind(source_lsn)
        .bind(chunks.len() as i32)
        .bind(requested_by)
        .fetch_one(&mut *tx)
        .await?;
        // one statement for every chunk (a run of a big table has thousands)
        let mut numbers = std::collections::HashMap::<&str, i32>::new();
        let rows: Vec<serde_json::Value> = chunks
            .iter()
            .map(|c| {
                let n = numbers.entry(c.table.as_str()).or_insert(0);
                *n += 1;
                serde_json::json!({ "table": c.table, "chunk": *n - 1, "lo": c.lo, "hi": c.hi })
            })
            .collect();
        sqlx::query(include_str!("queries/insert_audit_chunks.sql")).bind(run).bind(serde_json::Value::Array(rows)).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(run)
    }

    /// Chunks of a run still to compare: never done, or unsettled with attempts left.
    pub async fn open_audit_chunks(&self, run: i64, max_attempts: i32) -> Result<Vec<AuditChunk>, Error> {
        Ok(sqlx::query_as(
            "SELECT run, table_name, chunk, lo, hi, status, attempts FROM dmf.audit_chunks \
             WHERE run = $1 AND (status = 'pending' OR (status = 'unsettled' AND attempts < $2)) ORDER BY table_name, chunk",
        )
        .bind(run)
        .bind(max_attempts)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Record one chunk's outcome with its differences, in one transaction.
    pub async fn finish_audit_chunk(
        &self,
        migration: Uuid,
        chunk: &AuditChunk,
        status: &str,
        source_rows: i64,
        target_rows: i64,
        differences: &[NewDifference],
    ) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE dmf.audit_chunks SET status = $4, attempts = attempts + 1, source_rows = $5, target_rows = $6, done_at = now() \
             WHERE run = $1 AND table_name = $2 AND chunk = $3",
        )
        .bind(chunk.run)
        .bind(&chunk.table_name)
        .bind(chunk.chunk)
        .bind(status)
        .bind(source_rows)
        .bind(target_rows)
        .execute(&mut *tx)
        .await?;
        for d in differences {
            insert_difference(&mut tx, migration, Some(chunk.run), "full", d).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Close a run: clean when every chunk is clean, mismatch when any differed.
    pub async fn finish_audit_run(&self, run: i64) -> Result<String, Error> {
        let mut tx = self.begin().await?;
        let status = sqlx::query_scalar(
            "UPDATE dmf.audit_runs r SET finished_at = now(), status = CASE \
               WHEN EXISTS (SELECT 1 FROM dmf.audit_chunks c WHERE c.run = r.id AND c.status = 'mismatch') THEN 'mismatch' \
               WHEN EXISTS (SELECT 1 FROM dmf.audit_chunks c WHERE c.run = r.id AND c.status <> 'clean') THEN 'unsettled' \
               ELSE 'clean' END \
             WHERE id = $1 RETURNING status",
        )
        .bind(run)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(status)
    }

    /// Record one checked sample of the change stream, and what it found.
    pub async fn record_audit_sample(
        &self,
        migration: Uuid,
        window_ms: Option<f64>,
        rows_checked: i32,
        status: &str,
        commit_lsn: &str,
        differences: &[NewDifference],
    ) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO dmf.audit_samples (migration, window_ms, rows_checked, status, commit_lsn) VALUES ($1, $2, $3, $4, $5)")
            .bind(migration)
            .bind(window_ms)
            .bind(rows_checked)
            .bind(status)
            .bind(commit_lsn)
            .execute(&mut *tx)
            .await?;
        for d in differences {
            insert_difference(&mut tx, migration, None, "sample", d).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Record samples whose windows were timed and whose rows were not re-checked (status
    /// `timed`), each `(window_ms, commit_lsn)`, in one statement.
    pub async fn record_audit_windows(&self, migration: Uuid, windows: &[(Option<f64>, String)]) -> Result<(), Error> {
        let (ms, lsns): (Vec<Option<f64>>, Vec<String>) = windows.iter().cloned().unzip();
        sqlx::query(include_str!("queries/insert_audit_windows.sql")).bind(migration).bind(ms).bind(lsns).execute(&self.pool).await?;
        Ok(())
    }

    /// The sampler's history since `since` (p50/p99 of the consistency window).
    pub async fn sample_summary(&self, migration: Uuid, since: Option<DateTime<Utc>>) -> Result<SampleSummary, Error> {
        self.sample_summary_until(migration, since, None).await
    }

    /// The sampler's history from `since` to `until` (what the audit gate was decided on).
    pub async fn sample_summary_until(&self, migration: Uuid, since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> Result<SampleSummary, Error> {
        Ok(sqlx::query_as(include_str!("queries/sample_summary.sql")).bind(migration).bind(since).bind(until).fetch_one(&self.pool).await?)
    }

    /// Confirmed differences of a migration, newest first.
    pub async fn differences(&self, migration: Uuid, limit: i64) -> Result<Vec<Difference>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, run, kind AS found_by, status AS kind, table_name, key, columns, lsn, detail, at \
             FROM dmf.audit_results WHERE migration = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(migration)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

async fn insert_difference(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    migration: Uuid,
    run: Option<i64>,
    found_by: &str,
    d: &NewDifference,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO dmf.audit_results (migration, run, kind, status, table_name, key, columns, lsn, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(migration)
    .bind(run)
    .bind(found_by)
    .bind(&d.kind)
    .bind(&d.table)
    .bind(&d.key)
    .bind(&d.columns)
    .bind(&d.lsn)
    .bind(&d.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
