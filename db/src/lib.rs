//! The control plane: schema migrations, typed queries, the phase compare-and-set and the job queue.
//!
//! Every durable fact about the fleet lives in one PostgreSQL database (`DMF_DATABASE_URL`). Workers,
//! the scheduler and the CLI talk only to it, through this crate.

pub mod error;
pub mod fleet;
pub mod lease;
pub mod migration;
pub mod progress;
pub mod queue;
pub mod status;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use error::Error;
pub use migration::{MigrationRow, TransitionRequest};
pub use queue::{ActivityJob, QUEUE};

/// A handle on the control plane. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    /// Connect without waiting for the control plane to come up: the first query will connect.
    pub fn connect_lazy(url: &str) -> Result<Db, Error> {
        let opts: PgConnectOptions = url.parse().map_err(|e| Error::BadUrl(format!("{e}")))?;
        let opts = opts.application_name("dmf");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(opts);
        Ok(Db { pool })
    }

    /// Connect and check that the control plane answers.
    pub async fn connect(url: &str) -> Result<Db, Error> {
        let db = Db::connect_lazy(url)?;
        sqlx::query("SELECT 1").execute(&db.pool).await?;
        Ok(db)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Create or upgrade the control-plane schema and the queue. Safe to run any number of times.
    pub async fn init(&self) -> Result<(), Error> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        apalis_postgres::PostgresStorage::setup(&self.pool).await.map_err(|e| Error::Queue(e.to_string()))?;
        Ok(())
    }

    /// Whether `dmf init` has run against this database.
    pub async fn is_initialized(&self) -> Result<bool, Error> {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass('dmf.migrations')::text")
            .fetch_one(&self.pool)
            .await?;
        Ok(found.is_some())
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
        sqlx::query(include_str!("queries/insert_event.sql"))
            .bind(migration)
            .bind(cluster)
            .bind(kind)
            .bind(None::<String>)
            .bind(None::<String>)
            .bind(None::<i64>)
            .bind(actor)
            .bind(detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
