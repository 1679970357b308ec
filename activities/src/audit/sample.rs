//! Continuous validation: follow the source's committed changes on a slot of the auditor's own,
//! pick about `sample_rate` of the transactions, time how long each takes to become visible on the
//! target (the consistency window: source commit to applied on the target), then re-check the rows
//! it touched behind a fence (see `recheck`).
//!
//! Three stages run at once so that checking never slows reading: the reader decodes the stream,
//! the watcher polls the target's apply position, the verifier re-checks rows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::pgoutput::{self, Frame, Message, Relation, Value};
use super::recheck::recheck;
use super::table::{load_tables, Key, TableInfo};
use super::{connect_pinned_named, pinned_options, AuditConfig};
use crate::error::Error;
use crate::pg;
use crate::replconn::{ReplConn, PG_EPOCH_OFFSET_US};
use dmf_db::Db;

/// How far behind its commit the stream may read a transaction and still time its window.
const STREAM_BEHIND_US: i64 = 1_000_000;

/// A sampled, committed source transaction and the rows it touched.
#[derive(Debug, Clone)]
struct Sampled {
    end_lsn: u64,
    commit_time_us: i64,
    /// When the reader got the commit (Unix µs): far after the commit means the stream was behind.
    received_us: i64,
    rows: Vec<(String, Key)>,
}

/// What one slice of sampling did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SliceReport {
    pub transactions_seen: u64,
    pub sampled: u64,
    /// Picked but left unchecked: the slice already had `max_samples_per_slice`.
    pub skipped: u64,
    pub differences: usize,
}

/// Whether transaction `xid` is in the sample: a fixed hash, so a replay picks the same ones.
fn picked(xid: u32, rate: f64) -> bool {
    let h = (u64::from(xid).wrapping_add(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let h = (h ^ (h >> 31)) >> 11;
    (h as f64 / (1u64 << 53) as f64) < rate
}

/// The key of a streamed row, in the order the auditor's table lists its key columns.
fn key_of(rel: &Relation, table: &TableInfo, tuple: &[Value]) -> Option<Key> {
    table
        .key
        .iter()
        .map(|k| {
            let i = rel.columns.iter().position(|c| c == k)?;
            match tuple.get(i)? {
                Value::Text(v) => Some(Some(v.clone())),
                Value::Null | Value::Unchanged => None,
            }
        })
        .collect()
}

/// Create the auditor's slot on the source if it is missing. A sampler that died (a killed worker)
/// may still hold it through its walsender; only one sampler per migration runs at a time (the
/// lease), so that session is a leftover: end it and wait until the slot is free.
pub async fn ensure_slot(source: &Client, slot: &str) -> Result<(), Error> {
    for _ in 0..30 {
        let row = source
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .map_err(pg::err("look up the audit slot"))?;
        match row.map(|r| r.get::<_, Option<i32>>(0)) {
            None => {
                source
                    .execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
                    .await
                    .map_err(pg::err("create the audit slot"))?;
                return Ok(());
            }
            Some(None) => return Ok(()),
            Some(Some(pid)) => {
                source
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(pg::err("end a leftover session on the audit slot"))?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(Error::Replication(format!("audit slot {slot} stayed in use")))
}

/// The source position the target's subscription has applied up to.
async fn applied_lsn(target: &Client, subscription: &str) -> Result<u64, Error> {
    let row = target
        .query_opt(
            "SELECT s.remote_lsn::text FROM pg_replication_origin_status s \
             JOIN pg_subscription sub ON s.external_id = 'pg_' || sub.oid WHERE sub.subname = $1",
            &[&subscription],
        )
        .await
        .map_err(pg::err("read the target's applied position"))?;
    Ok(row.and_then(|r| r.get::<_, Option<String>>(0)).and_then(|s| pgoutput::parse_lsn(&s)).unwrap_or(0))
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Which publication, slots and subscription a sampler works with.
#[derive(Debug, Clone)]
pub struct Endpoints<'a> {
    pub source_dsn: &'a str,
    pub target_dsn: &'a str,
    pub publication: &'a str,
    pub audit_slot: &'a str,
    pub subscription: &'a str,
}

/// Sample the change stream for `duration`, then finish checking what was sampled.
///
/// The slice's three connections with pinned settings come from `kept` when its previous slice left
/// them there, and go back there when this one ends without an error (no statement of a slice
/// leaves a transaction or a setting behind).
pub async fn run_slice(
    db: &Db,
    migration: Uuid,
    ep: &Endpoints<'_>,
    cfg: &AuditConfig,
    duration: Duration,
    cancel: &CancellationToken,
    kept: &crate::conns::Conns,
) -> Result<SliceReport, Error> {
    let pinned = |dsn: &str| format!("pinned {dsn}");
    let name = crate::conns::application_name(migration);
    let source = kept.take_or(migration, &pinned(ep.source_dsn), connect_pinned_named(ep.source_dsn, "source", &name)).await?;
    let target = kept.take_or(migration, &pinned(ep.target_dsn), connect_pinned_named(ep.target_dsn, "target", &name)).await?;
    ensure_slot(&source, ep.audit_slot).await?;
    let tables: HashMap<(String, String), TableInfo> =
        load_tables(&source).await?.into_iter().map(|t| ((t.schema.clone(), t.name.clone()), t)).collect();
    let by_name: HashMap<String, TableInfo> = tables.values().map(|t| (t.qualified.clone(), t.clone())).collect();
    let mut repl = ReplConn::connect_with_options(ep.source_dsn, &pinned_options()).await?;
    repl.start_logical(ep.audit_slot, ep.publication).await?;
    let watch_target = kept.take_or(migration, &format!("watch {}", pinned(ep.target_dsn)), connect_pinned_named(ep.target_dsn, "target", &name)).await?;

    let (to_watch, mut watching) = mpsc::unbounded_channel::<Sampled>();
    let (to_verify, mut verifying) = mpsc::unbounded_channel::<(Sampled, Option<f64>)>();

    let reader = async {
        let started = Instant::now();
        let mut relations: HashMap<u32, Relation> = HashMap::new();
        let mut current: Option<(bool, Vec<(String, Key)>)> = None;
        let mut flushed: Option<u64> = None;
        let (mut seen, mut sampled, mut skipped) = (0u64, 0u64, 0u64);
        while started.elapsed() < duration {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let wait = duration.saturating_sub(started.elapsed()).min(Duration::from_millis(500));
            let Some(payload) = repl.next_copy_data(wait).await? else { continue };
            match pgoutput::frame(payload)? {
                Frame::Keepalive { reply_requested, wal_end } => {
                    if reply_requested {
                        // Between transactions everything up to wal_end has been read.
                        let ack = if current.is_none() { wal_end } else { flushed.unwrap_or(0) };
                        repl.send_standby_status(ack).await?;
                    }
                }
                Frame::XLogData { message, .. } => match message {
                    Message::Begin { xid, .. } => current = Some((picked(xid, cfg.sample_rate), Vec::new())),
                    Message::Relation(r) => {
                        relations.insert(r.id, r);
                    }
                    Message::Change { relation, tuple, old_key } => {
                        let Some((true, rows)) = current.as_mut() else { continue };
                        let Some(rel) = relations.get(&relation) else { continue };
                        let Some(table) = tables.get(&(rel.schema.clone(), rel.name.clone())) else { continue };
                        if !table.keyed() {
                            continue;
                        }
                        for t in std::iter::once(&tuple).chain(old_key.as_ref()) {
                            if let Some(k) = key_of(rel, table, t) {
                                rows.push((table.qualified.clone(), k));
                            }
                        }
                    }
                    Message::Commit { end_lsn, commit_time_us } => {
                        seen += 1;
                        if let Some((true, rows)) = current.take() {
                            // Checks are slower than commits: cap them so that a slice ends in time
                            // (a stream catching up would otherwise pick thousands at once).
                            if !rows.is_empty() && sampled < cfg.max_samples_per_slice {
                                sampled += 1;
                                let _ = to_watch.send(Sampled { end_lsn, commit_time_us, received_us: now_us(), rows });
                            } else if !rows.is_empty() {
                                skipped += 1;
                            }
                        }
                        flushed = Some(end_lsn);
                    }
                    Message::Other => {}
                },
            }
        }
        if let Some(lsn) = flushed {
            repl.send_standby_status(lsn).await?;
        }
        drop(to_watch);
        Ok::<(u64, u64, u64), Error>((seen, sampled, skipped))
    };

    let watcher = async {
        let mut pending: Vec<(Sampled, Instant)> = Vec::new();
        let mut open = true;
        while open || !pending.is_empty() {
            if pending.is_empty() {
                match watching.recv().await {
                    Some(s) => pending.push((s, Instant::now())),
                    None => open = false,
                }
                continue;
            }
            while let Ok(s) = watching.try_recv() {
                pending.push((s, Instant::now()));
            }
            let applied = applied_lsn(&watch_target, ep.subscription).await?;
            let now = now_us();
            let mut rest = Vec::new();
            for (s, since) in pending.drain(..) {
                if s.end_lsn <= applied {
                    let committed = s.commit_time_us + PG_EPOCH_OFFSET_US;
                    // A commit read long after it happened (the stream was catching up) says
                    // nothing about how fast the target applied it: no window for it.
                    let live = s.received_us - committed <= STREAM_BEHIND_US;
                    let window = live.then(|| ((now - committed) as f64 / 1000.0).max(0.0));
                    let _ = to_verify.send((s, window));
                } else if since.elapsed() > cfg.fence_timeout {
                    // Not applied in time: check the rows anyway; the fence decides.
                    let _ = to_verify.send((s, None));
                } else {
                    rest.push((s, since));
                }
            }
            pending = rest;
            tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                s = watching.recv(), if open => match s {
                    Some(s) => pending.push((s, Instant::now())),
                    None => open = false,
                },
            }
        }
        drop(to_verify);
        Ok::<(), Error>(())
    };

    let verifier = async {
        let mut differences = 0usize;
        while let Some((s, window)) = verifying.recv().await {
            let mut by_table: HashMap<&str, Vec<Key>> = HashMap::new();
            for (t, k) in &s.rows {
                let keys = by_table.entry(t.as_str()).or_default();
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
            let (mut found, mut unsettled, mut checked) = (Vec::new(), 0usize, 0i32);
            for (t, keys) in by_table {
                let Some(table) = by_name.get(t) else { continue };
                checked += keys.len() as i32;
                let v = recheck(table, keys, &source, &target, cfg.recheck_rounds, cfg.fence_timeout, cancel).await?;
                unsettled += v.unsettled.len();
                found.extend(v.differences);
            }
            let status = if !found.is_empty() {
                "mismatch"
            } else if unsettled > 0 {
                "unsettled"
            } else {
                "matched"
            };
            differences += found.len();
            db.record_audit_sample(migration, window, checked, status, &pgoutput::lsn_text(s.end_lsn), &found).await?;
        }
        Ok::<usize, Error>(differences)
    };

    let (read, watched, verified) = tokio::join!(reader, watcher, verifier);
    let (transactions_seen, sampled, skipped) = read?;
    watched?;
    let differences = verified?;
    repl.close().await;
    kept.put(migration, &pinned(ep.source_dsn), source);
    kept.put(migration, &pinned(ep.target_dsn), target);
    kept.put(migration, &format!("watch {}", pinned(ep.target_dsn)), watch_target);
    Ok(SliceReport { transactions_seen, sampled, skipped, differences })
}

#[cfg(test)]
mod tests {
    use super::picked;

    #[test]
    fn sample_rate_is_respected_roughly() {
        let n = (0..100_000u32).filter(|x| picked(*x, 0.01)).count();
        assert!((700..1300).contains(&n), "{n}");
        assert_eq!((0..1000u32).filter(|x| picked(*x, 0.0)).count(), 0);
        assert_eq!((0..1000u32).filter(|x| picked(*x, 1.0)).count(), 1000);
    }
}
