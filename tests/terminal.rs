//! Finished migrations stay finished: a running worker's reconciler never nudges a migration in a
//! terminal phase (issue 18, defect 0: `completed` turned `failed` seconds after arriving, with
//! "phase completed has no activity", and an operator aborting that fleet would tear down the
//! databases that now take the writes).

mod common;

use std::time::{Duration, Instant};

use common::{Env, SAMPLE_SCHEMA};

/// Put the cluster's migration in `phase`, as if it had arrived there a while ago (so that the
/// reconciler's quiet period has long passed).
fn arrive(env: &Env, phase: &str) {
    env.cp_query(&format!(
        "UPDATE dmf.migrations SET phase = '{phase}', updated_at = now() - interval '1 hour', \
         phase_started_at = now() - interval '1 hour' WHERE cluster = 'app'"
    ));
}

/// For several reconcile intervals (the worker runs with 2 s), the phase stays `phase`.
fn stays(env: &Env, phase: &str) {
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        assert_eq!(env.phase_of("app"), phase, "a {phase} migration moved under a running worker");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn completed_and_rolled_back_migrations_stay_where_they_are_under_a_running_worker() {
    let env = Env::new("terminal");
    let src = env.source("src");
    env.enqueue_app(&src, SAMPLE_SCHEMA);
    let _worker = env.worker("w1", &[]);
    for phase in ["completed", "rolled_back"] {
        arrive(&env, phase);
        stays(&env, phase);
    }
    let nudges = env.cp_query("SELECT count(*) FROM dmf.events WHERE cluster = 'app' AND (detail LIKE '%has no activity%' OR to_phase = 'failed')");
    assert_eq!(nudges.trim(), "0", "no attempt to run a finished migration");
}
