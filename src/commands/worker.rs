//! `dmf worker`.

use std::sync::LazyLock;
use std::time::Duration;

use super::ControlPlane;

/// The libraries' defaults, which the flags show and start from: defaults live there, not here.
struct Defaults {
    worker: dmf_worker::Options,
    aws: dmf_aws::Options,
}

static D: LazyLock<Defaults> = LazyLock::new(|| Defaults { worker: dmf_worker::Options::new(String::new()), aws: dmf_aws::Options::default() });

#[derive(clap::Args, Clone)]
pub struct Args {
    #[command(flatten)]
    pub cp: ControlPlane,
    /// Unique worker name (default: host, pid and a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// Activities run at once by this process.
    #[arg(long, default_value_t = D.worker.concurrency)]
    pub concurrency: usize,
    /// Where the local provider creates target clusters.
    #[arg(long, env = "DMF_LOCAL_DIR")]
    pub local_dir: Option<std::path::PathBuf>,
    /// Parallel COPY streams per hydration.
    #[arg(long, default_value_t = D.worker.activities.hydrate_jobs)]
    pub hydrate_jobs: usize,
    /// Split tables larger than this many MiB into block ranges copied in parallel (smaller ones
    /// are copied whole, frozen, several at a time).
    #[arg(long, default_value_t = D.worker.activities.split_bytes >> 20)]
    pub split_mib: u64,
    /// Replication lag limit (ms) of the lag guard.
    #[arg(long, default_value_t = D.worker.activities.lag.limit.as_millis() as u64)]
    pub lag_limit_ms: u64,
    /// Abort when lag stays above the limit for this many seconds.
    #[arg(long, default_value_t = D.worker.activities.lag.window.as_secs())]
    pub lag_window_s: u64,
    /// Seconds between checks of a replicating cluster.
    #[arg(long, default_value_t = D.worker.activities.watch_interval.as_secs_f64(), value_parser = seconds)]
    pub watch_interval: f64,
    /// Lease time-to-live in seconds.
    #[arg(long, default_value_t = D.worker.lease_ttl.as_secs())]
    pub lease_ttl_s: u64,
    /// Seconds between the worker's heartbeats; a worker silent for three is presumed dead and
    /// its jobs go back to the queue.
    #[arg(long, default_value_t = D.worker.heartbeat.as_secs())]
    pub heartbeat_s: u64,
    /// Seconds between passes of the reconciler (nudges migrations whose job was lost).
    #[arg(long, default_value_t = D.worker.reconcile_interval.as_secs())]
    pub reconcile_s: u64,
    /// Abort before the flip when one of the migration's slots keeps more than this many MiB of
    /// WAL on the source (0: no limit); a slot whose wal_status is unreserved or lost always aborts.
    #[arg(long, default_value_t = D.worker.activities.max_slot_wal.map_or(0, |b| b >> 20))]
    pub max_slot_wal_mb: u64,
    /// Drop the replication slots of a migration left in `failed` before the flip for this many
    /// seconds, so that they stop keeping WAL on the source (0: never). The reverse slot (after
    /// the flip) is never dropped automatically.
    #[arg(long, default_value_t = D.worker.activities.drop_slots_after_failed.map_or(0, |d| d.as_secs()))]
    pub drop_slots_after_failed_s: u64,
    /// Attempts of one phase before the migration is marked failed (a crash counts).
    #[arg(long, default_value_t = D.worker.policy.max_attempts)]
    pub max_attempts: u32,
    /// Share of committed source transactions the auditor re-checks while validating (0..1).
    #[arg(long, default_value_t = D.worker.activities.audit.sample_rate)]
    pub audit_sample_rate: f64,
    /// Seconds of continuous validation without a confirmed mismatch before the audit gate opens.
    #[arg(long, default_value_t = D.worker.activities.audit.window.as_secs_f64(), value_parser = seconds)]
    pub audit_window_s: f64,
    /// Rows per full-compare chunk, about.
    #[arg(long, default_value_t = D.worker.activities.audit.chunk_rows)]
    pub audit_chunk_rows: i64,
    /// Full-compare chunks compared at once per migration.
    #[arg(long, default_value_t = D.worker.activities.audit.jobs)]
    pub audit_jobs: usize,
    /// Seconds of shadow reads (reads on the target, every guard quiet) before the flip.
    #[arg(long, default_value_t = D.worker.activities.shadow_reads_for.as_secs_f64(), value_parser = seconds)]
    pub shadow_reads_s: f64,
    /// The flip starts only when heartbeat lag is under this many milliseconds.
    #[arg(long, default_value_t = D.worker.activities.flip.max_lag.as_millis() as u64)]
    pub flip_max_lag_ms: u64,
    /// How many seconds the flip keeps sampling heartbeats for one under the limit before it goes
    /// back to shadow reads for another try.
    #[arg(long, default_value_t = D.worker.activities.flip.lag_patience.as_secs_f64(), value_parser = seconds)]
    pub flip_lag_patience_s: f64,
    /// Flips that began and had to be undone (traffic back on the source) before the migration
    /// fails for an operator to look at.
    #[arg(long, default_value_t = D.worker.activities.flip.max_attempts)]
    pub flip_max_attempts: u32,
    /// During the flip, how long in-flight transactions may take to finish before they are ended.
    #[arg(long, default_value_t = D.worker.activities.flip.hold_deadline.as_millis() as u64)]
    pub hold_deadline_ms: u64,
    /// Seconds traffic stays on the target, with replication back to the source, before the
    /// migration completes.
    #[arg(long, default_value_t = D.worker.activities.soak.as_secs_f64(), value_parser = seconds)]
    pub soak_s: f64,
    /// Keep replication back to the source after completion, so that a rollback stays lossless.
    #[arg(long)]
    pub keep_reverse_replication: bool,
    /// Create local targets with fsync off and `postgres` trusted on loopback (tests, benches and
    /// demos only). Without it a local target's `postgres` gets a generated password, kept in
    /// `dmf.password` in the target's directory (the control plane holds only that path), and
    /// every role needs its password.
    #[arg(long, env = "DMF_FAST_LOCAL_TARGETS")]
    pub fast_local_targets: bool,
    /// Send every AWS call (RDS, DMS) here instead of AWS: a local emulator. Credentials and
    /// region come from the standard AWS chain (AWS_* variables, profile, instance role); a
    /// cluster's `aws.region` in the manifest wins over the chain's region.
    #[arg(long, env = "DMF_AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// Serve Prometheus metrics on this address (`GET /metrics`): jobs and their outcome,
    /// activity durations per phase, lease losses, retries, control-plane errors.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Days of replication-lag history kept in the control plane for the dashboard (raw for 15
    /// minutes, one sample a minute for a day, then one every ten minutes).
    #[arg(long, default_value_t = D.worker.lag_retention.retention.as_secs() / 86400)]
    pub lag_history_days: u64,
    /// Attempts per AWS call when AWS throttles or fails transiently (exponential backoff with
    /// jitter); what still fails is retried by the worker like any activity error.
    #[arg(long, default_value_t = D.aws.max_attempts)]
    pub aws_max_attempts: u32,
    /// First backoff (ms) between those attempts; it doubles up to 20 s.
    #[arg(long, default_value_t = D.aws.initial_backoff.as_millis() as u64)]
    pub aws_initial_backoff_ms: u64,
}

/// A number of seconds: finite and not negative (a Duration cannot hold anything else).
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e9).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{s} is not a number of seconds between 0 and 1e9")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

impl Args {
    pub fn options(&self) -> dmf_worker::Options {
        let mut o = dmf_worker::Options::new(self.cp.database_url.clone());
        if let Some(n) = &self.name {
            o.name = n.clone();
        }
        o.concurrency = self.concurrency.max(1);
        if let Some(d) = &self.local_dir {
            o.activities.local_base_dir = d.clone();
        }
        o.activities.hydrate_jobs = self.hydrate_jobs.max(1);
        o.activities.split_bytes = self.split_mib.max(1) << 20;
        o.activities.lag.limit = Duration::from_millis(self.lag_limit_ms);
        o.activities.lag.window = Duration::from_secs(self.lag_window_s);
        o.activities.watch_interval = Duration::from_secs_f64(self.watch_interval.max(0.05));
        o.activities.fast_local_targets = self.fast_local_targets;
        o.activities.audit.sample_rate = self.audit_sample_rate.clamp(0.0, 1.0);
        o.activities.audit.window = Duration::from_secs_f64(self.audit_window_s.max(0.0));
        o.activities.audit.chunk_rows = self.audit_chunk_rows.max(1);
        o.activities.audit.jobs = self.audit_jobs.max(1);
        o.activities.shadow_reads_for = Duration::from_secs_f64(self.shadow_reads_s.max(0.0));
        o.activities.flip.max_lag = Duration::from_millis(self.flip_max_lag_ms);
        o.activities.flip.lag_patience = Duration::from_secs_f64(self.flip_lag_patience_s);
        o.activities.flip.hold_deadline = Duration::from_millis(self.hold_deadline_ms.max(1));
        o.activities.flip.max_attempts = self.flip_max_attempts.max(1);
        o.activities.soak = Duration::from_secs_f64(self.soak_s.max(0.0));
        o.activities.keep_reverse_replication = self.keep_reverse_replication;
        o.lease_ttl = Duration::from_secs(self.lease_ttl_s.max(3));
        o.heartbeat = Duration::from_secs(self.heartbeat_s.max(1));
        o.reconcile_interval = Duration::from_secs(self.reconcile_s.max(1));
        o.policy.max_attempts = self.max_attempts.max(1);
        o.lag_retention.retention = Duration::from_secs(self.lag_history_days.max(1) * 86400);
        o.activities.max_slot_wal = (self.max_slot_wal_mb > 0).then(|| self.max_slot_wal_mb << 20);
        o.activities.drop_slots_after_failed = (self.drop_slots_after_failed_s > 0).then(|| Duration::from_secs(self.drop_slots_after_failed_s));
        o.activities.aws = dmf_aws::Clients::new(dmf_aws::Options {
            endpoint_url: self.aws_endpoint_url.clone(),
            max_attempts: self.aws_max_attempts.max(1),
            initial_backoff: Duration::from_millis(self.aws_initial_backoff_ms),
            ..dmf_aws::Options::default()
        });
        o
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let worker = dmf_worker::Worker::build(a.options())?;
    let shutdown = super::shutdown_signal();
    if let Some(addr) = a.metrics {
        let bound = dmf_telemetry::serve_metrics(addr, worker.metrics(), shutdown.clone()).await?;
        tracing::info!(%bound, "serving metrics");
    }
    worker.run(shutdown).await?;
    Ok(())
}
