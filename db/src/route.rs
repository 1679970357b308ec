//! Routes and the proxies that follow them: what each DAL sidecar should send where, and which
//! route epoch every live proxy has applied.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::state::Patch;
use crate::{Db, Error};

/// The notification channel a cluster's route changes are announced on (payload: the cluster
/// name), as `dmf.route_channel` names it: one per cluster.
pub async fn channel(db: &Db, cluster: &str) -> Result<String, Error> {
    Ok(sqlx::query_scalar("SELECT dmf.route_channel($1)").bind(cluster).fetch_one(&db.pool).await?)
}

/// A connection string as a route holds it: without any password. A route tells proxies where
/// to send traffic; they log in as each client's user with their own users file, so dmf's own
/// credentials never reach an application host. Compare a route's endpoints with a
/// migration's connection strings through this.
pub fn endpoint(dsn: &str) -> String {
    crate::secret::redact(dsn)
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RouteRow {
    pub cluster: String,
    pub primary_endpoint: String,
    pub read_endpoint: String,
    pub mode: String,
    pub hold: bool,
    pub hold_deadline_ms: i32,
    pub shadow_endpoint: Option<String>,
    pub shadow_fraction: f64,
    /// During a flip's hold: the primary the route is about to point at.
    pub next_primary: Option<String>,
    pub route_epoch: i64,
    pub updated_at: DateTime<Utc>,
}

/// A route change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct RouteChange {
    pub primary: Option<String>,
    pub read: Option<String>,
    pub mode: Option<String>,
    pub hold: Option<bool>,
    pub hold_deadline_ms: Option<i32>,
    /// `Some(None)` removes the shadow endpoint.
    pub shadow_endpoint: Option<Option<String>>,
    pub shadow_fraction: Option<f64>,
    /// `Some(None)` clears it.
    pub next_primary: Option<Option<String>>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ProxyRow {
    pub id: Uuid,
    pub cluster: String,
    pub listen: String,
    pub host: String,
    pub pid: i32,
    pub lease_ms: i32,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub applied_epoch: i64,
    pub held: bool,
    pub state: String,
    pub stats: serde_json::Value,
    /// Backends (on the primary) of this proxy's sessions when it last acknowledged an epoch.
    pub backend_pids: Vec<i32>,
    /// Whether its last acknowledgement of a hold came with no transaction in flight.
    pub drained: bool,
    /// Users it could not log in as on the announced next primary (with the server's reason).
    pub cannot_login: Vec<String>,
    /// The longest a transaction waited at its last released hold, microseconds (NULL while a
    /// hold is on, or before the first release).
    pub hold_longest_us: Option<i64>,
    pub alive: bool,
}

/// What a proxy acknowledges with an epoch.
#[derive(Debug, Clone, Default)]
pub struct Ack {
    pub epoch: i64,
    pub held: bool,
    /// Backends (on the primary) of its sessions: the fence spares these.
    pub backend_pids: Vec<i32>,
    /// For a hold: no transaction was in flight when it acknowledged.
    pub drained: bool,
    /// For an announced next primary: the users it could not log in as there, with why.
    pub cannot_login: Vec<String>,
    /// For a release: the longest a transaction waited at the hold it ends, microseconds.
    pub hold_longest_us: Option<i64>,
}

/// What a proxy tells the control plane when it starts.
#[derive(Debug, Clone)]
pub struct ProxyRegistration {
    pub id: Uuid,
    pub cluster: String,
    pub listen: String,
    pub host: String,
    pub pid: i32,
    pub lease: Duration,
    pub applied_epoch: i64,
}

impl Db {
    pub async fn route(&self, cluster: &str) -> Result<Option<RouteRow>, Error> {
        Ok(sqlx::query_as(include_str!("queries/routes.sql")).bind(cluster).fetch_optional(&self.pool).await?)
    }

    pub async fn routes(&self) -> Result<Vec<RouteRow>, Error> {
        Ok(sqlx::query_as(include_str!("queries/routes.sql")).bind(None::<String>).fetch_all(&self.pool).await?)
    }

    /// Apply a change, bump the epoch and record who did it, in one transaction. The trigger on
    /// dmf.routes notifies the proxies at commit.
    pub async fn change_route(&self, cluster: &str, change: &RouteChange, actor: &str) -> Result<RouteRow, Error> {
        self.change_route_recording(cluster, change, actor, None).await
    }

    /// Change a route and, in the same transaction, merge `patch` into a migration's state: what
    /// must be durable exactly when the route moves (the flip's record of it) costs no second
    /// write.
    pub async fn change_route_recording(
        &self,
        cluster: &str,
        change: &RouteChange,
        actor: &str,
        record: Option<(Uuid, Patch)>,
    ) -> Result<RouteRow, Error> {
        if let Some(m) = &change.mode {
            if !matches!(m.as_str(), "primary" | "split_reads") {
                return Err(Error::Conflict(format!("route mode {m:?} is not one of primary, split_reads")));
            }
        }
        let mut tx = self.begin().await?;
        let row: Option<RouteRow> = sqlx::query_as(include_str!("queries/change_route.sql"))
            .bind(cluster)
            .bind(change.primary.as_deref().map(endpoint))
            .bind(change.read.as_deref().map(endpoint))
            .bind(&change.mode)
            .bind(change.hold)
            .bind(change.hold_deadline_ms)
            .bind(matches!(change.shadow_endpoint, Some(None)))
            .bind(change.shadow_endpoint.clone().flatten().as_deref().map(endpoint))
            .bind(change.shadow_fraction)
            .bind(matches!(change.next_primary, Some(None)))
            .bind(change.next_primary.clone().flatten().as_deref().map(endpoint))
            .fetch_optional(&mut *tx)
            .await?;
        let row = row.ok_or_else(|| Error::UnknownCluster(cluster.to_string()))?;
        let detail = serde_json::json!({
            "epoch": row.route_epoch, "mode": row.mode, "hold": row.hold,
            "shadow_fraction": row.shadow_fraction, "moved": change.primary.is_some(),
        });
        sqlx::query(include_str!("queries/insert_event.sql"))
            .bind(None::<Uuid>)
            .bind(cluster)
            .bind("route")
            .bind(None::<String>)
            .bind(None::<String>)
            .bind(row.route_epoch)
            .bind(actor)
            .bind(detail.to_string())
            .execute(&mut *tx)
            .await?;
        if let Some((migration, patch)) = record {
            sqlx::query(include_str!("queries/merge_state.sql"))
                .bind(migration)
                .bind(patch.into_json())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    pub async fn register_proxy(&self, p: &ProxyRegistration) -> Result<(), Error> {
        sqlx::query(include_str!("queries/register_proxy.sql"))
            .bind(p.id)
            .bind(&p.cluster)
            .bind(&p.listen)
            .bind(&p.host)
            .bind(p.pid)
            .bind(p.lease.as_millis() as i32)
            .bind(p.applied_epoch)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Heartbeat with the proxy's state and counters; false when its row is gone.
    pub async fn proxy_heartbeat(&self, id: Uuid, state: &str, stats: &serde_json::Value) -> Result<bool, Error> {
        let n = sqlx::query("UPDATE dmf.proxies SET heartbeat_at = now(), state = $2, stats = $3 WHERE id = $1")
            .bind(id)
            .bind(state)
            .bind(stats)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// The proxy has applied `epoch` (for a hold: every in-flight transaction has finished);
    /// `backend_pids` are its sessions' backends on the primary, which a fence must spare.
    pub async fn proxy_applied(&self, id: Uuid, ack: &Ack) -> Result<(), Error> {
        sqlx::query(
            "UPDATE dmf.proxies SET applied_epoch = GREATEST(applied_epoch, $2), held = $3, backend_pids = $4, \
             drained = $5, cannot_login = $6, heartbeat_at = now(), \
             hold_longest_us = CASE WHEN $3 THEN NULL ELSE COALESCE($7, hold_longest_us) END WHERE id = $1",
        )
        .bind(id)
        .bind(ack.epoch)
        .bind(ack.held)
        .bind(&ack.backend_pids)
        .bind(ack.drained)
        .bind(&ack.cannot_login)
        .bind(ack.hold_longest_us)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn proxies(&self, cluster: Option<&str>) -> Result<Vec<ProxyRow>, Error> {
        Ok(sqlx::query_as(include_str!("queries/proxies.sql")).bind(cluster).fetch_all(&self.pool).await?)
    }

    /// Wake every live proxy of `cluster` with a new epoch that changes nothing, and wait until each
    /// applied it: a proxy whose route was at rest reads it at its next poll (every 4 to 5 s, see
    /// dmf-proxy's `router::control`) and listens from then on. Before a hold, so that the hold
    /// reaches every proxy at once. A proxy that does not answer within `timeout` is
    /// `Error::Conflict`, named.
    pub async fn wake_proxies(&self, cluster: &str, actor: &str, timeout: Duration) -> Result<Vec<ProxyRow>, Error> {
        let woken = self.change_route(cluster, &RouteChange::default(), actor).await?;
        self.wait_route_applied(cluster, woken.route_epoch, timeout).await
    }

    /// Wait until every live proxy of `cluster` has applied `epoch`. Proxies whose lease ran out
    /// do not count: they have stopped sending writes anywhere. Returns the proxies that applied it.
    pub async fn wait_route_applied(&self, cluster: &str, epoch: i64, timeout: Duration) -> Result<Vec<ProxyRow>, Error> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let live: Vec<ProxyRow> = self.proxies(Some(cluster)).await?.into_iter().filter(|p| p.alive).collect();
            let behind: Vec<&ProxyRow> = live.iter().filter(|p| p.applied_epoch < epoch).collect();
            if behind.is_empty() {
                return Ok(live);
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = behind.iter().map(|p| format!("{} on {} (applied {})", p.listen, p.host, p.applied_epoch)).collect();
                return Err(Error::Conflict(format!(
                    "cluster {cluster:?}: route epoch {epoch} not applied within {:?} by {}",
                    timeout,
                    names.join(", ")
                )));
            }
            // listening proxies answer within milliseconds, or once their in-flight transactions
            // finish (a hold waits on this, within its 1 s deadline by default); one that polls a
            // route at rest takes seconds, and is not asked for every 2 ms meanwhile
            let pause = if started.elapsed() < Duration::from_millis(1500) { Duration::from_millis(2) } else { Duration::from_millis(10) };
            tokio::time::sleep(pause).await;
        }
    }
}
