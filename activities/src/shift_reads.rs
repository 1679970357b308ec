//! Shadow reads: the route sends read-only statements outside transactions to the target (with
//! read-your-writes) while writes stay on the source, and the auditor and the replication guards
//! keep running. A guard that trips returns reads to the source before the migration aborts; after
//! `shadow_reads_for` with every guard quiet, the flip may start.

use dmf_db::route::RouteChange;
use dmf_workflows::Outcome;
use crate::error::Error;
use crate::state::{Patch, ShadowReads};
use crate::{audit, Context};

pub async fn run(ctx: &Context) -> Result<Outcome, Error> {
    let cluster = ctx.cluster().to_string();
    let m = &ctx.migration;
    // an Aurora target's reader endpoint; else the target itself
    let target = ctx.route_read_target()?.ok_or_else(|| Error::NeedsOperator(format!("cluster {cluster}: no target provisioned yet")))?;
    let route = ctx.db.route(&cluster).await?.ok_or_else(|| Error::NeedsOperator(format!("cluster {cluster} has no route")))?;
    let since = match ctx.record::<ShadowReads>()?.since {
        Some(since) if route.mode == "split_reads" && dmf_db::route::endpoint(&route.read_endpoint) == dmf_db::route::endpoint(&target) => since,
        _ => {
            let row = ctx
                .db
                .change_route(&cluster, &RouteChange { mode: Some("split_reads".into()), read: Some(target.clone()), ..Default::default() }, "dmf-worker shadow_reads")
                .await?;
            let since = chrono::Utc::now();
            ctx.save(Patch::of(&ShadowReads { since: Some(since), epoch: Some(row.route_epoch) })).await?;
            tracing::info!(cluster = %cluster, migration = %m.id, epoch = row.route_epoch, "reads go to the target; writes stay on the source");
            since
        }
    };
    // the auditor's tick runs the replication guards too
    match audit::run(ctx).await? {
        Outcome::Abort { reason, detail } => {
            reads_back_to_source(ctx).await?;
            return Ok(Outcome::Abort { reason, detail });
        }
        Outcome::Fail { error } => return Ok(Outcome::Fail { error }),
        _ => {}
    }
    let elapsed = (chrono::Utc::now() - since).to_std().unwrap_or_default();
    if elapsed >= ctx.config.shadow_reads_for {
        tracing::info!(cluster = %cluster, migration = %m.id, seconds = elapsed.as_secs(), "shadow reads clean: the flip may start");
        return Ok(Outcome::Done);
    }
    Ok(Outcome::Watch(ctx.config.watch_interval.min(std::time::Duration::from_secs(1))))
}

/// Every statement to the source again (a guard tripped, or the migration aborts).
pub async fn reads_back_to_source(ctx: &Context) -> Result<(), Error> {
    let cluster = ctx.cluster();
    let route = ctx.db.route(cluster).await?;
    let source = dmf_db::route::endpoint(ctx.source_dsn());
    if route.is_some_and(|r| r.mode == "primary" && dmf_db::route::endpoint(&r.read_endpoint) == source && dmf_db::route::endpoint(&r.primary_endpoint) == source) {
        return Ok(());
    }
    ctx.db
        .change_route(
            cluster,
            &RouteChange { primary: Some(source.clone()), read: Some(source), mode: Some("primary".into()), hold: Some(false), ..Default::default() },
            "dmf-worker reads back to the source",
        )
        .await?;
    tracing::info!(cluster = %cluster, migration = %ctx.migration.id, "reads returned to the source");
    Ok(())
}
