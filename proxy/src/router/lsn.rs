//! How far the read endpoint has applied the primary's WAL, for read-your-writes: a physical
//! standby's replay LSN, or a logical subscriber's replication-origin progress.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, Login};
use crate::protocol::startup::Params;
use crate::router::Mode;
use crate::Shared;

const APPLIED_SQL: &str = include_str!("read_applied_lsn.sql");

/// Poll the read endpoint every `every` while the route splits reads; publish into
/// the gate's read-applied LSN (0 when unknown, which sends every read-after-write to the primary).
pub async fn track(shared: Arc<Shared>, every: Duration) {
    let mut conn: Option<Backend> = None;
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
            conn = None;
        }
        if conn.is_none() {
            let user = route.read.user.clone().or_else(|| shared.opts.users.first_user()).unwrap_or_else(|| "postgres".into());
            let password = route.read.password.clone().or_else(|| shared.opts.users.password(&user).map(str::to_string));
            let params = Params(vec![("application_name".into(), "dmf-proxy-lsn".into())]);
            let login = Login { user: &user, password: password.as_deref(), params: &params, read_only: true };
            match Backend::connect(route.read.clone(), &login).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(cluster = %shared.opts.cluster, error = %e, "read endpoint: cannot track its applied LSN; reads after writes go to the primary");
                    shared.gate.set_read_applied_lsn(0);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.simple_query(APPLIED_SQL).await {
            Ok(rows) => {
                let lsn = rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|t| crate::protocol::lsn::parse(&t)).unwrap_or(0);
                shared.gate.set_read_applied_lsn(lsn);
            }
            Err(e) => {
                tracing::warn!(cluster = %shared.opts.cluster, error = %e, "read endpoint: applied LSN query failed");
                shared.gate.set_read_applied_lsn(0);
                conn = None;
            }
        }
    }
}
