//! Moving a session between backends: following a new route epoch at a boundary, restoring the
//! session's settings and SQL-level prepared statements on the new primary (ahead of time on a
//! spare while the session is parked at a hold), and closing a session whose state cannot move.

use std::sync::Arc;
use std::time::Duration;

use super::{Refusal, Session};
use crate::backend::Backend;
use crate::metrics::add;
use crate::router::{Mode, Route};
use crate::{lock, CancelTarget, Error};

const SESSION_STATE_SQL: &str = include_str!("session_state.sql");

/// State a session holds on its backend (see `session_state.sql`).
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct HeldState {
    temp_tables: i64,
    advisory_locks: i64,
    listen: i64,
    hold_cursors: i64,
    settings: Vec<(String, String)>,
    prepared: Vec<String>,
}

impl HeldState {
    /// What the session holds that cannot move to another server, in words; None if nothing.
    fn unmovable(&self) -> Option<String> {
        let parts: Vec<String> = [
            (self.temp_tables, "temporary table"),
            (self.advisory_locks, "session advisory lock"),
            (self.listen, "LISTEN channel"),
            (self.hold_cursors, "WITH HOLD cursor"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}{}", if *n == 1 { "" } else { "s" }))
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

impl Session {
    /// The state this session holds on its primary.
    pub(super) async fn held_state(&mut self) -> Result<HeldState, Error> {
        let rows = self.primary.simple_query(SESSION_STATE_SQL).await?;
        let text = rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();
        serde_json::from_str(&text).map_err(|e| Error::backend(&self.primary.endpoint().label(), format!("session state: {e}")))
    }

    /// Apply a new route epoch at a boundary: move to a new primary, drop a stale read backend.
    pub(super) async fn follow(&mut self, route: Arc<Route>) -> Result<(), Error> {
        let previous = std::mem::replace(&mut self.route, route);
        if previous.mode != Mode::SplitReads && self.route.mode == Mode::SplitReads {
            // whatever this session wrote before reads were split must be visible to its reads
            self.wrote = true;
        }
        if self.read.as_ref().is_some_and(|r| r.endpoint().dsn != self.route.read.dsn) || self.route.mode != Mode::SplitReads {
            if let Some(r) = self.read.take() {
                r.terminate(Duration::from_millis(100)).await;
            }
        }
        if self.primary.endpoint().dsn != self.route.primary.dsn {
            self.move_primary().await?;
        }
        // a backend prepared for a move that did not happen (the flip was undone) is closed
        if let Some(r) = self.restored.take() {
            r.terminate(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// A spare backend, on this session's relay thread: spares are opened by the control task,
    /// which runs on thread 0. None (and a warning) if its socket cannot move.
    fn adopt(&self, b: Backend) -> Option<Backend> {
        b.rehome(0, self.relay.index)
            .map_err(|e| tracing::warn!(cluster = %self.shared.opts.cluster, session = self.id, error = %e, "backend opened ahead of the move closed; the move opens another"))
            .ok()
    }

    /// Parked at a hold that announces the next primary: once the proxy has opened this session's
    /// backend there, check the session's state and restore it on that backend now. The session
    /// is parked at a transaction boundary, so its state cannot change before the release.
    pub(super) async fn prepare_move(&mut self, route: &Route) {
        let Some(next) = route.next_primary.as_ref().filter(|n| n.dsn != self.primary.endpoint().dsn) else { return };
        let Some(b) = lock(&self.spare).take_if(|b| b.endpoint().dsn == next.dsn) else { return };
        let Some(mut b) = self.adopt(b) else { return };
        match self.held_state().await {
            Ok(state) if state.unmovable().is_none() => match replay(&mut b, &state).await {
                Ok(()) => self.restored = Some(b),
                Err(e) => tracing::debug!(cluster = %self.shared.opts.cluster, session = self.id, to = %next.label(), error = %e, "backend opened ahead is unusable; the move opens another"),
            },
            // the move itself reports (and closes the session)
            _ => {}
        }
    }

    /// Move the session to the route's primary: check it holds nothing that cannot move, open the
    /// new backend, replay settings and SQL-level prepared statements. Protocol-level prepared
    /// statements follow lazily (`ensure_prepared`).
    async fn move_primary(&mut self) -> Result<(), Error> {
        let cluster = self.shared.opts.cluster.clone();
        let from = self.primary.endpoint().label();
        let to = self.route.primary.label();
        if let Some(restored) = self.restored.take().filter(|b| b.endpoint().dsn == self.route.primary.dsn) {
            self.swap_primary(restored).await;
            tracing::debug!(cluster = %cluster, session = self.id, from = %from, to = %to, "session moved onto the backend prepared during the hold");
            return Ok(());
        }
        let state = match self.held_state().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(cluster = %cluster, session = self.id, from = %from, error = %e, "old primary did not report the session's state; moving without settings");
                HeldState::default()
            }
        };
        if let Some(what) = state.unmovable() {
            add(&self.shared.metrics.sessions_closed_unmovable, 1);
            tracing::info!(cluster = %cluster, session = self.id, from = %from, to = %to, holds = %what, "session closed at the move: its state cannot move");
            self.refuse(Refusal::cannot_move(&to, &what)).await;
            return Err(Error::Closed(format!("holds state that cannot move to {to}: {what}")));
        }
        // a backend opened ahead of the move saves the connection on the critical path
        let spare = lock(&self.spare).take().filter(|b| b.endpoint().dsn == self.route.primary.dsn).and_then(|b| self.adopt(b));
        let mut next = match spare {
            Some(mut b) => match replay(&mut b, &state).await {
                Ok(()) => Some(b),
                Err(e) => {
                    tracing::debug!(cluster = %cluster, session = self.id, to = %to, error = %e, "backend opened ahead is unusable; opening another");
                    None
                }
            },
            None => None,
        };
        if next.is_none() {
            let mut b = match crate::frontend::connect_as(self.route.primary.clone(), &self.shared, &self.params, crate::frontend::auth::Proof::Password, false).await {
                Ok(b) => b,
                Err(e) => {
                    self.refuse(Refusal::new_primary_unreachable(&to, &e)).await;
                    return Err(e);
                }
            };
            if let Err(e) = replay(&mut b, &state).await {
                self.refuse(Refusal::not_restored(&to, &e)).await;
                return Err(e);
            }
            next = Some(b);
        }
        let Some(next) = next else { return Err(Error::Closed(format!("no backend on {to}"))) };
        self.swap_primary(next).await;
        tracing::debug!(cluster = %cluster, session = self.id, from = %from, to = %to, settings = state.settings.len(), "session moved");
        Ok(())
    }

    /// Make `next` the session's primary backend and close the old one.
    async fn swap_primary(&mut self, next: Backend) {
        let old = std::mem::replace(&mut self.primary, next);
        old.terminate(Duration::from_millis(100)).await;
        *lock(&self.cancel) = Some(CancelTarget::of(&self.primary));
        add(&self.shared.metrics.sessions_moved, 1);
    }
}

/// Restore settings and SQL-level prepared statements on a fresh backend.
pub(super) async fn replay(be: &mut Backend, state: &HeldState) -> Result<(), Error> {
    if !state.settings.is_empty() {
        let calls: Vec<String> = state.settings.iter().map(|(k, v)| format!("set_config({}, {}, false)", literal(k), literal(v))).collect();
        be.simple_query(&format!("SELECT {}", calls.join(", "))).await?;
    }
    for stmt in &state.prepared {
        be.simple_query(stmt).await?;
    }
    Ok(())
}

/// A SQL string literal (standard_conforming_strings is on by default since 9.1; E'' is used so
/// backslashes are safe either way).
fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_that_cannot_move_is_named() {
        let s = HeldState { temp_tables: 2, listen: 1, ..Default::default() };
        assert_eq!(s.unmovable().as_deref(), Some("2 temporary tables, 1 LISTEN channel"));
        assert_eq!(HeldState::default().unmovable(), None);
        assert_eq!(literal("it's a \\ test"), "E'it''s a \\\\ test'");
    }
}
