//! `dmf status [cluster] [--watch] [--json]`: phase, lag, hydration and audit progress, last error.

use std::time::Duration;

use dmf_db::status::ClusterStatus;

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

pub fn render(rows: &[ClusterStatus], fleets: &[dmf_db::fleet::FleetRow]) -> String {
    let mut out = String::new();
    for f in fleets.iter().filter(|f| f.breaker_open) {
        out.push_str(&format!("fleet {}: CIRCUIT BREAKER OPEN: {}\n", f.name, f.breaker_reason.as_deref().unwrap_or("")));
    }
    out.push_str(&format!("{:<20} {:>4} {:<13} {:>9} {:>10} {:<44} {:<36} {}\n", "CLUSTER", "WAVE", "PHASE", "LAG", "LAG BYTES", "HYDRATION", "AUDIT", "LAST ERROR"));
    for r in rows {
        let phase = if r.paused { format!("{} (paused)", r.phase) } else { r.phase.clone() };
        let lag = r.lag_ms.map(|l| format!("{l} ms")).unwrap_or_else(|| "-".into());
        let lag_bytes = r.lag_bytes.map(output::bytes).unwrap_or_else(|| "-".into());
        let hydration = if let Some(dms) = &r.dms_summary {
            dms.clone()
        } else if r.tables_total == 0 {
            match r.aws_target_summary() {
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
                if r.audit_gate.as_deref() == Some("open") {
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

fn json_rows(rows: &[ClusterStatus]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("copy_bytes_per_second".into(), r.copy_rate().into());
                o.insert("eta_seconds".into(), r.eta_seconds().into());
            }
            v
        })
        .collect()
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    loop {
        let rows = db.status(a.cluster.as_deref()).await?;
        if let Some(c) = &a.cluster {
            if rows.is_empty() {
                anyhow::bail!("no cluster named {c:?}");
            }
        }
        let fleets = db.fleets().await?;
        if a.json {
            output::json(&serde_json::json!({ "fleets": fleets, "clusters": json_rows(&rows) }))?;
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
