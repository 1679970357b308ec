//! The local provider on a pool of existing instances: a database per cluster, roles shared by the
//! clusters of an instance only when they agree (a conflict is a preflight error naming both
//! clusters), and an abort that leaves the instance as it was, down to the roles only the aborted
//! cluster needed, and never touches a database dmf did not make.

mod common;

use std::time::Duration;

use common::{psql, Env};

#[test]
fn clusters_share_a_pool_instance_and_an_abort_leaves_it_as_it_was() {
    let env = Env::new("pool");
    let (s1, s2) = (env.source("s1"), env.source("s2"));
    let pool = common::LocalCluster::ephemeral(env.path(), "pool", "").expect("pool instance");
    let schema = "CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) SELECT 'row ' || g FROM generate_series(1, 500) g;";
    // `app` on s1 serves two databases (one role, one password: they agree); `app` on s2 has a
    // password of its own: the same name, another role
    s1.psql("postgres", "CREATE ROLE app LOGIN PASSWORD 'app-on-s1'").expect("role");
    s2.psql("postgres", "CREATE ROLE app LOGIN PASSWORD 'app-on-s2'").expect("role");
    s1.psql("postgres", "CREATE ROLE solo NOLOGIN").expect("role");
    for (s, db, grant) in [(&s1, "orders", "app"), (&s1, "ledger", "app"), (&s2, "billing", "app"), (&s1, "scratch", "solo"), (&s1, "preexisting", "app")] {
        s.psql("postgres", &format!("CREATE DATABASE {db}")).expect("database");
        psql(&s.dsn(db), &format!("{schema} GRANT SELECT ON t TO {grant};"));
    }
    // a database of that name is on the pool instance already: someone else's
    pool.psql("postgres", "CREATE DATABASE preexisting").expect("database");
    pool.psql("preexisting", "CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)").expect("their table");
    let instance = pool.dsn("postgres");
    let cluster = |name: &str, dsn: String, wave: u32, extra: &str| {
        format!("\n[[cluster]]\nname = \"{name}\"\nsource = \"{dsn}\"\nwave = {wave}\ntarget_instance = \"{instance}\"\n{extra}")
    };
    let manifest = [
        "[fleet]\nname = \"pool\"\nmax_concurrent = 5\nbreaker_threshold = 1.0\n".to_string(),
        cluster("orders", s1.dsn("orders"), 1, ""),
        cluster("billing", s2.dsn("billing"), 2, ""),
        cluster("ledger", s1.dsn("ledger"), 2, ""),
        cluster("scratch", s1.dsn("scratch"), 2, "pause_before = [\"validating\"]\n"),
        cluster("preexisting", s1.dsn("preexisting"), 2, ""),
    ]
    .concat();
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let _worker = env.worker("w1", &["--audit-window-s", "1", "--shadow-reads-s", "1", "--soak-s", "1"]);

    let phase = |cs: &[serde_json::Value], name: &str| cs.iter().find(|c| c["cluster"] == name).and_then(|c| c["phase"].as_str()).unwrap_or("").to_string();
    env.wait_for("orders and ledger completed, billing aborted, scratch paused, preexisting failed", Duration::from_secs(300), |cs| {
        phase(cs, "orders") == "completed"
            && phase(cs, "ledger") == "completed"
            && phase(cs, "billing") == "aborted"
            && cs.iter().any(|c| c["cluster"] == "scratch" && c["phase"] == "validating" && c["paused"] == true)
            && phase(cs, "preexisting") == "failed"
    });
    // the conflict names both clusters, the instance and what differs, and never a password
    let billing = env.clusters().into_iter().find(|c| c["cluster"] == "billing").expect("billing");
    assert_eq!(billing["abort_reason"], "preflight_failed");
    let billing = billing["last_error"].to_string();
    let port = pool.port;
    assert!(
        billing.contains(&format!("role app on target instance 127.0.0.1:{port}: clusters billing and orders both need it, differently: the password differs")),
        "{billing}"
    );
    assert!(!billing.contains("app-on-s"), "{billing}");
    // a database dmf did not make is named, and neither adopted nor removed
    let preexisting = env.clusters().into_iter().find(|c| c["cluster"] == "preexisting").expect("preexisting")["last_error"].to_string();
    assert!(preexisting.contains("database \\\"preexisting\\\" already exists on target instance") && preexisting.contains("dmf did not make it"), "{preexisting}");

    // two clusters, one role: made once, and it logs in with s1's password on both databases
    for db in ["orders", "ledger"] {
        let login = format!("postgres://app:app-on-s1@127.0.0.1:{port}/{db}");
        assert_eq!(psql(&login, "SELECT count(*) FROM t"), "500", "{db}");
    }
    assert_eq!(pool.psql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname IN ('app', 'solo')").expect("roles"), "2");

    // aborts: scratch (its own role solo goes with it), preexisting (someone else's database stays)
    for name in ["scratch", "preexisting"] {
        let out = env.dmf(&["abort", name]);
        assert!(out.status.success(), "abort {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    env.wait_for("scratch and preexisting aborted", Duration::from_secs(120), |cs| phase(cs, "scratch") == "aborted" && phase(cs, "preexisting") == "aborted");
    let databases = pool.psql("postgres", "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname NOT LIKE 'template%'").expect("databases");
    assert_eq!(databases, "ledger,orders,postgres,preexisting");
    assert_eq!(pool.psql("preexisting", "SELECT count(*) FROM precious").expect("their table"), "1");
    let roles = pool.psql("postgres", "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname IN ('app', 'solo')").expect("roles");
    assert_eq!(roles, "app", "solo went with the only cluster that needed it; app stays for orders and ledger");
    let leftovers = pool.psql(
        "postgres",
        "SELECT (SELECT count(*) FROM pg_replication_slots) || ' slots, ' || (SELECT count(*) FROM pg_subscription) || ' subscriptions, ' || (SELECT count(*) FROM pg_replication_origin) || ' origins'",
    );
    assert_eq!(leftovers.expect("leftovers"), "0 slots, 0 subscriptions, 0 origins");
    assert_eq!(env.cp_query("SELECT string_agg(DISTINCT cluster, ',' ORDER BY cluster) FROM dmf.target_roles"), "ledger,orders");
    // completed: nothing of dmf's in the databases either
    for db in ["orders", "ledger"] {
        for (side, dsn) in [("source", s1.dsn(db)), ("target", pool.dsn(db))] {
            assert_eq!(psql(&dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = '_dmf'"), "0", "{db} on the {side}: the heartbeat schema stayed");
            assert_eq!(psql(&dsn, "SELECT count(*) FROM pg_publication"), "0", "{db} on the {side}");
        }
    }
    for s in [&s1, &s2] {
        assert_eq!(common::leftovers(&s.dsn("postgres")), "0 slots, 0 publications, 0 subscriptions, 0 heartbeat schemas, 0 replication roles");
    }
}
