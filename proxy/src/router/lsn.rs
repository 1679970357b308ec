//! How far the read endpoint has applied the primary's WAL, for read-your-writes: a physical
//! standby's replay LSN, or a logical subscriber's replication-origin progress.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, Login};
use crate::protocol::startup::Params;
use crate::router::Mode;
use crate::Shared;

const REPLAYED_SQL: &str = include_str!("standby_replay_lsn.sql");
const APPLIED_SQL: &str = include_str!("read_applied_lsn.sql");

/// How often a proxy without clients looks again whether one has come.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Poll the read endpoint every `every` while the route splits reads and clients are connected;
/// publish into the gate's read-applied LSN (0 when unknown, which sends every read-after-write to the primary).
pub async fn track(shared: Arc<Shared>, every: Duration) {
    let mut conn: Option<Backend> = None;
    // Whether the endpoint is a logical subscriber (not in recovery), learned once per connection.
    let mut logical = false;
    // One warning per endpoint, not one per poll.
    let mut warned: Option<Arc<crate::backend::Endpoint>> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // subscribe before looking: a change made after this line wakes the wait below
        let mut changed = shared.gate.subscribe();
        let route = shared.route();
        if route.mode != Mode::SplitReads {
            conn = None;
            shared.gate.set_read_applied_lsn(0);
            // nothing to track until the route changes
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = changed.changed() => {}
            }
            continue;
        }
        if conn.as_ref().is_some_and(|c| !Arc::ptr_eq(c.endpoint(), &route.read)) {
            // another endpoint: what the old one applied says nothing about it
            conn = None;
            shared.gate.set_read_applied_lsn(0);
        }
        if shared.metrics.connections_active.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            // no client, no read to route: a sidecar in front of an idle application does not
            // query the read endpoint 200 times a second (a fleet's proxies in shadow reads kept
            // their targets busy so). The last value stays: older than the truth, it only sends
            // more reads after writes to the primary until the next poll.
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = changed.changed() => {}
                _ = tokio::time::sleep(IDLE_CHECK) => {}
            }
            continue;
        }
        if conn.is_none() {
            // The route's user when the users file holds its password (the route's own password
            // never reaches a proxy), else the first user the users file holds.
            let user = route.read.user.clone().filter(|u| shared.opts.users.password(u).is_some()).or_else(|| shared.opts.users.first_user());
            let user = user.or_else(|| route.read.user.clone()).unwrap_or_else(|| "postgres".into());
            let params = Params(vec![("application_name".into(), "dmf-proxy-lsn".into())]);
            let login = Login { user: &user, password: shared.opts.users.password(&user), params: &params, read_only: true };
            let connect = tokio::time::timeout(shared.opts.connect_timeout, Backend::connect(route.read.clone(), &login));
            let connected = connect.await.unwrap_or_else(|_| Err(crate::Error::backend(&route.read.label(), "no login in time (--server-connect-timeout-s)")));
            let opened = match connected {
                Ok(mut c) => match c.simple_query(REPLAYED_SQL).await {
                    Ok(rows) => {
                        logical = rows.first().and_then(|r| r.first().cloned().flatten()).is_none();
                        Ok(c)
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match opened {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    if warned.as_ref().is_none_or(|w| !Arc::ptr_eq(w, &route.read)) {
                        tracing::warn!(cluster = %shared.opts.cluster, user = %user, error = %e, "read endpoint: cannot track its applied LSN; reads after writes go to the primary");
                        warned = Some(route.read.clone());
                    }
                    shared.gate.set_read_applied_lsn(0);
                    back_off(&shared).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.simple_query(if logical { APPLIED_SQL } else { REPLAYED_SQL }).await {
            Ok(rows) => {
                let lsn = rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|t| crate::protocol::lsn::parse(&t)).unwrap_or(0);
                shared.gate.set_read_applied_lsn(lsn);
            }
            Err(e) => {
                if warned.as_ref().is_none_or(|w| !Arc::ptr_eq(w, &route.read)) {
                    tracing::warn!(cluster = %shared.opts.cluster, error = %e, "read endpoint: applied LSN query failed (a logical subscriber needs SELECT on pg_replication_origin_status for the proxy's user); reads after writes go to the primary");
                    warned = Some(route.read.clone());
                }
                shared.gate.set_read_applied_lsn(0);
                conn = None;
                back_off(&shared).await;
            }
        }
    }
}

/// After a failed connect or query, wait a second (or for shutdown) before trying again.
async fn back_off(shared: &Shared) {
    tokio::select! {
        _ = shared.shutdown.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}
