//! The fleet's status as `dmf status` shows it: phase, lag, hydration progress, last error.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Db, Error};

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
    pub rows_copied: i64,
    pub bytes_copied: i64,
    pub bytes_total: i64,
    pub tables_done: i64,
    pub tables_total: i64,
    /// Seconds since hydration started (for the rate), when it has.
    pub copy_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub abort_reason: Option<String>,
    pub phase_started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `open` once the auditor lets the cluster move on.
    pub audit_gate: Option<String>,
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
    /// DMS replication: task status, full-load progress, per-table statistics with DMS validation.
    pub dms: Option<serde_json::Value>,
    pub dms_summary: Option<String>,
    /// An Aurora target as AWS last reported it: cluster and instance statuses, endpoints.
    pub aws_target: Option<serde_json::Value>,
}

impl ClusterStatus {
    /// Bytes per second copied so far.
    pub fn copy_rate(&self) -> Option<f64> {
        match self.copy_seconds {
            Some(s) if s > 0.0 && self.bytes_copied > 0 => Some(self.bytes_copied as f64 / s),
            _ => None,
        }
    }

    /// One line on an Aurora target still coming up: the cluster's and each instance's status.
    pub fn aws_target_summary(&self) -> Option<String> {
        let t = self.aws_target.as_ref()?;
        let instances: Vec<String> = t["instances"]
            .as_array()
            .map(|a| a.iter().map(|i| format!("{} {}", i["id"].as_str().unwrap_or("?"), i["status"].as_str().unwrap_or("?"))).collect())
            .unwrap_or_default();
        Some(format!("aurora {}; {}", t["cluster_status"].as_str().unwrap_or("absent"), instances.join(", ")))
    }

    /// Seconds left at the current rate, while hydration is running.
    pub fn eta_seconds(&self) -> Option<f64> {
        let rate = self.copy_rate()?;
        if self.phase != "hydrating" || self.bytes_total <= self.bytes_copied {
            return None;
        }
        Some((self.bytes_total - self.bytes_copied) as f64 / rate)
    }
}

impl Db {
    /// Status of every cluster (or one), ordered by fleet, wave and name.
    pub async fn status(&self, cluster: Option<&str>) -> Result<Vec<ClusterStatus>, Error> {
        Ok(sqlx::query_as(include_str!("queries/status.sql")).bind(cluster).fetch_all(&self.pool).await?)
    }
}
