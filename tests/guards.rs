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
