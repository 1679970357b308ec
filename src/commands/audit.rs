//! `dmf audit <cluster> [--full] [--json]`: the auditor's findings, or a full compare run now.

use std::time::Duration;

use dmf_activities::audit::{compare, AuditConfig};
use dmf_activities::state;
use indicatif::{ProgressBar, ProgressStyle};

use super::ControlPlane;
use crate::output;

#[derive(clap::Args)]
#[command(long_about = "Show what the data auditor found for a cluster: the latest full compare (chunks done, \
rows compared, differences and the source LSN they refer to), the continuous validation's samples and \
consistency window (p50/p99 ms from source commit to visible on the target), and every confirmed difference \
with its table, key and columns.\n\n\
With --full, compare every table now: each is split into primary-key chunks hashed on both sides at once; \
chunks that differ are drilled down to keys and re-checked behind a replication fence, so lag never shows \
up as a difference. The run is stored chunk by chunk: run the same command again after an interruption and \
it resumes where it stopped.")]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// The cluster, as named in its manifest.
    pub cluster: String,
    /// Run (or resume) a full compare now, then report.
    #[arg(long)]
    pub full: bool,
    /// Chunks compared at once.
    #[arg(long, default_value_t = AuditConfig::default().jobs)]
    pub jobs: usize,
    /// Rows per chunk, about.
    #[arg(long, default_value_t = AuditConfig::default().chunk_rows)]
    pub chunk_rows: i64,
    /// Differences listed.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    let mut m = db.migration_by_cluster(&a.cluster).await?;
    if a.full {
        let aws = dmf_aws::Clients::new(dmf_aws::Options { endpoint_url: std::env::var("DMF_AWS_ENDPOINT_URL").ok(), ..dmf_aws::Options::default() });
        dmf_activities::fetch_secrets(&m, &aws).await;
        m.resolve_logins("dmf audit process")?;
        let target = state::target_login(&m, "dmf audit process")?
            .ok_or_else(|| anyhow::anyhow!("cluster {}: no target yet (phase {}); a full compare needs a replicating target", m.cluster, m.phase))?;
        if !matches!(m.phase.as_str(), "replicating" | "validating" | "shadow_reads") {
            anyhow::bail!("cluster {} is in phase {}; a full compare needs it replicating, validating or in shadow reads", m.cluster, m.phase);
        }
        let cfg = AuditConfig { jobs: a.jobs.max(1), chunk_rows: a.chunk_rows.max(1), ..AuditConfig::default() };
        // Resume an interrupted run of our own; otherwise start a new one.
        let run = match db.latest_audit_run(m.id).await? {
            Some(r) if r.status == "running" && r.requested_by.starts_with("cli:") => r.id,
            _ => compare::start(&db, m.id, &m.source_dsn, &cfg, &super::actor()).await?,
        };
        let total = db.audit_run(m.id, run).await?.map(|r| r.chunks_total).unwrap_or(0);
        let bar = if a.json { ProgressBar::hidden() } else { ProgressBar::new(total as u64) };
        bar.set_style(ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} chunks {elapsed}").unwrap_or_else(|_| ProgressStyle::default_bar()));
        bar.set_message(format!("full compare of {}", m.cluster));
        bar.enable_steady_tick(Duration::from_millis(200));
        let cancel = super::shutdown_signal();
        loop {
            let done = db.audit_run(m.id, run).await?.map(|r| r.chunks_done + r.chunks_unsettled).unwrap_or(0);
            bar.set_position(done as u64);
            let progress = compare::resume(&db, m.id, run, &m.source_dsn, &target, &cfg, None, &cancel, None, || bar.inc(1)).await?;
            if let compare::Progress::Finished(_) = progress {
                break;
            }
        }
        bar.finish_and_clear();
    }
    report(&db, &m, a.limit, a.json).await
}

async fn report(db: &dmf_db::Db, m: &dmf_db::MigrationRow, limit: i64, json: bool) -> anyhow::Result<()> {
    let m = db.migration(m.id).await?;
    let full = db.latest_audit_run(m.id).await?;
    let samples = db.sample_summary(m.id, None).await?;
    let differences = db.differences(m.id, limit).await?;
    let gate = m.record::<state::AuditState>()?.gate.as_str();
    if json {
        return output::json(&serde_json::json!({
            "cluster": m.cluster, "phase": m.phase, "gate": gate,
            "full_compare": full, "samples": samples, "differences": differences,
        }));
    }
    output::line(&format!("cluster {} (phase {}), audit gate {}", m.cluster, m.phase, gate));
    match &full {
        Some(r) => output::line(&format!(
            "full compare #{} {}: {}/{} chunks ({} unsettled), {} rows, {} differences, from source LSN {}",
            r.id,
            r.status,
            r.chunks_done,
            r.chunks_total,
            r.chunks_unsettled,
            r.rows_compared,
            r.mismatches,
            r.source_lsn.as_deref().unwrap_or("?")
        )),
        None => output::line("full compare: none yet"),
    }
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.1} ms")).unwrap_or_else(|| "-".into());
    output::line(&format!(
        "continuous validation: {} sampled transactions ({} matched, {} unsettled, {} mismatched, {} timed without a re-check); consistency window p50 {} p99 {} ({} not applied in time)",
        samples.samples,
        samples.matched,
        samples.unsettled,
        samples.mismatched,
        samples.timed_only,
        ms(samples.window_p50_ms),
        ms(samples.window_p99_ms),
        samples.untimed
    ));
    for d in &differences {
        output::line(&format!(
            "  {} {} key {} {} (found by {}, source LSN {}) {}",
            d.kind,
            d.table_name.as_deref().unwrap_or("?"),
            d.key.clone().unwrap_or_default(),
            d.columns.as_ref().filter(|c| !c.is_empty()).map(|c| format!("columns {}", c.join(","))).unwrap_or_default(),
            d.found_by,
            d.lsn.as_deref().unwrap_or("?"),
            d.detail
        ));
    }
    Ok(())
}
