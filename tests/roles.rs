//! Applications log in as their own roles: the target gets the source's roles (attributes,
//! memberships, passwords), owners, grants and default privileges, and the flip never moves a
//! client to a primary that would refuse it.

mod common;

use std::time::Duration;

use common::*;

/// An application role with grants on some tables and not others, a group, a column grant, a
/// SECURITY DEFINER function owned by a third role, and default privileges.
const ROLES: &str = "
CREATE ROLE owner_role NOLOGIN;
CREATE ROLE definer NOLOGIN;
CREATE ROLE readers NOLOGIN;
CREATE ROLE app LOGIN PASSWORD 'app-pw' CONNECTION LIMIT 40 IN ROLE readers;
CREATE ROLE auditor LOGIN PASSWORD 'not-readable-anyway';
CREATE ROLE legacy LOGIN PASSWORD 'legacy-pw';
ALTER TABLE pgbench_accounts OWNER TO owner_role;
ALTER TABLE pgbench_branches OWNER TO owner_role;
ALTER TABLE pgbench_tellers OWNER TO owner_role;
ALTER TABLE pgbench_history OWNER TO owner_role;
GRANT SELECT, UPDATE ON pgbench_accounts, pgbench_branches, pgbench_tellers TO app;
GRANT INSERT ON pgbench_history TO app;
GRANT SELECT ON pgbench_history TO auditor;
CREATE TABLE secrets (id int PRIMARY KEY, s text);
INSERT INTO secrets SELECT g, md5(g::text) FROM generate_series(1, 10) g;
ALTER TABLE secrets OWNER TO owner_role;
GRANT SELECT (id) ON secrets TO readers;
GRANT SELECT ON secrets TO definer;
CREATE FUNCTION secret_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = public AS 'SELECT count(*) FROM secrets';
ALTER FUNCTION secret_count() OWNER TO definer;
REVOKE EXECUTE ON FUNCTION secret_count() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION secret_count() TO app;
ALTER DEFAULT PRIVILEGES FOR ROLE owner_role IN SCHEMA public GRANT SELECT ON TABLES TO readers;
";

/// Everything about roles and privileges that must be the same on both sides, as text.
const CATALOG: &str = "
SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
  SELECT 'role ' || rolname || ' ' || rolsuper || rolinherit || rolcreaterole || rolcreatedb || rolcanlogin || rolreplication || rolbypassrls || ' ' || rolconnlimit AS line
    FROM pg_roles WHERE rolname IN ('owner_role', 'definer', 'readers', 'app', 'auditor')
  UNION ALL SELECT 'member ' || m.rolname || ' of ' || g.rolname || ' ' || am.admin_option
    FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
    WHERE m.rolname IN ('owner_role', 'definer', 'readers', 'app', 'auditor')
  UNION ALL SELECT 'table ' || relname || ' owner ' || relowner::regrole || ' acl ' || coalesce(relacl::text, '-')
    FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
  UNION ALL SELECT 'column ' || attrelid::regclass || '.' || attname || ' acl ' || attacl::text
    FROM pg_attribute WHERE attacl IS NOT NULL AND attrelid::regclass::text NOT LIKE 'pg_%'
  UNION ALL SELECT 'function ' || proname || ' owner ' || proowner::regrole || ' definer ' || prosecdef || ' acl ' || coalesce(proacl::text, '-')
    FROM pg_proc WHERE pronamespace = 'public'::regnamespace
  UNION ALL SELECT 'default ' || defaclrole::regrole || ' ' || defaclnamespace::regnamespace || ' ' || defaclobjtype::text || ' ' || defaclacl::text
    FROM pg_default_acl
) lines";

fn as_user(dsn: &str, user: &str, password: &str) -> String {
    dsn.replacen("postgres://postgres@", &format!("postgres://{user}:{password}@"), 1)
}

/// TPC-B as `app` through the proxy, paced, for `seconds`.
fn load(env: &Env, name: &str, proxy: &ProxyProc, seconds: u32) -> Bench {
    let dsn = proxy.dsn_as("app", "app-pw", "app");
    Bench::start(env.path(), name, &dsn, &["-c", "4", "-j", "1", "-T", &seconds.to_string(), "-R", "100", "-P", "5"])
}

fn finished(env: &Env, name: &str, bench: Bench) -> i64 {
    let r = bench.wait();
    assert!(
        r.ok && r.failed == 0 && r.processed > 0,
        "{name}: pgbench as app failed or had failed transactions:\n{}\n{}",
        r.report,
        env.cp_query("SELECT phase || ' ' || coalesce(last_error, '') FROM dmf.migrations")
    );
    r.processed
}

#[test]
fn the_application_role_logs_in_before_during_and_after_the_flip_with_the_same_privileges() {
    let env = Env::new("roles");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE app").expect("create app");
    let source = src.dsn("app");
    run_ok(std::process::Command::new(pgbench_bin()).args(["-i", "-s", "1", "-q", "-d"]).arg(&source));
    psql(&source, "ALTER TABLE pgbench_history REPLICA IDENTITY FULL");
    psql(&source, ROLES);
    let out = env.enqueue(
        "fleet.toml",
        &format!(
            "[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{source}\"\npause_before = [\"flipping\"]\n\n[cluster.roles.auditor]\npassword_env = \"AUDITOR_PW\"\n"
        ),
    );
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    // the proxy logs clients in to backends with the passwords of its users file
    let users = env.path().join("users.txt");
    std::fs::write(&users, "\"app\" \"app-pw\"\n\"legacy\" \"legacy-pw\"\n").expect("users file");
    let proxy = env.proxy("proxy", "app", &["--users-file", users.to_str().expect("path")]);
    let _scheduler = env.scheduler();
    let worker = env.worker_env(
        "w1",
        &["--audit-window-s", "2", "--shadow-reads-s", "2", "--soak-s", "600", "--flip-max-lag-ms", "100", "--flip-max-attempts", "5"],
        &[("AUDITOR_PW", "auditor-pw")],
    );
    env.wait_for("paused before the flip", Duration::from_secs(180), |cs| {
        cs.first().is_some_and(|c| (c["phase"] == "flipping" && c["paused"] == true) || matches!(c["phase"].as_str(), Some("aborted" | "failed")))
    });
    assert_eq!(env.phase_of("app"), "flipping", "{}", worker.log_tail());
    let target = env.target_dsn("app");
    assert_eq!(psql(&target, CATALOG), psql(&source, CATALOG), "roles, memberships, owners, ACLs and default ACLs on the target");
    // passwords: app's verifier was copied; auditor's came from the worker's environment
    assert_eq!(try_psql(&as_user(&target, "app", "app-pw"), "SELECT current_user"), Ok("app".into()));
    assert!(try_psql(&as_user(&target, "app", "wrong"), "SELECT 1").is_err(), "a wrong password on the target");
    assert_eq!(try_psql(&as_user(&target, "auditor", "auditor-pw"), "SELECT count(*) >= 0 FROM pgbench_history"), Ok("t".into()));
    // legacy logs in but nothing in the database names it: it is not made on the target
    assert_eq!(psql(&target, "SELECT count(*) FROM pg_roles WHERE rolname = 'legacy'"), "0");

    // a session as legacy through the proxy: the proxy cannot log in to the target as legacy, so
    // the flip goes back to shadow reads naming it, and nobody is cut off
    let legacy = std::process::Command::new(dmf_activities::providers::local::program("psql").expect("psql"))
        .args(["-X", "-q", "-d", &proxy.dsn_as("legacy", "legacy-pw", "app"), "-c", "SELECT pg_sleep(25)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql as legacy");
    std::thread::sleep(Duration::from_millis(500));
    let bench = load(&env, "flip", &proxy, 50);
    let out = env.dmf(&["resume", "app"]);
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("a flip attempt undone", Duration::from_secs(60), |_| !env.state("app").flip.undone.is_empty());
    let undone = env.state("app").flip.undone;
    assert!(undone[0].reason.contains("cannot log in to the target as user \"legacy\""), "the reason names the user: {undone:?}");
    // dmf status says why the flip went back, and the undone run is on record
    let status = env.dmf_json(&["status", "app", "--json"]);
    let why = &status["clusters"][0]["why"];
    assert!(why["because"].as_str().is_some_and(|b| b.contains("cannot log in to the target as user \"legacy\"")), "{why}");
    assert!(why["action"].as_str().is_some_and(|a| !a.is_empty()), "{why}");
    let report = env.dmf_json(&["report", "app", "--json"]);
    assert_eq!(report["cutovers"][0]["outcome"], "undone", "{report}");
    assert!(report["cutovers"][0]["reason"].as_str().is_some_and(|r| r.contains("legacy")), "{report}");
    let legacy = legacy.wait_with_output().expect("legacy session");
    assert!(legacy.status.success(), "the legacy session was not cut off: {}", String::from_utf8_lossy(&legacy.stderr));
    // without a legacy session the next attempt flips (pause_before asks again before it)
    env.wait_for("paused before the next flip", Duration::from_secs(60), |cs| cs.first().is_some_and(|c| c["phase"] == "flipping" && c["paused"] == true));
    let out = env.dmf(&["resume", "app"]);
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("flipped", Duration::from_secs(120), |cs| cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("flipped" | "failed" | "aborted"))));
    assert_eq!(env.phase_of("app"), "flipped", "{}", worker.log_tail());
    let first = finished(&env, "load across the flip", bench);
    assert_eq!(psql(&target, "SELECT count(*) FROM pgbench_history").parse::<i64>().expect("count"), first, "every transaction of app is on the target");

    // after the flip, through the proxy, app has exactly its privileges on the target
    let via = proxy.dsn_as("app", "app-pw", "app");
    let target_port = target.rsplit(':').next().and_then(|p| p.split('/').next()).expect("port").to_string();
    assert_eq!(try_psql(&via, "SELECT inet_server_port()::text"), Ok(target_port));
    let refused = try_psql(&via, "SELECT s FROM secrets");
    assert!(refused.as_ref().is_err_and(|e| e.contains("permission denied for table secrets")), "app reads secrets on the target: {refused:?}");
    assert_eq!(try_psql(&via, "SELECT count(id) FROM secrets"), Ok("10".into()), "the column grant through readers");
    assert_eq!(try_psql(&via, "SELECT secret_count()"), Ok("10".into()), "the SECURITY DEFINER function runs as its owner");
    assert_eq!(psql(&target, CATALOG), psql(&source, CATALOG), "nothing about roles changed with the flip");

    // the rollback, under load as app; app keeps logging in afterwards
    let bench = load(&env, "rollback", &proxy, 20);
    std::thread::sleep(Duration::from_secs(3));
    let out = env.dmf(&["rollback", "app"]);
    assert!(out.status.success(), "dmf rollback: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("rolled back", Duration::from_secs(90), |cs| cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("rolled_back" | "failed"))));
    assert_eq!(env.phase_of("app"), "rolled_back", "{}", worker.log_tail());
    let second = finished(&env, "load across the rollback", bench);
    assert_eq!(psql(&source, "SELECT count(*) FROM pgbench_history").parse::<i64>().expect("count"), first + second, "every transaction of both runs is on the source");
    let refused = try_psql(&via, "SELECT s FROM secrets");
    assert!(refused.as_ref().is_err_and(|e| e.contains("permission denied for table secrets")), "app reads secrets on the source: {refused:?}");
    assert_eq!(try_psql(&via, "SELECT current_user"), Ok("app".into()));
}
