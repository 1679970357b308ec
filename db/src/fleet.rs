//! Fleets, waves and clusters: what `dmf enqueue` registers and what the scheduler reads.

use dmf_workflows::Phase;
use serde::Serialize;
use uuid::Uuid;

use crate::migration::TransitionRequest;
use crate::{Db, Error, Event};

/// One fleet manifest, validated, ready to register.
#[derive(Debug, Clone)]
pub struct NewFleet {
    pub name: String,
    pub max_concurrent: i32,
    /// Clusters started and not finished at once (None: no bound).
    pub max_active: Option<i32>,
    pub max_per_source_host: i32,
    pub breaker_threshold: f64,
    pub manifest: String,
    pub clusters: Vec<NewCluster>,
}

#[derive(Debug, Clone)]
pub struct NewCluster {
    pub name: String,
    pub wave: i32,
    pub source_dsn: String,
    pub source_host: String,
    pub target_dsn: Option<String>,
    pub provider: String,
    pub pause_before: Vec<String>,
    pub settings: serde_json::Value,
}

/// A pending cluster the scheduler may start.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    pub migration: Uuid,
    pub cluster: String,
    pub epoch: i64,
    pub source_host: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FleetRow {
    pub name: String,
    pub max_concurrent: i32,
    pub max_active: Option<i32>,
    pub max_per_source_host: i32,
    pub breaker_threshold: f64,
    pub breaker_open: bool,
    pub breaker_reason: Option<String>,
}

/// Per wave: how many clusters, how many settled, how many went wrong.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WaveSummary {
    pub wave: i32,
    pub released: bool,
    pub total: i64,
    pub settled: i64,
    pub bad: i64,
}

impl Db {
    /// Register a fleet in one transaction: everything or nothing. A cluster name that is already
    /// in the control plane is refused, naming it.
    pub async fn register_fleet(&self, fleet: &NewFleet, actor: &str) -> Result<Vec<Uuid>, Error> {
        let mut tx = self.pool.begin().await?;
        let names: Vec<String> = fleet.clusters.iter().map(|c| c.name.clone()).collect();
        let taken: Vec<(String, String)> =
            sqlx::query_as("SELECT name, fleet FROM dmf.clusters WHERE name = ANY($1) ORDER BY name")
                .bind(&names)
                .fetch_all(&mut *tx)
                .await?;
        if !taken.is_empty() {
            let list: Vec<String> = taken.iter().map(|(n, f)| format!("{n:?} (fleet {f:?})")).collect();
            return Err(Error::Conflict(format!("already enqueued: {}; nothing was changed", list.join(", "))));
        }
        sqlx::query(include_str!("queries/upsert_fleet.sql"))
            .bind(&fleet.name)
            .bind(fleet.max_concurrent)
            .bind(fleet.max_per_source_host)
            .bind(fleet.breaker_threshold)
            .bind(&fleet.manifest)
            .bind(fleet.max_active)
            .execute(&mut *tx)
            .await?;
        let mut ids = Vec::new();
        for c in &fleet.clusters {
            sqlx::query("INSERT INTO dmf.waves (fleet, wave) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(&fleet.name)
                .bind(c.wave)
                .execute(&mut *tx)
                .await?;
            sqlx::query(include_str!("queries/insert_cluster.sql"))
                .bind(&c.name)
                .bind(&fleet.name)
                .bind(c.wave)
                .bind(&c.source_dsn)
                .bind(&c.source_host)
                .bind(&c.target_dsn)
                .bind(&c.provider)
                .bind(&c.settings)
                .execute(&mut *tx)
                .await?;
            let id = Uuid::new_v4();
            sqlx::query("INSERT INTO dmf.migrations (id, cluster, phase, pause_before) VALUES ($1, $2, 'pending', $3)")
                .bind(id)
                .bind(&c.name)
                .bind(&c.pause_before)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO dmf.routes (cluster, primary_endpoint, read_endpoint) VALUES ($1, $2, $2)",
            )
            .bind(&c.name)
            .bind(crate::route::endpoint(&c.source_dsn))
            .execute(&mut *tx)
            .await?;
            let detail = format!("fleet {} wave {}", fleet.name, c.wave);
            Event { migration: Some(id), cluster: Some(&c.name), kind: "enqueue", from: None, to: Some("pending"), epoch: Some(0), actor, detail: &detail }
                .insert(&mut tx)
                .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    pub async fn fleets(&self) -> Result<Vec<FleetRow>, Error> {
        Ok(sqlx::query_as(
            "SELECT name, max_concurrent, max_active, max_per_source_host, breaker_threshold, breaker_open, breaker_reason \
             FROM dmf.fleets ORDER BY created_at, name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn wave_summaries(&self, fleet: &str) -> Result<Vec<WaveSummary>, Error> {
        let settled: Vec<&str> = Phase::ALL.iter().filter(|p| p.is_settled()).map(|p| p.as_str()).collect();
        Ok(sqlx::query_as(include_str!("queries/wave_summaries.sql")).bind(fleet).bind(&settled).fetch_all(&self.pool).await?)
    }

    pub async fn release_wave(&self, fleet: &str, wave: i32, actor: &str) -> Result<(), Error> {
        let n = sqlx::query("UPDATE dmf.waves SET released_at = now() WHERE fleet = $1 AND wave = $2 AND released_at IS NULL")
            .bind(fleet)
            .bind(wave)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n > 0 {
            self.log_event(None, None, "wave_released", actor, &format!("fleet {fleet} wave {wave}")).await?;
        }
        Ok(())
    }

    pub async fn open_breaker(&self, fleet: &str, reason: &str, actor: &str) -> Result<(), Error> {
        let n = sqlx::query("UPDATE dmf.fleets SET breaker_open = true, breaker_reason = $2 WHERE name = $1 AND NOT breaker_open")
            .bind(fleet)
            .bind(reason)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n > 0 {
            self.log_event(None, None, "breaker_open", actor, &format!("fleet {fleet}: {reason}")).await?;
        }
        Ok(())
    }

    /// `dmf resume --fleet`: close the breaker so the scheduler releases waves again.
    pub async fn close_breaker(&self, fleet: &str, actor: &str) -> Result<(), Error> {
        let n = sqlx::query("UPDATE dmf.fleets SET breaker_open = false, breaker_reason = NULL WHERE name = $1")
            .bind(fleet)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::Conflict(format!("no fleet named {fleet:?}")));
        }
        self.log_event(None, None, "breaker_closed", actor, &format!("fleet {fleet}")).await
    }

    /// Pending clusters of released waves, oldest wave first.
    pub async fn candidates(&self, fleet: &str) -> Result<Vec<Candidate>, Error> {
        Ok(sqlx::query_as(include_str!("queries/candidates.sql")).bind(fleet).fetch_all(&self.pool).await?)
    }

    /// In-flight migrations, per source host (all fleets: a host's limit protects the host).
    /// A fleet's clusters started and not finished: preflight to flipped, rolling back included
    /// (a failed one waits for an operator and is not counted).
    pub async fn active(&self, fleet: &str) -> Result<i64, Error> {
        let idle: Vec<&str> = [Phase::Pending, Phase::Completed, Phase::Aborted, Phase::Failed, Phase::RolledBack].iter().map(|p| p.as_str()).collect();
        Ok(sqlx::query_scalar("SELECT count(*) FROM dmf.migrations m JOIN dmf.clusters c ON c.name = m.cluster WHERE c.fleet = $1 AND m.phase <> ALL($2)")
            .bind(fleet)
            .bind(&idle)
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn in_flight_by_host(&self, fleet: &str) -> Result<(i64, Vec<(String, i64)>), Error> {
        let in_flight: Vec<&str> = Phase::ALL.iter().filter(|p| p.is_in_flight()).map(|p| p.as_str()).collect();
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dmf.migrations m JOIN dmf.clusters c ON c.name = m.cluster \
             WHERE c.fleet = $1 AND m.phase = ANY($2)",
        )
        .bind(fleet)
        .bind(&in_flight)
        .fetch_one(&self.pool)
        .await?;
        let hosts = sqlx::query_as(
            "SELECT c.source_host, count(*) FROM dmf.migrations m JOIN dmf.clusters c ON c.name = m.cluster \
             WHERE m.phase = ANY($1) GROUP BY c.source_host",
        )
        .bind(&in_flight)
        .fetch_all(&self.pool)
        .await?;
        Ok((total, hosts))
    }

    /// Move a pending cluster into preflight (the scheduler's only write to a migration).
    pub async fn start_migration(&self, c: &Candidate, actor: &str) -> Result<bool, Error> {
        let req = TransitionRequest::new(Phase::Pending, c.epoch, Phase::Preflight, actor, "released by the scheduler");
        Ok(self.transition(c.migration, &req).await?.is_some())
    }

    /// The scheduler's tick lock: `Some(tx)` holds it until dropped, `None` when another scheduler
    /// is inside its tick (transaction-scoped advisory lock).
    pub async fn try_scheduler_lock(&self) -> Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>, Error> {
        let mut tx = self.pool.begin().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('dmf.scheduler'))")
            .fetch_one(&mut *tx)
            .await?;
        Ok(if got { Some(tx) } else { None })
    }
}
