//! The client's named prepared statements: what the client made, and on each backend which
//! version it holds, so that a statement is prepared again on a backend that lacks it (after a
//! move, or on the read backend) and the answers to what the proxy injected are dropped.

use std::collections::HashMap;

use super::Session;
use crate::protocol::build;

/// A named prepared statement as the client made it.
pub(super) struct Statement {
    /// Which Parse of this name it is: a backend holding another generation holds a stale one.
    pub(super) generation: u64,
    /// The client's whole Parse message, replayed on a backend that lacks it.
    pub(super) parse: Vec<u8>,
    pub(super) sql: String,
}

/// The client's named statements.
#[derive(Default)]
pub(super) struct Statements {
    by_name: HashMap<String, Statement>,
    next_generation: u64,
}

impl Statements {
    pub(super) fn get(&self, name: &str) -> Option<&Statement> {
        self.by_name.get(name)
    }

    fn made(&mut self, name: &str, sql: &str, parse: &[u8]) -> (u64, bool) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let had = self.by_name.insert(name.to_string(), Statement { generation, parse: parse.to_vec(), sql: sql.to_string() }).is_some();
        (generation, had)
    }

    fn closed(&mut self, name: &str) {
        self.by_name.remove(name);
    }
}

impl Session {
    /// The backend in use already has the client's current version of this statement.
    pub(super) fn prepared_here(&self, name: &str) -> bool {
        match (self.statements.get(name), self.backend().prepared(name)) {
            (Some(st), Some(g)) => st.generation == g,
            // unknown to the client: nothing to inject, the server answers
            (None, _) => true,
            (Some(_), None) => false,
        }
    }

    /// The client made a named statement: remember it; a backend holding a stale statement of
    /// that name (closed by the client while the session was elsewhere) gets a Close first.
    pub(super) fn client_parse(&mut self, name: &str, sql: &str, bytes: &[u8]) {
        let (generation, client_had) = self.statements.made(name, sql, bytes);
        let stale = !client_had && self.backend().prepared(name).is_some();
        if stale {
            self.to_server.extend_from_slice(&build::close_statement(name));
            self.injected_answers += 1;
        }
        self.backend_mut().set_prepared(name, generation);
    }

    /// The client closed a named statement.
    pub(super) fn client_close(&mut self, name: &str) {
        self.statements.closed(name);
        self.backend_mut().forget_prepared(name);
    }

    /// Before a message that uses a named statement: make sure this backend has the client's
    /// current version of it (after a move, or on the read backend).
    pub(super) fn ensure_prepared(&mut self, name: &str) {
        let Some(st) = self.statements.get(name) else { return };
        let (generation, parse) = (st.generation, st.parse.clone());
        let be = self.backend_mut();
        let have = be.prepared(name);
        if have == Some(generation) {
            return;
        }
        be.set_prepared(name, generation);
        if have.is_some() {
            self.to_server.extend_from_slice(&build::close_statement(name));
            self.injected_answers += 1;
        }
        self.to_server.extend_from_slice(&parse);
        self.injected_answers += 1;
    }
}
