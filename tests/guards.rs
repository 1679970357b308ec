//! Guards trip by name and the abort path cleans up: a replication slot dropped behind dmf's back
//! aborts the migration with `slot_lost` and leaves nothing on either side.

mod common;

use std::time::Duration;

use common::{leftovers, psql, Env, CLEAN, SAMPLE_SCHEMA};

#[test]
fn a_lost_slot_aborts_with_slot_lost_and_cleans_up() {
    let env = Env::new("slot-lost");
    let src = env.source("src");
    let dsn = env.enqueue_app(&src, SAMPLE_SCHEMA);
    let _scheduler = env.scheduler();
    let _worker = env.worker("w1", &[]);
    env.wait_for("replicating with a lag sample", Duration::from_secs(120), |c| {
        c.first().is_some_and(|c| common::in_sync(c) && c["lag_ms"].is_i64())
    });
    let target_dir = env.state("app").local_dir.unwrap_or_default();

    // Someone drops the slot on the source (ending the walsender that holds it first).
    // The subscriber reconnects on its own, so try until the slot is gone.
    for _ in 0..50 {
        psql(
            &dsn,
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active_pid IS NOT NULL; \
             SELECT pg_sleep(0.1); \
             SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active;",
        );
        if psql(&dsn, "SELECT count(*) FROM pg_replication_slots") == "0" {
            break;
        }
    }
    env.wait_for("the slot_lost guard to abort", Duration::from_secs(60), |c| c.first().is_some_and(|c| c["phase"] == "aborted"));
    let c = &env.clusters()[0];
    assert_eq!(c["abort_reason"], "slot_lost", "{c}");
    assert_eq!(leftovers(&dsn), CLEAN);
    assert!(!std::path::Path::new(&target_dir).exists(), "target left at {target_dir}");
}

/// A slot that keeps more WAL on the source than allowed aborts the migration before the flip
/// (`slot_retained_wal`) and cleans up; status shows what each slot keeps until then.
#[test]
fn a_slot_keeping_too_much_wal_aborts_before_the_flip() {
    let env = Env::new("slot-wal");
    let src = env.source("src");
    let dsn = env.enqueue_app(&src, SAMPLE_SCHEMA);
    let _scheduler = env.scheduler();
    let worker = env.worker("w1", &["--max-slot-wal-mb", "16", "--lag-limit-ms", "600000", "--lag-window-s", "600", "--audit-window-s", "600"]);
    env.wait_for("replicating, its slots reported", Duration::from_secs(120), |c| c.first().is_some_and(common::in_sync) && !env.state("app").slots.is_empty());
    let slots = env.state("app").slots;
    assert!(slots.iter().any(|s| s.side == "source" && s.name.starts_with("dmf_slot_") && s.retained_bytes.is_some()), "{slots:?}");
    let out = env.dmf(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SLOT WAL"), "status shows the slots' WAL");

    // the target stops consuming and the source keeps writing: WAL piles up behind the slot
    let target = env.target_dsn("app");
    let sub = psql(&target, "SELECT subname FROM pg_subscription");
    psql(&target, &format!("ALTER SUBSCRIPTION {sub} DISABLE"));
    psql(&dsn, "INSERT INTO items (payload, n) SELECT repeat(md5(g::text), 30), g FROM generate_series(1, 40000) g");
    env.wait_for("aborted", Duration::from_secs(120), |c| c.first().is_some_and(|c| c["phase"] == "aborted"));
    let c = &env.clusters()[0];
    assert_eq!(c["abort_reason"], "slot_retained_wal", "{c}\n{}", worker.log_tail());
    assert!(c["last_error"].as_str().unwrap_or_default().contains("over the 16 MiB limit"), "{c}");
    assert_eq!(leftovers(&dsn), CLEAN);
}

/// A migration left in `failed` before the flip stops pinning WAL on the source after a while:
/// its slots are dropped, and the state, the event log and status say why.
#[test]
fn the_slots_of_a_migration_failed_before_the_flip_are_dropped_after_a_while() {
    let env = Env::new("slot-drop");
    let src = env.source("src");
    let dsn = env.enqueue_app(&src, SAMPLE_SCHEMA);
    let _scheduler = env.scheduler();
    let worker = env.worker("w1", &["--drop-slots-after-failed-s", "3", "--max-attempts", "2", "--audit-window-s", "600"]);
    env.wait_for("replicating", Duration::from_secs(120), |c| c.first().is_some_and(common::in_sync));
    // the target goes away: every check fails until the migration is failed
    let st = env.state("app");
    let target = dmf_activities::providers::local::LocalCluster { dir: st.local_dir.expect("target dir").into(), port: st.local_port.expect("target port") };
    target.stop().expect("stop the target");
    env.wait_for("failed", Duration::from_secs(120), |c| c.first().is_some_and(|c| c["phase"] == "failed"));
    assert_ne!(psql(&dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'dmf_%'"), "0", "the slots stay at first");
    env.wait_for("slots dropped", Duration::from_secs(60), |_| env.state("app").slots_dropped.is_some());
    assert_eq!(psql(&dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'dmf_%'"), "0", "{}", worker.log_tail());
    let dropped = env.state("app").slots_dropped.expect("recorded");
    assert!(dropped.reason.contains("before the flip") && dropped.slots.iter().any(|s| s.starts_with("dmf_slot_")), "{dropped:?}");
    assert_eq!(env.cp_query("SELECT count(*) FROM dmf.events WHERE kind = 'slots_dropped'"), "1");
    assert!(String::from_utf8_lossy(&env.dmf(&["status"]).stdout).contains("dropped"));
    assert_eq!(env.phase_of("app"), "failed");
}

/// DDL on the source is not replicated: a column added to a published table (with a write that
/// uses it, which stops the target's apply) and a published table dropped each abort their
/// migration with `schema_drift`, naming the table and what differs, not as lag or an inactive
/// slot; nothing is left on either side.
#[test]
fn ddl_on_the_source_aborts_with_schema_drift_naming_the_table() {
    let env = Env::new("drift");
    let (one, two) = (env.source("one"), env.source("two"));
    let mut manifest = String::from("[fleet]\nname = \"f\"\n");
    let mut dsns = Vec::new();
    for (cluster, src) in [("added", &one), ("dropped", &two)] {
        src.psql("postgres", "CREATE DATABASE app").expect("database");
        let dsn = src.dsn("app");
        psql(&dsn, SAMPLE_SCHEMA);
        manifest.push_str(&format!("\n[[cluster]]\nname = \"{cluster}\"\nsource = \"{dsn}\"\n"));
        dsns.push(dsn);
    }
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    // the lag guard far away (an inactive slot trips only after a minute): drift must abort these
    let worker = env.worker("w1", &["--lag-limit-ms", "600000", "--lag-window-s", "600", "--audit-window-s", "600"]);
    env.wait_for("both replicating", Duration::from_secs(180), |cs| cs.len() == 2 && cs.iter().all(common::in_sync));

    psql(&dsns[0], "ALTER TABLE items ADD COLUMN note text; INSERT INTO items (payload, n, note) VALUES ('x', 1, 'hello')");
    psql(&dsns[1], "DROP TABLE pairs");
    env.wait_for("both aborted", Duration::from_secs(120), |cs| cs.iter().all(|c| c["phase"] == "aborted" || c["phase"] == "failed"));
    let by_name = |name: &str| env.clusters().into_iter().find(|c| c["cluster"] == name).expect("cluster");
    let added = by_name("added");
    assert_eq!(added["abort_reason"], "schema_drift", "{added}\n{}", worker.log_tail());
    let why = added["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("public.items") && why.contains("column note (text) was added on the source"), "{why}");
    let dropped = by_name("dropped");
    assert_eq!(dropped["abort_reason"], "schema_drift", "{dropped}");
    let why = dropped["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("table public.pairs was dropped on the source"), "{why}");
    for dsn in &dsns {
        assert_eq!(leftovers(dsn), CLEAN);
    }
}

/// The replication guards of one migration watch over one connection to each side, kept from one
/// tick to the next, instead of logging in to the source and the target again every tick (at 400
/// clusters those logins kept the instances forking); the drift check still sees DDL through it.
#[test]
fn the_guards_keep_their_connection_to_each_side_between_ticks() {
    let env = Env::new("kept-conns");
    let src = env.source("src");
    let dsn = env.enqueue_app(&src, SAMPLE_SCHEMA);
    let _scheduler = env.scheduler();
    let worker = env.worker("w1", &["--audit-window-s", "600", "--lag-limit-ms", "600000", "--lag-window-s", "600"]);
    env.wait_for("replicating with a lag sample", Duration::from_secs(120), |c| c.first().is_some_and(|c| common::in_sync(c) && c["lag_ms"].is_i64()));
    // the drift check's catalog read is the last statement of a tick on the source's connection
    let checked_by = "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE datname = 'app' AND query LIKE '-- Every user table dmf copies%'";
    let mut pids = std::collections::BTreeSet::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        pids.extend(psql(&dsn, checked_by).split(',').filter(|p| !p.is_empty()).map(str::to_string));
        std::thread::sleep(Duration::from_millis(100));
    }
    // five ticks or more in 15 s; a connection the server ended is replaced, once
    assert!(!pids.is_empty(), "no guard connection to the source was kept between ticks in 15 s\n{}", worker.log_tail());
    assert!(pids.len() <= 2, "the guards logged in {} times in 15 s: {pids:?}", pids.len());
    // DDL is still seen through the kept connection
    psql(&dsn, "ALTER TABLE items ADD COLUMN note text");
    env.wait_for("the drift abort", Duration::from_secs(60), |c| c.first().is_some_and(|c| c["phase"] == "aborted"));
    assert_eq!(env.clusters()[0]["abort_reason"], "schema_drift");
    assert_eq!(leftovers(&dsn), CLEAN);
    // and no session of dmf's stays on the source once it aborted
    let sessions = || psql(&dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND application_name LIKE 'dmf%'");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sessions() != "0" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sessions(), "0", "dmf sessions left on the source after the abort\n{}", worker.log_tail());
}
