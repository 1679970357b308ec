//! A worker killed during the flip, at each step that matters: before the hold, after the hold,
//! after the fence, after the route moved. Each migration either completes the flip or returns to
//! the source and flips again; traffic is never left held, never routed to the target while the
//! source takes writes, and no client transaction fails or is lost.

mod common;

use std::time::{Duration, Instant};

use common::*;

const POINTS: &[&str] = &["start", "held", "fenced", "routed"];

#[test]
fn a_worker_killed_at_any_step_of_the_flip_leaves_traffic_on_one_side() {
    let env = Env::new("flip-crash");
    let src = env.source("src");
    let mut manifest = String::from("[fleet]\nname = \"f\"\n");
    for p in POINTS {
        let db = format!("app_{p}");
        src.psql("postgres", &format!("CREATE DATABASE {db}")).expect("create database");
        run_ok(std::process::Command::new(pgbench_bin()).args(["-i", "-s", "1", "-q", "-d"]).arg(src.dsn(&db)));
        psql(&src.dsn(&db), "ALTER TABLE pgbench_history REPLICA IDENTITY FULL");
        psql(&src.dsn(&db), APP_CLIENT_GRANTS);
        manifest.push_str(&format!("\n[[cluster]]\nname = \"{db}\"\nsource = \"{}\"\n", src.dsn(&db)));
    }
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let proxies: Vec<ProxyProc> = POINTS.iter().map(|p| env.proxy(&format!("proxy-{p}"), &format!("app_{p}"), &[])).collect();
    let _scheduler = env.scheduler();
    let faults: Vec<String> = POINTS.iter().map(|p| format!("app_{p}:{p}")).collect();
    let faults = faults.join(",");
    // every fault kills the whole worker, so it also interrupts the other clusters' flips in
    // progress: each of those is undone and counted as an attempt, more than the default allows
    let flags = ["--audit-window-s", "1", "--shadow-reads-s", "2", "--soak-s", "600", "--flip-max-lag-ms", "50", "--flip-max-attempts", "10"];
    let fault_dir = env.path().join("faults");
    std::fs::create_dir_all(&fault_dir).expect("fault dir");
    let fault_dir = fault_dir.to_str().expect("utf-8 path").to_string();
    let start_worker = |n: usize| env.worker_env(&format!("w{n}"), &flags, &[("DMF_FAULT_FLIP", faults.as_str()), ("DMF_FAULT_DIR", fault_dir.as_str())]);
    let mut worker = start_worker(0);
    env.wait_for("all hydrated", Duration::from_secs(240), |cs| cs.len() == POINTS.len() && cs.iter().all(in_sync));

    let benches: Vec<Bench> = POINTS
        .iter()
        .zip(&proxies)
        .map(|(p, proxy)| Bench::start(env.path(), &format!("load-{p}"), &proxy.dsn(&format!("app_{p}")), &["-c", "2", "-j", "1", "-T", "100", "-R", "100"]))
        .collect();

    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let clusters = env.clusters();
        if clusters.iter().all(|c| matches!(c["phase"].as_str(), Some("flipped" | "failed" | "aborted"))) {
            break;
        }
        assert!(Instant::now() < deadline, "flips did not finish: {clusters:?}\n{}", worker.log_tail());
        if !worker.is_alive() {
            crashes += 1;
            worker = start_worker(crashes);
        }
        // never split: a route on the target means the source is fenced
        let states = env.states();
        for p in POINTS {
            let cluster = format!("app_{p}");
            let target = states.get(&cluster).and_then(|s| s.target.target_dsn.clone());
            let primary = env.cp_query(&format!("SELECT primary_endpoint FROM dmf.routes WHERE cluster = '{cluster}'"));
            if target.as_deref() == Some(primary.as_str()) {
                assert_eq!(psql(&src.dsn(&cluster), "SHOW default_transaction_read_only"), "on", "{cluster}: routed to the target while the source takes writes");
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let history = || {
        let events = env.cp_query("SELECT string_agg(cluster || ' ' || kind || ' ' || coalesce(from_phase, '') || '->' || coalesce(to_phase, '') || ' ' || left(coalesce(detail, ''), 300), E'\n' ORDER BY id) FROM dmf.events WHERE kind = 'transition'");
        let mut logs = String::new();
        for n in 0..=crashes {
            let text = std::fs::read_to_string(env.path().join(format!("w{n}.log"))).unwrap_or_default();
            for l in text.lines().filter(|l| l.contains("DMF_FAULT") || l.contains("undoing") || l.contains("traffic moved")) {
                logs.push_str(&format!("w{n}: {l}\n"));
            }
        }
        format!("{events}\n{logs}")
    };
    assert_eq!(crashes, POINTS.len(), "each fault killed the worker once:\n{}", history());

    for (p, bench) in POINTS.iter().zip(benches) {
        let cluster = format!("app_{p}");
        let r = bench.wait();
        assert!(r.ok && r.failed == 0 && r.processed > 0, "{cluster}: pgbench failed:\n{}", r.report);
        let flip = env.state(&cluster).flip;
        assert_eq!(env.phase_of(&cluster), "flipped", "{cluster}\n{}", history());
        assert_eq!(env.cp_query(&format!("SELECT hold FROM dmf.routes WHERE cluster = '{cluster}'")), "f", "{cluster}: traffic left held");
        let target = env.target_dsn(&cluster);
        let rows: i64 = psql(&target, "SELECT count(*) FROM pgbench_history").parse().expect("count");
        assert_eq!(rows, r.processed, "{cluster}: every transaction is on the target");
        assert_eq!(
            psql(&target, "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)"),
            "t",
            "{cluster}: balances"
        );
        assert_eq!(psql(&src.dsn(&cluster), "SHOW default_transaction_read_only"), "on", "{cluster}: source fenced");
        let attempts = flip.attempts;
        // (a worker that died right after the route moved never recorded how long it held)
        if let Some(held_ms) = flip.held_ms {
            assert!(held_ms < 2000.0, "{cluster}: the flip held traffic for {held_ms:.1} ms");
        }
        assert!(std::path::Path::new(&fault_dir).join(format!("{cluster}-{p}")).exists(), "{cluster}: the fault fired");
        if *p != "routed" {
            // (after `routed` the next run only finishes the flip; before it, the next run finds
            // the flip half-done, puts traffic back on the source and flips again)
            assert!(attempts >= 2, "{cluster}: attempts {attempts}");
            // (the undo is recorded in the flip's state; its transition event may be missing when
            // another cluster's fault killed the worker before the engine recorded it)
            let undone = format!("{:?}", flip.undone);
            let all = env.cp_query(&format!("SELECT string_agg(kind || ' ' || coalesce(from_phase, '') || '->' || coalesce(to_phase, '') || ' ' || coalesce(detail, ''), E'\n' ORDER BY id) FROM dmf.events WHERE cluster = '{cluster}'"));
            assert!(undone.contains("worker was lost"), "{cluster}: the half-done flip was undone: {undone}\n{all}");
        }
        eprintln!("{cluster}: flip attempts {attempts}, traffic held {:?} ms on the flip that finished, {} transactions, 0 failed", flip.held_ms, r.processed);
    }
}

/// A worker stopped (SIGSTOP) inside the flip, after the hold and the fence, just before it moves
/// the route, until its lease expires: a second worker takes over and undoes the flip. When the
/// first wakes up, none of its writes land: traffic stays on the source, which takes writes.
#[test]
fn a_worker_stalled_past_its_lease_inside_the_flip_cannot_move_the_route_when_it_wakes() {
    let env = Env::new("flip-stall");
    let src = env.source("src");
    let source = env.enqueue_app(&src, "CREATE TABLE notes (id int PRIMARY KEY, body text)");
    let _proxy = env.proxy("proxy", "app", &[]);
    let _scheduler = env.scheduler();
    let fault_dir = env.path().join("faults");
    std::fs::create_dir_all(&fault_dir).expect("fault dir");
    let lease = ["--lease-ttl-s", "3", "--reconcile-s", "1", "--flip-max-attempts", "5", "--soak-s", "600", "--flip-max-lag-ms", "200"];
    let mut flags_a = vec!["--audit-window-s", "1", "--shadow-reads-s", "1"];
    flags_a.extend_from_slice(&lease);
    let mut stalled = env.worker_env("w-stalled", &flags_a, &[("DMF_FAULT_FLIP", "app:sequences:stop"), ("DMF_FAULT_DIR", fault_dir.to_str().expect("path"))]);
    let marker = fault_dir.join("app-sequences");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !marker.exists() {
        assert!(std::time::Instant::now() < deadline && stalled.is_alive(), "the flip never reached the fault:\n{}", stalled.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    // the second worker waits long in shadow_reads, so the flip it undoes stays undone
    let mut flags_b = vec!["--audit-window-s", "1", "--shadow-reads-s", "120"];
    flags_b.extend_from_slice(&lease);
    let taker = env.worker("w-taker", &flags_b);
    env.wait_for("the flip undone by the second worker", Duration::from_secs(60), |cs| {
        cs.first().is_some_and(|c| c["phase"] == "shadow_reads") && !env.state("app").flip.undone.is_empty()
    });
    assert_eq!(psql(&source, "SHOW default_transaction_read_only"), "off", "the undo lifted the fence");

    // the stalled worker wakes up right where it stopped: its route move must not land
    let pid = stalled.child.id().to_string();
    run_ok(std::process::Command::new("kill").args(["-CONT", &pid]));
    // once it has given up the stale attempt it is a healthy worker again, which may start a new
    // flip of its own (with a lease of its own) after its short shadow reads: it is stopped there,
    // so that what is checked below is the stale attempt alone
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&stalled.log).unwrap_or_default().contains("activity cancelled; leaving the decision to the next run") {
        assert!(std::time::Instant::now() < deadline, "the woken worker never gave up its stale attempt:\n{}", stalled.log_tail());
        std::thread::sleep(Duration::from_millis(20));
    }
    stalled.kill9();
    std::thread::sleep(Duration::from_secs(2));
    let route = env.cp_query("SELECT (primary_endpoint = (SELECT source_dsn FROM dmf.clusters WHERE name = 'app')) || ' ' || hold FROM dmf.routes");
    assert_eq!(route, "true false", "traffic stays on the source, released\n{}\n{}", stalled.log_tail(), taker.log_tail());
    assert_eq!(psql(&source, "SHOW default_transaction_read_only"), "off", "the source still takes writes");
    assert_eq!(env.phase_of("app"), "shadow_reads");
    psql(&source, "INSERT INTO notes VALUES (1, 'after the stall')");
    let log = std::fs::read_to_string(&stalled.log).unwrap_or_default();
    assert!(log.contains("lease ran out") || log.contains("the lease was lost") || log.contains("no longer holds its lease"), "the stalled worker stopped acting:\n{}", stalled.log_tail());
    let _ = stalled.kill9();
}
