//! A panicking activity is an error of its attempt: recorded with its phase, its lease released,
//! and retried, never a worker that holds the migration's lease without running anything.

mod common;

use std::time::Duration;

use common::{Env, SAMPLE_SCHEMA};

#[test]
fn a_panicking_activity_is_recorded_retried_and_releases_its_lease() {
    let env = Env::new("panic");
    let src = env.source("src");
    env.enqueue_app(&src, SAMPLE_SCHEMA);
    let faults = env.path().join("faults");
    std::fs::create_dir_all(&faults).expect("fault dir");
    let _scheduler = env.scheduler();
    // a lease far longer than the test waits: only its release lets the migration go on
    let mut worker = env.worker_env(
        "w1",
        &["--lease-ttl-s", "120"],
        &[("DMF_FAULT_PANIC", "app:schema"), ("DMF_FAULT_DIR", faults.to_str().expect("path"))],
    );
    env.wait_for("past the schema step", Duration::from_secs(60), |cs| {
        cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("replicating" | "validating" | "shadow_reads" | "failed" | "aborted")))
    });
    assert!(!matches!(env.phase_of("app").as_str(), "failed" | "aborted"), "{}", worker.log_tail());
    assert!(faults.join("app-schema").exists(), "the fault fired");
    let recorded = env.cp_query("SELECT count(*) FROM dmf.events WHERE kind = 'retry' AND from_phase = 'schema' AND detail LIKE '%the schema activity panicked: DMF_FAULT_PANIC%'");
    assert_eq!(recorded, "1", "the panic is recorded as the attempt's error, with its phase\n{}", worker.log_tail());
    assert!(worker.is_alive(), "the worker survives the panic");
}
