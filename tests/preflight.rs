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

/// Where dmf's source role cannot read passwords (it is not a superuser, as on RDS), every login
/// role the database names needs a password reference in the manifest, and one that resolves.
#[test]
fn preflight_names_every_login_role_without_a_password_dmf_can_give_the_target() {
    let env = Env::new("preflight-roles");
    let src = env.source("src");
    for db in ["app1", "app2"] {
        src.psql("postgres", &format!("CREATE DATABASE {db}")).expect("create database");
    }
    src.psql("postgres", "CREATE ROLE migrator LOGIN REPLICATION PASSWORD 'migrator-pw'; CREATE ROLE app LOGIN PASSWORD 'app-pw'; CREATE ROLE readers NOLOGIN")
        .expect("roles");
    for db in ["app1", "app2"] {
        psql(
            &src.dsn(db),
            &format!("GRANT CREATE ON DATABASE {db} TO migrator; CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO migrator; \
             GRANT SELECT ON t TO app; GRANT SELECT ON t TO readers"),
        );
    }
    let as_migrator = |db: &str| src.dsn(db).replacen("postgres://postgres@", "postgres://migrator:migrator-pw@", 1);
    let manifest = format!(
        "[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app1\"\nsource = \"{}\"\n\n[[cluster]]\nname = \"app2\"\nsource = \"{}\"\n\n[cluster.roles.app]\npassword_env = \"DMF_TEST_UNSET_APP_PW\"\n",
        as_migrator("app1"),
        as_migrator("app2")
    );
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let _worker = env.worker("w1", &[]);
    env.wait_for("preflight to abort both", Duration::from_secs(60), |cs| cs.len() == 2 && cs.iter().all(|c| c["phase"] == "aborted"));
    let status = env.dmf_json(&["status", "--json"]);
    let error_of = |name: &str| {
        let c = status["clusters"].as_array().and_then(|cs| cs.iter().find(|c| c["cluster"] == name)).expect("cluster").clone();
        assert_eq!(c["abort_reason"], "preflight_failed", "{c}");
        c["last_error"].as_str().unwrap_or_default().to_string()
    };
    // migrator logs in too: it owns the table, so the target needs it
    let e = error_of("app1");
    // (app_client: the harness's application role, granted CREATE on public in every test database)
    assert!(e.contains("the login roles app, app_client, migrator:") && e.contains("[cluster.roles.<name>]"), "app needs a reference: {e}");
    assert!(!e.contains("readers"), "a role that does not log in needs no password: {e}");
    let e = error_of("app2");
    assert!(e.contains("role app: password_env DMF_TEST_UNSET_APP_PW: the worker's environment has no such variable"), "{e}");
    assert!(!e.contains("app-pw") && !e.contains("migrator-pw"), "no password in the error: {e}");
    for db in ["app1", "app2"] {
        assert_eq!(leftovers(&src.dsn(db)), CLEAN);
    }
}
