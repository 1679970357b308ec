//! The worker pool: claims activity jobs from the apalis queue, runs them under a lease, and
//! advances the state machine with one compare-and-set per transition.
//!
//! Survives what workers run into: duplicate and stale jobs (the epoch check), a second worker
//! getting the same job (the lease), a crash half-way (idempotent activities plus the reconciler
//! that re-nudges stranded migrations), and a control-plane outage (the worker waits, reconnects
//! and starts a new apalis incarnation instead of exiting).

pub mod error;
mod handler;
pub mod metrics;
mod reconcile;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use dmf_db::{ActivityJob, Db, QUEUE};
use dmf_workflows::{Phase, Policy};
use tokio_util::sync::CancellationToken;

pub use error::Error;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub database_url: String,
    /// Unique per process; default `<host>-<pid>-<random>`.
    pub name: String,
    /// Activities run at once by this process.
    pub concurrency: usize,
    pub activities: dmf_activities::Config,
    pub policy: Policy,
    pub lease_ttl: Duration,
    /// Time allowed per phase (from entering it) before the phase_timeout guard aborts.
    pub phase_timeouts: HashMap<Phase, Duration>,
    pub heartbeat: Duration,
    pub poll_interval: Duration,
    pub reconcile_interval: Duration,
    /// How long a graceful shutdown lets running activities finish before cancelling them.
    pub drain_timeout: Duration,
    /// How lag history ages in the control plane (the reconciler folds it).
    pub lag_retention: dmf_db::history::LagRetention,
}

impl Options {
    pub fn new(database_url: String) -> Options {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "worker".into());
        let rand = uuid::Uuid::new_v4().simple().to_string();
        let mut phase_timeouts = HashMap::new();
        phase_timeouts.insert(Phase::Preflight, Duration::from_secs(600));
        phase_timeouts.insert(Phase::Provisioning, Duration::from_secs(3600));
        phase_timeouts.insert(Phase::Schema, Duration::from_secs(3600));
        phase_timeouts.insert(Phase::Hydrating, Duration::from_secs(48 * 3600));
        Options {
            database_url,
            name: format!("{host}-{}-{}", std::process::id(), &rand[..6]),
            concurrency: 8,
            activities: dmf_activities::Config::default(),
            policy: Policy::default(),
            lease_ttl: Duration::from_secs(15),
            phase_timeouts,
            heartbeat: Duration::from_secs(5),
            poll_interval: Duration::from_secs(2),
            reconcile_interval: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            lag_retention: dmf_db::history::LagRetention::default(),
        }
    }
}

/// State shared by every job this process runs.
pub(crate) struct Shared {
    pub db: Db,
    pub opts: Options,
    pub permits: tokio::sync::Semaphore,
    /// Cancelled when the drain timeout runs out: running activities stop.
    pub hard_stop: CancellationToken,
    pub metrics: Arc<dmf_telemetry::Registry>,
}

/// The worker service: `run` ends when `shutdown` is cancelled and running activities drained.
pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    pub fn build(opts: Options) -> Result<Worker, Error> {
        let db = Db::connect_lazy(&opts.database_url)?;
        let permits = tokio::sync::Semaphore::new(opts.concurrency.max(1));
        let metrics = Arc::new(metrics::registry());
        Ok(Worker { shared: Arc::new(Shared { db, opts, permits, hard_stop: CancellationToken::new(), metrics }) })
    }

    /// This worker's metrics (serve them with `dmf_telemetry::serve_metrics`).
    pub fn metrics(&self) -> Arc<dmf_telemetry::Registry> {
        self.shared.metrics.clone()
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let shared = self.shared;
        let reconciler = tokio::spawn(reconcile::run(shared.clone(), shutdown.clone()));
        let mut incarnation = 0u32;
        let mut backoff = Duration::from_millis(500);
        while !shutdown.is_cancelled() {
            // Wait for the control plane instead of dying with it.
            if !shared.db.wait_until_reachable(Duration::from_secs(1)).await {
                tracing::warn!(worker = %shared.opts.name, "control plane unreachable; waiting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
            backoff = Duration::from_millis(500);
            incarnation += 1;
            // apalis refuses two live workers with one name; a new incarnation gets a new one.
            let name = format!("{}-{incarnation}", shared.opts.name);
            tracing::info!(worker = %name, "worker started");
            let config = apalis_postgres::Config::default()
                .queue(QUEUE)
                .batch_size(shared.opts.concurrency.max(1))
                .heartbeat_interval(shared.opts.heartbeat)
                .missed_heartbeats(3);
            let backend = PostgresStorage::<ActivityJob>::new(shared.db.pool())
                .with_config(config)
                .with_pubsub()
                .poll_with_interval(shared.opts.poll_interval);
            let worker = WorkerBuilder::new(name.as_str()).backend(backend).data(shared.clone()).build(handle);
            let stop = shutdown.clone();
            let drain = shared.opts.drain_timeout;
            let hard_stop = shared.hard_stop.clone();
            let result = worker
                .run_until(async move {
                    stop.cancelled().await;
                    // Let running activities finish, then cancel what is left.
                    tokio::spawn(async move {
                        tokio::time::sleep(drain).await;
                        hard_stop.cancel();
                    });
                    Ok::<(), std::io::Error>(())
                })
                .await;
            match result {
                Ok(()) if shutdown.is_cancelled() => break,
                Ok(()) => tracing::warn!(worker = %name, "worker stopped on its own (control plane lost?); restarting"),
                Err(e) => tracing::warn!(worker = %name, error = %e, "worker failed; restarting"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        shared.hard_stop.cancel();
        let _ = reconciler.await;
        tracing::info!(worker = %shared.opts.name, "worker stopped");
        Ok(())
    }
}

async fn handle(job: ActivityJob, shared: Data<Arc<Shared>>) -> Result<(), BoxDynError> {
    handler::handle(&shared, job).await.map_err(|e| {
        shared.metrics.inc(metrics::CONTROL_PLANE_ERRORS, &[]);
        Box::new(e) as BoxDynError
    })
}
