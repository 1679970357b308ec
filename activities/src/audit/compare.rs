//! The full compare: every table split into primary-key ranges; each range hashed inside PostgreSQL
//! on both sides at once; a range whose hashes differ is drilled down to its keys, and those keys
//! re-checked behind a fence (see `recheck`) so that only real differences are reported.
//!
//! A run and its chunks are stored in the control plane when planned, and each chunk's outcome when
//! it is done, so a crash loses at most the chunks in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::recheck::recheck;
use super::table::{load_tables, Key, TableInfo};
use super::{connect_pinned, AuditConfig};
use crate::error::Error;
use crate::pg;
use dmf_db::audit::{AuditChunk, PlannedChunk};
use dmf_db::Db;

/// Sampled keys per planned chunk, to place the boundaries.
const SAMPLES_PER_CHUNK: i64 = 40;

/// Split every table into key ranges of about `chunk_rows` rows, from a page sample of its keys.
pub async fn plan(source: &Client, tables: &[TableInfo], chunk_rows: i64) -> Result<Vec<PlannedChunk>, Error> {
    let mut out = Vec::new();
    for t in tables {
        let pieces = (t.estimated_rows / chunk_rows.max(1)).max(1);
        if !t.keyed() || pieces <= 1 {
            out.push(PlannedChunk { table: t.qualified.clone(), lo: None, hi: None });
            continue;
        }
        let percent = (100.0 * (pieces * SAMPLES_PER_CHUNK) as f64 / t.estimated_rows.max(1) as f64).min(100.0);
        let keys = t.key.iter().map(|k| pg::ident(k)).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT ARRAY[{}] FROM {} TABLESAMPLE SYSTEM ({percent}) ORDER BY {keys}",
            t.key.iter().map(|k| format!("{}::text", pg::ident(k))).collect::<Vec<_>>().join(", "),
            t.qualified
        );
        let sampled: Vec<Vec<String>> =
            source.query(&sql, &[]).await.map_err(pg::err(&format!("sample keys of {}", t.qualified)))?.iter().map(|r| r.get(0)).collect();
        let mut bounds: Vec<Vec<String>> = Vec::new();
        for i in 1..pieces {
            if let Some(b) = sampled.get((i as usize * sampled.len()) / pieces as usize) {
                if bounds.last() != Some(b) {
                    bounds.push(b.clone());
                }
            }
        }
        let mut lo = None;
        for b in bounds.into_iter().map(Some).chain(std::iter::once(None)) {
            out.push(PlannedChunk { table: t.qualified.clone(), lo: lo.clone(), hi: b.clone() });
            lo = b;
        }
    }
    Ok(out)
}

/// Plan a full compare and store it; returns the run id.
pub async fn start(db: &Db, migration: Uuid, source_dsn: &str, cfg: &AuditConfig, requested_by: &str) -> Result<i64, Error> {
    let source = connect_pinned(source_dsn, "source").await?;
    let tables = load_tables(&source).await?;
    let lsn: String = source.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(pg::err("read the source's WAL position"))?.get(0);
    let chunks = plan(&source, &tables, cfg.chunk_rows).await?;
    Ok(db.create_audit_run(migration, &lsn, &chunks, requested_by).await?)
}

/// One side's `(rows, hash sum)` of a range.
async fn hash(client: &Client, table: &TableInfo, predicate: &str) -> Result<(i64, String), Error> {
    let r = client.query_one(&table.hash_sql(predicate), &[]).await.map_err(pg::err(&format!("hash a chunk of {}", table.qualified)))?;
    Ok((r.get(0), r.get(1)))
}

async fn fingerprints(client: &Client, table: &TableInfo, predicate: &str) -> Result<HashMap<Key, i64>, Error> {
    let rows = client
        .query(&table.fingerprints_sql(predicate), &[])
        .await
        .map_err(pg::err(&format!("read row hashes of a chunk of {}", table.qualified)))?;
    Ok(rows.iter().map(|r| (r.get::<_, Key>(0), r.get::<_, i64>(1))).collect())
}

/// Compare one chunk and record its outcome.
async fn compare_chunk(db: &Db, migration: Uuid, chunk: &AuditChunk, table: &TableInfo, source: &Client, target: &Client, cfg: &AuditConfig, cancel: &CancellationToken) -> Result<(), Error> {
    let predicate = table.range_predicate(chunk.lo.as_deref(), chunk.hi.as_deref());
    let (s, t) = tokio::join!(hash(source, table, &predicate), hash(target, table, &predicate));
    let (s, t) = (s?, t?);
    if s == t {
        return Ok(db.finish_audit_chunk(migration, chunk, "clean", s.0, t.0, &[]).await?);
    }
    // The hashes differ: find the keys whose rows differ, then make sure they really do.
    let (sf, tf) = tokio::join!(fingerprints(source, table, &predicate), fingerprints(target, table, &predicate));
    let (sf, tf) = (sf?, tf?);
    let mut suspects: Vec<Key> = sf.iter().filter(|(k, h)| tf.get(*k) != Some(h)).map(|(k, _)| k.clone()).collect();
    suspects.extend(tf.keys().filter(|k| !sf.contains_key(*k)).cloned());
    let verdict = recheck(table, suspects, source, target, cfg.recheck_rounds, cfg.fence_timeout, cancel).await?;
    let status = if !verdict.differences.is_empty() {
        "mismatch"
    } else if !verdict.unsettled.is_empty() {
        "unsettled"
    } else {
        "clean"
    };
    if status != "clean" {
        tracing::info!(migration = %migration, table = %table.qualified, chunk = chunk.chunk, status, differences = verdict.differences.len(), unsettled = verdict.unsettled.len(), "chunk compared");
    }
    Ok(db.finish_audit_chunk(migration, chunk, status, s.0, t.0, &verdict.differences).await?)
}

/// Where a call of `resume` left the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Chunks remain (the time budget ran out).
    Partial,
    /// The run is closed with this status: clean, mismatch or unsettled.
    Finished(String),
}

/// Compare the run's open chunks with `cfg.jobs` streams until none is left or `budget` is spent;
/// `on_chunk` is called after each chunk (progress bars).
pub async fn resume(
    db: &Db,
    migration: Uuid,
    run: i64,
    source_dsn: &str,
    target_dsn: &str,
    cfg: &AuditConfig,
    budget: Option<Duration>,
    cancel: &CancellationToken,
    pace: Option<&super::pace::Pace>,
    on_chunk: impl Fn() + Send + Sync,
) -> Result<Progress, Error> {
    let open = db.open_audit_chunks(run, cfg.max_chunk_attempts).await?;
    if !open.is_empty() {
        let started = Instant::now();
        let probe = connect_pinned(source_dsn, "source").await?;
        let tables: HashMap<String, TableInfo> = load_tables(&probe).await?.into_iter().map(|t| (t.qualified.clone(), t)).collect();
        drop(probe);
        let queue = Arc::new(Mutex::new(VecDeque::from(open)));
        let streams = (0..cfg.jobs.max(1)).map(|_| async {
            let source = connect_pinned(source_dsn, "source").await?;
            let target = connect_pinned(target_dsn, "target").await?;
            let mut gave_way = false;
            loop {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                if budget.is_some_and(|b| started.elapsed() >= b) {
                    return Ok(());
                }
                // after giving way (once per chunk), cancel and the budget are looked at again
                if let Some(p) = pace {
                    if !gave_way && p.give_way(cancel).await > Duration::from_millis(1) {
                        gave_way = true;
                        continue;
                    }
                }
                gave_way = false;
                let Some(chunk) = queue.lock().await.pop_front() else { return Ok(()) };
                let Some(table) = tables.get(&chunk.table_name) else {
                    // Dropped from the source since planning: nothing to compare.
                    db.finish_audit_chunk(migration, &chunk, "clean", 0, 0, &[]).await?;
                    continue;
                };
                compare_chunk(db, migration, &chunk, table, &source, &target, cfg, cancel).await?;
                on_chunk();
            }
        });
        for r in futures::future::join_all(streams).await {
            r?;
        }
    }
    if db.open_audit_chunks(run, cfg.max_chunk_attempts).await?.is_empty() {
        return Ok(Progress::Finished(db.finish_audit_run(run).await?));
    }
    Ok(Progress::Partial)
}
