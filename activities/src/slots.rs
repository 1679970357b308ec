//! The migration's replication slots and the WAL they keep on their servers: reported into the
//! state (`dmf status`), guarded before the flip (abort `slot_retained_wal` past the limit or when
//! the server may drop WAL a slot needs), and dropped when a migration has sat in `failed` before
//! the flip for too long. After the flip, the reverse slot on the target is what makes a rollback
//! lossless: it is reported and warned about, never dropped automatically.

use std::time::Duration;

use dmf_db::route::RouteChange;
use dmf_db::{Db, MigrationRow};
use tokio_postgres::Client;

use crate::error::Error;
use crate::state::{DroppedSlots, Patch, SlotReport, SlotsDropped};
use crate::{objects, pg, Names};

/// The slots named in `names` that exist on the server `client` is connected to; `side` says
/// which server that is ("source", "target").
pub async fn report(client: &Client, names: &[String], side: &str) -> Result<Vec<SlotReport>, Error> {
    let rows = client.query(include_str!("sql/slots.sql"), &[&names]).await.map_err(pg::err("read the replication slots"))?;
    let at = Some(chrono::Utc::now());
    Ok(rows
        .iter()
        .map(|r| SlotReport {
            name: r.get("name"),
            side: side.to_string(),
            active: r.get("active"),
            retained_bytes: r.get("retained"),
            behind_bytes: r.get("behind"),
            wal_status: r.get("wal_status"),
            at,
        })
        .collect())
}

/// Why the slots must not be kept any longer (the guard's detail), if they must not: one that no
/// consumer reads keeps more WAL than `limit` bytes, or a server may drop (or has dropped) WAL a
/// slot needs. A slot being read over the limit is catching up (after a long copy the first
/// replicating checks find hours of WAL behind it): the lag guard watches that one.
pub fn beyond_limit(slots: &[SlotReport], limit: Option<u64>) -> Option<String> {
    let problems: Vec<String> = slots
        .iter()
        .filter_map(|s| {
            let retained = s.retained_bytes.unwrap_or(0);
            match s.wal_status.as_deref() {
                Some(st @ ("unreserved" | "lost")) => Some(format!("slot {} on the {} is {st} (max_slot_wal_keep_size reached)", s.name, s.side)),
                _ if !s.active && limit.is_some_and(|l| retained as u64 > l) => {
                    Some(format!("slot {} keeps {} MiB of WAL on the {}, over the {} MiB limit", s.name, retained >> 20, s.side, limit.unwrap_or(0) >> 20))
                }
                _ => None,
            }
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Drop the slots (forward replication and the auditor's) of a migration that failed before the
/// flip longer than `after` ago, so that they stop pinning WAL on the production source, and
/// record why. The target's subscription is disabled first when the target answers (it would only
/// retry against a slot that is gone). Returns the slots dropped.
pub async fn drop_after_failure(db: &Db, m: &MigrationRow, after: Duration) -> Result<Vec<String>, Error> {
    let mut m = m.clone();
    m.resolve_logins("worker").map_err(|e| Error::NeedsOperator(e.to_string()))?;
    let m = &m;
    let names = Names::of(m.id);
    let cluster = &m.cluster;
    // reads may still go to the target (failed in shadow_reads): with replication gone they would
    // grow stale, so they go back to the source first
    if let Some(route) = db.route(cluster).await? {
        let source = dmf_db::route::endpoint(&m.source_dsn);
        if dmf_db::route::endpoint(&route.read_endpoint) != source || route.mode != "primary" {
            if dmf_db::route::endpoint(&route.primary_endpoint) != source || route.hold {
                return Err(Error::NeedsOperator(format!("cluster {cluster}: its route does not point at the source; its slots stay")));
            }
            let back = RouteChange { read: Some(m.source_dsn.clone()), mode: Some("primary".into()), ..Default::default() };
            db.change_route(cluster, &back, "dmf-worker reconciler: reads back to the source").await?;
        }
    }
    // resumed meanwhile: its slots are in use again
    let now = db.migration(m.id).await?;
    if now.phase != m.phase || now.epoch != m.epoch {
        return Ok(Vec::new());
    }
    let target_dsn = crate::state::target_login(m, "worker").ok().flatten();
    if let Some(target_dsn) = target_dsn {
        match pg::connect(&target_dsn, &format!("target of {cluster}")).await {
            Ok(target) => {
                if objects::subscription_exists(&target, &names.subscription).await? {
                    let sub = pg::ident(&names.subscription);
                    pg::exec(&target, "disable the subscription", &format!("ALTER SUBSCRIPTION {sub} DISABLE")).await?;
                }
            }
            Err(e) => tracing::info!(cluster = %cluster, migration = %m.id, error = %e, "target unreachable; its subscription stays as it is"),
        }
    }
    let source = pg::connect(&m.source_dsn, &format!("source of {cluster}")).await?;
    let mut dropped = Vec::new();
    for slot in [names.slot.clone(), names.audit_slot()] {
        if objects::drop_slot(&source, &slot).await? {
            dropped.push(slot);
        }
    }
    let failed_in = m.failed_phase.as_deref().unwrap_or("?");
    let reason = format!(
        "failed in {failed_in} before the flip more than {}s ago: its replication slots would keep WAL on the source without limit; `dmf resume` will find them gone (abort and enqueue again)",
        after.as_secs()
    );
    db.merge_state(m.id, Patch::of(&SlotsDropped { slots_dropped: Some(DroppedSlots { at: Some(chrono::Utc::now()), slots: dropped.clone(), reason: reason.clone() }) })).await?;
    db.log_event(Some(m.id), Some(cluster), "slots_dropped", "dmf-worker reconciler", &format!("dropped {}: {reason}", if dropped.is_empty() { "none (already gone)".to_string() } else { dropped.join(", ") }))
        .await?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(retained: i64, wal_status: &str) -> SlotReport {
        SlotReport { name: "dmf_slot_x".into(), side: "source".into(), retained_bytes: Some(retained), wal_status: Some(wal_status.into()), ..SlotReport::default() }
    }

    #[test]
    fn the_guard_trips_past_the_limit_or_when_wal_may_be_lost() {
        assert_eq!(beyond_limit(&[slot(10 << 20, "reserved")], Some(16 << 20)), None);
        assert_eq!(beyond_limit(&[slot(10 << 20, "reserved")], None), None);
        let mut read = slot(40 << 20, "extended");
        read.active = true;
        assert_eq!(beyond_limit(&[read], Some(16 << 20)), None, "a slot being read is catching up");
        let e = beyond_limit(&[slot(40 << 20, "extended")], Some(16 << 20)).expect("over");
        assert_eq!(e, "slot dmf_slot_x keeps 40 MiB of WAL on the source, over the 16 MiB limit");
        let e = beyond_limit(&[slot(1, "unreserved")], None).expect("unreserved");
        assert!(e.contains("is unreserved"), "{e}");
    }
}
