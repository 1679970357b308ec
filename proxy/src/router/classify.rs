//! Statement classification with PostgreSQL's own grammar (libpg_query): may a statement run on
//! the read endpoint, does it change session state, may it be mirrored.

use pg_query::protobuf::node::Node as N;
use pg_query::NodeRef;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Only SELECTs with no locking clause, no data-modifying CTE, no SELECT INTO and no call
    /// of a function known to write or to touch session state.
    Read,
    /// INSERT, UPDATE, DELETE, MERGE (one statement): mirrored, never sent to the read endpoint.
    Write,
    /// SET / RESET / DISCARD and friends: the session's state changes.
    Session,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT ...
    Transaction,
    /// Everything else (DDL, COPY, CALL, DO, several statements, unparsable text).
    Other,
}

/// Functions that write, take session-level locks or change session state even inside a SELECT.
const SIDE_EFFECTS: &[&str] = &[
    "nextval", "setval", "set_config", "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all",
    "pg_advisory_xact_lock", "pg_try_advisory_xact_lock", "pg_advisory_xact_lock_shared", "pg_notify",
    "txid_current", "pg_current_xact_id", "lo_create", "lo_import", "lo_unlink", "lo_from_bytea", "lo_put",
    "lowrite", "lo_open", "pg_switch_wal", "pg_create_restore_point", "pg_terminate_backend", "pg_cancel_backend",
    "pg_reload_conf", "pg_rotate_logfile", "pg_create_logical_replication_slot", "pg_create_physical_replication_slot",
    "pg_drop_replication_slot", "pg_replication_origin_create", "dblink_exec", "dblink", "pg_sleep",
];

pub fn classify(sql: &str) -> Class {
    let Ok(parsed) = pg_query::parse(sql) else { return Class::Other };
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() != 1 {
        return Class::Other;
    }
    let Some(node) = stmts[0].stmt.as_ref().and_then(|s| s.node.as_ref()) else { return Class::Other };
    match node {
        N::SelectStmt(s) => {
            if s.into_clause.is_some() || writes_anywhere(&parsed) || calls_side_effect(&parsed) {
                return Class::Other;
            }
            Class::Read
        }
        N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) | N::MergeStmt(_) => Class::Write,
        N::VariableSetStmt(v) if v.is_local => Class::Other,
        N::VariableSetStmt(_) | N::DiscardStmt(_) => Class::Session,
        N::TransactionStmt(_) => Class::Transaction,
        _ => Class::Other,
    }
}

/// Any data-modifying node or row-locking clause, at any depth (CTEs, subqueries).
fn writes_anywhere(parsed: &pg_query::ParseResult) -> bool {
    parsed.protobuf.nodes().into_iter().any(|(n, ..)| match n {
        NodeRef::InsertStmt(_) | NodeRef::UpdateStmt(_) | NodeRef::DeleteStmt(_) | NodeRef::MergeStmt(_) => true,
        NodeRef::SelectStmt(s) => !s.locking_clause.is_empty() || s.into_clause.is_some(),
        _ => false,
    })
}

fn calls_side_effect(parsed: &pg_query::ParseResult) -> bool {
    parsed.functions().iter().any(|f| {
        let name = f.rsplit('.').next().unwrap_or(f).to_ascii_lowercase();
        SIDE_EFFECTS.contains(&name.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_selects_may_go_to_the_read_endpoint() {
        assert_eq!(classify("SELECT abalance FROM pgbench_accounts WHERE aid = $1"), Class::Read);
        assert_eq!(classify("select 1 union select 2"), Class::Read);
        assert_eq!(classify("WITH x AS (SELECT 1) SELECT * FROM x"), Class::Read);
        assert_eq!(classify("SELECT * FROM t FOR UPDATE"), Class::Other);
        assert_eq!(classify("SELECT * FROM (SELECT * FROM t FOR SHARE) s"), Class::Other);
        assert_eq!(classify("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"), Class::Other);
        assert_eq!(classify("SELECT * INTO new_t FROM t"), Class::Other);
        assert_eq!(classify("SELECT nextval('s')"), Class::Other);
        assert_eq!(classify("select pg_catalog.set_config('a.b', '1', false)"), Class::Other);
        assert_eq!(classify("SELECT pg_advisory_lock(1)"), Class::Other);
        assert_eq!(classify("SELECT 1; SELECT 2"), Class::Other);
        assert_eq!(classify("SELEC 1"), Class::Other);
        // a comment that looks like a write changes nothing
        assert_eq!(classify("/* UPDATE t SET x = 1 */ SELECT 1"), Class::Read);
        // a string that looks like a write changes nothing either
        assert_eq!(classify("SELECT 'DELETE FROM t'"), Class::Read);
    }

    #[test]
    fn writes_session_and_transaction_statements_are_told_apart() {
        assert_eq!(classify("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3"), Class::Write);
        assert_eq!(classify("INSERT INTO t VALUES (1) RETURNING id"), Class::Write);
        assert_eq!(classify("SET search_path = app"), Class::Session);
        assert_eq!(classify("RESET ALL"), Class::Session);
        assert_eq!(classify("DISCARD ALL"), Class::Session);
        assert_eq!(classify("SET LOCAL work_mem = '1MB'"), Class::Other);
        assert_eq!(classify("BEGIN"), Class::Transaction);
        assert_eq!(classify("COMMIT"), Class::Transaction);
        assert_eq!(classify("CREATE TABLE x (a int)"), Class::Other);
    }
}
