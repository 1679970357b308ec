//! What the replication guards look at: a sample of the replication's health, and the heartbeat
//! that measures lag in milliseconds (written on the source, read on the target). The flip and
//! the auditor use the heartbeat too: once the target shows one, it has applied everything the
//! source committed before it.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::Error;
use crate::{pg, Context, HEARTBEAT_SCHEMA};

/// What one check measured.
#[derive(Debug, Clone)]
pub struct Sample {
    pub lag: Duration,
    /// The heartbeat did not reach the target within the timeout: `lag` is a lower bound.
    pub lag_timed_out: bool,
    pub lag_bytes: Option<i64>,
    pub slot_active: bool,
    /// The migration's slots on the source (none with DMS).
    pub slots: Vec<crate::state::SlotReport>,
}

/// The source and the target, connected once for a tick's sample and checks: the connections the
/// migration's previous tick kept (`conns`), else new ones. `keep` hands them back after a tick
/// that ended in a watch or done.
pub(crate) async fn sides(ctx: &Context) -> Result<(Client, Client), Error> {
    let (id, conns) = (ctx.migration.id, &ctx.config.conns);
    let target_dsn = ctx.require_target()?;
    let name = crate::conns::application_name(id);
    let source = conns.take_or(id, ctx.source_dsn(), pg::connect_named(ctx.source_dsn(), &format!("source of {}", ctx.cluster()), &name)).await?;
    let target = conns.take_or(id, &target_dsn, pg::connect_named(&target_dsn, &format!("target of {}", ctx.cluster()), &name)).await?;
    Ok((source, target))
}

/// Keep a tick's connections (from `sides`) for the migration's next tick.
pub(crate) fn keep(ctx: &Context, (source, target): (Client, Client)) {
    let conns = &ctx.config.conns;
    conns.put(ctx.migration.id, ctx.source_dsn(), source);
    if let Ok(dsn) = ctx.require_target() {
        conns.put(ctx.migration.id, &dsn, target);
    }
}

/// How long a heartbeat written on the source takes to show on the target, and whether it timed
/// out (then the lag is a lower bound).
pub(crate) async fn heartbeat_lag(ctx: &Context, source: &Client, target: &Client) -> Result<(Duration, bool), Error> {
    let started = Instant::now();
    let arrived = write_and_wait(source, target, ctx.config.heartbeat_timeout, &ctx.cancel).await?;
    Ok((arrived.unwrap_or_else(|| started.elapsed()), arrived.is_none()))
}

/// Write a heartbeat on the source and wait until the target shows it. Once it has, every
/// transaction the source committed before this call has been applied on the target too (one apply
/// worker applies in commit order). Returns how long that took, or None after `timeout`.
pub async fn write_and_wait(
    source: &Client,
    target: &Client,
    timeout: Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Option<Duration>, Error> {
    let hb = pg::qualified(HEARTBEAT_SCHEMA, "heartbeat");
    let started = Instant::now();
    let seq: i64 = source
        .query_one(&format!("UPDATE {hb} SET seq = seq + 1, written_at = clock_timestamp() WHERE id = 1 RETURNING seq"), &[])
        .await
        .map_err(pg::err("write heartbeat"))?
        .get(0);
    let read = format!("SELECT seq FROM {hb} WHERE id = 1");
    while started.elapsed() < timeout {
        let seen: Option<i64> = target.query_opt(&read, &[]).await.map_err(pg::err("read heartbeat on the target"))?.map(|r| r.get(0));
        if seen.is_some_and(|s| s >= seq) {
            return Ok(Some(started.elapsed()));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            // a cheap read: the flip waits on this inside its hold
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
    Ok(None)
}
