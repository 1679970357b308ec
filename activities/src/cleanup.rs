//! Abort and cleanup: remove the subscription (or the DMS task, instance and endpoints), slots
//! (replication and audit), publication and heartbeat objects, and the provisioned target (a local
//! cluster, a pool instance's database with the roles no other cluster claims, or the Aurora
//! cluster with its instances and groups), so that the source is left exactly as it was. Runs until it succeeds; AWS deletions are watched until they finish.

use crate::error::Error;
use crate::objects::{drop_slot, subscription_exists};
use crate::providers::{aws, pool};
use crate::providers::local::LocalCluster;
use crate::state::{LocalDir, LocalPort, TargetCreated};
use crate::{pg, Context, Provider, HEARTBEAT_SCHEMA};
use dmf_workflows::Outcome;

pub async fn run(ctx: &Context) -> Result<Outcome, Error> {
    let cluster = ctx.cluster().to_string();
    let m = &ctx.migration;
    let names = ctx.names();
    // Never tear down the primary traffic writes to (an abort that slipped past the request's
    // check, or a route moved by hand): an operator decides.
    if ctx.db.route(&cluster).await?.is_some_and(|r| dmf_db::route::endpoint(&r.primary_endpoint) != dmf_db::route::endpoint(&m.source_dsn)) {
        return Err(Error::NeedsOperator(format!(
            "cluster {cluster}: the route's primary is not the source, so the target takes writes; cleanup tears nothing down (use dmf rollback first)"
        )));
    }
    // Traffic first: an abort from shadow_reads sends reads back to the source.
    crate::shift_reads::reads_back_to_source(ctx).await?;
    // DMS next: its task reads the source and writes the target.
    if ctx.uses_dms() && !crate::dms::remove(ctx).await? {
        return Ok(Outcome::Watch(std::time::Duration::from_secs(2)));
    }
    // Target first: a subscription left enabled would recreate activity on the slot.
    if let Some(target_dsn) = ctx.target_dsn()?.filter(|_| !ctx.uses_dms()) {
        let reachable = if !provisioned_by_us(ctx)? {
            true
        } else if ctx.provider == Provider::Aws {
            !aws::teardown_started(ctx)?
        } else if let Some(instance) = pool::instance(ctx) {
            pool::database_exists(ctx, instance).await?
        } else {
            local_target(ctx)?.map(|c| c.is_running()).unwrap_or(true)
        };
        if reachable {
            let target = pg::connect(&target_dsn, &format!("target of {cluster}")).await?;
            if subscription_exists(&target, &names.subscription).await? {
                let sub = pg::ident(&names.subscription);
                // Detach the slot so DROP does not try to drop it remotely; the source side drops it.
                pg::exec(&target, "disable subscription", &format!("ALTER SUBSCRIPTION {sub} DISABLE")).await?;
                pg::exec(&target, "detach subscription slot", &format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)")).await?;
                pg::exec(&target, "drop subscription", &format!("DROP SUBSCRIPTION {sub}")).await?;
            }
        }
    }
    let source = pg::connect(ctx.source_dsn(), &format!("source of {cluster}")).await?;
    // the connections kept between watch ticks: nothing of dmf's stays on the source
    ctx.config.conns.forget(m.id);
    crate::conns::end_kept_elsewhere(&source, m.id).await?;
    drop_slot(&source, &names.slot).await?;
    drop_slot(&source, &crate::audit::audit_slot(ctx)).await?;
    pg::exec(&source, "drop publication", &format!("DROP PUBLICATION IF EXISTS {}", pg::ident(&names.publication))).await?;
    pg::exec(&source, "drop heartbeat schema", &format!("DROP SCHEMA IF EXISTS {} CASCADE", pg::ident(HEARTBEAT_SCHEMA))).await?;
    crate::repl_role::drop(&source, &crate::repl_role::name(&names)).await?;
    let teardown = m.settings.get("teardown_target").and_then(|v| v.as_bool()).unwrap_or(true);
    let spec = if teardown && provisioned_by_us(ctx)? { aws::provisioned(ctx)? } else { None };
    if let Some(spec) = spec {
        if !aws::teardown(ctx, &spec).await? {
            return Ok(Outcome::Watch(std::time::Duration::from_secs(2)));
        }
    }
    if let Some(instance) = pool::instance(ctx).filter(|_| teardown) {
        // also after a preflight that made nothing: its role claims go
        pool::teardown(ctx, instance).await?;
    }
    if let Some(c) = local_target(ctx)? {
        if teardown {
            tokio::task::spawn_blocking(move || c.destroy())
                .await
                .map_err(|e| Error::Local(format!("teardown task: {e}")))??;
            tracing::info!(cluster = %cluster, migration = %m.id, "local target removed");
        }
    }
    tracing::info!(cluster = %cluster, migration = %m.id, "cleanup done: no slot, publication, subscription or replication role left");
    Ok(Outcome::Done)
}

/// The local cluster this migration provisioned, if any.
fn local_target(ctx: &Context) -> Result<Option<LocalCluster>, Error> {
    if !provisioned_by_us(ctx)? {
        return Ok(None);
    }
    let (Some(dir), Some(port)) = (ctx.record::<LocalDir>()?.target_dir, ctx.record::<LocalPort>()?.target_port) else {
        return Ok(None);
    };
    Ok(Some(LocalCluster { dir: dir.into(), port }))
}

/// Provisioned by us (not adopted): ours to tear down.
fn provisioned_by_us(ctx: &Context) -> Result<bool, Error> {
    Ok(ctx.migration.target_dsn.is_none() && ctx.record::<TargetCreated>()?.target_created)
}
