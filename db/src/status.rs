//! The fleet's status as `dmf status` shows it: phase, lag, hydration progress, last error.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::state::{CopyClock, Record, State};
use crate::{Db, Error};

/// One cluster's row of `dmf status`. What the activities recorded is in `state`, for the CLI to
/// read through their record types.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ClusterStatus {
    pub cluster: String,
    pub fleet: String,
    pub wave: i32,
    pub phase: String,
    pub epoch: i64,
    pub paused: bool,
    pub attempts: i32,
    pub lag_ms: Option<i64>,
    pub lag_bytes: Option<i64>,
    /// Since when lag has been over the lag guard's limit (the guard trips after its window).
    pub lag_over_since: Option<DateTime<Utc>>,
    pub rows_copied: i64,
    pub bytes_copied: i64,
    pub bytes_total: i64,
    pub tables_done: i64,
    pub tables_total: i64,
    /// Seconds since hydration started (for the rate), when it has.
    #[sqlx(skip)]
    pub copy_seconds: Option<f64>,
    #[serde(skip)]
    copy_last_update: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub abort_reason: Option<String>,
    pub phase_started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The newest full compare: running, clean, mismatch or unsettled.
    pub audit_status: Option<String>,
    pub audit_chunks_total: Option<i32>,
    pub audit_chunks_done: i64,
    pub audit_differences: i64,
    /// Consistency window (source commit to visible on the target) over recent samples.
    pub window_p50_ms: Option<f64>,
    pub window_p99_ms: Option<f64>,
    pub provider: String,
    /// `logical` (native) or `dms`.
    pub replication: String,
    /// The migration's durable activity state.
    #[serde(skip)]
    #[sqlx(json)]
    pub state: State,
}

impl ClusterStatus {
    /// Bytes per second copied so far.
    pub fn copy_rate(&self) -> Option<f64> {
        match self.copy_seconds {
            Some(s) if s > 0.0 && self.bytes_copied > 0 => Some(self.bytes_copied as f64 / s),
            _ => None,
        }
    }

    /// Seconds left at the current rate, while hydration is running.
    pub fn eta_seconds(&self) -> Option<f64> {
        let rate = self.copy_rate()?;
        if self.phase != "hydrating" || self.bytes_total <= self.bytes_copied {
            return None;
        }
        Some((self.bytes_total - self.bytes_copied) as f64 / rate)
    }

    /// The record `R` of this cluster's durable state.
    pub fn record<R: Record>(&self) -> Result<R, Error> {
        self.state.record_of::<R>(&self.cluster)
    }
}

impl Db {
    /// Status of every cluster (or one), ordered by fleet, wave and name.
    pub async fn status(&self, cluster: Option<&str>) -> Result<Vec<ClusterStatus>, Error> {
        let mut rows: Vec<ClusterStatus> = sqlx::query_as(include_str!("queries/status.sql")).bind(cluster).fetch_all(&self.pool).await?;
        for r in &mut rows {
            // (a clock that does not parse only loses the rate; `dmf status` reports the state)
            let started = r.record::<CopyClock>().ok().and_then(|c| c.copy_started_at);
            r.copy_seconds = match (started, r.copy_last_update) {
                (Some(s), Some(l)) => Some((l - s).num_microseconds().unwrap_or(0) as f64 / 1e6),
                _ => None,
            };
        }
        Ok(rows)
    }
}
