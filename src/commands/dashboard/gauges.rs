//! The fleet's gauges for Prometheus, read from the control plane at each scrape: one place
//! exports them, however many workers run.

use dmf_activities::state::MigrationState;
use dmf_db::Db;
use dmf_telemetry::Registry;

pub const MIGRATIONS: &str = "dmf_migrations";
pub const ABORTED: &str = "dmf_migrations_aborted";
pub const BREAKER: &str = "dmf_fleet_breaker_open";
pub const LAG_SECONDS: &str = "dmf_replication_lag_seconds";
pub const LAG_BYTES: &str = "dmf_replication_lag_bytes";
pub const RETAINED: &str = "dmf_slot_retained_wal_bytes";
pub const COPIED: &str = "dmf_hydration_copied_bytes";
pub const TO_COPY: &str = "dmf_hydration_size_bytes";
pub const RATE: &str = "dmf_hydration_rate_bytes_per_second";
pub const AUDIT_DONE: &str = "dmf_audit_chunks_compared";
pub const AUDIT_PLANNED: &str = "dmf_audit_chunks_planned";
pub const AUDIT_DIFFS: &str = "dmf_audit_differences";
pub const WINDOW_P99: &str = "dmf_audit_window_p99_seconds";
pub const HELD: &str = "dmf_flip_held_seconds";
pub const UNDONE: &str = "dmf_flip_undone_attempts";

pub async fn render(db: &Db) -> anyhow::Result<String> {
    let r = Registry::new();
    r.gauge(MIGRATIONS, "Migrations by fleet, wave and phase.");
    r.gauge(ABORTED, "Aborted migrations by fleet and abort reason.");
    r.gauge(BREAKER, "1 while the fleet's circuit breaker is open (no new wave is released).");
    r.gauge(LAG_SECONDS, "Replication lag of each cluster as its guard last measured it (heartbeat round trip), seconds.");
    r.gauge(LAG_BYTES, "WAL the target has still to apply, bytes.");
    r.gauge(RETAINED, "WAL the source keeps for the migration's slots, bytes.");
    r.gauge(COPIED, "Bytes copied by hydration so far.");
    r.gauge(TO_COPY, "Bytes hydration has to copy in all.");
    r.gauge(RATE, "Hydration's copy rate since it started, bytes per second.");
    r.gauge(AUDIT_DONE, "Chunks of the newest full compare compared so far.");
    r.gauge(AUDIT_PLANNED, "Chunks the newest full compare was planned with.");
    r.gauge(AUDIT_DIFFS, "Confirmed differences between source and target.");
    r.gauge(WINDOW_P99, "Consistency window (source commit to visible on the target), p99 over the recent samples, seconds.");
    r.gauge(HELD, "How long the last flip held traffic, seconds.");
    r.gauge(UNDONE, "Flip attempts undone (traffic returned to the source) in this migration.");
    for f in db.fleets().await? {
        r.set(BREAKER, &[("fleet", &f.name)], if f.breaker_open { 1.0 } else { 0.0 });
    }
    let rows = db.status(None).await?;
    let mut phases: std::collections::BTreeMap<(String, i32, String), usize> = Default::default();
    let mut aborted: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for s in &rows {
        *phases.entry((s.fleet.clone(), s.wave, s.phase.clone())).or_default() += 1;
        if s.phase == "aborted" {
            *aborted.entry((s.fleet.clone(), s.abort_reason.clone().unwrap_or_else(|| "operator".into()))).or_default() += 1;
        }
        let labels = [("fleet", s.fleet.as_str()), ("cluster", s.cluster.as_str())];
        if !matches!(s.phase.as_str(), "pending" | "completed" | "aborted" | "rolled_back") {
            if let Some(ms) = s.lag_ms {
                r.set(LAG_SECONDS, &labels, ms as f64 / 1000.0);
            }
            if let Some(b) = s.lag_bytes {
                r.set(LAG_BYTES, &labels, b as f64);
            }
        }
        let state = MigrationState::of(&s.state).unwrap_or_default();
        if let Some(b) = state.slots.iter().filter(|s| s.side == "source").filter_map(|s| s.retained_bytes).reduce(|a, b| a + b) {
            r.set(RETAINED, &labels, b as f64);
        }
        if s.tables_total > 0 {
            r.set(COPIED, &labels, s.bytes_copied as f64);
            r.set(TO_COPY, &labels, s.bytes_total as f64);
            if let Some(rate) = s.copy_rate() {
                r.set(RATE, &labels, rate);
            }
        }
        if let Some(total) = s.audit_chunks_total {
            r.set(AUDIT_DONE, &labels, s.audit_chunks_done as f64);
            r.set(AUDIT_PLANNED, &labels, f64::from(total));
        }
        r.set(AUDIT_DIFFS, &labels, s.audit_differences as f64);
        if let Some(p99) = s.window_p99_ms {
            r.set(WINDOW_P99, &labels, p99 / 1000.0);
        }
        if let Some(held) = state.flip.held_ms {
            r.set(HELD, &labels, held / 1000.0);
        }
        if !state.flip.undone.is_empty() {
            r.set(UNDONE, &labels, state.flip.undone.len() as f64);
        }
    }
    for ((fleet, wave, phase), n) in phases {
        r.set(MIGRATIONS, &[("fleet", &fleet), ("wave", &wave.to_string()), ("phase", &phase)], n as f64);
    }
    for ((fleet, reason), n) in aborted {
        r.set(ABORTED, &[("fleet", &fleet), ("reason", &reason)], n as f64);
    }
    Ok(r.render())
}
