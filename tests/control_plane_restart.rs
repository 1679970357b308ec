//! The control-plane PostgreSQL restarts mid-run (and stays down longer than the pool's acquire
//! timeout); workers and the scheduler recover without operator action.

mod common;

use std::time::{Duration, Instant};

use common::{digest, psql, Env, SAMPLE_SCHEMA};

#[test]
fn workers_recover_from_a_control_plane_restart() {
    let env = Env::new("cp-restart");
    let src = env.source("src");
    let mut manifest = String::from("[fleet]\nname = \"f\"\nmax_concurrent = 2\nmax_per_source_host = 2\n");
    for d in 0..4 {
        src.psql("postgres", &format!("CREATE DATABASE db{d}")).expect("db");
        psql(&src.dsn(&format!("db{d}")), SAMPLE_SCHEMA);
        manifest.push_str(&format!("\n[[cluster]]\nname = \"c{d}\"\nsource = \"{}\"\nwave = {}\n", src.dsn(&format!("db{d}")), d / 2 + 1));
    }
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut scheduler = env.scheduler();
    let mut worker = env.worker("w1", &[]);

    env.wait_for("the first cluster to get going", Duration::from_secs(120), |cs| {
        cs.iter().any(|c| matches!(c["phase"].as_str(), Some("provisioning" | "schema" | "hydrating" | "replicating" | "validating")))
    });
    env.cp.stop().expect("stop control plane");
    // Longer than the pool's 5 s acquire timeout.
    std::thread::sleep(Duration::from_secs(8));
    assert!(worker.is_alive(), "the worker died with the control plane:\n{}", worker.log_tail());
    assert!(scheduler.is_alive(), "the scheduler died with the control plane:\n{}", scheduler.log_tail());
    env.cp.start().expect("start control plane");
    let back = Instant::now();

    env.wait_for("every cluster replicating after the restart", Duration::from_secs(240), |cs| {
        cs.len() == 4 && cs.iter().all(common::in_sync)
    });
    eprintln!("fleet replicating {:?} after the control plane came back", back.elapsed());
    assert!(worker.is_alive() && scheduler.is_alive());
    for d in 0..4 {
        let dsn = src.dsn(&format!("db{d}"));
        let target = env.target_dsn(&format!("c{d}"));
        assert_eq!(digest(&dsn, "items", "id"), digest(&target, "items", "id"), "c{d}");
    }
}
