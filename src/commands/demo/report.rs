//! The demo's closing report: per cluster, each phase's duration, the flip (traffic held, the
//! longest client stall), the workload's transactions and errors, the ledger where the writes
//! went, and the auditor's verdict.

use dmf_activities::state;
use serde::Serialize;

use super::workload::Stats;
use crate::output;

#[derive(Serialize)]
pub struct Flip {
    pub attempts: i64,
    pub held_ms: f64,
    /// The longest client transaction running at any moment while traffic was held.
    pub longest_stall_ms: f64,
    pub sessions_moved: u64,
    /// Each step of the protocol and its duration, in order.
    pub steps_ms: Vec<(String, f64)>,
}

#[derive(Serialize)]
pub struct Workload {
    pub transactions: i64,
    pub client_errors: i64,
    pub error_samples: Vec<String>,
    pub median_latency_ms: f64,
}

#[derive(Serialize)]
pub struct Ledger {
    /// Where the route sends writes now: "target" after a flip.
    pub side: String,
    pub history_rows: i64,
    pub balanced: bool,
    /// Every transaction the clients saw commit is in the history, and nothing else.
    pub every_commit_present: bool,
    pub source_fenced: bool,
}

#[derive(Serialize)]
pub struct Audit {
    pub full_compare: String,
    pub rows_compared: i64,
    pub full_compare_mismatches: i64,
    pub sampled_transactions: i64,
    pub sampled_mismatched: i64,
    pub differences: usize,
}

#[derive(Serialize)]
pub struct ClusterReport {
    pub cluster: String,
    pub wave: i32,
    pub phase: String,
    pub rows_copied: i64,
    pub bytes_copied: i64,
    pub phase_seconds: Vec<(String, f64)>,
    pub last_error: Option<String>,
    pub flip: Option<Flip>,
    pub workload: Workload,
    pub ledger: Ledger,
    pub audit: Audit,
    pub consistent: bool,
}

#[derive(Serialize)]
pub struct Report {
    pub clusters: Vec<ClusterReport>,
    pub all_flipped: bool,
    pub all_consistent: bool,
    pub client_errors: i64,
    pub longest_stall_ms: f64,
    pub seconds: f64,
}

async fn connect(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Gather one cluster's report once its workload has stopped.
pub async fn cluster(db: &dmf_db::Db, name: &str, stats: Stats, sessions_moved: u64) -> anyhow::Result<ClusterReport> {
    let status = db.status(Some(name)).await?.into_iter().next().ok_or_else(|| anyhow::anyhow!("cluster {name} has no status"))?;
    let m = db.migration_by_cluster(name).await?;
    let entries = db.phase_entries(m.id).await?;
    let phase_seconds = entries.windows(2).map(|w| (w[0].0.clone(), (w[1].1 - w[0].1).num_milliseconds() as f64 / 1000.0)).collect();

    let record = m.record::<state::Flip>()?.0;
    let flip = record.held_ms.map(|held_ms| {
        let held_at = record.held_at.map(|t| t.timestamp_micros()).unwrap_or(0);
        let stall = stats.longest_overlapping(held_at, held_at + (held_ms * 1000.0) as i64).unwrap_or(0);
        Flip {
            attempts: record.attempts as i64,
            held_ms,
            longest_stall_ms: stall as f64 / 1000.0,
            sessions_moved,
            steps_ms: steps_ms(&record),
        }
    });

    let route = db.route(name).await?.ok_or_else(|| anyhow::anyhow!("cluster {name} has no route"))?;
    let on_target = m.record::<state::TargetDsn>()?.target_dsn.as_deref().map(dmf_db::route::endpoint) == Some(dmf_db::route::endpoint(&route.primary_endpoint));
    let primary = connect(&route.primary_endpoint).await?;
    let row = primary.query_one(include_str!("ledger.sql"), &[]).await?;
    let history_rows: i64 = row.get("history_rows");
    let source = connect(&m.source_dsn).await?;
    let fenced: String = source.query_one("SHOW default_transaction_read_only", &[]).await?.get(0);
    let ledger = Ledger {
        side: if on_target { "target" } else { "source" }.into(),
        history_rows,
        balanced: row.get("balanced"),
        every_commit_present: history_rows == stats.committed,
        source_fenced: fenced == "on",
    };

    let full = db.latest_audit_run(m.id).await?;
    let samples = db.sample_summary(m.id, None).await?;
    let audit = Audit {
        full_compare: full.as_ref().map(|r| r.status.clone()).unwrap_or_else(|| "none".into()),
        rows_compared: full.as_ref().map(|r| r.rows_compared).unwrap_or(0),
        full_compare_mismatches: full.as_ref().map(|r| r.mismatches).unwrap_or(0),
        sampled_transactions: samples.samples,
        sampled_mismatched: samples.mismatched,
        differences: db.differences(m.id, 100).await?.len(),
    };

    let mut latencies: Vec<i64> = stats.transactions.iter().map(|(_, l)| *l).collect();
    latencies.sort_unstable();
    let workload = Workload {
        transactions: stats.committed,
        client_errors: stats.errors,
        error_samples: stats.error_samples,
        median_latency_ms: latencies.get(latencies.len() / 2).copied().unwrap_or(0) as f64 / 1000.0,
    };
    let consistent = ledger.balanced && ledger.every_commit_present && audit.differences == 0 && audit.full_compare_mismatches == 0;
    Ok(ClusterReport {
        cluster: name.to_string(),
        wave: status.wave,
        phase: status.phase,
        rows_copied: status.rows_copied,
        bytes_copied: status.bytes_copied,
        phase_seconds,
        last_error: m.last_error.clone(),
        flip,
        workload,
        ledger,
        audit,
        consistent,
    })
}

/// The protocol's steps in order, then the finer timings recorded inside them.
/// Each step's time in order, then the timings of what is not a step (in parentheses).
fn steps_ms(flip: &state::FlipRecord) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = flip.steps.iter().map(|s| (s.clone(), flip.timings_ms.get(s).copied().unwrap_or(0.0))).collect();
    for (k, v) in flip.timings_ms.iter().filter(|(k, _)| !flip.steps.contains(k)) {
        out.push((format!("({k})"), *v));
    }
    out
}

impl Report {
    pub fn new(clusters: Vec<ClusterReport>, seconds: f64) -> Report {
        Report {
            all_flipped: clusters.iter().all(|c| c.phase == "flipped" && c.ledger.side == "target" && c.ledger.source_fenced),
            all_consistent: clusters.iter().all(|c| c.consistent),
            client_errors: clusters.iter().map(|c| c.workload.client_errors).sum(),
            longest_stall_ms: clusters.iter().filter_map(|c| c.flip.as_ref()).map(|f| f.longest_stall_ms).fold(0.0, f64::max),
            clusters,
            seconds,
        }
    }

    pub fn print(&self) {
        output::line("");
        output::line(&format!(
            "{:<8} {:<8} {:>8} {:>9} {:>6} {:>6} {:>9} {:>9} {:<10} {}",
            "CLUSTER", "PHASE", "ROWS", "BYTES", "TXNS", "ERRORS", "HELD", "STALL", "AUDIT", "LEDGER"
        ));
        for c in &self.clusters {
            let ms = |v: Option<f64>| v.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "-".into());
            let audit = if c.audit.differences == 0 && c.audit.full_compare_mismatches == 0 { "clean" } else { "DIFFERENT" };
            output::line(&format!(
                "{:<8} {:<8} {:>8} {:>9} {:>6} {:>6} {:>9} {:>9} {:<10} {} on the {}: {} history rows for {} commits",
                c.cluster,
                c.phase,
                c.rows_copied,
                output::bytes(c.bytes_copied),
                c.workload.transactions,
                c.workload.client_errors,
                ms(c.flip.as_ref().map(|f| f.held_ms)),
                ms(c.flip.as_ref().map(|f| f.longest_stall_ms)),
                audit,
                if c.consistent { "consistent" } else { "INCONSISTENT" },
                c.ledger.side,
                c.ledger.history_rows,
                c.workload.transactions,
            ));
            let phases: Vec<String> = c.phase_seconds.iter().map(|(p, s)| format!("{p} {s:.1}s")).collect();
            output::line(&format!("         phases: {}", phases.join(", ")));
            if let Some(f) = &c.flip {
                let steps: Vec<String> = f.steps_ms.iter().map(|(s, ms)| format!("{s} {ms:.1}")).collect();
                output::line(&format!(
                    "         flip: attempt {}, {} sessions moved; steps (ms) {}; median transaction {:.1} ms",
                    f.attempts,
                    f.sessions_moved,
                    steps.join(", "),
                    c.workload.median_latency_ms
                ));
            }
            output::line(&format!(
                "         audit: full compare {} ({} rows, {} mismatched), {} sampled transactions ({} mismatched), {} differences",
                c.audit.full_compare, c.audit.rows_compared, c.audit.full_compare_mismatches, c.audit.sampled_transactions, c.audit.sampled_mismatched, c.audit.differences
            ));
            for e in &c.workload.error_samples {
                output::line(&format!("         client error: {e}"));
            }
            if let Some(e) = &c.last_error {
                output::line(&format!("         last error: {e}"));
            }
        }
        output::line(&format!(
            "demo finished in {:.1}s: {} client errors, longest client stall during a flip {:.1} ms; everything it created has been removed",
            self.seconds, self.client_errors, self.longest_stall_ms
        ));
    }
}
