//! The worker's Prometheus metrics: what it ran and how it went. Fleet-level gauges (migrations
//! per phase, lag per cluster) come from `dmf dashboard`, so that many workers do not export them
//! twice.

use dmf_telemetry::metrics::DURATION_BUCKETS;
use dmf_telemetry::Registry;
use dmf_workflows::Outcome;

pub const JOBS: &str = "dmf_worker_jobs_total";
pub const ACTIVITY_SECONDS: &str = "dmf_worker_activity_duration_seconds";
pub const LEASE_LOSSES: &str = "dmf_worker_lease_losses_total";
pub const RETRIES: &str = "dmf_worker_retries_total";
pub const CONTROL_PLANE_ERRORS: &str = "dmf_worker_control_plane_errors_total";
pub const RUNNING: &str = "dmf_worker_activities_running";

pub fn registry() -> Registry {
    let r = Registry::new();
    r.counter(JOBS, "Activity jobs handled, by phase and outcome (done, watch, retry, revert, abort, fail, cancelled, stale, lease_busy).");
    r.histogram(ACTIVITY_SECONDS, "How long each activity ran, by phase, seconds.", DURATION_BUCKETS);
    r.counter(LEASE_LOSSES, "Activities whose migration lease was lost while they ran (this worker stalled, or the migration moved on).");
    r.counter(RETRIES, "Activities that ended in an error and will run again, by phase.");
    r.counter(CONTROL_PLANE_ERRORS, "Jobs and reconciler passes that failed on a control-plane error.");
    r.gauge(RUNNING, "Activities running in this worker now.");
    r.set(RUNNING, &[], 0.0);
    r
}

/// One activity counted in `RUNNING` until dropped (a panic or a dropped job included).
pub struct Running(std::sync::Arc<Registry>);

impl Running {
    pub fn start(r: &std::sync::Arc<Registry>) -> Running {
        r.add(RUNNING, &[], 1.0);
        Running(r.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.add(RUNNING, &[], -1.0);
    }
}

/// The outcome's label.
pub fn outcome(o: &Outcome) -> &'static str {
    match o {
        Outcome::Done => "done",
        Outcome::Watch(_) => "watch",
        Outcome::Retry { .. } => "retry",
        Outcome::Revert { .. } => "revert",
        Outcome::Abort { .. } => "abort",
        Outcome::Fail { .. } => "fail",
    }
}
