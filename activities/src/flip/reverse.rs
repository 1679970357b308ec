//! Subscriptions switched off and on around the flip, and replication back from the target to the
//! source (publication and slot on the target, subscription on the source).
//!
//! PostgreSQL 15 streams changes whatever their origin. The reverse publication and slot are made
//! on the target before the hold; inside it, once the target has shown the final marker of the
//! fenced source, the flip records the target's position: everything before it came from the
//! source, so the reverse subscription starts past it (its origin is advanced there before it is
//! enabled). Forward replication is removed before that subscription starts
//! (`replicate_back`), or every change would go round in a loop. Sessions passed in are
//! dmf's own, made writable (`pg::connect_writable`): the databases may be fenced.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::Error;
use crate::objects::{drop_slot, subscription_exists};
use crate::state::{Flip, Patch, Reverse};
use crate::{audit, pg, Context, Names};

/// Disable a subscription and wait until its apply worker has exited (nothing more is applied).
pub async fn disable(client: &Client, subscription: &str, timeout: Duration) -> Result<(), Error> {
    if !subscription_exists(client, subscription).await? {
        return Ok(());
    }
    pg::exec(client, "disable subscription", &format!("ALTER SUBSCRIPTION {} DISABLE", pg::ident(subscription))).await?;
    let started = Instant::now();
    loop {
        let running = client.query_opt(include_str!("sql/apply_worker.sql"), &[&subscription]).await.map_err(pg::err("look for the apply worker"))?;
        let Some(row) = running else { return Ok(()) };
        // An idle apply worker notices DISABLE only when it next wakes (about 200 ms here). The
        // caller has seen its last change applied, and its progress is committed with each
        // transaction, so it is ended now; the launcher does not restart a disabled subscription.
        // (pg_terminate_backend's own wait looks only every 100 ms: polling here is faster.)
        let pid: i32 = row.get(0);
        client.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.map_err(pg::err("end the apply worker"))?;
        if started.elapsed() > timeout {
            return Err(Error::Replication(format!("the apply worker of {subscription} still runs {timeout:?} after DISABLE")));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Enable a subscription again (a flip that did not finish).
pub async fn enable(client: &Client, subscription: &str) -> Result<(), Error> {
    if subscription_exists(client, subscription).await? {
        pg::exec(client, "enable subscription", &format!("ALTER SUBSCRIPTION {} ENABLE", pg::ident(subscription))).await?;
    }
    Ok(())
}

/// Drop a subscription without touching its slot (the slot's own side drops it).
pub async fn drop_subscription(client: &Client, subscription: &str) -> Result<(), Error> {
    if !subscription_exists(client, subscription).await? {
        return Ok(());
    }
    let sub = pg::ident(subscription);
    pg::exec(client, "disable subscription", &format!("ALTER SUBSCRIPTION {sub} DISABLE")).await?;
    pg::exec(client, "detach subscription slot", &format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)")).await?;
    pg::exec(client, "drop subscription", &format!("DROP SUBSCRIPTION {sub}")).await
}

/// On the target, before the hold: the slot that keeps every change made on the target from now on
/// (replication back skips what it holds from before the flip; one round trip; kept if it exists).
pub async fn prepare(target: &Client, reverse: &Names) -> Result<(), Error> {
    target.execute(include_str!("sql/create_reverse_slot.sql"), &[&reverse.slot]).await.map_err(pg::err("create the reverse slot"))?;
    Ok(())
}

/// On the source, after the release: subscribe to the target from the reverse slot, starting past
/// `start` (the target's position inside the hold; what the slot saw before it came from the
/// source). Made disabled, moved to `start`, then enabled, so that a retry after a crash in
/// between finds it disabled and does the rest.
pub async fn subscribe(source: &Client, conninfo: Option<&str>, reverse: &Names, start: Option<&str>) -> Result<(), Error> {
    let enabled: Option<bool> = source
        .query_opt("SELECT subenabled FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())", &[&reverse.subscription])
        .await
        .map_err(pg::err("look up the reverse subscription"))?
        .map(|r| r.get(0));
    match enabled {
        Some(true) => return Ok(()),
        Some(false) => {}
        None => {
            // the subscription logs in to the target as a replication role of its own there
            let conninfo = conninfo.ok_or_else(|| Error::NeedsOperator(format!("the reverse subscription {} is gone and no login for it was made", reverse.subscription)))?;
            let sql = format!(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (create_slot = false, slot_name = {}, copy_data = false, enabled = false)",
                pg::ident(&reverse.subscription),
                pg::literal(conninfo),
                pg::ident(&reverse.publication),
                pg::literal(&reverse.slot),
            );
            pg::exec(source, "create the reverse subscription", &sql).await?;
        }
    }
    if let Some(lsn) = start {
        source
            .execute(include_str!("sql/advance_origin.sql"), &[&reverse.subscription, &lsn])
            .await
            .map_err(pg::err("start the reverse subscription past the flip"))?;
    }
    pg::exec(source, "enable the reverse subscription", &format!("ALTER SUBSCRIPTION {} ENABLE", pg::ident(&reverse.subscription))).await
}

/// Remove replication back to the source: its subscription on the source, slot and publication on
/// the target.
pub async fn remove(source: &Client, target: &Client, reverse: &Names) -> Result<(), Error> {
    drop_subscription(source, &reverse.subscription).await?;
    drop_slot(target, &reverse.slot).await?;
    pg::exec(target, "drop the reverse publication", &format!("DROP PUBLICATION IF EXISTS {}", pg::ident(&reverse.publication))).await?;
    crate::repl_role::drop(target, &crate::repl_role::name(reverse)).await
}

/// Remove forward replication once traffic is on the target: the subscription on the target, the
/// slot, the auditor's slot and the publication on the source.
pub async fn remove_forward(source: &Client, target: &Client, forward: &Names, audit_slot: &str) -> Result<(), Error> {
    drop_subscription(target, &forward.subscription).await?;
    drop_slot(source, &forward.slot).await?;
    drop_slot(source, audit_slot).await?;
    pg::exec(source, "drop the publication", &format!("DROP PUBLICATION IF EXISTS {}", pg::ident(&forward.publication))).await?;
    crate::repl_role::drop(source, &crate::repl_role::name(forward)).await
}

/// Once per flip: remove forward replication, then replicate back to the source from the position
/// the flip recorded inside the hold. In this order: PostgreSQL 15 replicates changes whatever
/// their origin, so with both directions on, every change would go round in a loop.
pub(crate) async fn replicate_back(ctx: &Context, source: &Client, target: &Client, target_dsn: &str) -> Result<(), Error> {
    let m = &ctx.migration;
    if ctx.record::<Reverse>()?.subscribed == Some(true) {
        return Ok(());
    }
    let back = Names::reverse_of(m.id);
    // the reverse subscription's login first, while forward replication still runs: a target
    // where dmf cannot make it stops here with nothing removed. Not again once the subscription
    // exists (a run after a crash): a new password would lock it out.
    let exists = source
        .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())", &[&back.subscription])
        .await
        .map_err(pg::err("look up the reverse subscription"))?
        .is_some();
    let conninfo = if exists { None } else { Some(crate::repl_role::ensure(target, &crate::repl_role::name(&back), target_dsn).await?) };
    remove_forward(source, target, &Names::of(m.id), &audit::audit_slot(ctx)).await?;
    // (a flip from before this position was recorded made its slot inside the hold: from the slot)
    let start = ctx.record::<Flip>()?.0.reverse_start_lsn;
    subscribe(source, conninfo.as_deref(), &back, start.as_deref()).await?;
    ctx.save(Patch::of(&Reverse { subscribed: Some(true), ..Reverse::default() })).await?;
    tracing::info!(cluster = %ctx.cluster(), migration = %m.id, "forward replication removed; replicating back to the source");
    Ok(())
}
