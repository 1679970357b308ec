//! Enqueueing a manifest, and the scheduler loop that releases waves.

use std::collections::HashMap;
use std::time::Duration;

use dmf_db::Db;
use tokio_util::sync::CancellationToken;

use crate::{Error, Manifest};

/// Check every source answers, then register the fleet (all or nothing).
pub async fn enqueue(db: &Db, manifest: &Manifest, actor: &str, aws: &dmf_aws::Clients) -> Result<Vec<uuid::Uuid>, Error> {
    let mut checks = tokio::task::JoinSet::new();
    for c in &manifest.fleet.clusters {
        // a source password in AWS Secrets Manager: read now, by this process, for its check
        if let Some(arn) = c.settings.get("source_password").and_then(|r| r.get("password_secret")).and_then(|v| v.as_str()) {
            if !dmf_db::secret::fresh(arn) {
                dmf_db::secret::remember(arn, dmf_aws::secrets::password(aws, arn).await.map_err(|e| e.to_string()));
            }
        }
        let reference = dmf_db::secret::PasswordRef::from_json(c.settings.get("source_password"));
        let dsn = reference.and_then(|r| dmf_db::secret::login(&c.source_dsn, r.as_ref(), "dmf enqueue process"));
        let name = c.name.clone();
        checks.spawn(async move {
            let result = match dsn {
                Ok(dsn) => probe(&dsn).await,
                Err(why) => Err(format!("source_password: {why}")),
            };
            (name, result)
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = checks.join_next().await {
        if let Ok((name, Err(message))) = r {
            failures.push((name, message));
        }
    }
    failures.sort_by_key(|(name, _)| manifest.lines.get(name).copied().unwrap_or(0));
    if let Some((cluster, message)) = failures.into_iter().next() {
        let line = manifest.lines.get(&cluster).copied().unwrap_or(0);
        return Err(Error::Unreachable { cluster, line, message });
    }
    Ok(db.register_fleet(&manifest.fleet, actor).await?)
}

async fn probe(dsn: &str) -> Result<(), String> {
    let (client, conn) = dmf_pgconn::tls::connect(dsn, |c| {
        c.connect_timeout(Duration::from_secs(5));
    })
    .await
    .map_err(|e| match &e {
        dmf_pgconn::tls::ConnectError::Postgres(p) => p.as_db_error().map(|db| db.message().to_string()).unwrap_or_else(|| p.to_string()),
        _ => e.to_string(),
    })?;
    let task = tokio::spawn(conn);
    let r = client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| e.to_string());
    drop(client);
    let _ = task.await;
    r
}

/// Time between a scheduler's passes unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The scheduler service: `run` ticks until cancelled. Several may run; one ticks at a time.
pub struct Scheduler {
    db: Db,
    name: String,
    interval: Duration,
    metrics: std::sync::Arc<dmf_telemetry::Registry>,
}

const TICKS: &str = "dmf_scheduler_ticks_total";
const WAVES_RELEASED: &str = "dmf_scheduler_waves_released_total";
const STARTED: &str = "dmf_scheduler_migrations_started_total";
const BREAKERS: &str = "dmf_scheduler_breakers_opened_total";
const ERRORS: &str = "dmf_scheduler_control_plane_errors_total";

impl Scheduler {
    pub fn new(db: Db, name: String, interval: Duration) -> Scheduler {
        let metrics = dmf_telemetry::Registry::new();
        metrics.counter(TICKS, "Passes over the fleets (only the scheduler holding the lock makes them).");
        metrics.counter(WAVES_RELEASED, "Waves released, by fleet.");
        metrics.counter(STARTED, "Clusters started (their migration moved to preflight), by fleet.");
        metrics.counter(BREAKERS, "Circuit breakers opened, by fleet.");
        metrics.counter(ERRORS, "Passes that failed on a control-plane error.");
        Scheduler { db, name, interval, metrics: std::sync::Arc::new(metrics) }
    }

    /// This scheduler's metrics (serve them with `dmf_telemetry::serve_metrics`).
    pub fn metrics(&self) -> std::sync::Arc<dmf_telemetry::Registry> {
        self.metrics.clone()
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        tracing::info!(scheduler = %self.name, "scheduler started");
        loop {
            if let Err(e) = self.tick().await {
                self.metrics.inc(ERRORS, &[]);
                tracing::warn!(scheduler = %self.name, error = %e, "scheduler tick failed; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        tracing::info!(scheduler = %self.name, "scheduler stopped");
        Ok(())
    }

    /// One pass over every fleet: breaker, wave release, cluster starts.
    pub async fn tick(&self) -> Result<(), Error> {
        let Some(lock) = self.db.try_scheduler_lock().await? else { return Ok(()) };
        self.metrics.inc(TICKS, &[]);
        for fleet in self.db.fleets().await? {
            self.tick_fleet(&fleet).await?;
        }
        drop(lock);
        Ok(())
    }

    async fn tick_fleet(&self, fleet: &dmf_db::fleet::FleetRow) -> Result<(), Error> {
        let mut breaker_open = fleet.breaker_open;
        for w in self.db.wave_summaries(&fleet.name).await? {
            if w.released {
                let rate = if w.total > 0 { w.bad as f64 / w.total as f64 } else { 0.0 };
                if !breaker_open && w.bad > 0 && rate > fleet.breaker_threshold {
                    let reason = format!(
                        "wave {}: {} of {} clusters failed or aborted ({:.0}% > {:.0}%)",
                        w.wave, w.bad, w.total, rate * 100.0, fleet.breaker_threshold * 100.0
                    );
                    tracing::warn!(fleet = %fleet.name, wave = w.wave, "circuit breaker open: {reason}");
                    self.db.open_breaker(&fleet.name, &reason, &self.name).await?;
                    self.metrics.inc(BREAKERS, &[("fleet", &fleet.name)]);
                    breaker_open = true;
                }
                if w.settled < w.total {
                    break; // this wave is still running: later waves wait
                }
                continue;
            }
            if !breaker_open {
                tracing::info!(fleet = %fleet.name, wave = w.wave, clusters = w.total, "releasing wave");
                self.db.release_wave(&fleet.name, w.wave, &self.name).await?;
                self.metrics.inc(WAVES_RELEASED, &[("fleet", &fleet.name)]);
            }
            break;
        }
        let (mut total, hosts) = self.db.in_flight_by_host(&fleet.name).await?;
        let mut per_host: HashMap<String, i64> = hosts.into_iter().collect();
        let mut active = match fleet.max_active {
            Some(_) => self.db.active(&fleet.name).await?,
            None => 0,
        };
        for c in self.db.candidates(&fleet.name).await? {
            if total >= fleet.max_concurrent as i64 || fleet.max_active.is_some_and(|max| active >= max as i64) {
                break;
            }
            let on_host = per_host.entry(c.source_host.clone()).or_insert(0);
            if *on_host >= fleet.max_per_source_host as i64 {
                continue;
            }
            if self.db.start_migration(&c, &self.name).await? {
                *on_host += 1;
                total += 1;
                active += 1;
                self.metrics.inc(STARTED, &[("fleet", &fleet.name)]);
                tracing::info!(fleet = %fleet.name, cluster = %c.cluster, migration = %c.migration, "cluster started");
            }
        }
        Ok(())
    }
}
