//! The worker's idle health connections: the connection to each side that a migration's watch
//! tick used is kept for its next tick, so that a replicating, validating or shadow-reads tick
//! does not log in to the source and the target again every few seconds (at 400 clusters the
//! logins kept the instances' postmasters busy forking).
//!
//! Only the replication guards' connections are kept (`health::sides`): their session state is
//! known (`search_path = pg_catalog`, set by the drift check, and no transaction is ever left
//! open on them). A connection is kept only after a tick that ended without an error, is checked
//! with an empty query when taken, and is closed once idle for `IDLE_FOR`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use uuid::Uuid;

/// How long an idle connection is kept for its migration's next tick.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// Idle connections by migration and connection string.
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
            idle.retain(|_, (c, since)| since.elapsed() < IDLE_FOR && !c.is_closed());
            idle.remove(&(migration, dsn.to_string())).map(|(c, _)| c)
        }?;
        // a server that restarted or ended the session meanwhile: log in again instead of
        // failing the tick (and counting an attempt)
        match tokio::time::timeout(Duration::from_secs(2), kept.batch_execute("")).await {
            Ok(Ok(())) => Some(kept),
            _ => None,
        }
    }

    /// Keep `client` for `migration`'s next tick.
    pub fn put(&self, migration: Uuid, dsn: &str, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.lock();
        idle.retain(|_, (c, since)| since.elapsed() < IDLE_FOR && !c.is_closed());
        idle.insert((migration, dsn.to_string()), (client, Instant::now()));
    }

    /// Connections kept now (for tests and logs).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
