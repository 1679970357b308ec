//! Leases: at most one worker runs a given migration's activity at a time.
//!
//! The lease lives in the control plane with an expiry set by the database clock. The holder renews
//! it well before expiry and stops its activity when it cannot, so by the time a lease is free again
//! its old holder has already given up. This is what keeps a long activity from running twice when
//! apalis hands an "orphaned" job to a second worker during a drain or an outage.

use std::time::Duration;

use uuid::Uuid;

use crate::{Db, Error};

/// Who holds a migration's lease, for which epoch: every write an activity makes carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken {
    pub migration: Uuid,
    pub holder: String,
    pub epoch: i64,
}

/// Check in the caller's transaction that `token`'s lease still holds, and keep it held (the lease
/// row is locked) until that transaction ends; `Error::LeaseLost` when it does not.
pub(crate) async fn hold(conn: &mut sqlx::PgConnection, token: &LeaseToken) -> Result<(), Error> {
    let held: Option<i32> = sqlx::query_scalar(include_str!("queries/hold_lease.sql"))
        .bind(token.migration)
        .bind(&token.holder)
        .bind(token.epoch)
        .fetch_optional(conn)
        .await?;
    held.map(|_| ()).ok_or_else(|| Error::LeaseLost { migration: token.migration, holder: token.holder.clone(), epoch: token.epoch })
}

/// Release `holder`'s lease in the caller's connection or transaction.
pub(crate) async fn release_in(conn: &mut sqlx::PgConnection, migration: Uuid, holder: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM dmf.leases WHERE migration = $1 AND holder = $2")
        .bind(migration)
        .bind(holder)
        .execute(conn)
        .await?;
    Ok(())
}

/// What a renewal learned: whether the lease is still ours, and where the migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    pub held: bool,
    pub phase: String,
    pub epoch: i64,
}

impl Db {
    /// Take the migration's lease for `holder` unless another holder's lease is still live.
    pub async fn acquire_lease(&self, migration: Uuid, holder: &str, epoch: i64, ttl: Duration) -> Result<bool, Error> {
        let got: Option<String> = sqlx::query_scalar(include_str!("queries/acquire_lease.sql"))
            .bind(migration)
            .bind(holder)
            .bind(epoch)
            .bind(ttl.as_secs_f64())
            .fetch_optional(&self.pool)
            .await?;
        Ok(got.is_some())
    }

    pub async fn renew_lease(&self, migration: Uuid, holder: &str, ttl: Duration) -> Result<Renewal, Error> {
        let row: (bool, String, i64) = sqlx::query_as(include_str!("queries/renew_lease.sql"))
            .bind(migration)
            .bind(holder)
            .bind(ttl.as_secs_f64())
            .fetch_one(&self.pool)
            .await?;
        Ok(Renewal { held: row.0, phase: row.1, epoch: row.2 })
    }

    pub async fn release_lease(&self, migration: Uuid, holder: &str) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        release_in(&mut conn, migration, holder).await
    }
}

impl Db {
    /// Migrations that run activities but have neither a queued job nor a live lease, and have not
    /// changed for `quiet_for`: nothing will move them unless they are nudged (their worker died,
    /// or stalled past its lease: a job apalis still counts as running is no one's once its lease
    /// has expired; the lease, not the job, says who runs a migration).
    pub async fn stranded_migrations(&self, quiet_for: std::time::Duration) -> Result<Vec<crate::MigrationRow>, Error> {
        Ok(sqlx::query_as(concat!(include_str!("queries/select_migration.sql"), include_str!("queries/stranded.sql")))
            .bind(crate::QUEUE)
            .bind(quiet_for.as_secs_f64())
            .fetch_all(&self.pool)
            .await?)
    }

    /// Migrations that failed before the flip longer than `after` ago and still have their
    /// replication slots (`slots_dropped` not recorded): the reconciler drops those.
    pub async fn failed_before_flip(&self, after: std::time::Duration) -> Result<Vec<crate::MigrationRow>, Error> {
        let before_flip: Vec<&str> = dmf_workflows::Phase::ALL.iter().filter(|p| dmf_workflows::Phase::Failed.can_abort(Some(**p)) && p.runs_activity()).map(|p| p.as_str()).collect();
        Ok(sqlx::query_as(concat!(include_str!("queries/select_migration.sql"), include_str!("queries/failed_before_flip.sql")))
            .bind(&before_flip)
            .bind(after.as_secs_f64())
            .fetch_all(&self.pool)
            .await?)
    }
}
