//! The worker's idle health connections: the connection to each side that a migration's watch
//! tick used is kept for its next tick, so that a replicating, validating or shadow-reads tick
//! does not log in to the source and the target again every few seconds (at 400 clusters the
//! logins kept the instances' postmasters busy forking).
//!
//! Only connections whose session state is known are kept: the replication guards'
//! (`health::sides`: `search_path = pg_catalog`, set by the drift check) and the sampler's
//! (`audit::sample`: the pinned row-text settings), keyed by what they are for as well as by the
//! connection string; no transaction is ever left open on them. A connection is kept only after a
//! tick that ended in a watch or in done (never an abort or a failure), is checked with an empty
//! query when taken, and is closed once idle for `IDLE_FOR` (the worker sweeps on a timer), when
//! its migration flips or rolls back, and when it is cleaned up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use uuid::Uuid;

/// How long an idle connection is kept for its migration's next tick.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// Idle connections kept at most by one worker (the oldest go first): each counts against its
/// server's `max_connections`.
const MAX_IDLE: usize = 512;

/// Idle connections by migration and what they are for (the connection string, prefixed by the
/// session settings they carry where they carry some).
#[derive(Default)]
pub struct Conns {
    idle: Mutex<HashMap<(Uuid, String), (Client, Instant)>>,
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the connection strings: they may hold a password
        f.debug_struct("Conns").field("idle", &self.lock().len()).finish()
    }
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, String), (Client, Instant)>> {
        // a panic while holding the map leaves it consistent: every operation is one call
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection kept for `migration` to `dsn`, if one is and still answers.
    pub async fn take(&self, migration: Uuid, dsn: &str) -> Option<Client> {
        let kept = {
            let mut idle = self.lock();
            sweep(&mut idle);
            idle.remove(&(migration, dsn.to_string())).map(|(c, _)| c)
        }?;
        // a server that restarted or ended the session meanwhile: log in again instead of
        // failing the tick (and counting an attempt)
        match tokio::time::timeout(Duration::from_secs(2), kept.batch_execute("")).await {
            Ok(Ok(())) => Some(kept),
            _ => None,
        }
    }

    /// The connection kept for `migration` under `key`, else a new one from `connect` (not run when
    /// one is kept).
    pub async fn take_or(
        &self,
        migration: Uuid,
        key: &str,
        connect: impl std::future::Future<Output = Result<Client, crate::Error>>,
    ) -> Result<Client, crate::Error> {
        match self.take(migration, key).await {
            Some(c) => Ok(c),
            None => connect.await,
        }
    }

    /// Keep `client` for `migration`'s next tick.
    pub fn put(&self, migration: Uuid, dsn: &str, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.lock();
        sweep(&mut idle);
        if idle.len() >= MAX_IDLE {
            if let Some(oldest) = idle.iter().min_by_key(|(_, (_, since))| *since).map(|(k, _)| k.clone()) {
                idle.remove(&oldest);
            }
        }
        idle.insert((migration, dsn.to_string()), (client, Instant::now()));
    }

    /// Close what is kept for `migration`: it leaves the phases that watch it, or aborts (a
    /// session of dmf's left on the source would outlive the migration; the flip's fence would
    /// end it inside the hold).
    pub fn forget(&self, migration: Uuid) {
        self.lock().retain(|(m, _), _| *m != migration);
    }

    /// Close the connections idle for longer than `IDLE_FOR` (the worker calls this on a timer:
    /// `take` and `put` do it too, but a worker with nothing to watch calls neither).
    pub fn sweep(&self) {
        sweep(&mut self.lock());
    }

    /// Connections kept now (for tests and logs).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn sweep(idle: &mut HashMap<(Uuid, String), (Client, Instant)>) {
    idle.retain(|_, (c, since)| since.elapsed() < IDLE_FOR && !c.is_closed());
}

/// The `application_name` of the connections kept for `migration` (`dmf watch <id>`).
pub fn application_name(migration: Uuid) -> String {
    format!("dmf watch {}", &migration.simple().to_string()[..12])
}

/// End, on the database `client` is connected to, the sessions another worker keeps for
/// `migration` (this worker's are closed by `forget`): before a hold, so that the fence inside it
/// finds none of dmf's own, and at cleanup, so that nothing of dmf's stays on the source. A session
/// that only took the name is ended too: the fence would end it anyway. Returns how many.
pub async fn end_kept_elsewhere(client: &Client, migration: Uuid) -> Result<i64, crate::Error> {
    let ended: Vec<i32> = client
        .query_one(include_str!("sql/end_kept_sessions.sql"), &[&application_name(migration)])
        .await
        .map_err(crate::pg::err("end the sessions other workers keep for this migration"))?
        .get(0);
    // idle sessions end at once; wait (a little) until they are gone
    let started = Instant::now();
    while !ended.is_empty() && started.elapsed() < Duration::from_secs(1) {
        let left: i64 = client
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY ($1)", &[&ended])
            .await
            .map_err(crate::pg::err("wait for the ended sessions"))?
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(ended.len() as i64)
}
