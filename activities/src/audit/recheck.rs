//! Fenced re-checks: how a suspected difference becomes a confirmed one, or goes away.
//!
//! For a set of keys: read them on the source (S1), write a heartbeat fence and wait until the
//! target has applied it (so the target holds every change committed before S1 was read), read
//! them on the target (T), read them on the source again (S3). A key whose target row equals S1
//! matched. A key whose source row stayed the same across the fence (S1 = S3) but whose target row
//! differs, in two rounds in a row with the same source row, is a confirmed difference: no change in
//! flight can explain it (S3 is read only once every transaction open before it has become visible
//! on the source: see `settle`). A key that changed on the source in between is checked again in the next
//! round; one that keeps changing is reported as unsettled, never as a difference. Replication lag or a stall only makes the fence wait.

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::table::{Key, TableInfo};
use crate::error::Error;
use crate::{health, pg};
use dmf_db::audit::NewDifference;

/// A difference is confirmed only when it shows in this many fenced rounds in a row. One round is
/// not enough under load: a source commit is sent to the subscriber once its WAL is flushed, a moment
/// before it becomes visible to new snapshots on the source, so the target can briefly show a change
/// that a read on the source does not see yet.
const CONFIRMING_ROUNDS: u32 = 2;
/// Keys read per statement.
const BATCH: usize = 500;
/// Longest text of a value kept in a result's detail.
const DETAIL_CHARS: usize = 200;

/// What a re-check concluded.
#[derive(Debug, Default)]
pub struct Verdict {
    pub matched: usize,
    pub differences: Vec<NewDifference>,
    /// Keys that kept changing, or whose fence did not arrive in time.
    pub unsettled: Vec<Key>,
}

/// Rows by key on one side: key -> every column's text (keyless tables: the copies' count).
async fn read_rows(client: &Client, table: &TableInfo, keys: &[Key]) -> Result<HashMap<Key, Vec<Option<String>>>, Error> {
    let mut out = HashMap::with_capacity(keys.len());
    for batch in keys.chunks(BATCH) {
        let rows = client
            .query(&table.rows_by_key_sql(batch), &[])
            .await
            .map_err(pg::err(&format!("read rows of {} by key", table.qualified)))?;
        for r in rows {
            out.insert(r.get::<_, Key>(0), r.get::<_, Vec<Option<String>>>(1));
        }
    }
    Ok(out)
}

/// Wait until every transaction open on the source now is visible to new snapshots or gone.
///
/// A commit reaches the subscriber once its WAL is flushed, a moment before it becomes visible on
/// the source; on a loaded machine a backend can be descheduled in that moment for longer than two
/// fenced rounds (seen under pgbench on a single hot row), so that S1 = S3 while the target already
/// shows the commit. Reading S3 only after those transactions have left the source's snapshot
/// closes that gap. False after `timeout` (a long-open transaction): nothing is concluded.
async fn settle(source: &Client, timeout: Duration, cancel: &CancellationToken) -> Result<bool, Error> {
    let snapshot: String = source
        .query_one("SELECT txid_current_snapshot()::text", &[])
        .await
        .map_err(pg::err("read the source's snapshot"))?
        .get(0);
    let started = std::time::Instant::now();
    loop {
        let open: i64 = source
            .query_one(include_str!("../sql/still_invisible.sql"), &[&snapshot])
            .await
            .map_err(pg::err("wait for open transactions on the source"))?
            .get(0);
        if open == 0 {
            return Ok(true);
        }
        if started.elapsed() > timeout {
            return Ok(false);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
}

async fn current_lsn(source: &Client) -> Result<String, Error> {
    Ok(source.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(pg::err("read the source's WAL position"))?.get(0))
}

fn clip(v: &Option<String>) -> serde_json::Value {
    match v {
        None => serde_json::Value::Null,
        Some(s) if s.chars().count() > DETAIL_CHARS => serde_json::Value::String(format!("{}…", s.chars().take(DETAIL_CHARS).collect::<String>())),
        Some(s) => serde_json::Value::String(s.clone()),
    }
}

/// Describe a confirmed difference between the source's and the target's row.
fn difference(table: &TableInfo, key: &Key, source: Option<&Vec<Option<String>>>, target: Option<&Vec<Option<String>>>, lsn: &str) -> NewDifference {
    let (kind, columns, detail) = match (source, target) {
        (Some(_), None) => ("missing_on_target", Vec::new(), serde_json::json!({})),
        (None, Some(_)) => ("missing_on_source", Vec::new(), serde_json::json!({})),
        (Some(s), Some(t)) if !table.keyed() => (
            "value",
            Vec::new(),
            serde_json::json!({ "source_copies": clip(&s[0]), "target_copies": clip(&t[0]) }),
        ),
        (Some(s), Some(t)) => {
            let mut columns = Vec::new();
            let (mut src, mut tgt) = (serde_json::Map::new(), serde_json::Map::new());
            for (i, name) in table.columns.iter().enumerate() {
                let (a, b) = (s.get(i).cloned().flatten(), t.get(i).cloned().flatten());
                if a != b {
                    columns.push(name.clone());
                    src.insert(name.clone(), clip(&a));
                    tgt.insert(name.clone(), clip(&b));
                }
            }
            ("value", columns, serde_json::json!({ "source": src, "target": tgt }))
        }
        (None, None) => ("value", Vec::new(), serde_json::json!({})),
    };
    NewDifference { kind: kind.to_string(), table: table.qualified.clone(), key: table.key_json(key), columns, lsn: lsn.to_string(), detail }
}

/// Re-check `keys` of `table` in up to `rounds` fenced rounds.
pub async fn recheck(
    table: &TableInfo,
    keys: Vec<Key>,
    source: &Client,
    target: &Client,
    rounds: u32,
    fence_timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Verdict, Error> {
    let mut verdict = Verdict::default();
    let mut pending = keys;
    // Rounds in a row in which a key looked different with its source row unchanged.
    let mut suspect: HashMap<Key, (Option<Vec<Option<String>>>, u32)> = HashMap::new();
    for _ in 0..rounds.max(CONFIRMING_ROUNDS) {
        if pending.is_empty() {
            break;
        }
        let lsn = current_lsn(source).await?;
        let s1 = read_rows(source, table, &pending).await?;
        if health::write_and_wait(source, target, fence_timeout, cancel).await?.is_none() {
            // Replication is stalled: nothing can be concluded now, nor in this call's next
            // rounds (each would wait out the fence again while the tick's guards wait): the keys
            // stay unsettled for a later tick.
            break;
        }
        let t = read_rows(target, table, &pending).await?;
        if !settle(source, fence_timeout, cancel).await? {
            // A transaction stays open on the source: S3 could miss a commit the target shows.
            continue;
        }
        let s3 = read_rows(source, table, &pending).await?;
        let mut next = Vec::new();
        for key in pending {
            let (a, b, c) = (s1.get(&key), t.get(&key), s3.get(&key));
            if a == b {
                verdict.matched += 1;
                continue;
            }
            if a == c {
                let entry = suspect.entry(key.clone()).or_insert((a.cloned(), 0));
                if entry.0.as_ref() != a {
                    // The source row moved since the last round: start counting again.
                    *entry = (a.cloned(), 0);
                }
                entry.1 += 1;
                if entry.1 >= CONFIRMING_ROUNDS {
                    verdict.differences.push(difference(table, &key, a, b, &lsn));
                    continue;
                }
            } else {
                suspect.remove(&key);
            }
            next.push(key);
        }
        pending = next;
    }
    verdict.unsettled = pending;
    Ok(verdict)
}
