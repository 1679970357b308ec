//! Preflight blocks a source with a table that has neither a primary key nor a replica identity,
//! names the table, and leaves nothing behind.

mod common;

use std::time::Duration;

use common::{leftovers, psql, Env, CLEAN};
use dmf_activities::preflight::Severity;

#[test]
fn preflight_blocks_a_table_without_key_or_replica_identity_and_names_it() {
    let env = Env::new("preflight");
    let src = env.source("src");
    let dsn = env.enqueue_app(&src, "CREATE TABLE keyed (id int PRIMARY KEY); \
         CREATE TABLE event_log (at timestamptz, what text); \
         CREATE TABLE wide (a int, b text); ALTER TABLE wide REPLICA IDENTITY FULL;");
    let _scheduler = env.scheduler();
    let _worker = env.worker("w1", &[]);
    env.wait_for("preflight to abort the migration", Duration::from_secs(60), |c| c.first().is_some_and(|c| c["phase"] == "aborted"));

    let status = env.dmf_json(&["status", "app", "--json"]);
    let c = &status["clusters"][0];
    assert_eq!(c["abort_reason"], "preflight_failed", "{c}");
    let err = c["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("\"public\".\"event_log\""), "{err}");
    assert!(!err.contains("wide") && !err.contains("keyed"), "only the offending table is an error: {err}");
    let findings = env.state("app").preflight.findings;
    assert!(
        findings.iter().any(|f| f.severity == Severity::Warning && f.message.contains("REPLICA IDENTITY FULL")),
        "the FULL table is a warning: {findings:?}"
    );
    assert_eq!(leftovers(&dsn), CLEAN);
    // Updates on the offending table still work: nothing was published.
    psql(&dsn, "INSERT INTO event_log VALUES (now(), 'x'); UPDATE event_log SET what = 'y'; DELETE FROM event_log;");
}
