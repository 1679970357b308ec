//! Hydration: publication and slot on the source, a parallel COPY of every table under the slot's
//! exported snapshot (large tables split by key ranges), sequences, indexes and constraints built in
//! parallel after the copy, then a native subscription that starts exactly at the slot.
//!
//! A crash loses the snapshot, so a re-run starts the copy over: it drops the half-used slot,
//! empties the target's tables and copies again. Once the subscription exists the phase is done.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::error::Error;
use crate::objects::{drop_slot, ensure_publication, subscription_exists};
use crate::replconn::ReplConn;
use crate::sequences::copy_sequences;
use crate::state::{Patch, SlotStart};
use crate::post_data::restore_post_data;
use crate::schema::{dump_schema, tempdir};
use crate::{pg, repl_role, Context};
use dmf_workflows::Outcome;

/// One unit of copy work: a table, or a key range of one.
#[derive(Debug, Clone)]
struct Chunk {
    table: String,
    columns: String,
    chunk: i32,
    /// SQL condition on the key, None for the whole table.
    range: Option<String>,
    bytes_estimate: i64,
    binary: bool,
    /// A whole table that nothing references on the target: emptied and loaded in one transaction
    /// with COPY FREEZE, so its pages are written once, already frozen and all-visible (the index
    /// builds and the first reads after the copy then touch no hint bits).
    freeze: bool,
}

impl Chunk {
    fn options(&self, freeze: bool) -> &'static str {
        match (self.binary, freeze) {
            (true, true) => " WITH (FORMAT binary, FREEZE)",
            (true, false) => " WITH (FORMAT binary)",
            (false, true) => " WITH (FREEZE)",
            (false, false) => "",
        }
    }
    fn copy_out_sql(&self) -> String {
        match &self.range {
            None => format!("COPY {} ({}) TO STDOUT{}", self.table, self.columns, self.options(false)),
            Some(cond) => format!("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT{}", self.columns, self.table, cond, self.options(false)),
        }
    }
    fn copy_in_sql(&self, freeze: bool) -> String {
        format!("COPY {} ({}) FROM STDIN{}", self.table, self.columns, self.options(freeze))
    }
}

/// Split `[min, max]` into at most `n` half-open ranges; the first and last are open-ended so that
/// nothing outside the bounds seen at planning time is missed.
fn split_bounds(min: i64, max: i64, n: i64) -> Vec<(Option<i64>, Option<i64>)> {
    let n = n.max(1);
    let span = (max as i128 - min as i128 + 1).max(1);
    let step = ((span + n as i128 - 1) / n as i128).max(1);
    let mut cuts = Vec::new();
    let mut b = min as i128 + step;
    while b <= max as i128 && (cuts.len() as i64) < n - 1 {
        cuts.push(b as i64);
        b += step;
    }
    let mut out = Vec::new();
    let mut lo: Option<i64> = None;
    for hi in cuts.iter().copied().map(Some).chain(std::iter::once(None)) {
        out.push((lo, hi));
        lo = hi;
    }
    out
}

/// SQL conditions `col >= lo AND col < hi` for the bounds, with `value` rendering a bound.
fn range_conditions(col: &str, bounds: Vec<(Option<i64>, Option<i64>)>, value: impl Fn(i64) -> String) -> Vec<String> {
    bounds
        .into_iter()
        .map(|b| match b {
            (None, Some(h)) => format!("{col} < {}", value(h)),
            (Some(l), Some(h)) => format!("{col} >= {} AND {col} < {}", value(l), value(h)),
            (Some(l), None) => format!("{col} >= {}", value(l)),
            (None, None) => "true".to_string(),
        })
        .collect()
}

/// Conditions for `n` integer-key ranges.
fn key_ranges(key: &str, min: i64, max: i64, n: i64) -> Vec<String> {
    range_conditions(&pg::ident(key), split_bounds(min, max, n), |v| v.to_string())
}

/// Conditions for `n` ranges of heap blocks: each chunk reads only its own pages (TID range
/// scans, PostgreSQL 14+), and any table can be split, with or without a key.
fn block_ranges(blocks: i64, n: i64) -> Vec<String> {
    range_conditions("ctid", split_bounds(0, (blocks - 1).max(0), n), |b| format!("'({b},0)'::tid"))
}

async fn begin_snapshot(client: &Client, snapshot: &str) -> Result<(), Error> {
    pg::exec(
        client,
        "import the exported snapshot",
        &format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}", pg::literal(snapshot)),
    )
    .await
}

/// Plan the copy: one chunk per table, large tables split by key range into a multiple of `jobs`
/// pieces so that the streams finish together.
async fn plan(client: &Client, split_bytes: u64, jobs: usize, referenced: &HashSet<String>) -> Result<Vec<Chunk>, Error> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(pg::err("source version"))?
        .get(0);
    let rows = client.query(include_str!("sql/copy_plan.sql"), &[]).await.map_err(pg::err("plan the copy"))?;
    let mut chunks = Vec::new();
    for r in rows {
        let table = pg::qualified(r.get("schema"), r.get("name"));
        let bytes: i64 = r.get("bytes");
        let blocks: i64 = r.get("blocks");
        let columns: Option<String> = r.get("columns");
        let Some(columns) = columns else { continue };
        let key: Option<String> = r.get("int_key");
        let binary: bool = r.get("binary_ok");
        let jobs = jobs.max(1) as u64;
        let pieces = (bytes as u64).div_ceil(split_bytes.max(1));
        let pieces = if pieces > 1 { pieces.div_ceil(jobs) * jobs } else { 1 };
        let pieces = pieces.clamp(1, 256) as i64;
        let ranges = if pieces <= 1 {
            Vec::new()
        } else if version >= 140000 {
            block_ranges(blocks, pieces)
        } else if let Some(key) = key {
            let mm = client
                .query_one(&format!("SELECT min({k})::int8, max({k})::int8 FROM {table}", k = pg::ident(&key)), &[])
                .await
                .map_err(pg::err(&format!("key range of {table}")))?;
            match (mm.get::<_, Option<i64>>(0), mm.get::<_, Option<i64>>(1)) {
                (Some(min), Some(max)) => key_ranges(&key, min, max, pieces),
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        if ranges.len() <= 1 {
            let freeze = !referenced.contains(&table);
            chunks.push(Chunk { table, columns, chunk: 0, range: None, bytes_estimate: bytes, binary, freeze });
            continue;
        }
        let per = bytes / ranges.len() as i64;
        for (i, cond) in ranges.into_iter().enumerate() {
            chunks.push(Chunk { table: table.clone(), columns: columns.clone(), chunk: i as i32, range: Some(cond), bytes_estimate: per, binary, freeze: false });
        }
    }
    chunks.sort_by(|a, b| b.bytes_estimate.cmp(&a.bytes_estimate));
    Ok(chunks)
}

/// Relay one chunk from source to target; progress reaches the control plane about once a second.
async fn copy_chunk(ctx: &Context, src: &mut ReplConn, dst: &mut ReplConn, c: &Chunk) -> Result<(), Error> {
    let what = format!("copy {} chunk {}", c.table, c.chunk);
    // FREEZE needs the table emptied in the same transaction; if it cannot be (a foreign key that
    // appeared since planning), load it the ordinary way: the run began by emptying every table.
    let freeze = c.freeze && {
        match dst.simple_query(&format!("BEGIN; TRUNCATE ONLY {}", c.table)).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(cluster = %ctx.cluster(), table = %c.table, error = %e, "no COPY FREEZE for this table");
                dst.simple_query("ROLLBACK").await?;
                false
            }
        }
    };
    let (tx, mut rx) = tokio::sync::watch::channel((0i64, 0i64));
    let reporter = {
        let (db, id, table, chunk) = (ctx.db.clone(), ctx.migration.id, c.table.clone(), c.chunk);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let (rows, bytes) = *rx.borrow_and_update();
                if let Err(e) = db.record_copy_progress(id, &table, chunk, rows, bytes, false).await {
                    tracing::debug!(error = %e, "copy progress not recorded");
                }
            }
        })
    };
    let result = src
        .relay_copy(&c.copy_out_sql(), dst, &c.copy_in_sql(freeze), &ctx.cancel, |rows, bytes| {
            tx.send_replace((rows, bytes));
        })
        .await;
    drop(tx);
    let _ = reporter.await;
    let (rows, bytes) = result.map_err(|e| Error::Replication(format!("{what}: {e}")))?;
    if freeze {
        dst.simple_query("COMMIT").await.map_err(|e| Error::Replication(format!("{what}: commit: {e}")))?;
    }
    ctx.db.record_copy_progress(ctx.migration.id, &c.table, c.chunk, rows, bytes, true).await?;
    Ok(())
}

async fn copy_worker(ctx: Context, snapshot: String, target_dsn: String, queue: Arc<Mutex<VecDeque<Chunk>>>) -> Result<(), Error> {
    let mut src = ReplConn::connect_plain(ctx.source_dsn()).await?;
    src.simple_query(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        pg::literal(&snapshot)
    ))
    .await?;
    let mut dst = ReplConn::connect_plain(&target_dsn).await?;
    dst.simple_query("SET synchronous_commit = off").await?;
    loop {
        let Some(chunk) = queue.lock().await.pop_front() else { break };
        ctx.check_cancel()?;
        copy_chunk(&ctx, &mut src, &mut dst, &chunk).await?;
    }
    src.simple_query("COMMIT").await?;
    src.close().await;
    dst.close().await;
    Ok(())
}

/// Tables that a foreign key on the target points at (a re-run after post-data began): these
/// cannot be emptied on their own, so they are loaded without FREEZE.
async fn referenced_tables(target: &Client) -> Result<HashSet<String>, Error> {
    let rows = target
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_constraint k \
             JOIN pg_class c ON c.oid = k.confrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE k.contype = 'f'",
            &[],
        )
        .await
        .map_err(pg::err("list tables that foreign keys reference on the target"))?;
    Ok(rows.iter().map(|r| pg::qualified(r.get(0), r.get(1))).collect())
}

/// Run the copy streams to the end; the first failure stops the others.
async fn copy_all(ctx: &Context, snapshot: &str, target_dsn: &str, chunks: Vec<Chunk>) -> Result<(), Error> {
    let queue = Arc::new(Mutex::new(VecDeque::from(chunks)));
    // The copy streams share a child token: one failing stops the others, not the activity's lease.
    let mut copy_ctx = ctx.clone();
    copy_ctx.cancel = ctx.cancel.child_token();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..ctx.config.hydrate_jobs.max(1) {
        workers.spawn(copy_worker(copy_ctx.clone(), snapshot.to_string(), target_dsn.to_string(), queue.clone()));
    }
    let mut failure = None;
    while let Some(res) = workers.join_next().await {
        let res = res.map_err(|e| Error::Replication(format!("copy task: {e}"))).and_then(|r| r);
        if let Err(e) = res {
            if failure.is_none() {
                failure = Some(e);
                // One stream failed: stop the others, the whole copy restarts.
                copy_ctx.cancel.cancel();
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

pub async fn run(ctx: &Context) -> Result<Outcome, Error> {
    let cluster = ctx.cluster().to_string();
    let id = ctx.migration.id;
    let names = ctx.names();
    let target_dsn = ctx.require_target()?;
    let source = pg::connect(ctx.source_dsn(), &format!("source of {cluster}")).await?;
    let target = pg::connect(&target_dsn, &format!("target of {cluster}")).await?;
    if subscription_exists(&target, &names.subscription).await? {
        return Ok(Outcome::Done);
    }
    ensure_publication(&source, &names).await?;
    // Whatever an earlier attempt copied is not covered by a live snapshot any more: start over.
    if drop_slot(&source, &names.slot).await? {
        tracing::warn!(cluster = %cluster, migration = %id, slot = %names.slot, "dropped the slot of an interrupted hydration; copying again");
    }
    let referenced = referenced_tables(&target).await?;
    let tables: Vec<String> = plan(&target, u64::MAX, 1, &referenced).await?.into_iter().map(|c| c.table).collect();
    if !tables.is_empty() {
        pg::exec(&target, "empty the target tables", &format!("TRUNCATE {}", tables.join(", "))).await?;
    }

    let mut repl = ReplConn::connect(ctx.source_dsn()).await?;
    let slot = repl.create_slot_with_snapshot(&names.slot).await?;
    tracing::info!(cluster = %cluster, migration = %id, slot = %slot.slot, lsn = %slot.consistent_point, snapshot = %slot.snapshot, "slot created with exported snapshot");
    ctx.db.merge_state(id, Patch::of(&SlotStart { slot_lsn: Some(slot.consistent_point.clone()) })).await?;

    let planner = pg::connect(ctx.source_dsn(), &format!("source of {cluster}")).await?;
    begin_snapshot(&planner, &slot.snapshot).await?;
    let chunks = plan(&planner, ctx.config.split_bytes, ctx.config.hydrate_jobs, &referenced).await?;
    let copy_started = Instant::now();
    let planned: Vec<(String, i32, i64)> = chunks.iter().map(|c| (c.table.clone(), c.chunk, c.bytes_estimate)).collect();
    ctx.db.reset_copy_progress(id, &planned).await?;
    // While the data streams, dump the indexes and constraints as of the same snapshot.
    let dir = tempdir(&ctx.config.local_base_dir, &format!("post-{id}"))?;
    let post_file = dir.join("post.dump");
    let result = async {
        let (dumped, copied) = tokio::join!(
            dump_schema(ctx.source_dsn(), "post-data", &post_file, &cluster, Some(&slot.snapshot)),
            copy_all(ctx, &slot.snapshot, &target_dsn, chunks),
        );
        copied?;
        dumped?;
        copy_sequences(&planner, &target).await?;
        pg::exec(&planner, "end the planning snapshot", "COMMIT").await?;
        repl.close().await;
        tracing::info!(cluster = %cluster, migration = %id, seconds = copy_started.elapsed().as_secs_f64(), "data copied");
        let post_started = Instant::now();
        restore_post_data(ctx, &target, &target_dsn, &post_file).await?;
        tracing::info!(cluster = %cluster, migration = %id, seconds = post_started.elapsed().as_secs_f64(), "indexes and constraints built");
        Ok::<(), Error>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    ctx.check_cancel()?;
    // the subscription logs in as a replication role of its own, never as dmf's role
    let source_writable = pg::connect_writable(ctx.source_dsn(), &format!("source of {cluster}")).await?;
    let conninfo = repl_role::ensure(&source_writable, &repl_role::name(&names), ctx.source_dsn()).await?;
    let sql = format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (create_slot = false, slot_name = {}, copy_data = false, enabled = true)",
        pg::ident(&names.subscription),
        pg::literal(&conninfo),
        pg::ident(&names.publication),
        pg::literal(&names.slot),
    );
    pg::exec(&target, "create subscription", &sql).await?;
    tracing::info!(cluster = %cluster, migration = %id, "hydrated; subscription started at the slot");
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::{block_ranges, key_ranges};

    #[test]
    fn key_ranges_cover_everything_without_overlap() {
        let r = key_ranges("aid", 1, 100, 4);
        assert_eq!(r, vec!["\"aid\" < 26", "\"aid\" >= 26 AND \"aid\" < 51", "\"aid\" >= 51 AND \"aid\" < 76", "\"aid\" >= 76"]);
        assert_eq!(key_ranges("k", 5, 5, 8), vec!["true"]);
        assert_eq!(key_ranges("k", i64::MIN, i64::MAX, 2).len(), 2);
        assert_eq!(
            block_ranges(100, 2),
            vec!["ctid < '(50,0)'::tid", "ctid >= '(50,0)'::tid"]
        );
        assert_eq!(block_ranges(0, 4), vec!["true"]);
    }
}
