//! `dmf status`: a fleet summary first (per wave and phase, aborted with reasons, failed clusters
//! that need an operator), then one line per cluster: phase, lag, hydration and audit progress,
//! last error; filters by wave, phase or problems.

use std::time::Duration;

use dmf_activities::state::{Gate, MigrationState};
use dmf_db::status::ClusterStatus;
use dmf_db::secret::redact;
use serde::Serialize;

use super::ControlPlane;
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "The summary counts the whole fleet; --wave, --phase and --problems choose the clusters listed \
under it (with --json, the clusters array). Examples:\n  dmf status                      every cluster\n  \
dmf status --problems           aborted, failed, paused or erroring clusters only\n  \
dmf status --wave 3 --watch     wave 3, redrawn every two seconds\n  \
dmf status --phase replicating  the clusters in one phase")]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// Only this cluster.
    pub cluster: Option<String>,
    /// List only the clusters of this wave.
    #[arg(long)]
    pub wave: Option<i32>,
    /// List only the clusters in this phase (pending, hydrating, replicating, ..., completed,
    /// aborted, failed).
    #[arg(long)]
    pub phase: Option<dmf_workflows::Phase>,
    /// List only the clusters that need a look: aborted, failed, paused, or with an error.
    #[arg(long)]
    pub problems: bool,
    /// Redraw every two seconds until interrupted; with more clusters than fit, the list keeps
    /// those in progress and those with problems.
    #[arg(long)]
    pub watch: bool,
    #[arg(long)]
    pub json: bool,
}

/// At most this many clusters are listed under `--watch`: beyond it, settled ones are left out.
const WATCH_ROWS: usize = 40;

/// Which clusters the list shows.
struct Filter {
    wave: Option<i32>,
    phase: Option<String>,
    problems: bool,
}

impl Filter {
    fn keeps(&self, v: &View) -> bool {
        self.wave.is_none_or(|w| v.status.wave == w) && self.phase.as_ref().is_none_or(|p| &v.status.phase == p) && (!self.problems || v.problem())
    }
}

/// The fleet at a glance, counted over every cluster whatever the filters.
#[derive(Serialize, Default)]
pub struct Summary {
    pub clusters: usize,
    /// Clusters per phase across the fleet, in the lifecycle's order.
    pub phases: Vec<PhaseCount>,
    pub waves: Vec<WaveSummary>,
    /// Aborted clusters by reason.
    pub aborted: Vec<Reason>,
    /// Failed clusters: each needs an operator (`dmf resume` or `dmf abort`).
    pub failed: Vec<Problem>,
    pub paused: Vec<String>,
}

#[derive(Serialize)]
pub struct PhaseCount {
    pub phase: String,
    pub count: usize,
}

#[derive(Serialize)]
pub struct WaveSummary {
    pub fleet: String,
    pub wave: i32,
    pub clusters: usize,
    pub phases: Vec<PhaseCount>,
}

#[derive(Serialize)]
pub struct Reason {
    pub reason: String,
    pub clusters: Vec<String>,
}

#[derive(Serialize)]
pub struct Problem {
    pub cluster: String,
    pub wave: i32,
    pub error: String,
}

/// Phases in the lifecycle's order (an unknown one last).
fn phase_rank(phase: &str) -> usize {
    dmf_workflows::Phase::ALL.iter().position(|p| p.as_str() == phase).unwrap_or(usize::MAX)
}

fn count_phases<'a>(phases: impl Iterator<Item = &'a str>) -> Vec<PhaseCount> {
    let mut counts: std::collections::BTreeMap<(usize, &str), usize> = Default::default();
    for p in phases {
        *counts.entry((phase_rank(p), p)).or_default() += 1;
    }
    counts.into_iter().map(|((_, phase), count)| PhaseCount { phase: phase.to_string(), count }).collect()
}

impl Summary {
    pub fn of(views: &[View]) -> Summary {
        let mut waves: std::collections::BTreeMap<(&str, i32), Vec<&str>> = Default::default();
        let mut aborted: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        let mut failed = Vec::new();
        let mut paused = Vec::new();
        for v in views {
            let r = &v.status;
            waves.entry((r.fleet.as_str(), r.wave)).or_default().push(r.phase.as_str());
            match r.phase.as_str() {
                "aborted" => aborted.entry(r.abort_reason.as_deref().unwrap_or("operator")).or_default().push(r.cluster.clone()),
                "failed" => failed.push(Problem { cluster: r.cluster.clone(), wave: r.wave, error: first_line(r.last_error.as_deref().unwrap_or("")) }),
                _ => {}
            }
            if r.paused {
                paused.push(r.cluster.clone());
            }
        }
        Summary {
            clusters: views.len(),
            phases: count_phases(views.iter().map(|v| v.status.phase.as_str())),
            waves: waves
                .into_iter()
                .map(|((fleet, wave), phases)| WaveSummary { fleet: fleet.to_string(), wave, clusters: phases.len(), phases: count_phases(phases.into_iter()) })
                .collect(),
            aborted: aborted.into_iter().map(|(reason, clusters)| Reason { reason: reason.to_string(), clusters }).collect(),
            failed,
            paused,
        }
    }

    pub fn render(&self) -> String {
        let counts = |phases: &[PhaseCount]| phases.iter().map(|p| format!("{} {}", p.phase, p.count)).collect::<Vec<_>>().join(", ");
        let names = |clusters: &[String]| {
            const SHOWN: usize = 8;
            let mut s = clusters.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if clusters.len() > SHOWN {
                s.push_str(&format!(" and {} more", clusters.len() - SHOWN));
            }
            s
        };
        let mut out = format!("{} clusters: {}\n", self.clusters, counts(&self.phases));
        for w in &self.waves {
            out.push_str(&format!("  {} wave {:<3} {:>4}: {}\n", w.fleet, w.wave, w.clusters, counts(&w.phases)));
        }
        for a in &self.aborted {
            out.push_str(&format!("aborted [{}] {}: {}\n", a.reason, a.clusters.len(), names(&a.clusters)));
        }
        if !self.failed.is_empty() {
            out.push_str(&format!("failed, needs an operator (dmf resume or dmf abort) {}:\n", self.failed.len()));
            for f in &self.failed {
                out.push_str(&format!("  {} (wave {}): {}\n", f.cluster, f.wave, f.error));
            }
        }
        if !self.paused.is_empty() {
            out.push_str(&format!("paused {}: {}\n", self.paused.len(), names(&self.paused)));
        }
        out
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
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
    /// Why the cluster is where it is, and what an operator can do (`why`).
    pub why: Option<super::why::Why>,
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
        let mut v = View {
            copy_bytes_per_second: status.copy_rate(),
            eta_seconds: status.eta_seconds(),
            audit_gate: state.audit.gate,
            dms: state.dms.dms.clone(),
            dms_summary: state.dms.dms_summary.clone(),
            aws_target: state.aws_target.clone(),
            status,
            state,
            state_error,
            why: None,
        };
        v.why = super::why::explain(&v).map(|mut w| {
            w.because = redact(&w.because);
            w
        });
        v
    }

    /// Whether an operator should look: aborted, failed, paused, or an error recorded.
    fn problem(&self) -> bool {
        let r = &self.status;
        matches!(r.phase.as_str(), "aborted" | "failed") || r.paused || r.last_error.is_some() || self.state_error.is_some()
    }

    /// Still moving or in trouble: what a watch keeps when the fleet does not fit.
    fn worth_watching(&self) -> bool {
        self.problem() || !matches!(self.status.phase.as_str(), "pending" | "completed" | "rolled_back" | "aborted")
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
    out.push_str(&format!("{:<20} {:>4} {:<13} {:>9} {:>10} {:>10} {:<44} {:<36} {}\n", "CLUSTER", "WAVE", "PHASE", "LAG", "LAG BYTES", "SLOT WAL", "HYDRATION", "AUDIT", "WHY"));
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
        let err = match (&v.why, &v.state_error, &r.abort_reason, &r.last_error) {
            (_, Some(e), _, _) => format!("[state unreadable] {e}"),
            (Some(w), ..) if !w.because.is_empty() => format!("{}: {} (do: {})", w.what, first_line(&w.because), w.action),
            (Some(w), ..) => format!("{} (do: {})", w.what, w.action),
            (None, None, Some(reason), Some(e)) => format!("[{reason}] {e}"),
            (None, None, Some(reason), None) => format!("[{reason}]"),
            (None, None, None, Some(e)) => e.clone(),
            (None, None, None, None) => String::new(),
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
    let filter = Filter { wave: a.wave, phase: a.phase.map(|p| p.as_str().to_string()), problems: a.problems };
    loop {
        let rows = db.status(a.cluster.as_deref()).await?.into_iter().map(View::of).collect::<Vec<_>>();
        if let Some(c) = &a.cluster {
            if rows.is_empty() {
                anyhow::bail!("no cluster named {c:?}");
            }
        }
        let summary = Summary::of(&rows);
        let mut listed: Vec<View> = rows.into_iter().filter(|v| filter.keeps(v)).collect();
        let fleets = db.fleets().await?;
        if a.json {
            output::json(&serde_json::json!({ "summary": summary, "fleets": fleets, "clusters": listed }))?;
        } else {
            let mut text = summary.render();
            text.push('\n');
            let mut left_out = 0;
            if a.watch && listed.len() > WATCH_ROWS {
                // problems first, then what moves, each in the list's order; shown in that order
                let before = listed.len();
                let mut order: Vec<usize> = (0..listed.len()).filter(|&i| listed[i].problem()).collect();
                order.extend((0..listed.len()).filter(|&i| !listed[i].problem() && listed[i].worth_watching()));
                order.truncate(WATCH_ROWS);
                let mut keep = vec![false; listed.len()];
                for i in order {
                    keep[i] = true;
                }
                let mut keep = keep.into_iter();
                listed.retain(|_| keep.next().unwrap_or(false));
                left_out = before - listed.len();
            }
            text.push_str(&render(&listed, &fleets));
            if left_out > 0 {
                text.push_str(&format!("({left_out} more not listed: settled, or past {WATCH_ROWS} lines; --wave, --phase or --problems choose)\n"));
            }
            if a.watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", dmf_db::secret::redact(&text));
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
