//! The control plane: schema migrations, typed queries, the phase compare-and-set and the job queue.
//!
//! Every durable fact about the fleet lives in one PostgreSQL database (`DMF_DATABASE_URL`). Workers,
//! the scheduler and the CLI talk only to it, through this crate.

pub mod audit;
pub mod error;
pub mod fleet;
pub mod history;
pub mod lease;
pub mod migration;
pub mod pool;
pub mod progress;
pub mod queue;
pub mod route;
pub mod secret;
pub mod state;
pub mod status;
mod tls;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use error::Error;
pub use migration::{Again, FollowUp, MigrationRow, TransitionRequest};
pub use queue::{ActivityJob, QUEUE};

/// A handle on the control plane. Cheap to clone.
///
/// A handle made by `leased` writes only while its lease holds: each of its writes checks the
/// lease in the same transaction (see `lease::hold`).
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    lease: Option<std::sync::Arc<lease::LeaseToken>>,
    /// Whether TLS is required or merely preferred, until the server first answers (`tls`).
    tls: Option<std::sync::Arc<tls::Probe>>,
}

/// How long any control-plane statement may run; a hung one (a lock, a stalled server) fails
/// instead of holding a worker, a renewal or a flip.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);

impl Db {
    /// Connect without waiting for the control plane to come up: the first query will connect.
    pub fn connect_lazy(url: &str) -> Result<Db, Error> {
        Db::connect_lazy_at_most(url, 16)
    }

    /// `connect_lazy` with at most `max_connections` connections at once: a process that runs
    /// thousands of times over (the proxy, a sidecar on every application host) keeps its share of
    /// the control plane's connections small.
    pub fn connect_lazy_at_most(url: &str, max_connections: u32) -> Result<Db, Error> {
        let opts: PgConnectOptions = url.parse().map_err(|e| Error::BadUrl(format!("{e}")))?;
        let timeout = format!("{}ms", STATEMENT_TIMEOUT.as_millis());
        let opts = opts.application_name("dmf").options([("statement_timeout", timeout.as_str()), ("lock_timeout", timeout.as_str())]);
        let (opts, tls) = tls::plan(opts);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(opts);
        Ok(Db { pool, lease: None, tls: tls.map(std::sync::Arc::new) })
    }

    /// This handle, writing only while `token`'s lease holds: what an activity gets.
    pub fn leased(&self, token: lease::LeaseToken) -> Db {
        Db { pool: self.pool.clone(), lease: Some(std::sync::Arc::new(token)), tls: self.tls.clone() }
    }

    /// The lease holder this handle writes as (`<worker>:<job>`), if it is leased.
    pub fn lease_holder(&self) -> Option<&str> {
        self.lease.as_deref().map(|t| t.holder.as_str())
    }

    /// Begin a transaction; on a leased handle, one that goes on only while the lease holds.
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Error> {
        let mut tx = self.pool.begin().await?;
        if let Some(token) = &self.lease {
            lease::hold(&mut tx, token).await?;
        }
        Ok(tx)
    }

    /// Connect and check that the control plane answers.
    pub async fn connect(url: &str) -> Result<Db, Error> {
        Db::connect_at_most(url, 16).await
    }

    /// `connect` with at most `max_connections` connections at once (see `connect_lazy_at_most`).
    pub async fn connect_at_most(url: &str, max_connections: u32) -> Result<Db, Error> {
        let db = Db::connect_lazy_at_most(url, max_connections)?;
        db.settle_tls().await?;
        sqlx::query("SELECT 1").execute(&db.pool).await?;
        Ok(db)
    }

    /// Decide, the first time the server answers, whether the pool needs TLS (see `tls`).
    async fn settle_tls(&self) -> Result<(), Error> {
        if let Some(probe) = &self.tls {
            if let Some(without_tls) = probe.settle().await? {
                self.pool.set_connect_options(without_tls);
            }
        }
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Create or upgrade the control-plane schema and the queue. Safe to run any number of times.
    pub async fn init(&self) -> Result<(), Error> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        apalis_postgres::PostgresStorage::setup(&self.pool).await.map_err(|e| Error::Queue(e.to_string()))?;
        sqlx::query(include_str!("queries/jobs_waiting_index.sql")).execute(&self.pool).await?;
        self.routes_without_passwords().await
    }

    /// Routes written before routes carried no password get theirs taken out (`route::endpoint`).
    async fn routes_without_passwords(&self) -> Result<(), Error> {
        type Row = (String, String, String, Option<String>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as("SELECT cluster, primary_endpoint, read_endpoint, shadow_endpoint, next_primary FROM dmf.routes").fetch_all(&self.pool).await?;
        for (cluster, primary, read, shadow, next) in rows {
            let clean = |s: &str| route::endpoint(s);
            let changed = clean(&primary) != primary || clean(&read) != read || shadow.as_deref().is_some_and(|s| clean(s) != s) || next.as_deref().is_some_and(|s| clean(s) != s);
            if changed {
                sqlx::query("UPDATE dmf.routes SET primary_endpoint = $2, read_endpoint = $3, shadow_endpoint = $4, next_primary = $5 WHERE cluster = $1")
                    .bind(&cluster)
                    .bind(clean(&primary))
                    .bind(clean(&read))
                    .bind(shadow.as_deref().map(clean))
                    .bind(next.as_deref().map(clean))
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Whether `dmf init` has run against this database.
    pub async fn is_initialized(&self) -> Result<bool, Error> {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass('dmf.migrations')::text")
            .fetch_one(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// Wait until the control plane answers, up to `timeout`; false if it did not.
    pub async fn wait_until_reachable(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.settle_tls().await {
                Ok(()) => {
                    if sqlx::query("SELECT 1").execute(&self.pool).await.is_ok() {
                        return true;
                    }
                }
                Err(e @ (Error::Cleartext(_) | Error::Refused(_))) => tracing::error!(error = %e, "cannot log in to the control plane"),
                Err(e) => tracing::debug!(error = %e, "control plane not answering yet"),
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Append an event that is not a phase transition (operator actions, scheduler decisions).
    pub async fn log_event(
        &self,
        migration: Option<uuid::Uuid>,
        cluster: Option<&str>,
        kind: &str,
        actor: &str,
        detail: &str,
    ) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        let event = Event { migration, cluster, kind, from: None, to: None, epoch: None, actor, detail };
        event.insert(&mut conn).await
    }
}

/// One row of the append-only event log.
pub(crate) struct Event<'a> {
    pub migration: Option<uuid::Uuid>,
    pub cluster: Option<&'a str>,
    pub kind: &'a str,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub epoch: Option<i64>,
    pub actor: &'a str,
    pub detail: &'a str,
}

impl Event<'_> {
    /// Insert in the caller's transaction, so the event lands with the change it describes.
    pub(crate) async fn insert(&self, conn: &mut sqlx::PgConnection) -> Result<(), Error> {
        sqlx::query(include_str!("queries/insert_event.sql"))
            .bind(self.migration)
            .bind(self.cluster)
            .bind(self.kind)
            .bind(self.from)
            .bind(self.to)
            .bind(self.epoch)
            .bind(self.actor)
            .bind(secret::redact(self.detail))
            .execute(conn)
            .await?;
        Ok(())
    }
}
