//! Replicating, the steady state: measure lag (milliseconds by heartbeat, bytes from the slot) and
//! check the guards (slot lost, schema drift, slots keeping too much WAL, slot inactive, lag above
//! the limit for longer than the window, named by its cause where the target shows one: a stopped
//! subscription, an apply worker waiting for a lock).
//! With DMS, the task's state stands in for the slot's (`dms::sample`).

use crate::error::Error;
use crate::health::{heartbeat_lag, Sample};
use crate::state::{Patch, SlotWatch, Slots};
use crate::{pg, slots, Context};
use tokio_postgres::Client;
use dmf_workflows::{AbortReason, LagVerdict, Outcome};

/// Write a heartbeat on the source and time how long the target takes to show it.
pub async fn sample(ctx: &Context, source: &Client, target: &Client) -> Result<Sample, Error> {
    let cluster = ctx.cluster();
    let names = ctx.names();
    let slots = slots::report(source, &[names.slot.clone(), names.audit_slot()], "source").await?;
    let Some(slot) = slots.iter().find(|s| s.name == names.slot) else {
        return Err(Error::Abort { reason: AbortReason::SlotLost, detail: format!("replication slot {} no longer exists on the source of {cluster}", names.slot) });
    };
    let (lag_bytes, slot_active) = (slot.behind_bytes, slot.active);
    let (lag, lag_timed_out) = heartbeat_lag(ctx, source, target).await?;
    Ok(Sample { lag, lag_timed_out, lag_bytes, slot_active, slots })
}


pub async fn run(ctx: &Context) -> Result<Outcome, Error> {
    // native replication: one connection to each side serves the sample and the checks, and is
    // kept for the next tick when this one ends in a watch or done (an abort closes them)
    let sides = if ctx.uses_dms() { None } else { Some(crate::health::sides(ctx).await?) };
    let outcome = check(ctx, sides.as_ref()).await;
    if let (Ok(Outcome::Watch(_) | Outcome::Done), Some(sides)) = (&outcome, sides) {
        crate::health::keep(ctx, sides);
    }
    outcome
}

/// WAL the source keeps for the migration's slots, when any was measured.
fn retained(slots: &[crate::state::SlotReport]) -> Option<i64> {
    slots.iter().filter(|s| s.side == "source").filter_map(|s| s.retained_bytes).reduce(|a, b| a + b)
}

async fn check(ctx: &Context, sides: Option<&(Client, Client)>) -> Result<Outcome, Error> {
    let m = &ctx.migration;
    let s = match sides {
        Some((source, target)) => sample(ctx, source, target).await?,
        None => crate::dms::sample(ctx).await?,
    };
    let lag_ms = s.lag.as_millis() as i64;
    let verdict_input_over = s.lag > ctx.config.lag.limit;
    let over_since = ctx.db.record_lag(m.id, Some(lag_ms), s.lag_bytes, retained(&s.slots), verdict_input_over).await?;
    let over_for = over_since.map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default());
    tracing::debug!(cluster = %m.cluster, migration = %m.id, lag_ms, lag_bytes = ?s.lag_bytes, active = s.slot_active, "replication sample");
    if !s.slots.is_empty() {
        ctx.save(Patch::of(&Slots { slots: s.slots.clone() })).await?;
    }
    // Slots that keep too much WAL fill the production source's disk: give up before that.
    if let Some(detail) = slots::beyond_limit(&s.slots, ctx.config.max_slot_wal) {
        return Ok(Outcome::Abort { reason: AbortReason::SlotRetainedWal, detail });
    }
    // DDL on the source is not replicated: named here, before an apply it stopped shows only as
    // an inactive slot or lag. The subscription's state names why a slot went inactive.
    let mut stopped = None;
    if let Some((source, target)) = sides {
        if let Some(detail) = crate::drift::check(source, target).await? {
            return Ok(Outcome::Abort { reason: AbortReason::SchemaDrift, detail });
        }
        let sub = &ctx.names().subscription;
        let enabled: Option<bool> =
            target.query_opt(include_str!("sql/subscription_enabled.sql"), &[sub]).await.map_err(pg::err("read the subscription"))?.map(|r| r.get(0));
        stopped = match enabled {
            Some(true) => None,
            Some(false) => Some(format!("subscription {sub} on the target was disabled from outside dmf")),
            None => Some(format!("subscription {sub} is gone from the target")),
        };
    }

    // Slot inactive: nobody consumes it, so it retains WAL on the source.
    let inactive_since = ctx.record::<SlotWatch>()?.slot_inactive_since;
    if s.slot_active {
        if inactive_since.is_some() {
            ctx.save(Patch::of(&SlotWatch { slot_inactive_since: None })).await?;
        }
    } else {
        let since = match inactive_since {
            Some(t) => t,
            None => {
                let now = chrono::Utc::now();
                ctx.save(Patch::of(&SlotWatch { slot_inactive_since: Some(now) })).await?;
                now
            }
        };
        let for_how_long = (chrono::Utc::now() - since).to_std().unwrap_or_default();
        if let (Some(why), true) = (&stopped, for_how_long > ctx.config.slot_inactive_window) {
            return Ok(Outcome::Abort { reason: AbortReason::ReplicationStopped, detail: format!("{why}; slot {} inactive for {}s", ctx.names().slot, for_how_long.as_secs()) });
        }
        if for_how_long > ctx.config.slot_inactive_window {
            let detail = match sides {
                None => format!("DMS task not running for {}s", for_how_long.as_secs()),
                Some((_, target)) => {
                    // an apply worker stuck on a lock stops answering its walsender, which ends
                    // the connection: the slot goes inactive, and the lock is the cause
                    let inactive = format!("slot {} inactive for {}s", ctx.names().slot, for_how_long.as_secs());
                    match apply_blocked(target, &ctx.names().subscription).await.ok().flatten() {
                        Some(blocked) => format!("{inactive}: {blocked}"),
                        None => inactive,
                    }
                }
            };
            return Ok(Outcome::Abort { reason: AbortReason::SlotInactive, detail });
        }
    }
    match ctx.config.lag.evaluate(s.lag, over_for) {
        LagVerdict::Trip { for_how_long } => {
            let lag = format!(
                "lag {}ms{} above the {}ms limit for {}s",
                lag_ms,
                if s.lag_timed_out { "+" } else { "" },
                ctx.config.lag.limit.as_millis(),
                for_how_long.as_secs()
            );
            // the lag is a symptom: name its cause where the target shows it
            if let Some(why) = stopped {
                return Ok(Outcome::Abort { reason: AbortReason::ReplicationStopped, detail: format!("{why}; {lag}") });
            }
            let blocked = match sides {
                // a failure to say why must not keep the abort from happening
                Some((_, target)) => apply_blocked(target, &ctx.names().subscription).await.ok().flatten(),
                None => None,
            };
            Ok(Outcome::Abort { reason: AbortReason::ReplicationLag, detail: blocked.map_or(lag.clone(), |b| format!("{lag}: {b}")) })
        }
        // In sync: the auditor takes over (validating keeps these guards).
        LagVerdict::Healthy if !s.lag_timed_out && s.slot_active => Ok(Outcome::Done),
        LagVerdict::Healthy | LagVerdict::Over { .. } => Ok(Outcome::Watch(ctx.config.watch_interval)),
    }
}

/// Why the subscription's apply worker is stuck, when a lock on the target holds it: the table,
/// how long, and the session holding the lock.
async fn apply_blocked(target: &Client, subscription: &str) -> Result<Option<String>, Error> {
    let Some(r) = target.query_opt(include_str!("sql/apply_blocked.sql"), &[&subscription]).await.map_err(pg::err("read what the apply worker waits for"))? else {
        return Ok(None);
    };
    let relation: String = r.get("relation");
    let on = if relation.is_empty() { String::new() } else { format!(" on table {relation}") };
    let holder = match r.get::<_, Option<i32>>("holder_pid") {
        Some(pid) => format!(
            ", held by pid {pid} (user {}, application {:?}, {})",
            r.get::<_, String>("holder_user"),
            r.get::<_, String>("holder_application"),
            r.get::<_, String>("holder_state")
        ),
        None => String::new(),
    };
    Ok(Some(format!("the subscription's apply worker on the target has waited {:.0}s for a lock{on}{holder}", r.get::<_, f64>("waited_s"))))
}
