//! The `aws` provider against a local AWS API emulator (moto in server mode): source discovery
//! and preflight, Aurora targets created, waited for, adopted on a re-run and torn down, DMS
//! endpoints, instance and full-load-and-cdc task, retries of throttling, and permanent errors
//! failing with their AWS code. Where moto lacks an operation, the test names it.
//!
//! moto creates no database servers: an Aurora cluster it "creates" has an endpoint nobody
//! answers at. The manifest's `connect_via` points dmf at a local PostgreSQL cluster standing in
//! for the Aurora writer (as a bastion tunnel would in production), while the routes and DMS keep
//! the endpoints moto reported.

mod common;

use std::time::Duration;

use common::{digest, psql, Env, Moto, SAMPLE_SCHEMA};

fn worker(env: &Env, moto: &Moto, name: &str, extra: &[&str]) -> common::Proc {
    let vars = moto.worker_env();
    let envs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec!["--aws-max-attempts", "2", "--aws-initial-backoff-ms", "50"];
    args.extend_from_slice(extra);
    env.worker_env(name, &args, &envs)
}

/// A local cluster standing in for Aurora writers: the databases Aurora would create
/// (`DatabaseName`) and the master user dmf logs in as.
fn aurora_stand_in(env: &Env, dbs: &[&str]) -> common::Guard {
    let c = env.source("aurora");
    c.psql("postgres", "CREATE ROLE dmf LOGIN SUPERUSER").expect("master user");
    // the emulator never sees this server, so the master password dmf generates was never set
    // here: the stand-in lets the master user in without it (first matching line wins)
    let hba = c.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("hba");
    std::fs::write(&hba, format!("host all dmf 127.0.0.1/32 trust\nhost replication dmf 127.0.0.1/32 trust\n{rules}")).expect("hba");
    c.psql("postgres", "SELECT pg_reload_conf()").expect("reload");
    for db in dbs {
        c.psql("postgres", &format!("CREATE DATABASE {db} OWNER dmf")).expect("database");
    }
    c
}

/// One test's world. Fields drop in order: the clusters and the emulator before `env`, whose
/// directory holds them.
struct World {
    src: common::Guard,
    aurora: common::Guard,
    moto: Moto,
    subnets: String,
    security_group: String,
    env: Env,
}

/// A control plane; the emulator (`moto_env`: its settings) seeded with a VPC and the RDS sources
/// `rds` (`name:on|off`); one source cluster with the databases `dbs` (sample data in each); and
/// an Aurora stand-in with `aurora_dbs`.
fn world(name: &str, moto_env: &[(&str, &str)], rds: &[&str], dbs: &[&str], aurora_dbs: &[&str]) -> World {
    let env = Env::new(name);
    let moto = Moto::start(env.path(), moto_env);
    let seeded = moto.seed(rds);
    let src = env.source("src");
    for db in dbs {
        src.psql("postgres", &format!("CREATE DATABASE {db}")).expect("db");
        psql(&src.dsn(db), SAMPLE_SCHEMA);
    }
    let aurora = aurora_stand_in(&env, aurora_dbs);
    let security_group = seeded["security_group"].as_str().expect("security group").to_string();
    World { src, aurora, moto, subnets: seeded["subnets"].to_string(), security_group, env }
}

/// The RDS source that preflight found for `cluster`.
fn aws_source(env: &Env, cluster: &str) -> dmf_aws::rds::Source {
    env.state(cluster).aws_source.unwrap_or_else(|| panic!("{cluster}: no RDS source recorded"))
}

fn cluster<'a>(cs: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    cs.iter().find(|c| c["cluster"] == name).unwrap_or_else(|| panic!("no cluster {name}"))
}

#[test]
fn mixed_fleet_local_completes_aws_reaches_replication_and_tears_down() {
    let w = world("aws-mixed", &[], &["billing-db:on", "ledger-db:on"], &["local1", "billing", "ledger"], &["billing", "ledger"]);
    let (env, moto, src, aurora, subnets, sg) = (&w.env, &w.moto, &w.src, &w.aurora, &w.subnets, &w.security_group);
    let via = format!("127.0.0.1:{}", aurora.port);
    let manifest = format!(
        r#"[fleet]
name = "mixed"
max_concurrent = 4
max_per_source_host = 3

[[cluster]]
name = "local1"
source = "{local1}"

[[cluster]]
name = "billing"
source = "{billing}"
provider = "aws"
pause_before = ["shadow_reads"]

[cluster.aws]
source_instance = "billing-db"
subnet_ids = {subnets}
security_group_ids = ["{sg}"]
readers = 1
connect_via = "{via}"
manage_master_password = true

[[cluster]]
name = "ledger"
source = "{ledger}"
provider = "aws"
replication = "dms"

[cluster.aws]
source_instance = "ledger-db"
subnet_ids = {subnets}
security_group_ids = ["{sg}"]
readers = 0
connect_via = "{via}"
dms_instance_class = "dms.t3.medium"
"#,
        local1 = src.dsn("local1"),
        billing = src.dsn("billing"),
        ledger = src.dsn("ledger"),
    );
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let flags = ["--audit-window-s", "1", "--shadow-reads-s", "1", "--soak-s", "1", "--flip-max-lag-ms", "200", "--lag-window-s", "600"];
    let _w = worker(&env, &moto, "w1", &flags);

    env.wait_for("local1 completed, billing hydrated and paused, ledger replicating through DMS", Duration::from_secs(300), |cs| {
        let ledger = cluster(cs, "ledger");
        cs.len() == 3
            && cluster(cs, "local1")["phase"] == "completed"
            && cluster(cs, "billing")["phase"] == "shadow_reads"
            && cluster(cs, "billing")["paused"] == true
            && ledger["phase"] == "replicating"
            && ledger["dms"]["status"] == "running"
    });
    let cs = env.clusters();
    for c in &cs {
        assert!(c["last_error"].is_null() || c["cluster"] == "ledger", "{c}");
    }

    // Discovery: the source instances and their parameter groups.
    let billing_source = aws_source(&env, "billing");
    assert_eq!(billing_source.identifier, "billing-db");
    assert_eq!(billing_source.parameter_group.as_deref(), Some("billing-db-params"));
    assert_eq!(billing_source.logical_replication.as_deref(), Some("1"));

    // Provisioning: clusters with a writer (and a reader for billing), the cluster parameter group
    // with logical replication on, subnet groups from the manifest's subnets.
    let inv = moto.inventory();
    let billing = &inv["clusters"]["dmf-billing"];
    assert_eq!(billing["engine"], "aurora-postgresql", "{inv}");
    assert_eq!(billing["parameter_group"], "dmf-billing-params", "{inv}");
    assert_eq!(billing["subnet_group"], "dmf-billing-subnets", "{inv}");
    assert_eq!(billing["members"]["dmf-billing-writer"], true, "{inv}");
    assert_eq!(billing["members"]["dmf-billing-reader-1"], false, "{inv}");
    assert_eq!(inv["clusters"]["dmf-ledger"]["members"].as_object().map(|m| m.len()), Some(1), "{inv}");
    assert_eq!(inv["cluster_parameter_groups"]["dmf-billing-params"]["rds.logical_replication"], "1", "{inv}");
    // The routes' endpoints are Aurora's; dmf's own connection goes through connect_via.
    let writer = billing["endpoint"].as_str().expect("writer endpoint");
    let reader = billing["reader_endpoint"].as_str().expect("reader endpoint");
    let billing_state = env.state("billing");
    // RDS manages billing's master password: the state holds the secret's ARN, no password
    let secret = match &billing_state.target_password {
        Some(dmf_db::secret::PasswordRef::AwsSecret(arn)) => arn.clone(),
        other => panic!("billing's master password should be a Secrets Manager reference: {other:?}"),
    };
    assert!(secret.starts_with("arn:aws:secretsmanager:"), "{secret}");
    let billing_target = billing_state.target;
    for dsn in [&billing_target.target_dsn, &billing_target.target_route_dsn, &billing_target.target_read_dsn] {
        let dsn = dsn.clone().unwrap_or_default();
        assert_eq!(dmf_db::secret::redact(&dsn), dsn, "no password in {dsn}");
    }
    assert!(billing_target.target_route_dsn.unwrap_or_default().contains(writer));
    assert!(billing_target.target_read_dsn.unwrap_or_default().contains(reader));
    assert!(env.target_dsn("billing").contains(&via));

    // billing replicates natively into the stand-in: rows written after hydration arrive.
    psql(&src.dsn("billing"), "INSERT INTO items (payload, n) SELECT 'late', g FROM generate_series(1, 25) g");
    let target = env.target_dsn("billing");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while digest(&src.dsn("billing"), "items", "id") != digest(&target, "items", "id") {
        assert!(std::time::Instant::now() < deadline, "billing's target does not follow its source");
        std::thread::sleep(Duration::from_millis(200));
    }

    // DMS: endpoints (DMS reaches the target at its writer endpoint), an instance, a
    // full-load-and-cdc task mapping every schema, running; progress in `dmf status`.
    let ledger_writer = inv["clusters"]["dmf-ledger"]["endpoint"].as_str().expect("ledger endpoint").to_string();
    assert!(inv["dms_endpoints"]["dmf-ledger-dms-source"]["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("source")), "{inv}");
    assert_eq!(inv["dms_endpoints"]["dmf-ledger-dms-source"]["server"], "127.0.0.1", "{inv}");
    assert_eq!(inv["dms_endpoints"]["dmf-ledger-dms-target"]["server"], ledger_writer.as_str(), "{inv}");
    assert_eq!(inv["dms_endpoints"]["dmf-ledger-dms-target"]["engine"], "aurora-postgresql", "{inv}");
    assert_eq!(inv["dms_instances"]["dmf-ledger-dms-replication"], "available", "{inv}");
    let task = &inv["dms_tasks"]["dmf-ledger-dms-task"];
    assert_eq!(task["status"], "running", "{inv}");
    assert_eq!(task["type"], "full-load-and-cdc", "{inv}");
    let schemas: Vec<&str> = task["mappings"]["rules"].as_array().expect("rules").iter().filter_map(|r| r["object-locator"]["schema-name"].as_str()).collect();
    assert_eq!(schemas, vec!["_dmf", "public"], "{inv}");
    let ledger = cluster(&cs, "ledger");
    assert_eq!(ledger["replication"], "dms");
    assert_eq!(ledger["dms"]["full_load_percent"], 100, "{ledger}");
    assert!(ledger["dms_summary"].as_str().is_some_and(|s| s.starts_with("dms running 100%")), "{ledger}");
    // the DMS spec the control plane keeps holds no endpoint password (the worker fills them in)
    let kept = env.cp_query(
        "SELECT coalesce(state->'dms_spec'->'source'->>'password', '?') || '|' || coalesce(state->'dms_spec'->'target'->>'password', '?') FROM dmf.migrations WHERE cluster = 'ledger'",
    );
    assert_eq!(kept, "|", "DMS endpoint passwords in the control plane");
    // moto lacks DescribeTableStatistics (it answers HTTP 500): the per-table statistics say so,
    // and the replication goes on.
    let why = ledger["dms"]["tables_unavailable"].as_str().unwrap_or("");
    assert!(why.contains("DescribeTableStatistics"), "moto now implements DescribeTableStatistics? {ledger}");
    // The post-data section was built once DMS's full load was done.
    assert_eq!(psql(&env.target_dsn("ledger"), "SELECT count(*) FROM pg_indexes WHERE indexname = 'items_n'"), "1");
    let text = String::from_utf8_lossy(&env.dmf(&["status"]).stdout).to_string();
    assert!(text.contains("dms running 100%"), "{text}");

    // Abort both aws clusters: DMS task stopped and deleted, then its instance and endpoints;
    // the Aurora instances, cluster and groups removed; the sources left as they were.
    for c in ["billing", "ledger"] {
        let out = env.dmf(&["abort", c]);
        assert!(out.status.success(), "abort {c}: {}", String::from_utf8_lossy(&out.stderr));
    }
    env.wait_for("aws clusters aborted", Duration::from_secs(120), |cs| {
        cluster(cs, "billing")["phase"] == "aborted" && cluster(cs, "ledger")["phase"] == "aborted"
    });
    let inv = moto.inventory();
    assert_eq!(inv["clusters"], serde_json::json!({}), "{inv}");
    let left: Vec<&String> = inv["instances"].as_object().expect("instances").keys().collect();
    assert_eq!(left, vec!["billing-db", "ledger-db"], "only the sources remain: {inv}");
    assert_eq!(inv["cluster_parameter_groups"], serde_json::json!({}), "{inv}");
    assert_eq!(inv["subnet_groups"], serde_json::json!([]), "{inv}");
    assert_eq!(inv["dms_endpoints"], serde_json::json!({}), "{inv}");
    assert_eq!(inv["dms_instances"], serde_json::json!({}), "{inv}");
    assert_eq!(inv["dms_tasks"], serde_json::json!({}), "{inv}");
    for db in ["billing", "ledger"] {
        assert_eq!(common::leftovers(&src.dsn(db)), common::CLEAN, "{db}");
    }
}

#[test]
fn preflight_names_the_parameter_group_and_serverless_dms_goes_as_far_as_moto() {
    let w = world("aws-preflight", &[], &["orders-db:off", "events-db:on", "stock:on:aurora"], &["orders", "events", "stock"], &["events"]);
    let (env, moto, src, aurora, subnets) = (&w.env, &w.moto, &w.src, &w.aurora, &w.subnets);
    let manifest = format!(
        "[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"orders\"\nsource = \"{}\"\nprovider = \"aws\"\n\n[cluster.aws]\nsource_instance = \"orders-db\"\nsubnet_ids = {subnets}\n\n\
         [[cluster]]\nname = \"events\"\nsource = \"{}\"\nprovider = \"aws\"\nreplication = \"dms\"\n\n[cluster.aws]\nsource_instance = \"events-db\"\nsubnet_ids = {subnets}\nreaders = 0\n\
         connect_via = \"127.0.0.1:{}\"\ndms_serverless_max_capacity = 4\n\n\
         [[cluster]]\nname = \"stock\"\nsource = \"{}\"\nprovider = \"aws\"\npause_before = [\"provisioning\"]\n\n[cluster.aws]\nsource_instance = \"stock-1\"\nsubnet_ids = {subnets}\n",
        src.dsn("orders"),
        src.dsn("events"),
        aurora.port,
        src.dsn("stock"),
    );
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let _w = worker(&env, &moto, "w1", &["--max-attempts", "2"]);
    env.wait_for("orders aborted by preflight, events failed at CreateReplicationConfig, stock past preflight", Duration::from_secs(180), |cs| {
        cluster(cs, "orders")["phase"] == "aborted" && cluster(cs, "events")["phase"] == "failed" && cluster(cs, "stock")["paused"] == true
    });
    // An Aurora source named by one of its instances: the cluster's parameter group decides.
    let stock = aws_source(env, "stock");
    assert_eq!(stock.kind, "cluster");
    assert_eq!(stock.identifier, "stock");
    assert_eq!(stock.parameter_group.as_deref(), Some("stock-params"));
    assert_eq!(stock.logical_replication.as_deref(), Some("1"));
    assert_eq!(stock.engine, "aurora-postgresql");
    let cs = env.clusters();
    let orders = cluster(&cs, "orders");
    assert_eq!(orders["abort_reason"], "preflight_failed", "{orders}");
    let e = orders["last_error"].as_str().unwrap_or("");
    assert!(e.contains("rds.logical_replication is not set (off) in parameter group orders-db-params of instance orders-db"), "{e}");
    assert!(e.contains("then reboot instance orders-db") && e.contains("static"), "{e}");
    // Nothing was created for a cluster that failed preflight.
    let inv = moto.inventory();
    assert!(inv["clusters"].get("dmf-orders").is_none(), "{inv}");

    // DMS Serverless: the endpoints are made, then moto lacks DescribeReplicationConfigs (and
    // CreateReplicationConfig after it): HTTP 500, retried as a server error, then the phase
    // fails with the operation named.
    let events = cluster(&cs, "events");
    assert_eq!(events["replication"], "dms");
    let e = events["last_error"].as_str().unwrap_or("");
    assert!(e.contains("hydrating failed") && e.contains("DescribeReplicationConfigs: HTTP 500"), "moto now implements DescribeReplicationConfigs? {e}");
    assert!(inv["dms_endpoints"].get("dmf-events-dms-source").is_some() && inv["dms_endpoints"].get("dmf-events-dms-target").is_some(), "{inv}");
    // two activity attempts of two SDK attempts each
    assert_eq!(moto.calls("DescribeReplicationConfigs"), 4, "retried");

    // Aborting it tears DMS down first, and that stops at the same call: the abort keeps retrying
    // (cleanup never gives up) with the operation in the last error, and nothing after it (the
    // endpoints, the Aurora cluster) is removed before DMS is known to be gone.
    let out = env.dmf(&["abort", "events"]);
    assert!(out.status.success(), "abort: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("the abort of events retrying at DescribeReplicationConfigs", Duration::from_secs(60), |cs| {
        let e = cluster(cs, "events");
        e["phase"] == "aborting" && e["attempts"].as_i64().unwrap_or(0) >= 2 && e["last_error"].as_str().is_some_and(|l| l.contains("DescribeReplicationConfigs: HTTP 500"))
    });
    let inv = moto.inventory();
    assert!(inv["clusters"].get("dmf-events").is_some(), "{inv}");
    assert!(inv["dms_endpoints"].get("dmf-events-dms-source").is_some(), "{inv}");
}

#[test]
fn throttling_is_retried_and_a_permanent_error_fails_with_its_code_then_resume_adopts() {
    // clusters come up slowly: a few watch ticks of provisioning see them `creating`
    let w = world("aws-faults", &[("DMF_MOTO_CREATING_READS", "8")], &[], &["orders"], &["orders"]);
    let (env, moto, src, aurora, subnets) = (&w.env, &w.moto, &w.src, &w.aurora, &w.subnets);
    // Each activity attempt makes two SDK attempts (--aws-max-attempts 2): three throttles fail
    // the first attempt and the first call of the second, whose retry gets through. Every
    // CreateDBInstance fails with a permanent error.
    moto.set_faults(serde_json::json!([
        { "action": "CreateDBCluster", "code": "ThrottlingException", "count": 3 },
        { "action": "CreateDBInstance", "code": "InvalidParameterCombination", "message": "db.x9.huge is not offered", "count": -1 },
    ]));
    let manifest = format!(
        "[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"orders\"\nsource = \"{}\"\nprovider = \"aws\"\n\n[cluster.aws]\nsubnet_ids = {subnets}\nconnect_via = \"127.0.0.1:{}\"\n",
        src.dsn("orders"),
        aurora.port
    );
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let _w = worker(&env, &moto, "w1", &["--audit-window-s", "1", "--shadow-reads-s", "600"]);
    env.wait_for("orders failed in provisioning", Duration::from_secs(120), |cs| cluster(cs, "orders")["phase"] == "failed");
    let cs = env.clusters();
    let e = cluster(&cs, "orders")["last_error"].as_str().unwrap_or("").to_string();
    assert!(e.contains("cluster orders: AWS CreateDBInstance: InvalidParameterCombination: db.x9.huge is not offered"), "{e}");
    assert_eq!(moto.calls("CreateDBCluster"), 4, "2 SDK attempts, a worker retry, 2 more");
    let retries = env.cp_query("SELECT string_agg(detail, ' | ') FROM dmf.events WHERE cluster = 'orders' AND kind = 'retry'");
    assert!(retries.contains("CreateDBCluster: ThrottlingException"), "{retries}");
    // "no source instance in this region" is a warning (the source is not on RDS)
    assert!(env.state("orders").preflight.findings.iter().any(|f| f.message.contains("not an RDS instance or cluster")));

    // Resume with the fault gone: the cluster made by the earlier attempt is adopted (no new
    // CreateDBCluster), the writer and a reader are made, and the migration moves on.
    moto.set_faults(serde_json::json!([]));
    let out = env.dmf(&["resume", "orders"]);
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    // While AWS still creates it, provisioning waits (watch ticks with backoff) and says so.
    env.wait_for("provisioning waiting for the cluster", Duration::from_secs(60), |cs| {
        let o = cluster(cs, "orders");
        o["phase"] == "provisioning" && o["aws_target"]["cluster_status"] == "creating"
    });
    let text = String::from_utf8_lossy(&env.dmf(&["status", "orders"]).stdout).to_string();
    assert!(text.contains("aurora creating; dmf-orders-writer available"), "{text}");
    env.wait_for("orders hydrated", Duration::from_secs(180), |cs| common::in_sync(cluster(cs, "orders")));
    // it looked again until the cluster was available (8 `creating` reads)
    assert!(moto.calls("DescribeDBClusters") >= 8, "{}", moto.calls("DescribeDBClusters"));
    assert_eq!(moto.calls("CreateDBCluster"), 4, "adopted, not created again");
    let inv = moto.inventory();
    assert_eq!(inv["clusters"]["dmf-orders"]["members"]["dmf-orders-writer"], true, "{inv}");
    assert_eq!(digest(&src.dsn("orders"), "pairs", "a, b"), digest(&env.target_dsn("orders"), "pairs", "a, b"));
    let out = env.dmf(&["abort", "orders"]);
    assert!(out.status.success());
    env.wait_for("orders aborted", Duration::from_secs(60), |cs| cluster(cs, "orders")["phase"] == "aborted");
    assert_eq!(moto.inventory()["clusters"], serde_json::json!({}));
}

#[test]
fn a_target_that_never_comes_up_times_out_and_is_torn_down() {
    // moto's clusters stay `creating` far longer than provision_timeout_s
    let w = world("aws-timeout", &[("DMF_MOTO_CREATING_READS", "100000")], &[], &["slow"], &["slow"]);
    let (env, moto, src, subnets) = (&w.env, &w.moto, &w.src, &w.subnets);
    let manifest = format!(
        "[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"slow\"\nsource = \"{}\"\nprovider = \"aws\"\n\n[cluster.aws]\nsubnet_ids = {subnets}\nreaders = 0\nprovision_timeout_s = 3\n",
        src.dsn("slow")
    );
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let _w = worker(env, moto, "w1", &[]);
    env.wait_for("slow aborted", Duration::from_secs(90), |cs| cluster(cs, "slow")["phase"] == "aborted");
    let cs = env.clusters();
    let slow = cluster(&cs, "slow");
    assert_eq!(slow["abort_reason"], "phase_timeout", "{slow}");
    let e = slow["last_error"].as_str().unwrap_or("");
    assert!(e.contains("Aurora target dmf-slow not available after") && e.contains("cluster creating"), "{e}");
    // it looked more than once, backing off, before it gave up
    assert!(moto.calls("DescribeDBClusters") >= 3, "{}", moto.calls("DescribeDBClusters"));
    let inv = moto.inventory();
    assert_eq!(inv["clusters"], serde_json::json!({}), "{inv}");
    assert_eq!(inv["cluster_parameter_groups"], serde_json::json!({}), "{inv}");
    assert_eq!(inv["subnet_groups"], serde_json::json!([]), "{inv}");
}
