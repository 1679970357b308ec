//! The final flip (source to target) and the rollback (the same protocol back), driven by the
//! worker that holds the migration's lease.
//!
//! The steps, in order:
//! 1. guards: lag, audit, attempts;
//! 2. hold: every live proxy holds new transactions and acknowledges once in-flight ones finished;
//! 3. fence: the old primary refuses writes that bypass the proxies;
//! 4. catch up: a marker written on the old primary after the fence shows on the new one, so
//!    everything before it was applied; sequence values are copied meanwhile;
//! 5. switch replication: a flip keeps every write after it for a rollback (the reverse slot on
//!    the target); a rollback stops replication back and unfences the source;
//! 6. move: the route points at the new primary and releases the held transactions, in one epoch.
//!
//! Every step is recorded in the migration's durable state before the next begins. A failure
//! before the move undoes what was done, releases the hold on the old primary and returns to the
//! phase before with the reason; so does the next run after a worker died half-way. Proxies that
//! stopped heartbeating are not waited for: their lease ran out, so they send nothing anywhere.

pub mod fence;
pub mod reverse;

use std::time::{Duration, Instant};

use dmf_db::route::RouteChange;
use dmf_workflows::{Outcome, Phase};
use tokio_postgres::Client;

use crate::error::Error;
use crate::state::{AuditState, Flip, FlipRecord, Gate, Patch, Rollback, Undone};
use crate::{health, objects, pg, sequences, Context, Names};

/// Tunables of the flip and the rollback.
#[derive(Debug, Clone)]
pub struct FlipConfig {
    /// The flip starts only when heartbeat lag is under this.
    pub max_lag: Duration,
    /// How long the flip's guard keeps sampling for a heartbeat under `max_lag` before it gives
    /// the flip up for this tick.
    pub lag_patience: Duration,
    /// How long a hold waits for in-flight transactions before ending them.
    pub hold_deadline: Duration,
    /// How long every live proxy has to acknowledge the hold.
    pub ack_timeout: Duration,
    /// How long the new primary has to apply the final marker.
    pub catch_up_timeout: Duration,
    /// Flips that began (past the guards) and had to return to shadow_reads before the migration
    /// needs an operator.
    pub max_attempts: u32,
    /// After the move, how long the released traffic has the new primary to itself before
    /// replication is rearranged (DDL on both sides, a new walsender decoding).
    pub settle: Duration,
}

impl Default for FlipConfig {
    fn default() -> Self {
        FlipConfig {
            max_lag: Duration::from_millis(10),
            lag_patience: Duration::from_secs(3),
            hold_deadline: Duration::from_millis(1000),
            ack_timeout: Duration::from_secs(5),
            catch_up_timeout: Duration::from_secs(5),
            max_attempts: 3,
            settle: Duration::from_secs(1),
        }
    }
}

/// Which way traffic moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Source to target (phase flipping).
    Forward,
    /// Target back to source (phase rolling_back).
    Back,
}

impl Way {
    /// Where the progress of this protocol lives in the migration's state.
    fn key(self) -> &'static str {
        match self {
            Way::Forward => "flip",
            Way::Back => "rollback",
        }
    }

    /// Where the migration returns when this protocol cannot finish.
    fn safe_phase(self) -> Phase {
        match self {
            Way::Forward => Phase::ShadowReads,
            Way::Back => Phase::Flipped,
        }
    }
}

/// The two sides for one run: traffic moves from `from` to `to`.
///
/// `*_route` is the connection string that routes and subscriptions use. For an Aurora target it
/// is the cluster endpoint, which dmf's own connections may reach another way (`connect_via`).
struct Sides {
    way: Way,
    from_route: String,
    to_route: String,
    from: Client,
    to: Client,
    /// What the flip's fence found on the source, read before the hold.
    ///
    /// A rollback unfences the source with it, and an undone rollback fences it again.
    flip_before: fence::Before,
}

/// How long proxies may take to open their backends on an announced next primary (they wait up to
/// 2 s, see dmf-proxy's `router::control`).
const SPARES_WAIT: Duration = Duration::from_secs(3);

/// Steps, in order; each is recorded in `state.<key>.steps` once done.
const HELD: &str = "held";
const FENCED: &str = "fenced";
const CAUGHT_UP: &str = "caught_up";
const SEQUENCES: &str = "sequences";
const SWITCHED: &str = "replication_switched";
const ROUTED: &str = "routed";

/// Progress of one protocol run, written whole to the way's record after each step.
struct Progress {
    way: Way,
    record: FlipRecord,
    /// The sequences this run copied, for its cutover record only.
    sequences: std::collections::BTreeMap<String, i64>,
}

impl Progress {
    fn load(ctx: &Context, way: Way) -> Result<Progress, Error> {
        let record = match way {
            Way::Forward => ctx.record::<Flip>()?.0,
            Way::Back => ctx.record::<Rollback>()?.0,
        };
        Ok(Progress { way, record, sequences: Default::default() })
    }

    /// The record as a patch of the migration's state.
    fn patch(&self) -> Patch {
        match self.way {
            Way::Forward => Patch::of(&Flip(self.record.clone())),
            Way::Back => Patch::of(&Rollback(self.record.clone())),
        }
    }

    async fn save(&self, ctx: &Context) -> Result<(), Error> {
        ctx.save(self.patch()).await
    }

    /// Record a finished step in memory; it becomes durable with the next `save`.
    ///
    /// Undo reads the flags saved before each action it must reverse, never the steps. So a step
    /// that needs no undo costs the hold no control-plane write.
    fn record(&mut self, ctx: &Context, step: &str, took: Duration) {
        self.record.steps.push(step.to_string());
        self.record.timings_ms.insert(step.to_string(), took.as_secs_f64() * 1000.0);
        self.crash_point(ctx, step);
    }

    /// Fault injection for the crash tests: the worker dies (or, with `:stop`, stops itself with
    /// SIGSTOP until someone sends SIGCONT) right after recording `step`.
    ///
    /// `DMF_FAULT_FLIP=<cluster>:<step>[:stop],...` names the faults (`start` is before the hold).
    /// Each fires once: a file in `DMF_FAULT_DIR` remembers it.
    fn crash_point(&self, ctx: &Context, step: &str) {
        let Some(fault) = crate::fault::fires("DMF_FAULT_FLIP", &format!("{}:{step}", ctx.cluster())) else { return };
        if fault.ends_with(":stop") {
            tracing::error!(cluster = %ctx.cluster(), migration = %ctx.migration.id, step, pid = std::process::id(), "DMF_FAULT_FLIP: the worker stops here");
            let _ = std::process::Command::new("kill").args(["-STOP", &std::process::id().to_string()]).status();
            tracing::error!(cluster = %ctx.cluster(), migration = %ctx.migration.id, step, "DMF_FAULT_FLIP: the worker goes on");
        } else {
            tracing::error!(cluster = %ctx.cluster(), migration = %ctx.migration.id, step, "DMF_FAULT_FLIP: the worker dies here");
            std::process::abort();
        }
    }
}

/// Phase flipping.
pub async fn run_forward(ctx: &Context) -> Result<Outcome, Error> {
    let source_dsn = ctx.source_dsn().to_string();
    let target_dsn = ctx.require_target()?;
    let target_route = ctx.route_target()?.unwrap_or_else(|| target_dsn.clone());
    run(ctx, Way::Forward, (source_dsn.clone(), source_dsn), (target_dsn, target_route)).await
}

/// Phase rolling_back.
pub async fn run_back(ctx: &Context) -> Result<Outcome, Error> {
    let source_dsn = ctx.source_dsn().to_string();
    let target_dsn = ctx.require_target()?;
    let target_route = ctx.route_target()?.unwrap_or_else(|| target_dsn.clone());
    let outcome = run(ctx, Way::Back, (target_dsn.clone(), target_route), (source_dsn.clone(), source_dsn.clone())).await?;
    if outcome == Outcome::Done {
        // traffic is on the source with every write: replication back is no longer needed (once
        // the released traffic has settled there)
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.flip.settle) => {}
            _ = ctx.cancel.cancelled() => return Err(Error::Cancelled),
        }
        let cluster = ctx.cluster();
        let source = pg::connect_writable(&source_dsn, &format!("source of {cluster}")).await?;
        let target = pg::connect_writable(&target_dsn, &format!("target of {cluster}")).await?;
        reverse::remove(&source, &target, &Names::reverse_of(ctx.migration.id)).await?;
        tracing::info!(cluster = %cluster, migration = %ctx.migration.id, "rolled back: reverse replication removed; the target stays fenced");
    }
    Ok(outcome)
}

/// `from` and `to`: (the connection string dmf uses, the one routes use).
async fn run(ctx: &Context, way: Way, (from_dsn, from_route): (String, String), (to_dsn, to_route): (String, String)) -> Result<Outcome, Error> {
    let cluster = ctx.cluster().to_string();
    let mut progress = Progress::load(ctx, way)?;
    let route = ctx.db.route(&cluster).await?.ok_or_else(|| Error::NeedsOperator(format!("cluster {cluster} has no route")))?;
    if dmf_db::route::endpoint(&route.primary_endpoint) == dmf_db::route::endpoint(&to_route) && !route.hold {
        // a previous run moved the route and released: nothing is left to do but its record (its
        // worker may have died before writing it)
        let recorded = progress.record.in_progress || progress.record.routed_epoch.is_some();
        progress.record.in_progress = false;
        progress.save(ctx).await?;
        if recorded {
            record_cutover(ctx, way, "moved", &progress.record, &progress.sequences).await;
        }
        return Ok(Outcome::Done);
    }
    let from = pg::connect_writable(&from_dsn, &format!("{} of {cluster}", side_name(way, true))).await?;
    let to = pg::connect_writable(&to_dsn, &format!("{} of {cluster}", side_name(way, false))).await?;
    let flip_before = ctx.record::<Flip>()?.0.before.unwrap_or_default();
    let sides = Sides { way, from_route, to_route, from, to, flip_before };
    if progress.record.in_progress {
        // a run died half-way (its worker was lost): traffic goes back where it was first
        let at = progress.record.steps.last().cloned().unwrap_or_else(|| "start".into());
        let reason = format!("a previous {} attempt stopped after step {at:?} (its worker was lost); traffic returned to {}", way.key(), side_name(way, true));
        return undo(ctx, &sides, &mut progress, reason).await;
    }
    if let Err(reason) = guards(ctx, &sides).await? {
        // not yet: no attempt is counted, nothing was touched
        progress.record.last_reason = Some(reason.clone());
        progress.save(ctx).await?;
        return Ok(Outcome::Revert { to: way.safe_phase(), reason });
    }
    // Work that needs no hold is done before it. What the fence will change is read and saved
    // with the start, so that undo restores exactly that. The reverse publication and slot are
    // made now: replication back starts past a position recorded inside the hold, so nothing the
    // slot sees before then is ever sent. Undo drops the slot.
    let before = fence::before(&sides.from, &crate::repl_role::name(&Names::of(ctx.migration.id))).await?;
    if way == Way::Forward {
        let back = Names::reverse_of(ctx.migration.id);
        objects::ensure_publication(&sides.to, &back).await?;
        reverse::prepare(&sides.to, &back).await?;
    }
    progress.record = FlipRecord {
        attempts: progress.record.attempts + 1,
        in_progress: true,
        started_at: Some(chrono::Utc::now()),
        undone: std::mem::take(&mut progress.record.undone),
        before: Some(before),
        fencing: true,
        worker: ctx.db.lease_holder().map(str::to_string),
        ..FlipRecord::default()
    };
    progress.save(ctx).await?;
    progress.crash_point(ctx, "start");
    match protocol(ctx, &sides, &mut progress).await {
        Ok(()) => {
            progress.record.in_progress = false;
            progress.save(ctx).await?;
            record_cutover(ctx, way, "moved", &progress.record, &progress.sequences).await;
            Ok(Outcome::Done)
        }
        // cancelled, or the lease is gone (this worker stalled and another may run the migration
        // now): undoing here could undo that worker's flip
        Err(e) if matches!(e, Error::Cancelled | Error::Db(dmf_db::Error::LeaseLost { .. })) => Err(e),
        Err(e) => {
            let reason = format!("{} failed: {e}; traffic returned to {}", way.key(), side_name(way, true));
            undo(ctx, &sides, &mut progress, reason).await
        }
    }
}

fn side_name(way: Way, from: bool) -> &'static str {
    match (way, from) {
        (Way::Forward, true) | (Way::Back, false) => "source",
        (Way::Forward, false) | (Way::Back, true) => "target",
    }
}

/// `Err(reason)` when the flip must not start now.
async fn guards(ctx: &Context, sides: &Sides) -> Result<Result<(), String>, Error> {
    let prepared = fence::prepared_transactions(&sides.from).await?;
    if !prepared.is_empty() {
        return Ok(Err(fence::prepared_reason(side_name(sides.way, true), &prepared)));
    }
    if sides.way == Way::Forward {
        if ctx.record::<AuditState>()?.gate != Gate::Open {
            return Ok(Err("validation is not clean (the audit gate is closed)".into()));
        }
        if let Some(d) = ctx.db.differences(ctx.migration.id, 1).await?.first() {
            return Ok(Err(format!("the auditor has a confirmed difference in {}", d.table_name.as_deref().unwrap_or("?"))));
        }
        if let Err(reason) = quiet_replication(ctx, sides).await? {
            return Ok(Err(reason));
        }
    } else {
        // replication back must exist: the flipped phase starts it, but may not have run yet
        reverse::replicate_back(ctx, &sides.to, &sides.from, &sides.from_route).await?;
        // No backends are opened ahead on the source (it is fenced until the rollback unfences
        // it, and a session opened there now would stay read-only), but every proxy is woken by a
        // new epoch: a proxy whose route was at rest polls it instead of listening, and must be
        // listening before the hold, or the hold would reach it only at its next poll.
        let cluster = ctx.cluster();
        // (a proxy at rest reads its route at its next poll: within the announcement's bound)
        match ctx.db.wake_proxies(cluster, &format!("dmf-worker {}", sides.way.key()), SPARES_WAIT + ctx.config.flip.ack_timeout).await {
            Err(dmf_db::Error::Conflict(e)) => return Ok(Err(format!("not every proxy answered before the hold: {e}"))),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
    }
    // the connections kept between watch ticks (this worker's and any other's) end now, not by
    // the fence inside the hold
    ctx.config.conns.forget(ctx.migration.id);
    crate::conns::end_kept_elsewhere(&sides.from, ctx.migration.id).await?;
    Ok(Ok(()))
}

/// Wait, up to `FlipConfig::lag_patience`, for a heartbeat that reaches the target within
/// `max_lag`: one slow round trip on a busy host is no reason to give up a flip (and to go back for
/// another shadow-reads tick), a backlog that does not drain within the patience is.
async fn quiet_replication(ctx: &Context, sides: &Sides) -> Result<Result<(), String>, Error> {
    let cfg = &ctx.config.flip;
    let started = Instant::now();
    let mut best: Option<Duration> = None;
    let mut samples = 0u32;
    loop {
        let lag = health::write_and_wait(&sides.from, &sides.to, ctx.config.heartbeat_timeout, &ctx.cancel).await?;
        samples += 1;
        match lag {
            Some(l) if l <= cfg.max_lag => return Ok(Ok(())),
            Some(l) => best = Some(best.map_or(l, |b| b.min(l))),
            None => return Ok(Err(format!("a heartbeat did not reach the target within {:?}", ctx.config.heartbeat_timeout))),
        }
        if started.elapsed() >= cfg.lag_patience {
            let best = best.unwrap_or_default();
            return Ok(Err(format!(
                "replication lag stayed over the flip limit {} ms for {:.1} s (best of {samples} heartbeats {:.1} ms)",
                cfg.max_lag.as_millis(),
                started.elapsed().as_secs_f64(),
                best.as_secs_f64() * 1000.0
            )));
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(LAG_SAMPLE_GAP) => {}
        }
    }
}

/// Between two heartbeats of the flip's lag guard.
const LAG_SAMPLE_GAP: Duration = Duration::from_millis(50);

/// The protocol, from announcing the next primary to the route move.
///
/// Inside the hold the control plane is written only where correctness needs it: the hold, the
/// move, and before a rollback unfences. Steps are recorded as they finish and saved with the
/// move; undo reads the flags saved at the start.
async fn protocol(ctx: &Context, sides: &Sides, progress: &mut Progress) -> Result<(), Error> {
    let cluster = ctx.cluster().to_string();
    let cfg = &ctx.config.flip;
    let actor = format!("dmf-worker {}", sides.way.key());
    let back = Names::reverse_of(ctx.migration.id);

    // 0. forward: announce the target, so that every proxy opens and warms a backend there for
    // each of its sessions before the hold (they acknowledge when ready, within a bound); every
    // proxy listens to the route from here on (see dmf-proxy's `router::control`; a rollback's
    // guards woke them)
    if sides.way == Way::Forward {
        let t = Instant::now();
        let announced = ctx
            .db
            .change_route(&cluster, &RouteChange { next_primary: Some(Some(sides.to_route.clone())), ..Default::default() }, &actor)
            .await?;
        let proxies = ctx.db.wait_route_applied(&cluster, announced.route_epoch, SPARES_WAIT + cfg.ack_timeout).await?;
        progress.record.timings_ms.insert("backends_opened_ahead".into(), t.elapsed().as_secs_f64() * 1000.0);
        // clients moved to a primary that refuses them are cut off: every proxy must have
        // logged in there as every user it has sessions for
        let refused: Vec<String> = proxies
            .iter()
            .filter(|p| !p.cannot_login.is_empty())
            .map(|p| format!("proxy {} on {} cannot log in to the target as {}", p.listen, p.host, p.cannot_login.join(", ")))
            .collect();
        if !refused.is_empty() {
            return Err(Error::NotReady(refused.join("; ")));
        }
    }
    let begun = Instant::now();

    // 1. hold: every live proxy holds new transactions; in-flight ones finish (or are ended)
    let t = Instant::now();
    let held = ctx
        .db
        .change_route(
            &cluster,
            &RouteChange {
                hold: Some(true),
                hold_deadline_ms: Some(cfg.hold_deadline.as_millis() as i32),
                // forward only (already announced): proxies open backends there for sessions that
                // have none yet (a fenced source would give them read-only sessions on the way back)
                next_primary: (sides.way == Way::Forward).then(|| Some(sides.to_route.clone())),
                ..Default::default()
            },
            &actor,
        )
        .await?;
    progress.record.hold_epoch = Some(held.route_epoch);
    progress.record.held_at = Some(chrono::Utc::now());
    let proxies = ctx.db.wait_route_applied(&cluster, held.route_epoch, cfg.hold_deadline + cfg.ack_timeout).await?;
    // a proxy that acknowledged with a transaction still open (a session it could not end) would
    // have the fence spare that transaction, and its COMMIT could land after the final marker
    let undrained: Vec<String> = proxies.iter().filter(|p| !p.drained).map(|p| format!("proxy {} on {}", p.listen, p.host)).collect();
    if !undrained.is_empty() {
        return Err(Error::NotReady(format!("{} acknowledged the hold with a transaction still open", undrained.join(", "))));
    }
    let spared: Vec<i32> = proxies.iter().flat_map(|p| p.backend_pids.iter().copied()).collect();
    progress.record.proxies = Some(proxies.len());
    progress.record.acked_by = proxies.iter().map(|p| format!("{} on {}", p.listen, p.host)).collect();
    progress.record(ctx, HELD, t.elapsed());
    ctx.check_cancel()?;

    // 2. fence the old primary against writes that bypass the proxies
    let t = Instant::now();
    let fenced = fence::fence(&sides.from, &progress.record.before.clone().unwrap_or_default(), &spared).await?;
    let prepared = fence::prepared_transactions(&sides.from).await?;
    fenced.holds(side_name(sides.way, true), &prepared).map_err(Error::NotReady)?;
    let ended = fenced.ended;
    progress.record.sessions_ended = Some(ended);
    progress.record(ctx, FENCED, t.elapsed());
    ctx.check_cancel()?;

    // 3. the final marker (once the new primary shows it, it has applied everything before it)
    // and, at the same time, the sequences: the fence froze both
    let ((arrived, marker_took), (copied, sequences_took)) = tokio::join!(
        timed(health::write_and_wait(&sides.from, &sides.to, cfg.catch_up_timeout, &ctx.cancel)),
        timed(sequences::copy_sequences(&sides.from, &sides.to))
    );
    if arrived?.is_none() {
        return Err(Error::Replication(format!("the {} did not apply the final write within {:?}", side_name(sides.way, false), cfg.catch_up_timeout)));
    }
    progress.sequences = copied?.into_iter().collect();
    // The source's final position, and the target's: everything the target holds up to its
    // position came from the source, and replication back starts after it. The target's is the
    // insert position, because the apply worker commits asynchronously.
    let (final_lsn, start_back) = tokio::join!(
        sides.from.query_one("SELECT pg_current_wal_lsn()::text", &[]),
        sides.to.query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
    );
    let final_lsn: String = final_lsn.map_err(pg::err("read the final LSN"))?.get(0);
    let start_back: String = start_back.map_err(pg::err("read the new primary's LSN"))?.get(0);
    progress.record.final_lsn = Some(final_lsn);
    progress.record.applied_lsn = Some(start_back.clone());
    progress.record(ctx, CAUGHT_UP, marker_took);
    progress.record(ctx, SEQUENCES, sequences_took);
    ctx.check_cancel()?;

    if sides.way == Way::Back {
        // replication back stops; the source, fenced by the flip, takes writes again
        let t = Instant::now();
        reverse::disable(&sides.to, &back.subscription, cfg.catch_up_timeout).await?;
        progress.record.to_unfenced = true;
        progress.save(ctx).await?;
        fence::unfence(&sides.to, &sides.flip_before).await?;
        progress.record(ctx, SWITCHED, t.elapsed());
        ctx.check_cancel()?;
    } else {
        // Forward replication has nothing left to apply: the source is fenced and the target
        // showed the final marker. It is removed after the release; then replication back starts
        // from this position (`reverse::replicate_back`).
        progress.record.reverse_start_lsn = Some(start_back);
    }

    // 4. the route points at the new primary and releases the held transactions, in one epoch,
    // with this run's record in the same control-plane transaction (refused unless this worker
    // still holds the lease)
    ctx.check_cancel()?;
    let t = Instant::now();
    let routed = ctx
        .db
        .change_route_recording(
            &cluster,
            &RouteChange {
                primary: Some(sides.to_route.clone()),
                read: Some(sides.to_route.clone()),
                mode: Some("primary".into()),
                hold: Some(false),
                shadow_endpoint: Some(None),
                shadow_fraction: Some(0.0),
                next_primary: Some(None),
                ..Default::default()
            },
            &actor,
            Some((ctx.migration.id, progress.patch())),
        )
        .await?;
    progress.record.routed_epoch = Some(routed.route_epoch);
    let held_ms = begun.elapsed().as_secs_f64() * 1000.0;
    progress.record.held_ms = Some(held_ms);
    // saved by the caller with the end of the run
    progress.record(ctx, ROUTED, t.elapsed());
    match ctx.db.wait_route_applied(&cluster, routed.route_epoch, cfg.ack_timeout).await {
        Ok(p) => {
            // each proxy acknowledged the release once its held transactions ran again
            progress.record.longest_stall_ms = p.iter().filter_map(|p| p.hold_longest_us).max().map(|us| us as f64 / 1000.0);
            tracing::info!(cluster = %cluster, migration = %ctx.migration.id, way = sides.way.key(), held_ms, proxies = p.len(), sessions_ended = ended, "traffic moved to the {}", side_name(sides.way, false));
        }
        Err(e) => tracing::warn!(cluster = %cluster, migration = %ctx.migration.id, error = %e, "route moved; some proxies have not acknowledged it yet (they hold until they do)"),
    }
    Ok(())
}

async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let t = Instant::now();
    let r = f.await;
    (r, t.elapsed())
}

/// Put everything back as it was before this run and release the hold on the old primary.
async fn undo(ctx: &Context, sides: &Sides, progress: &mut Progress, reason: String) -> Result<Outcome, Error> {
    let cluster = ctx.cluster().to_string();
    let cfg = &ctx.config.flip;
    // a worker whose lease ran out must not undo: another may have flipped meanwhile
    ctx.check_cancel()?;
    tracing::warn!(cluster = %cluster, migration = %ctx.migration.id, way = sides.way.key(), steps = ?progress.record.steps, %reason, "undoing");
    let route = ctx.db.route(&cluster).await?.ok_or_else(|| Error::NeedsOperator(format!("cluster {cluster} has no route")))?;
    if dmf_db::route::endpoint(&route.primary_endpoint) == dmf_db::route::endpoint(&sides.to_route) {
        // the route moved: the protocol finished as far as traffic is concerned
        progress.record.in_progress = false;
        progress.save(ctx).await?;
        record_cutover(ctx, sides.way, "moved", &progress.record, &progress.sequences).await;
        return Ok(Outcome::Done);
    }
    let back = Names::reverse_of(ctx.migration.id);
    if progress.record.to_unfenced {
        // rollback: the source had been unfenced for the move; traffic stays on the target, so
        // the source is fenced again (what to restore there is still the flip's record)
        let fenced = fence::fence(&sides.to, &sides.flip_before, &[]).await?;
        if !fenced.unendable.is_empty() {
            tracing::warn!(cluster = %cluster, migration = %ctx.migration.id, sessions = ?fenced.unendable, "fenced the target again; superuser sessions there could not be ended");
        }
    }
    match sides.way {
        Way::Forward => {
            // made before the hold, if the run got that far; the route never moved, so it holds
            // no write anyone needs
            objects::drop_slot(&sides.to, &back.slot).await?;
        }
        Way::Back => reverse::enable(&sides.to, &back.subscription).await?,
    }
    if progress.record.fencing {
        fence::unfence(&sides.from, &progress.record.before.clone().unwrap_or_default()).await?;
    }
    // release on the old primary (the route's primary never changed)
    let released = ctx
        .db
        .change_route(&cluster, &RouteChange { hold: Some(false), next_primary: Some(None), ..Default::default() }, &format!("dmf-worker {} undo", sides.way.key()))
        .await?;
    if let Err(e) = ctx.db.wait_route_applied(&cluster, released.route_epoch, cfg.ack_timeout).await {
        tracing::warn!(cluster = %cluster, migration = %ctx.migration.id, error = %e, "released; some proxies have not acknowledged yet");
    }
    let attempts = progress.record.attempts.max(1);
    progress.record.in_progress = false;
    progress.record.last_reason = Some(reason.clone());
    // kept across attempts: the revert's transition event is lost if this worker dies before the
    // engine records it, and the next run then flips again straight from here
    progress.record.undone.push(Undone { reason: reason.clone(), at: Some(chrono::Utc::now()) });
    progress.save(ctx).await?;
    record_cutover(ctx, sides.way, "undone", &progress.record, &progress.sequences).await;
    Ok(revert_outcome(ctx, sides.way, attempts, reason))
}

/// The run's evidence in `dmf.cutovers` (once per hold: a later run that finds the route already
/// moved records it only if its worker died first), with the sequences this run copied (kept out
/// of the migration's state: the record saved inside the hold stays small). Traffic has already
/// moved or returned: a record that cannot be written is logged, never a failed cutover.
async fn record_cutover(ctx: &Context, way: Way, outcome: &str, record: &FlipRecord, sequences: &std::collections::BTreeMap<String, i64>) {
    let mut record = record.clone();
    record.sequences = sequences.clone();
    // (a record that does not serialise is a bug; the cutover is not held up for it)
    let evidence = serde_json::to_value(&record).unwrap_or_else(|e| serde_json::json!({ "unrecorded": e.to_string() }));
    let written = ctx
        .db
        .record_cutover(&dmf_db::history::NewCutover {
            migration: ctx.migration.id,
            cluster: ctx.cluster(),
            way: way.key(),
            outcome,
            hold_epoch: record.hold_epoch,
            worker: record.worker.as_deref(),
            record: evidence,
        })
        .await;
    if let Err(e) = written {
        tracing::warn!(cluster = %ctx.cluster(), migration = %ctx.migration.id, way = way.key(), outcome, error = %e, "the cutover record was not written");
    }
}

fn revert_outcome(ctx: &Context, way: Way, attempts: u64, reason: String) -> Outcome {
    if way == Way::Forward && attempts >= u64::from(ctx.config.flip.max_attempts) {
        return Outcome::Fail { error: format!("{reason}; {attempts} flip attempts failed, traffic is on the source: an operator must look") };
    }
    Outcome::Revert { to: way.safe_phase(), reason }
}
