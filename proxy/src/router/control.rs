//! The proxy's side of the control plane: registration, heartbeats (the lease), route changes
//! by LISTEN/NOTIFY with polling as the fallback, holds, and acknowledgements.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmf_db::route::{Ack, ProxyRegistration};
use dmf_db::Db;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use super::Route;
use crate::{lock, Error, Shared};

pub struct Control {
    db: Db,
    id: Uuid,
    shared: Arc<Shared>,
    /// Newest epoch acknowledged in the control plane (an ack that failed is retried).
    acked: u64,
    /// Users this proxy could not log in as on the announced next primary, with why.
    cannot_login: Vec<String>,
    /// The route's notifications, while the route is in motion (`in_motion`); a quiet route is
    /// polled instead.
    listener: Option<PgListener>,
    /// When this proxy last saw the route change, or started (it may have started for a move).
    changed_at: Instant,
    /// The longest stall of the hold just released, for the release's acknowledgement.
    released_stall_us: Option<u64>,
}

impl Control {
    pub async fn register(db: Db, id: Uuid, shared: Arc<Shared>) -> Result<Control, Error> {
        let route = shared.route();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into());
        db.register_proxy(&ProxyRegistration {
            id,
            cluster: shared.opts.cluster.clone(),
            listen: shared.opts.listen.to_string(),
            host,
            pid: std::process::id() as i32,
            lease: shared.opts.lease,
            applied_epoch: route.epoch as i64,
        })
        .await?;
        // A proxy that starts during a hold has nothing in flight: it is held as soon as it exists.
        let ack = Ack { epoch: route.epoch as i64, held: route.hold, backend_pids: shared.primary_backend_pids(), drained: true, ..Ack::default() };
        db.proxy_applied(id, &ack).await?;
        shared.gate.extend_lease(Instant::now());
        Ok(Control { db, id, acked: route.epoch, shared, cannot_login: Vec::new(), listener: None, changed_at: Instant::now(), released_stall_us: None })
    }

    pub async fn run(mut self) {
        let cluster = self.shared.opts.cluster.clone();
        let mut was_ok = true;
        let mut poll = tokio::time::interval(self.shared.opts.poll);
        let mut beat = tokio::time::interval((self.shared.opts.lease / 3).max(Duration::from_millis(50)));
        // only logs lease transitions: sessions compute the lease themselves (Gate::lease_ok); a
        // fleet's idle proxies wake for little else
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let mut last_poll = Instant::now();
        for t in [&mut poll, &mut beat, &mut watchdog] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                n = recv(&mut self.listener) => match n {
                    Ok(Some(payload)) if payload == cluster => self.reload().await,
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::warn!(cluster = %cluster, "route listener reconnecting; reading the route");
                        last_poll = Instant::now();
                        self.reload().await;
                    }
                    Err(e) => {
                        tracing::warn!(cluster = %cluster, error = %e, "route notifications lost; polling until the listener is back");
                        self.listener = None;
                    }
                },
                _ = poll.tick() => {
                    // A route in motion (a migration moving its traffic) is listened to: a change
                    // arrives as a notification, and the poll is only a backstop. A quiet route
                    // is only polled, every QUIET_POLL: every notification in the control plane's
                    // database wakes every listening session there (PostgreSQL signals them all,
                    // whatever the channel), and a fleet's idle proxies listening cost its control
                    // plane more than their polls. A listener that could not be set up leaves the
                    // poll as how changes arrive.
                    let moving = self.in_motion();
                    let mut stopped_listening = false;
                    if !moving && self.listener.take().is_some() {
                        // (a notification it had buffered goes with it: the route is read now)
                        tracing::debug!(cluster = %cluster, "route at rest: polling it instead of listening");
                        stopped_listening = true;
                    }
                    if !stopped_listening && last_poll.elapsed() < QUIET_POLL && (self.listener.is_some() || !moving) {
                        continue;
                    }
                    last_poll = Instant::now();
                    self.reload().await;
                    // a route that started moving is listened to from now on (apply did, when
                    // the change came with a new epoch)
                    self.listen_if_moving().await;
                }
                _ = beat.tick() => {
                    self.heartbeat().await;
                    if self.acked < self.shared.route().epoch {
                        self.ack().await;
                    }
                }
                _ = watchdog.tick() => {
                    let ok = self.shared.gate.lease_ok();
                    if std::mem::replace(&mut was_ok, ok) != ok {
                        if ok {
                            tracing::info!(cluster = %cluster, "control plane reachable again: traffic flows");
                        } else {
                            tracing::error!(cluster = %cluster, lease = ?self.shared.opts.lease, "control plane unreachable for longer than the lease: no statement is sent anywhere until it is back");
                        }
                    }
                }
            }
        }
    }

    async fn heartbeat(&mut self) {
        let sent = Instant::now();
        let state = if !self.shared.gate.lease_ok() {
            "fenced"
        } else if self.shared.route().hold {
            "held"
        } else {
            "serving"
        };
        let mut stats = crate::metrics::json(&self.shared);
        stats["shadow"] = self.shared.shadow.summary(&self.shared.metrics);
        // A heartbeat slower than the lease is no use: give up on it and try again.
        let beat = tokio::time::timeout(self.shared.opts.lease, self.db.proxy_heartbeat(self.id, state, &stats)).await;
        match beat.unwrap_or_else(|_| Err(dmf_db::Error::Conflict("heartbeat timed out".into()))) {
            Ok(true) => self.shared.gate.extend_lease(sent),
            Ok(false) => {
                tracing::warn!(cluster = %self.shared.opts.cluster, proxy = %self.id, "registration vanished from the control plane; registering again");
                if let Ok(c) = Control::register(self.db.clone(), self.id, self.shared.clone()).await {
                    self.acked = c.acked;
                }
            }
            Err(e) => tracing::warn!(cluster = %self.shared.opts.cluster, error = %e, "heartbeat failed"),
        }
    }

    async fn reload(&mut self) {
        let poll = tokio::time::timeout(self.shared.opts.lease, self.db.route(&self.shared.opts.cluster)).await;
        let row = match poll.unwrap_or_else(|_| Err(dmf_db::Error::Conflict("route poll timed out".into()))) {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::error!(cluster = %self.shared.opts.cluster, "the cluster's route was removed from the control plane; keeping the last one");
                return;
            }
            Err(e) => {
                tracing::warn!(cluster = %self.shared.opts.cluster, error = %e, "route poll failed");
                return;
            }
        };
        let current = self.shared.route();
        if row.route_epoch as u64 <= current.epoch {
            if self.acked < current.epoch {
                self.ack().await;
            }
            return;
        }
        let route = match Route::from_row(&row, Some(&current)) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::error!(cluster = %self.shared.opts.cluster, epoch = row.route_epoch, error = %e, "route cannot be applied; keeping the last one");
                return;
            }
        };
        self.apply(route).await;
    }

    async fn apply(&mut self, route: Arc<Route>) {
        let cluster = self.shared.opts.cluster.clone();
        let epoch = route.epoch;
        let releases = !route.hold && self.shared.route().hold;
        self.released_stall_us = None;
        if route.hold {
            if !self.shared.route().hold {
                self.shared.metrics.hold_longest_us.store(0, std::sync::atomic::Ordering::Relaxed);
            }
            // the hold is set before the route is published (Gate::publish): a session that got
            // past it is counted in flight and is waited for below
            self.shared.set_route(route.clone());
            let started = Instant::now();
            let deadline = started + route.hold_deadline;
            // keep heartbeating through a long drain: the lease must not lapse while we wait
            let beat_every = (self.shared.opts.lease / 3).max(Duration::from_millis(50));
            let mut last_beat = Instant::now();
            while self.shared.gate.in_flight() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_micros(500)).await;
                if last_beat.elapsed() >= beat_every {
                    self.heartbeat().await;
                    last_beat = Instant::now();
                }
            }
            let left = self.shared.gate.in_flight();
            if left > 0 {
                tracing::warn!(cluster = %cluster, epoch, sessions = left, deadline = ?route.hold_deadline, "hold deadline passed: ending the transactions still in flight");
                self.shared.registry.raise(crate::frontend::signal::KILL, true);
                let grace = Instant::now() + Duration::from_secs(2);
                while self.shared.gate.in_flight() > 0 && Instant::now() < grace {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            // Sessions that connected after the route announced the next primary have no backend
            // opened ahead: they connect at the move. Opening one for them here would race the
            // sessions already taking theirs (`Session::prepare_move`) and open a second backend
            // for those, in the middle of the hold.
            tracing::info!(cluster = %cluster, epoch, drained_in_ms = started.elapsed().as_millis() as u64, "holding new transactions");
        } else {
            // the hold is lifted before the route is published: a session woken by the new epoch
            // finds it lifted
            self.shared.set_route(route.clone());
            if releases {
                self.released_stall_us = Some(self.longest_stall().await);
            }
            // backends opened ahead of a move that is not happening are closed
            let next = route.next_primary.as_ref().map(|n| n.dsn.clone());
            for s in self.shared.registry.entries() {
                let mut spare = lock(&s.spare);
                if spare.as_ref().is_some_and(|b| b.endpoint().dsn != route.primary.dsn && Some(&b.endpoint().dsn) != next.as_ref()) {
                    *spare = None;
                }
            }
            tracing::info!(cluster = %cluster, epoch, primary = %route.primary.label(), read = %route.read.label(), mode = ?route.mode, "route applied");
            // a flip announces the next primary before its hold: open and warm a backend there for
            // every session now, and acknowledge once they are ready (or the wait is over), so
            // that the hold costs no connection and the first transactions there find warm caches.
            // The acknowledgement names every user this proxy could not log in as there: the flip
            // does not move clients to a primary that would refuse them.
            self.cannot_login = match route.next_primary.clone().filter(|n| n.dsn != route.primary.dsn) {
                Some(next) => self.prove_logins(next).await,
                None => Vec::new(),
            };
            if !self.cannot_login.is_empty() {
                tracing::warn!(cluster = %cluster, epoch, users = ?self.cannot_login, "cannot log in to the announced next primary as every user with sessions here");
            }
        }
        self.changed_at = Instant::now();
        // listening before the acknowledgement: the worker's next change (a hold, after it saw
        // every acknowledgement of an announcement) is then notified, not left to the poll
        self.listen_if_moving().await;
        self.ack().await;
    }

    /// Whether the route is being moved: a read split or a shadow, an announced next primary, a
    /// hold, or a change seen (or the start) within `listen_after_change` (15 s at least). Only
    /// then does this proxy listen.
    fn in_motion(&self) -> bool {
        let route = self.shared.route();
        route.mode != super::Mode::Primary || route.hold || route.next_primary.is_some() || route.shadow.is_some()
            || self.changed_at.elapsed() < self.shared.opts.listen_after_change.max(LISTEN_AFTER_CHANGE_AT_LEAST)
    }

    async fn listen_if_moving(&mut self) {
        if self.listener.is_none() && self.in_motion() {
            self.listener = listen(&self.db, &self.shared.opts.cluster).await;
            if self.listener.is_some() {
                tracing::debug!(cluster = %self.shared.opts.cluster, "route in motion: listening for its changes");
                // a change made before the listener was up is read now (its apply finds the
                // listener up: no deeper)
                Box::pin(self.reload()).await;
            }
        }
    }

    /// Open every session's backend on the primary the route is about to point at, warmed (see
    /// `warm.sql`): at release, sessions move without connecting. Returns the users with sessions
    /// here that no backend could log in as there within `SPARES_WAIT`, each with the reason.
    async fn prove_logins(&self, next: Arc<crate::backend::Endpoint>) -> Vec<String> {
        let sessions = self.shared.registry.entries();
        let mut users: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut opening = tokio::task::JoinSet::new();
        for s in sessions {
            let user = s.params.get("user").unwrap_or_default().to_string();
            if lock(&s.spare).as_ref().is_some_and(|b| b.endpoint().dsn == next.dsn) {
                users.insert(user, None);
                continue;
            }
            users.entry(user.clone()).or_insert_with(|| Some(format!("user \"{user}\": no login finished within {SPARES_WAIT:?}")));
            let (shared, next) = (self.shared.clone(), next.clone());
            opening.spawn(async move {
                let opened = match crate::frontend::connect_as(next.clone(), &shared, &s.params, crate::frontend::auth::Proof::Password, false).await {
                    Ok(mut b) => {
                        if let Err(e) = b.simple_query(WARM_SQL).await {
                            tracing::debug!(cluster = %shared.opts.cluster, to = %next.label(), error = %e, "could not warm a backend opened ahead of the move");
                        }
                        *lock(&s.spare) = Some(b);
                        Ok(())
                    }
                    Err(e) => {
                        tracing::debug!(cluster = %shared.opts.cluster, to = %next.label(), error = %e, "could not open a backend ahead of the move");
                        Err(e.to_string())
                    }
                };
                (user, opened)
            });
        }
        let _ = tokio::time::timeout(SPARES_WAIT, async {
            while let Some(done) = opening.join_next().await {
                match done {
                    Ok((user, Ok(()))) => {
                        users.insert(user, None);
                    }
                    Ok((user, Err(e))) => {
                        if let Some(Some(why)) = users.get_mut(&user) {
                            *why = format!("user \"{user}\": {e}");
                        }
                    }
                    Err(_) => {}
                }
            }
        })
        .await;
        users.into_values().flatten().collect()
    }

    /// After a release: once the transactions it held run again (on the new primary, if the
    /// route moved), the longest any of them waited. Bounded: a session still moving after
    /// `STALL_WAIT` is not waited for (its stall shows in `hold_longest_us` later).
    async fn longest_stall(&self) -> u64 {
        let metrics = &self.shared.metrics;
        let until = Instant::now() + STALL_WAIT;
        while metrics.held_now.load(std::sync::atomic::Ordering::Relaxed) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        metrics.hold_longest_us.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn ack(&mut self) {
        let route = self.shared.route();
        let ack = Ack {
            epoch: route.epoch as i64,
            held: route.hold,
            backend_pids: self.shared.primary_backend_pids(),
            drained: self.shared.gate.in_flight() == 0,
            cannot_login: self.cannot_login.clone(),
            hold_longest_us: self.released_stall_us.map(|us| us as i64),
        };
        match self.db.proxy_applied(self.id, &ack).await {
            Ok(()) => self.acked = route.epoch,
            Err(e) => tracing::warn!(cluster = %self.shared.opts.cluster, epoch = route.epoch, error = %e, "acknowledgement failed; retried with the next heartbeat"),
        }
    }
}

/// How long the acknowledgement of a release waits for the held transactions to run again.
const STALL_WAIT: Duration = Duration::from_millis(500);

/// How long the acknowledgement of an announced next primary waits for the backends opened there.
const SPARES_WAIT: Duration = Duration::from_secs(2);

/// Loads the catalog entries of the database's busiest tables and indexes into a fresh backend.
const WARM_SQL: &str = include_str!("warm.sql");

/// How often a proxy reads its route when it is at rest (not listened to), and when it is listened
/// to anyway (a connection that died without a word loses notifications); at the poll tick after
/// it, so every 4 to 5 s. Under the waits of a hold's wake and a flip's announcement (8 s), so
/// that a proxy at rest answers them.
const QUIET_POLL: Duration = Duration::from_secs(4);

/// The least time a proxy listens after a change it saw: a hold's wake waits up to 8 s for every
/// proxy, and proxies at rest answer it up to 5 s apart; the first to answer must still be
/// listening when the hold comes.
pub const LISTEN_AFTER_CHANGE_AT_LEAST: Duration = Duration::from_secs(15);

async fn listen(db: &Db, cluster: &str) -> Option<PgListener> {
    let channel = dmf_db::route::channel(db, cluster).await.ok()?;
    let mut l = PgListener::connect_with(db.pool()).await.ok()?;
    l.listen(&channel).await.ok()?;
    Some(l)
}

/// The next notification's payload; `Ok(None)` when the listener's connection was lost (it
/// reconnects on the next call, and what was announced meanwhile is lost: the caller reads the
/// route).
async fn recv(listener: &mut Option<PgListener>) -> Result<Option<String>, sqlx::Error> {
    match listener {
        Some(l) => l.try_recv().await.map(|n| n.map(|n| n.payload().to_string())),
        None => std::future::pending().await,
    }
}
