//! `dmf status [cluster] [--watch] [--json]`: phase, lag, hydration and audit progress, last error.

use std::time::Duration;

use dmf_activities::state::{Gate, MigrationState};
use dmf_db::status::ClusterStatus;
use dmf_db::secret::redact;
use serde::Serialize;

use super::ControlPlane;
use crate::output;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Redraw every two seconds until interrupted.
    #[arg(long)]
    pub watch: bool,
    #[arg(long)]
    pub json: bool,
}

/// One cluster as `dmf status` shows it: the control plane's row and the activities' records.
#[derive(Serialize)]
pub struct View {
    #[serde(flatten)]
    pub status: ClusterStatus,
    pub copy_bytes_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
    /// `open` once the auditor lets the cluster move on.
    pub audit_gate: Gate,
    /// DMS replication: task status, full-load progress, per-table statistics with DMS validation.
    pub dms: Option<dmf_aws::dms::Progress>,
    pub dms_summary: Option<String>,
    /// An Aurora target as AWS last reported it: cluster and instance statuses, endpoints.
    pub aws_target: Option<dmf_aws::rds::TargetState>,
    /// Everything the activities recorded, passwords left out.
    pub state: MigrationState,
    /// Why `state` is empty: what the activities recorded does not parse (an operator looks).
    pub state_error: Option<String>,
}

impl View {
    /// The view of one cluster; a state that does not parse is shown as such, not hidden with
    /// the rest of the fleet.
    pub fn of(status: ClusterStatus) -> View {
        let (mut state, state_error) = match MigrationState::of(&status.state) {
            Ok(s) => (s, None),
            Err(e) => (MigrationState::default(), Some(format!("cluster {}: {e}", status.cluster))),
        };
        redact_secrets(&mut state);
        View {
            copy_bytes_per_second: status.copy_rate(),
            eta_seconds: status.eta_seconds(),
            audit_gate: state.audit.gate,
            dms: state.dms.dms.clone(),
            dms_summary: state.dms.dms_summary.clone(),
            aws_target: state.aws_target.clone(),
            status,
            state,
            state_error,
        }
    }

    /// The most WAL one of the migration's slots keeps, as the last check found it ("!" when a
    /// slot's server may drop WAL it needs; "dropped" once a long failure dropped them).
    fn slot_wal(&self) -> String {
        if self.state.slots_dropped.is_some() {
            return "dropped".into();
        }
        let most = self.state.slots.iter().filter_map(|s| s.retained_bytes).max();
        let warn = self.state.slots.iter().any(|s| matches!(s.wal_status.as_deref(), Some("unreserved" | "lost")));
        match most {
            Some(b) => format!("{}{}", output::bytes(b), if warn { "!" } else { "" }),
            None => "-".into(),
        }
    }

    /// One line on an Aurora target still coming up: the cluster's and each instance's status.
    fn aws_target_summary(&self) -> Option<String> {
        let t = self.aws_target.as_ref()?;
        let instances: Vec<String> = t.instances.iter().map(|i| format!("{} {}", i.id, i.status)).collect();
        Some(format!("aurora {}; {}", t.cluster_status.as_deref().unwrap_or("absent"), instances.join(", ")))
    }
}

/// Passwords out of what status shows: the target's connection strings (an Aurora target's hold
/// its master password) and the DMS endpoints' (the source's own).
fn redact_secrets(state: &mut MigrationState) {
    for dsn in [&mut state.target.target_dsn, &mut state.target.target_route_dsn, &mut state.target.target_read_dsn].into_iter().flatten() {
        *dsn = redact(dsn);
    }
    if let Some(spec) = &mut state.dms_spec {
        for endpoint in [&mut spec.source, &mut spec.target] {
            endpoint.password = String::new();
        }
    }
}

pub fn render(views: &[View], fleets: &[dmf_db::fleet::FleetRow]) -> String {
    let mut out = String::new();
    for f in fleets.iter().filter(|f| f.breaker_open) {
        out.push_str(&format!("fleet {}: CIRCUIT BREAKER OPEN: {}\n", f.name, f.breaker_reason.as_deref().unwrap_or("")));
    }
    out.push_str(&format!("{:<20} {:>4} {:<13} {:>9} {:>10} {:>10} {:<44} {:<36} {}\n", "CLUSTER", "WAVE", "PHASE", "LAG", "LAG BYTES", "SLOT WAL", "HYDRATION", "AUDIT", "LAST ERROR"));
    for v in views {
        let r = &v.status;
        let phase = if r.paused { format!("{} (paused)", r.phase) } else { r.phase.clone() };
        let lag = r.lag_ms.map(|l| format!("{l} ms")).unwrap_or_else(|| "-".into());
        let lag_bytes = r.lag_bytes.map(output::bytes).unwrap_or_else(|| "-".into());
        let slot_wal = v.slot_wal();
        let hydration = if let Some(dms) = &v.dms_summary {
            dms.clone()
        } else if r.tables_total == 0 {
            match v.aws_target_summary() {
                Some(s) if r.phase == "provisioning" => s,
                _ => "-".to_string(),
            }
        } else {
            let pct = if r.bytes_total > 0 { 100.0 * r.bytes_copied as f64 / r.bytes_total as f64 } else { 100.0 };
            let mut s = format!("{:.0}% {} rows {}", pct.min(100.0), r.rows_copied, output::bytes(r.bytes_copied));
            if let Some(rate) = r.copy_rate() {
                s.push_str(&format!(" {}/s", output::bytes(rate as i64)));
            }
            if let Some(eta) = r.eta_seconds() {
                s.push_str(&format!(" eta {}", output::duration(eta)));
            }
            s
        };
        let audit = match (&r.audit_status, r.audit_chunks_total) {
            (Some(st), Some(total)) => {
                let mut s = format!("{st} {}/{total}", r.audit_chunks_done);
                if r.audit_differences > 0 {
                    s.push_str(&format!(" {} diff", r.audit_differences));
                }
                if let (Some(p50), Some(p99)) = (r.window_p50_ms, r.window_p99_ms) {
                    s.push_str(&format!(" win {p50:.0}/{p99:.0}ms"));
                }
                if v.audit_gate == Gate::Open {
                    s.push_str(" gate open");
                }
                s
            }
            _ => "-".to_string(),
        };
        let err = match (&v.state_error, &r.abort_reason, &r.last_error) {
            (Some(e), _, _) => format!("[state unreadable] {e}"),
            (None, Some(reason), Some(e)) => format!("[{reason}] {e}"),
            (None, Some(reason), None) => format!("[{reason}]"),
            (None, None, Some(e)) => e.clone(),
            (None, None, None) => String::new(),
        };
        out.push_str(&format!(
            "{:<20} {:>4} {:<13} {:>9} {:>10} {:>10} {:<44} {:<36} {}\n",
            r.cluster,
            r.wave,
            phase,
            lag,
            lag_bytes,
            slot_wal,
            hydration,
            audit,
            err.lines().next().unwrap_or("")
        ));
    }
    out
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    loop {
        let rows = db.status(a.cluster.as_deref()).await?.into_iter().map(View::of).collect::<Vec<_>>();
        if let Some(c) = &a.cluster {
            if rows.is_empty() {
                anyhow::bail!("no cluster named {c:?}");
            }
        }
        let fleets = db.fleets().await?;
        if a.json {
            output::json(&serde_json::json!({ "fleets": fleets, "clusters": rows }))?;
        } else {
            if a.watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", dmf_db::secret::redact(&render(&rows, &fleets)));
        }
        if !a.watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_no_password_of_the_target_or_the_dms_endpoints() {
        let endpoint = |pw: &str| serde_json::json!({ "engine": "postgres", "server": "h", "port": 5432, "database": "d", "username": "u", "password": pw, "ssl_mode": "require" });
        let mut state: MigrationState = serde_json::from_value(serde_json::json!({
            "target": {
                "target_dsn": "postgres://dmf:master-pw@127.0.0.1:6000/d",
                "target_route_dsn": "postgres://dmf:master-pw@writer.example:5432/d",
                "target_read_dsn": "host=reader.example password=master-pw dbname=d"
            },
            "dms_spec": { "prefix": "p", "source": endpoint("source-pw"), "target": endpoint("master-pw"),
                          "compute": { "serverless": { "max_capacity_units": 4 } }, "subnet_ids": [], "security_group_ids": [],
                          "table_mappings": "{}", "task_settings": "{}", "tags": [] }
        }))
        .unwrap();
        redact_secrets(&mut state);
        let shown = serde_json::to_string(&state).unwrap();
        assert!(!shown.contains("master-pw") && !shown.contains("source-pw"), "{shown}");
        assert!(shown.contains("writer.example") && shown.contains("reader.example"), "the endpoints stay: {shown}");
    }
}
