//! `dmf status [cluster] [--watch] [--json]`: phase, lag, hydration and audit progress, last error.

use std::time::Duration;

use dmf_activities::state::{Gate, MigrationState};
use dmf_db::status::ClusterStatus;
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
    /// Everything the activities recorded.
    pub state: MigrationState,
}

impl View {
    pub fn of(status: ClusterStatus) -> anyhow::Result<View> {
        let state = MigrationState::of(&status.state).map_err(|e| anyhow::anyhow!("cluster {}: {e}", status.cluster))?;
        Ok(View {
            copy_bytes_per_second: status.copy_rate(),
            eta_seconds: status.eta_seconds(),
            audit_gate: state.audit.gate,
            dms: state.dms.dms.clone(),
            dms_summary: state.dms.dms_summary.clone(),
            aws_target: state.aws_target.clone(),
            status,
            state,
        })
    }

    /// One line on an Aurora target still coming up: the cluster's and each instance's status.
    fn aws_target_summary(&self) -> Option<String> {
        let t = self.aws_target.as_ref()?;
        let instances: Vec<String> = t.instances.iter().map(|i| format!("{} {}", i.id, i.status)).collect();
        Some(format!("aurora {}; {}", t.cluster_status.as_deref().unwrap_or("absent"), instances.join(", ")))
    }
}

pub fn render(views: &[View], fleets: &[dmf_db::fleet::FleetRow]) -> String {
    let mut out = String::new();
    for f in fleets.iter().filter(|f| f.breaker_open) {
        out.push_str(&format!("fleet {}: CIRCUIT BREAKER OPEN: {}\n", f.name, f.breaker_reason.as_deref().unwrap_or("")));
    }
    out.push_str(&format!("{:<20} {:>4} {:<13} {:>9} {:>10} {:<44} {:<36} {}\n", "CLUSTER", "WAVE", "PHASE", "LAG", "LAG BYTES", "HYDRATION", "AUDIT", "LAST ERROR"));
    for v in views {
        let r = &v.status;
        let phase = if r.paused { format!("{} (paused)", r.phase) } else { r.phase.clone() };
        let lag = r.lag_ms.map(|l| format!("{l} ms")).unwrap_or_else(|| "-".into());
        let lag_bytes = r.lag_bytes.map(output::bytes).unwrap_or_else(|| "-".into());
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
        let err = match (&r.abort_reason, &r.last_error) {
            (Some(reason), Some(e)) => format!("[{reason}] {e}"),
            (Some(reason), None) => format!("[{reason}]"),
            (None, Some(e)) => e.clone(),
            (None, None) => String::new(),
        };
        out.push_str(&format!("{:<20} {:>4} {:<13} {:>9} {:>10} {:<44} {:<36} {}\n", r.cluster, r.wave, phase, lag, lag_bytes, hydration, audit, err.lines().next().unwrap_or("")));
    }
    out
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    loop {
        let rows = db.status(a.cluster.as_deref()).await?.into_iter().map(View::of).collect::<anyhow::Result<Vec<_>>>()?;
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
            print!("{}", render(&rows, &fleets));
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
