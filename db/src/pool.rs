//! Roles on a pool of target instances (the local provider's `target_instance` mode): what each
//! cluster claims on an instance, and which roles there dmf made. Every call takes the instance's
//! advisory lock, so that two clusters never decide about the same instance's roles at once.

use std::collections::BTreeMap;

use crate::{Db, Error};

/// Another cluster's claim on a role of the same instance.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RoleClaim {
    pub role: String,
    pub cluster: String,
    pub spec: serde_json::Value,
}

/// The advisory lock of one instance's roles, for the rest of the transaction.
async fn lock(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, instance: &str) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('dmf.target_roles'), hashtext($1))").bind(instance).execute(&mut **tx).await?;
    Ok(())
}

impl Db {
    /// Claim `specs` (role name to its definition) for `cluster` on `instance`, replacing its
    /// earlier claims, unless another cluster claims one of these roles with another definition:
    /// then nothing is claimed (a cluster that cannot go on must not keep others from going on)
    /// and those claims are returned.
    pub async fn claim_target_roles(&self, instance: &str, cluster: &str, specs: &BTreeMap<String, serde_json::Value>) -> Result<Vec<RoleClaim>, Error> {
        let roles: Vec<String> = specs.keys().cloned().collect();
        let values: Vec<serde_json::Value> = specs.values().cloned().collect();
        let mut tx = self.begin().await?;
        lock(&mut tx, instance).await?;
        let others: Vec<RoleClaim> = sqlx::query_as(include_str!("queries/other_target_role_claims.sql")).bind(instance).bind(cluster).bind(&roles).fetch_all(&mut *tx).await?;
        let conflicts: Vec<RoleClaim> = others.into_iter().filter(|o| specs.get(&o.role) != Some(&o.spec)).collect();
        if conflicts.is_empty() {
            sqlx::query(include_str!("queries/claim_target_roles.sql")).bind(instance).bind(cluster).bind(&roles).bind(&values).execute(&mut *tx).await?;
        } else {
            sqlx::query("DELETE FROM dmf.target_roles WHERE instance = $1 AND cluster = $2").bind(instance).bind(cluster).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(conflicts)
    }

    /// Record that dmf made `roles` on `instance` (so that the last cluster to leave drops them).
    pub async fn target_roles_made(&self, instance: &str, roles: &[String]) -> Result<(), Error> {
        if roles.is_empty() {
            return Ok(());
        }
        sqlx::query("INSERT INTO dmf.target_roles_made (instance, role) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING")
            .bind(instance)
            .bind(roles)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Begin releasing `cluster`'s claims on `instance`: the roles its cleanup drops (made by
    /// dmf, claimed by no one else) and a handle that holds the instance's lock until
    /// [`RoleRelease::finish`], so that no cluster claims one of them while they are dropped.
    pub async fn release_target_roles(&self, instance: &str, cluster: &str) -> Result<(RoleRelease, Vec<String>), Error> {
        let mut tx = self.begin().await?;
        lock(&mut tx, instance).await?;
        let roles = sqlx::query_scalar(include_str!("queries/orphaned_target_roles.sql")).bind(instance).bind(cluster).fetch_all(&mut *tx).await?;
        Ok((RoleRelease { tx, instance: instance.to_string(), cluster: cluster.to_string() }, roles))
    }
}

/// A release of a cluster's role claims in progress (see [`Db::release_target_roles`]); dropped
/// without `finish`, nothing is released.
pub struct RoleRelease {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    instance: String,
    cluster: String,
}

impl RoleRelease {
    /// The claims go, with the record of the roles the cleanup `dropped`.
    pub async fn finish(mut self, dropped: &[String]) -> Result<(), Error> {
        sqlx::query(include_str!("queries/release_target_roles.sql")).bind(&self.instance).bind(&self.cluster).bind(dropped).execute(&mut *self.tx).await?;
        self.tx.commit().await?;
        Ok(())
    }
}
