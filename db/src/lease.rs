//! Leases: at most one worker runs a given migration's activity at a time.
//!
//! The lease lives in the control plane with an expiry set by the database clock. The holder renews
//! it well before expiry and stops its activity when it cannot, so by the time a lease is free again
//! its old holder has already given up. This is what keeps a long activity from running twice when
//! apalis hands an "orphaned" job to a second worker during a drain or an outage.

use std::time::Duration;

use uuid::Uuid;

use crate::{Db, Error};

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
        sqlx::query("DELETE FROM dmf.leases WHERE migration = $1 AND holder = $2")
            .bind(migration)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Db {
    /// Whether a migration has neither a queued or running job nor a live lease: nothing will move
    /// it unless it is nudged (its worker died after apalis gave up on the job).
    pub async fn is_stranded(&self, migration: Uuid) -> Result<bool, Error> {
        Ok(sqlx::query_scalar(include_str!("queries/is_stranded.sql"))
            .bind(migration)
            .bind(crate::QUEUE)
            .bind(format!("{migration}/%"))
            .fetch_one(&self.pool)
            .await?)
    }
}
