//! Continuous validation: follow the source's committed changes on a slot of the auditor's own,
//! pick about `sample_rate` of the transactions, time how long each takes to become visible on the
//! target (the consistency window: source commit to applied on the target), then re-check the rows
//! it touched behind a fence (see `recheck`).
//!
//! Three stages run at once so that checking never slows reading: the reader decodes the stream,
//! the watcher polls the target's apply position, the verifier re-checks rows.
//!
//! The window is timed against the target's own progress, not against when the reader got the
//! commit: the watcher, a task of its own, reads the target's applied position every
//! [`WATCH_EVERY`] from the start of the slice and keeps when it passed each position; a sampled
//! commit is visible at the first reading at or past its end. A transaction is sampled when it
//! commits while the slice watches (after the target's applied position at its start: one
//! committed between slices was applied while nobody watched, and is not in the sample).

use std::collections::{HashMap, VecDeque};
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
use tracing::Instrument;

/// How often the watcher reads the target's applied position: the window's resolution.
const WATCH_EVERY: Duration = Duration::from_millis(2);

/// How long one reading of the target's applied position may take: a target that stops
/// answering ends the slice with an error instead of holding it.
const READING_WITHIN: Duration = Duration::from_secs(10);

/// Windows of samples whose rows are not re-checked, recorded together this many at a time.
const WINDOWS_PER_WRITE: usize = 100;

/// A sampled, committed source transaction and the rows it touched.
#[derive(Debug, Clone)]
struct Sampled {
    end_lsn: u64,
    commit_time_us: i64,
    rows: Vec<(String, Key)>,
    /// Its rows are re-checked (the slice's first `max_samples_per_slice`); the others' windows
    /// are timed all the same.
    check: bool,
}

/// What one slice of sampling did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SliceReport {
    pub transactions_seen: u64,
    pub sampled: u64,
    /// Sampled and timed, their rows not re-checked: the slice already had
    /// `max_samples_per_slice` re-checks.
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
    pace: std::sync::Arc<super::pace::Pace>,
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

    let (to_watch, watching) = mpsc::unbounded_channel::<Sampled>();
    let (to_verify, mut verifying) = mpsc::unbounded_channel::<(Sampled, Option<f64>)>();
    // the watch starts before the first commit is read: what the target applied by then is not
    // sampled (nobody watched it become visible)
    let watch_from = applied_lsn(&watch_target, ep.subscription).await?;
    // aborted if this slice ends early (dropped, or a panic the handler catches)
    let watcher = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        watch(watch_target, ep.subscription.to_string(), (now_us(), watch_from), watching, to_verify, cfg.fence_timeout, cancel.clone(), pace)
            .instrument(tracing::info_span!("task", name = "audit-watcher", migration = %migration)),
    ));

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
                            if !rows.is_empty() && end_lsn > watch_from {
                                // every sample is timed; re-checks are slower than commits and
                                // are capped so that a slice ends in time
                                let check = sampled < cfg.max_samples_per_slice;
                                sampled += 1;
                                skipped += u64::from(!check);
                                let _ = to_watch.send(Sampled { end_lsn, commit_time_us, rows, check });
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

    let verifier = async {
        let mut differences = 0usize;
        let mut timed: Vec<(Option<f64>, String)> = Vec::new();
        while let Some((s, window)) = verifying.recv().await {
            if !s.check {
                timed.push((window, pgoutput::lsn_text(s.end_lsn)));
                if timed.len() >= WINDOWS_PER_WRITE {
                    db.record_audit_windows(migration, &std::mem::take(&mut timed)).await?;
                }
                continue;
            }
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
        if !timed.is_empty() {
            db.record_audit_windows(migration, &timed).await?;
        }
        Ok::<usize, Error>(differences)
    };

    let (read, verified) = tokio::join!(reader, verifier);
    // the reader has ended (its sender dropped): the watcher ends once its samples are timed
    let watched = watcher.await.map_err(|e| Error::Replication(format!("the audit watcher stopped: {e}")));
    let (transactions_seen, sampled, skipped) = read?;
    let (watch_target, watched) = watched?;
    watched?;
    let differences = verified?;
    repl.close().await;
    kept.put(migration, &pinned(ep.source_dsn), source);
    kept.put(migration, &pinned(ep.target_dsn), target);
    kept.put(migration, &format!("watch {}", pinned(ep.target_dsn)), watch_target);
    Ok(SliceReport { transactions_seen, sampled, skipped, differences })
}

/// The watcher: reads the target's applied position every [`WATCH_EVERY`] and keeps when it
/// passed each position (`timeline`, from `first`); each sample is visible at the first reading
/// at or past its end, whenever the reader delivers it, and goes to the verifier with its window
/// (none if it was not applied within `fence_timeout`: the fence decides), and to `pace`, which
/// the full compare gives way to while windows are late. Ends when the reader
/// has ended and every sample is timed; gives its connection back.
async fn watch(
    target: Client,
    subscription: String,
    first: (i64, u64),
    mut samples: mpsc::UnboundedReceiver<Sampled>,
    to_verify: mpsc::UnboundedSender<(Sampled, Option<f64>)>,
    fence_timeout: Duration,
    cancel: CancellationToken,
    pace: std::sync::Arc<super::pace::Pace>,
) -> (Client, Result<(), Error>) {
    let mut timeline: VecDeque<(i64, u64)> = VecDeque::from([first]);
    let mut pending: VecDeque<(Sampled, Instant)> = VecDeque::new();
    let mut open = true;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        while let Ok(s) = samples.try_recv() {
            pending.push_back((s, Instant::now()));
        }
        // samples come in commit order: each is visible no earlier than the one before
        while let Some((s, since)) = pending.front() {
            let at = timeline.partition_point(|(_, applied)| *applied < s.end_lsn);
            let window = match timeline.get(at) {
                Some((seen_us, _)) => {
                    let us = (seen_us - (s.commit_time_us + PG_EPOCH_OFFSET_US)).max(0);
                    pace.observe(Duration::from_micros(us as u64));
                    Some(us as f64 / 1000.0)
                }
                None if since.elapsed() > fence_timeout => None,
                None => break,
            };
            // readings before this one cannot time a later sample
            timeline.drain(..at.min(timeline.len().saturating_sub(1)));
            if let Some((s, _)) = pending.pop_front() {
                let _ = to_verify.send((s, window));
            }
        }
        if !open && pending.is_empty() {
            break Ok(());
        }
        // a sample still waiting past the goal is late too: the compare gives way meanwhile
        if let Some((s, _)) = pending.front() {
            let waited = now_us() - (s.commit_time_us + PG_EPOCH_OFFSET_US);
            pace.observe(Duration::from_micros(waited.max(0) as u64));
        }
        tokio::select! {
            _ = cancel.cancelled() => break Err(Error::Cancelled),
            _ = tick.tick() => {}
            s = samples.recv(), if open => {
                match s {
                    Some(s) => pending.push_back((s, Instant::now())),
                    None => open = false,
                }
                continue;
            }
        }
        let reading = tokio::select! {
            _ = cancel.cancelled() => break Err(Error::Cancelled),
            r = tokio::time::timeout(READING_WITHIN, applied_lsn(&target, &subscription)) => r,
        };
        let Ok(reading) = reading else {
            break Err(Error::Replication(format!("the target did not answer for its applied position within {READING_WITHIN:?}")));
        };
        match reading {
            Ok(applied) => {
                // taken when the reading came back: a window is never shorter than it was
                let seen_us = now_us();
                if timeline.back().is_none_or(|(_, last)| applied > *last) {
                    timeline.push_back((seen_us, applied));
                }
            }
            Err(e) => break Err(e),
        }
    };
    (target, result)
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
