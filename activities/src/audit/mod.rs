//! The data auditor and the `validating` phase: continuous sampled validation of the change stream,
//! an exact chunked full compare, and the gate that lets a cluster move on only when both are clean.
//!
//! Both halves confirm a suspected difference with a fenced re-check (`recheck`), so replication
//! lag or a stall never becomes a false alarm; a confirmed difference aborts the migration with the
//! reason `audit_mismatch` before any traffic moves.

pub mod compare;
pub mod pace;
pub mod pgoutput;
pub mod recheck;
pub mod sample;
pub mod table;

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::Error;
use crate::state::{AuditState, Gate, Patch};
use crate::{pg, replicate, Context};
use dmf_workflows::{AbortReason, Outcome};

/// Session settings that change a row's text form or how the auditor's literals read, pinned on
/// every connection the auditor opens.
const PINNED: &[(&str, &str)] = &[
    ("standard_conforming_strings", "on"),
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// The pinned settings as the `options` of a replication connection's startup (the walsender
/// formats streamed values with them).
pub fn pinned_options() -> String {
    PINNED.iter().map(|(k, v)| format!("-c {k}={}", v.replace(' ', "\\ "))).collect::<Vec<_>>().join(" ")
}

/// Open a connection with the row-text settings pinned.
pub async fn connect_pinned(dsn: &str, role: &str) -> Result<Client, Error> {
    connect_pinned_named(dsn, role, "dmf").await
}

/// `connect_pinned`, with the session named `application_name` (see `pg::connect_named`).
pub async fn connect_pinned_named(dsn: &str, role: &str, application_name: &str) -> Result<Client, Error> {
    let client = pg::connect_named(dsn, role, application_name).await?;
    let sql: String = PINNED.iter().map(|(k, v)| format!("SET {k} = {};", pg::literal(v))).collect();
    pg::exec(&client, &format!("pin the session settings of the {role}"), &sql).await?;
    Ok(client)
}

/// Tunables of the auditor.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Share of committed source transactions the continuous validation checks.
    pub sample_rate: f64,
    /// How long continuous validation must run without a confirmed mismatch before the gate opens.
    pub window: Duration,
    /// Rows per full-compare chunk (about).
    pub chunk_rows: i64,
    /// Chunks compared at once (each on one source and one target connection).
    pub jobs: usize,
    /// Fenced re-check rounds before a changing row is left unsettled.
    pub recheck_rounds: u32,
    /// Longest wait for a fence to reach the target.
    pub fence_timeout: Duration,
    /// Times an unsettled chunk is compared again within one run.
    pub max_chunk_attempts: i32,
    /// Work done per tick of the validating phase before it reports back.
    pub slice: Duration,
    /// Sampled transactions whose rows are re-checked per slice at most (the others are timed and
    /// recorded with status `timed`).
    pub max_samples_per_slice: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sample_rate: 0.01,
            window: Duration::from_secs(60),
            chunk_rows: 50_000,
            jobs: 2,
            recheck_rounds: 5,
            fence_timeout: Duration::from_secs(30),
            max_chunk_attempts: 5,
            slice: Duration::from_secs(3),
            max_samples_per_slice: 50,
        }
    }
}

/// Names of the auditor's own objects on the source.
pub fn audit_slot(ctx: &Context) -> String {
    ctx.names().audit_slot()
}

/// One tick of `validating`: the replication guards, a slice of continuous sampling and of the
/// full compare side by side, then the gate.
pub async fn run(ctx: &Context) -> Result<Outcome, Error> {
    // Lag and slot guards keep applying while the auditor works.
    if let outcome @ Outcome::Abort { .. } = replicate::run(ctx).await? {
        return Ok(outcome);
    }
    let m = &ctx.migration;
    let cfg = &ctx.config.audit;
    let names = ctx.names();
    let target_dsn = ctx.require_target()?;
    let slot = audit_slot(ctx);
    let since = match ctx.record::<AuditState>()?.sampling_since {
        Some(t) => t,
        None => {
            let now = chrono::Utc::now();
            ctx.save(Patch::of(&AuditState { sampling_since: Some(now), ..AuditState::default() })).await?;
            now
        }
    };
    let run = match ctx.db.latest_audit_run(m.id).await? {
        // An unsettled run is over: its rows kept changing; compare again.
        Some(r) if r.status != "unsettled" => r.id,
        _ => compare::start(&ctx.db, m.id, ctx.source_dsn(), cfg, "validating").await?,
    };
    let endpoints = sample::Endpoints {
        source_dsn: ctx.source_dsn(),
        target_dsn: &target_dsn,
        publication: &names.publication,
        audit_slot: &slot,
        subscription: &names.subscription,
    };
    // the compare gives way while the sampler sees the target apply late
    let pace = std::sync::Arc::new(pace::Pace::default());
    let (sampled, compared) = tokio::join!(
        sample::run_slice(&ctx.db, m.id, &endpoints, cfg, cfg.slice, &ctx.cancel, &ctx.config.conns, pace.clone()),
        compare::resume(&ctx.db, m.id, run, ctx.source_dsn(), &target_dsn, cfg, Some(cfg.slice), &ctx.cancel, Some(&pace), || {}),
    );
    let sampled = sampled?;
    compared?;
    let full = ctx.db.audit_run(m.id, run).await?;
    let differences = ctx.db.differences(m.id, 1).await?;
    if let Some(d) = differences.first() {
        return Ok(Outcome::Abort {
            reason: AbortReason::AuditMismatch,
            detail: format!(
                "{} found {} in {} at key {} (columns {:?}, source LSN {})",
                if d.found_by == "full" { "full compare" } else { "continuous validation" },
                d.kind,
                d.table_name.as_deref().unwrap_or("?"),
                d.key.clone().unwrap_or_default(),
                d.columns.clone().unwrap_or_default(),
                d.lsn.as_deref().unwrap_or("?")
            ),
        });
    }
    let full_clean = full.as_ref().is_some_and(|r| r.status == "clean");
    let window_done = (chrono::Utc::now() - since).to_std().unwrap_or_default() >= cfg.window;
    tracing::debug!(cluster = %m.cluster, migration = %m.id, run, full_clean, window_done, seen = sampled.transactions_seen, sampled = sampled.sampled, skipped = sampled.skipped, "audit tick");
    // A mismatched sample would have left a difference above: none means the window is clean.
    let gate = full_clean && window_done;
    let gate_state = if gate { Gate::Open } else { Gate::Closed };
    ctx.save(Patch::of(&AuditState { sampling_since: Some(since), gate: gate_state, full_run: Some(run) })).await?;
    if gate {
        tracing::info!(cluster = %m.cluster, migration = %m.id, run, "audit clean: the cluster may move on");
        return Ok(Outcome::Done);
    }
    Ok(Outcome::Watch(Duration::from_millis(200)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pinned_options_escape_spaces_for_the_startup_packet() {
        assert_eq!(
            super::pinned_options(),
            "-c standard_conforming_strings=on -c TimeZone=UTC -c DateStyle=ISO,\\ YMD -c IntervalStyle=postgres -c extra_float_digits=3 -c bytea_output=hex"
        );
    }
}
