//! `dmf report`: the evidence of each cutover of a cluster (every run of the flip and of the
//! rollback, moved or undone), or of a whole fleet rolled up per wave. What an auditor or an
//! incident review asks: when, by which worker, which proxies acknowledged, what was fenced, the
//! final positions on both sides, the sequences copied, the audit the gate was opened on, where
//! replication back started, the pause and the longest client stall.

use chrono::{DateTime, Utc};
use dmf_activities::state::{AuditState, FlipRecord, MigrationState};
use dmf_db::history::Cutover;
use dmf_db::Db;
use serde::Serialize;

use super::ControlPlane;
use crate::output;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  dmf report orders            every flip and rollback of cluster orders\n  \
dmf report --fleet prod      per wave: cutovers, pauses, stalls, rollbacks\n  dmf report orders --json     the same, one JSON document")]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// The cluster whose cutovers to show.
    #[arg(required_unless_present = "fleet")]
    pub cluster: Option<String>,
    /// Roll up every cluster of this fleet, per wave.
    #[arg(long, conflicts_with = "cluster")]
    pub fleet: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// The audit the flip's gate was opened on.
#[derive(Debug, Clone, Serialize, Default)]
pub struct GateAudit {
    pub full_compare_run: Option<i64>,
    pub full_compare_status: Option<String>,
    /// The source position the full compare refers to.
    pub full_compare_lsn: Option<String>,
    pub rows_compared: i64,
    pub chunks: i64,
    pub differences: i64,
    /// Continuous sampling from its start to the cutover.
    pub samples: i64,
    pub samples_mismatched: i64,
    pub window_p50_ms: Option<f64>,
    pub window_p99_ms: Option<f64>,
    pub sampling_since: Option<DateTime<Utc>>,
}

/// One cutover (a run of the flip or the rollback) and its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct CutoverReport {
    pub cluster: String,
    /// `flip` or `rollback`.
    pub way: String,
    /// `moved` (traffic is on the other side) or `undone` (it stayed where it was).
    pub outcome: String,
    pub recorded_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub held_at: Option<DateTime<Utc>>,
    /// The worker (and job) that ran it.
    pub worker: Option<String>,
    pub attempt: u64,
    pub hold_epoch: Option<i64>,
    pub routed_epoch: Option<i64>,
    pub proxies_acknowledged: Vec<String>,
    /// The fence on the old primary: what it changed (as found before) and the sessions it ended.
    pub fence: Option<serde_json::Value>,
    pub sessions_ended: Option<i64>,
    /// The old primary's WAL position after the fence and the final marker.
    pub final_lsn: Option<String>,
    /// The new primary's position once it had applied everything up to `final_lsn`.
    pub applied_lsn: Option<String>,
    /// Flip only: where replication back to the source starts.
    pub reverse_start_lsn: Option<String>,
    pub sequences: std::collections::BTreeMap<String, i64>,
    /// Flip only: the audit the gate was opened on.
    pub audit_at_gate: Option<GateAudit>,
    /// Traffic held, from the hold to the route's move, milliseconds.
    pub pause_ms: Option<f64>,
    /// The longest a client transaction waited, its move included, milliseconds.
    pub longest_stall_ms: Option<f64>,
    pub steps: Vec<String>,
    pub step_ms: std::collections::BTreeMap<String, f64>,
    /// Undone: why.
    pub reason: Option<String>,
}

/// Every cutover of migration `m`, oldest first.
pub async fn cluster_report(db: &Db, m: &dmf_db::MigrationRow) -> anyhow::Result<Vec<CutoverReport>> {
    let cluster = m.cluster.as_str();
    // (a state that does not parse loses only the audit figures: the records stand on their own)
    let state = MigrationState::of(&m.state).unwrap_or_default();
    let mut out = Vec::new();
    for c in db.cutovers(cluster).await?.into_iter().filter(|c| c.migration == m.id) {
        out.push(cutover_report(db, &c, &state.audit).await?);
    }
    Ok(out)
}

async fn cutover_report(db: &Db, c: &Cutover, audit: &AuditState) -> anyhow::Result<CutoverReport> {
    let record: FlipRecord = serde_json::from_value(c.record.clone()).map_err(|e| anyhow::anyhow!("cluster {}: cutover record {}: {e}", c.cluster, c.id))?;
    let audit_at_gate = if c.way == "flip" { Some(gate_audit(db, c.migration, audit, record.started_at.unwrap_or(c.at)).await?) } else { None };
    Ok(CutoverReport {
        cluster: c.cluster.clone(),
        way: c.way.clone(),
        outcome: c.outcome.clone(),
        recorded_at: c.at,
        started_at: record.started_at,
        held_at: record.held_at,
        worker: c.worker.clone(),
        attempt: record.attempts,
        hold_epoch: record.hold_epoch,
        routed_epoch: record.routed_epoch,
        proxies_acknowledged: record.acked_by.clone(),
        fence: record.before.as_ref().and_then(|b| serde_json::to_value(b).ok()),
        sessions_ended: record.sessions_ended,
        final_lsn: record.final_lsn.clone(),
        applied_lsn: record.applied_lsn.clone(),
        reverse_start_lsn: record.reverse_start_lsn.clone(),
        sequences: record.sequences.clone(),
        audit_at_gate,
        pause_ms: record.held_ms,
        longest_stall_ms: record.longest_stall_ms,
        steps: record.steps.clone(),
        step_ms: record.timings_ms.clone(),
        reason: if c.outcome == "undone" { record.undone.last().map(|u| u.reason.clone()).or(record.last_reason.clone()) } else { None },
    })
}

async fn gate_audit(db: &Db, migration: uuid::Uuid, audit: &AuditState, until: DateTime<Utc>) -> anyhow::Result<GateAudit> {
    let mut g = GateAudit { sampling_since: audit.sampling_since, ..GateAudit::default() };
    let run = match audit.full_run {
        Some(id) => db.audit_run(migration, id).await?,
        None => None,
    };
    if let Some(run) = run {
        g.full_compare_run = Some(run.id);
        g.full_compare_status = Some(run.status);
        g.full_compare_lsn = run.source_lsn;
        g.rows_compared = run.rows_compared;
        g.chunks = i64::from(run.chunks_total);
        g.differences = run.mismatches;
    }
    let s = db.sample_summary_until(migration, audit.sampling_since, Some(until)).await?;
    g.samples = s.samples;
    g.samples_mismatched = s.mismatched;
    g.window_p50_ms = s.window_p50_ms;
    g.window_p99_ms = s.window_p99_ms;
    Ok(g)
}

/// One wave of a fleet's roll-up.
#[derive(Debug, Clone, Serialize, Default)]
pub struct WaveRollup {
    pub wave: i32,
    pub clusters_moved: usize,
    pub flips_moved: usize,
    pub flips_undone: usize,
    pub rollbacks: usize,
    pub pause_p50_ms: Option<f64>,
    pub pause_max_ms: Option<f64>,
    pub longest_stall_ms: Option<f64>,
    /// Why each undone run was undone, with its cluster.
    pub undone: Vec<(String, String)>,
}

pub async fn fleet_report(db: &Db, fleet: &str) -> anyhow::Result<Vec<WaveRollup>> {
    let mut waves: std::collections::BTreeMap<i32, (WaveRollup, Vec<f64>, std::collections::BTreeSet<String>)> = Default::default();
    for (wave, c) in db.fleet_cutovers(fleet).await? {
        let record: FlipRecord = serde_json::from_value(c.record.clone()).unwrap_or_default();
        let (w, pauses, moved) = waves.entry(wave).or_insert_with(|| (WaveRollup { wave, ..WaveRollup::default() }, Vec::new(), Default::default()));
        match (c.way.as_str(), c.outcome.as_str()) {
            ("flip", "moved") => {
                w.flips_moved += 1;
                moved.insert(c.cluster.clone());
            }
            ("flip", _) => w.flips_undone += 1,
            (_, "moved") => w.rollbacks += 1,
            _ => {}
        }
        if c.outcome == "moved" {
            if let Some(p) = record.held_ms {
                pauses.push(p);
            }
            w.longest_stall_ms = max_of(w.longest_stall_ms, record.longest_stall_ms);
        } else if let Some(u) = record.undone.last() {
            w.undone.push((c.cluster.clone(), u.reason.clone()));
        }
    }
    Ok(waves
        .into_values()
        .map(|(mut w, mut pauses, moved)| {
            pauses.sort_by(f64::total_cmp);
            w.pause_p50_ms = pauses.get(pauses.len() / 2).copied();
            w.pause_max_ms = pauses.last().copied();
            w.clusters_moved = moved.len();
            w
        })
        .collect())
}

fn max_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "-".into())
}

/// The text form of one cutover.
pub fn render_cutover(r: &CutoverReport) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "{} {} (attempt {}) recorded {}\n  worker {}\n  started {}  held {}  hold epoch {}  routed epoch {}\n",
        r.way,
        r.outcome.to_uppercase(),
        r.attempt,
        r.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
        opt(&r.worker),
        r.started_at.map(|t| t.format("%H:%M:%S%.3f").to_string()).unwrap_or_else(|| "-".into()),
        r.held_at.map(|t| t.format("%H:%M:%S%.3f").to_string()).unwrap_or_else(|| "-".into()),
        r.hold_epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
        r.routed_epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
    );
    if let Some(reason) = &r.reason {
        out.push_str(&format!("  undone because: {reason}\n"));
    }
    out.push_str(&format!("  pause {}  longest client stall {}\n", ms(r.pause_ms), ms(r.longest_stall_ms)));
    out.push_str(&format!("  proxies acknowledged ({}): {}\n", r.proxies_acknowledged.len(), r.proxies_acknowledged.join(", ")));
    if let Some(f) = &r.fence {
        out.push_str(&format!("  fence: before it {f}; sessions ended {}\n", r.sessions_ended.unwrap_or(0)));
    }
    out.push_str(&format!("  final LSN on the old primary {}  applied on the new primary at {}\n", opt(&r.final_lsn), opt(&r.applied_lsn)));
    if r.way == "flip" {
        out.push_str(&format!("  replication back starts at {}\n", opt(&r.reverse_start_lsn)));
    }
    if !r.sequences.is_empty() {
        let seqs: Vec<String> = r.sequences.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("  sequences copied ({}): {}\n", seqs.len(), seqs.join(", ")));
    }
    if let Some(g) = &r.audit_at_gate {
        out.push_str(&format!(
            "  audit at the gate: full compare {} {} at {}: {} rows in {} chunks, {} differences; sampling {} samples ({} mismatched), window p50 {} p99 {}\n",
            g.full_compare_run.map(|i| format!("#{i}")).unwrap_or_else(|| "-".into()),
            opt(&g.full_compare_status),
            opt(&g.full_compare_lsn),
            g.rows_compared,
            g.chunks,
            g.differences,
            g.samples,
            g.samples_mismatched,
            ms(g.window_p50_ms),
            ms(g.window_p99_ms),
        ));
    }
    let steps: Vec<String> = r.steps.iter().map(|s| format!("{s} {}", r.step_ms.get(s).map(|v| format!("{v:.1}ms")).unwrap_or_default())).collect();
    out.push_str(&format!("  steps: {}\n", steps.join(", ")));
    out
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    if let Some(fleet) = &a.fleet {
        if !db.fleets().await?.iter().any(|f| &f.name == fleet) {
            anyhow::bail!("no fleet named {fleet:?} in the control plane");
        }
        let waves = fleet_report(&db, fleet).await?;
        if a.json {
            return output::json(&serde_json::json!({ "fleet": fleet, "waves": waves }));
        }
        output::line(&format!("fleet {fleet}: cutovers per wave"));
        output::line(&format!("{:>5} {:>8} {:>7} {:>7} {:>9} {:>11} {:>11} {:>13}", "WAVE", "CLUSTERS", "FLIPS", "UNDONE", "ROLLBACKS", "PAUSE P50", "PAUSE MAX", "LONGEST STALL"));
        for w in &waves {
            output::line(&format!(
                "{:>5} {:>8} {:>7} {:>7} {:>9} {:>11} {:>11} {:>13}",
                w.wave, w.clusters_moved, w.flips_moved, w.flips_undone, w.rollbacks, ms(w.pause_p50_ms), ms(w.pause_max_ms), ms(w.longest_stall_ms)
            ));
            for (cluster, why) in &w.undone {
                output::line(&format!("        undone {cluster}: {why}"));
            }
        }
        return Ok(());
    }
    let cluster = a.cluster.unwrap_or_default();
    let reports = cluster_report(&db, &db.migration_by_cluster(&cluster).await?).await?;
    if a.json {
        return output::json(&serde_json::json!({ "cluster": cluster, "cutovers": reports }));
    }
    if reports.is_empty() {
        output::line(&format!("{cluster}: no cutover yet (no flip or rollback has run)"));
    }
    for r in &reports {
        output::line(&render_cutover(r));
    }
    Ok(())
}
