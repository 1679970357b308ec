//! Flipped: traffic is on the target. Forward replication is removed, replication back to the
//! source starts (from the position the flip recorded inside the hold), and after the soak,
//! reverse replication is removed too, with the heartbeat schema on both sides, unless the policy
//! keeps it. The source is left fenced (read-only) until an operator drops it.

use dmf_workflows::Outcome;

use crate::error::Error;
use crate::flip::reverse;
use crate::state::{Patch, Reverse, Slots};
use crate::{pg, slots, Context, Names, HEARTBEAT_SCHEMA};

/// The longest wait between two looks at a soaking migration.
const SOAK_LOOK_AT_MOST_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn run(ctx: &Context) -> Result<Outcome, Error> {
    let cluster = ctx.cluster().to_string();
    let m = &ctx.migration;
    let target_dsn = ctx.require_target()?;
    let since_flip = (chrono::Utc::now() - m.phase_started_at).to_std().unwrap_or_default();
    if since_flip < ctx.config.flip.settle && ctx.record::<Reverse>()?.subscribed.is_none() {
        // the released traffic has the target to itself for a moment before the DDL below
        return Ok(Outcome::Watch(ctx.config.flip.settle - since_flip));
    }
    let source = pg::connect_writable(ctx.source_dsn(), &format!("source of {cluster}")).await?;
    let target = pg::connect_writable(&target_dsn, &format!("target of {cluster}")).await?;
    let back = Names::reverse_of(m.id);
    if ctx.uses_dms() && !crate::dms::remove(ctx).await? {
        // DMS stops and deletes its task before replication back starts
        return Ok(Outcome::Watch(ctx.config.watch_interval));
    }
    // the source subscribes to the target by the address the routes use (an Aurora endpoint)
    let target_route = ctx.route_target()?.unwrap_or_else(|| target_dsn.clone());
    reverse::replicate_back(ctx, &source, &target, &target_route).await?;
    // the reverse slot makes a rollback lossless: reported and warned about, never dropped here
    let reverse_slots = slots::report(&target, std::slice::from_ref(&back.slot), "target").await?;
    if let Some(detail) = slots::beyond_limit(&reverse_slots, ctx.config.max_slot_wal) {
        tracing::warn!(cluster = %cluster, migration = %m.id, %detail, "the reverse slot keeps much WAL on the target; it stays (a rollback needs it)");
    }
    ctx.save(Patch::of(&Slots { slots: reverse_slots })).await?;
    let soaked = (chrono::Utc::now() - m.phase_started_at).to_std().unwrap_or_default();
    if soaked < ctx.config.soak {
        // nothing moves during the soak but what the reverse slot keeps: the longer it has been
        // quiet the less often it is looked at (each look opens a connection to both sides), and
        // never past the soak's end
        let every = (soaked / 4).min(SOAK_LOOK_AT_MOST_EVERY).max(ctx.config.watch_interval);
        return Ok(Outcome::Watch(every.min(ctx.config.soak - soaked)));
    }
    let kept = ctx.config.keep_reverse_replication;
    if !kept {
        reverse::remove(&source, &target, &back).await?;
        // the heartbeat served the replication that is gone: nothing of dmf's stays on either side
        for (side, client) in [("source", &source), ("target", &target)] {
            pg::exec(client, &format!("drop the heartbeat schema on the {side}"), &format!("DROP SCHEMA IF EXISTS {} CASCADE", pg::ident(HEARTBEAT_SCHEMA))).await?;
        }
    }
    ctx.save(Patch::of(&Reverse { subscribed: Some(kept), kept, soaked_s: Some(soaked.as_secs()) })).await?;
    tracing::info!(cluster = %cluster, migration = %m.id, kept_reverse_replication = kept, "soak over: completed; the source stays read-only until an operator drops it");
    Ok(Outcome::Done)
}
