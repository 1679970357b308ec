//! Abort from every phase up to validating leaves no slot, publication, subscription or heartbeat
//! schema on either side, removes the provisioned target, and leaves the source's data untouched.

mod common;

use std::time::Duration;

use common::{digest, leftovers, psql, Env, CLEAN, SAMPLE_SCHEMA};

const PHASES: &[&str] = &["preflight", "provisioning", "schema", "hydrating", "replicating", "validating"];

#[test]
fn abort_from_every_phase_leaves_nothing_behind() {
    let env = Env::new("abort");
    let src = env.source("src");
    let mut manifest = String::from("[fleet]\nname = \"f\"\nmax_concurrent = 10\nmax_per_source_host = 10\n");
    let mut before = Vec::new();
    for p in PHASES {
        src.psql("postgres", &format!("CREATE DATABASE db_{p}")).expect("db");
        psql(&src.dsn(&format!("db_{p}")), SAMPLE_SCHEMA);
        before.push(digest(&src.dsn(&format!("db_{p}")), "items", "id"));
        manifest.push_str(&format!(
            "\n[[cluster]]\nname = \"at-{p}\"\nsource = \"{}\"\npause_before = [\"{p}\"]\n",
            src.dsn(&format!("db_{p}"))
        ));
    }
    // One more, aborted while its copy is running.
    src.psql("postgres", "CREATE DATABASE db_busy").expect("db");
    psql(
        &src.dsn("db_busy"),
        "CREATE TABLE big (id bigserial PRIMARY KEY, pad text); \
         INSERT INTO big (pad) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 400000) g;",
    );
    manifest.push_str(&format!("\n[[cluster]]\nname = \"busy\"\nsource = \"{}\"\n", src.dsn("db_busy")));
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let _worker = env.worker("w1", &["--hydrate-jobs", "1"]);

    env.wait_for("every cluster paused in its phase", Duration::from_secs(180), |cs| {
        PHASES.iter().all(|p| cs.iter().any(|c| c["cluster"] == format!("at-{p}") && c["phase"] == *p && c["paused"] == true))
    });
    // Mid-copy abort: as soon as the copy has reported progress.
    env.wait_for("busy to be copying", Duration::from_secs(120), |cs| {
        cs.iter().any(|c| c["cluster"] == "busy" && (common::in_sync(c) || (c["phase"] == "hydrating" && c["rows_copied"].as_i64().unwrap_or(0) > 0)))
    });
    let was = env.phase_of("busy");
    let out = env.dmf(&["abort", "busy", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("busy aborted while {was}");
    // Capture targets before they are torn down.
    let targets: Vec<(String, String)> = PHASES
        .iter()
        .map(|p| format!("at-{p}"))
        .chain(std::iter::once("busy".to_string()))
        .map(|c| (c.clone(), env.state(&c).local_dir.unwrap_or_default()))
        .collect();
    for p in PHASES {
        let out = env.dmf(&["abort", &format!("at-{p}"), "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    env.wait_for("every cluster aborted", Duration::from_secs(120), |cs| cs.iter().all(|c| c["phase"] == "aborted"));

    for c in env.clusters() {
        assert_eq!(c["abort_reason"], "operator", "{c}");
    }
    for (i, p) in PHASES.iter().enumerate() {
        let dsn = src.dsn(&format!("db_{p}"));
        assert_eq!(leftovers(&dsn), CLEAN, "source of at-{p}");
        assert_eq!(digest(&dsn, "items", "id"), before[i], "source data of at-{p} changed");
    }
    assert_eq!(leftovers(&src.dsn("db_busy")), CLEAN, "source of busy");
    for (cluster, dir) in targets {
        if !dir.is_empty() {
            assert!(!std::path::Path::new(&dir).exists(), "target of {cluster} still at {dir}");
        }
    }
    // An aborted cluster cannot be aborted into anything else, nor resumed.
    let out = env.dmf(&["resume", "at-schema"]);
    assert!(!out.status.success());
}

/// Once traffic may have moved, the target holds writes nobody else has: a migration that failed
/// after the flip cannot be aborted (which would tear the target down), only resumed or rolled
/// back.
#[test]
fn a_migration_that_failed_after_the_flip_refuses_abort_and_completes_on_resume() {
    let env = Env::new("abort-after-flip");
    let src = env.source("src");
    let source = env.enqueue_app(&src, SAMPLE_SCHEMA);
    let _scheduler = env.scheduler();
    let worker = env.worker("w1", &["--audit-window-s", "1", "--shadow-reads-s", "1", "--soak-s", "20", "--flip-max-lag-ms", "200", "--max-attempts", "2"]);
    env.wait_for("flipped", Duration::from_secs(180), |cs| cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("flipped" | "failed" | "aborted"))));
    assert_eq!(env.phase_of("app"), "flipped", "{}", worker.log_tail());
    let target = env.target_dsn("app");
    let dir = env.state("app").local_dir.unwrap_or_default();
    // writes land on the target, then the source becomes unreachable: the soak fails
    psql(&target, "INSERT INTO items (payload, n) SELECT 'after the flip', g FROM generate_series(1, 500) g");
    src.stop().expect("stop the source");
    env.wait_for("failed in flipped", Duration::from_secs(120), |cs| cs.first().is_some_and(|c| c["phase"] == "failed"));

    let out = env.dmf(&["abort", "app"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "abort after the flip must be refused: {err}");
    assert!(err.contains("dmf rollback") && err.contains("dmf resume"), "the refusal says what to do instead: {err}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(env.phase_of("app"), "failed");
    assert!(std::path::Path::new(&dir).exists(), "the target's cluster is still at {dir}");
    assert_eq!(psql(&target, "SELECT count(*) FROM items WHERE payload = 'after the flip'"), "500", "the writes on the target are kept");

    // the source is back: resume re-enters flipped and completes
    src.start().expect("start the source");
    let out = env.dmf(&["resume", "app"]);
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("completed", Duration::from_secs(120), |cs| cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("completed" | "aborted"))));
    assert_eq!(env.phase_of("app"), "completed", "{}", worker.log_tail());
    assert_eq!(psql(&source, "SELECT count(*) FROM items WHERE payload = 'after the flip'"), "500", "replication back brought the target's writes to the source");
}
