//! A graceful shutdown (SIGTERM) in the middle of a long hydration does not let a second worker run
//! the same activity at the same time: the second one waits for the lease.

mod common;

use std::time::Duration;

use common::{digest, Env};

/// Timestamps (as logged, RFC 3339 sorts as text) of lines containing all of `needles`.
fn stamps(log: &str, needles: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn sigterm_during_hydration_never_runs_it_twice_at_once() {
    let env = Env::new("shutdown");
    let src = env.source("src");
    let dsn = env.enqueue_app(&src, "CREATE TABLE big (id bigserial PRIMARY KEY, pad text); \
         INSERT INTO big (pad) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 600000) g;");
    let _scheduler = env.scheduler();
    // Split into block ranges copied by two streams: the digest below checks that path too.
    let args = ["--hydrate-jobs", "2", "--split-mib", "16"];
    let mut a = env.worker("wa", &args);
    let mut b = env.worker("wb", &args);
    env.wait_for("the copy to be running", Duration::from_secs(120), |c| {
        c.first().is_some_and(|c| c["phase"] == "hydrating" && c["rows_copied"].as_i64().unwrap_or(0) > 0)
    });
    let holder = env.cp_query("SELECT holder FROM dmf.leases");
    let (victim, other) = if holder.starts_with("wa") { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let status = std::process::Command::new("kill").args(["-TERM", &victim.child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = victim.child.wait().expect("wait for the drained worker");
    assert!(exit.success(), "a drained worker exits cleanly: {exit}\n{}", victim.log_tail());

    env.wait_for("replicating", Duration::from_secs(180), |c| c.first().is_some_and(common::in_sync));
    let victim_log = std::fs::read_to_string(&victim.log).unwrap_or_default();
    let other_log = std::fs::read_to_string(&other.log).unwrap_or_default();
    let stopped = stamps(&victim_log, &["worker stopped"]);
    let stopped = stopped.last().expect("the drained worker logs its stop").clone();
    for started in stamps(&other_log, &["activity started", "phase=hydrating"]) {
        assert!(started > stopped, "hydration started on the other worker at {started}, before the first stopped at {stopped}");
    }
    let finished = stamps(&victim_log, &["activity finished", "phase=hydrating"]);
    eprintln!("drained worker finished its hydration: {}; other worker's hydration starts: {:?}", !finished.is_empty(), stamps(&other_log, &["activity started", "phase=hydrating"]));
    assert!(!finished.is_empty(), "the drain lets the running hydration finish:\n{}", victim.log_tail());
    // One hydration ran to completion (no restart after a half-copy) unless the drain was cut short.
    let restarts = stamps(&other_log, &["dropped the slot of an interrupted hydration"]);
    assert!(restarts.len() <= 1, "{restarts:?}");
    let target = env.target_dsn("app");
    assert_eq!(digest(&dsn, "big", "id"), digest(&target, "big", "id"));
}
