//! A fleet of 20 clusters in 3 waves reaches replicating while workers are SIGKILLed every few
//! seconds; every target then matches its source row for row, and the event log shows each phase
//! entered exactly once per epoch.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{digest, psql, Env, SAMPLE_SCHEMA};

const SOURCES: usize = 4;
const DBS_PER_SOURCE: usize = 5;

#[test]
fn twenty_clusters_reach_replicating_while_workers_are_killed() {
    let env = Env::new("fleet");
    let sources: Vec<_> = (0..SOURCES).map(|i| env.source(&format!("src{i}"))).collect();
    let mut manifest = String::from("[fleet]\nname = \"big\"\nmax_concurrent = 8\nmax_per_source_host = 3\nbreaker_threshold = 0.5\n");
    let mut clusters = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        for d in 0..DBS_PER_SOURCE {
            let db = format!("db{d}");
            s.psql("postgres", &format!("CREATE DATABASE {db}")).expect("db");
            psql(&s.dsn(&db), SAMPLE_SCHEMA);
            let name = format!("c{i}-{d}");
            let wave = clusters.len() % 3 + 1;
            manifest.push_str(&format!("\n[[cluster]]\nname = \"{name}\"\nsource = \"{}\"\nwave = {wave}\n", s.dsn(&db)));
            clusters.push((name, s.dsn(&db)));
        }
    }
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let _scheduler = env.scheduler();
    let worker_args = ["--max-attempts", "50", "--concurrency", "6"];
    let mut workers = vec![env.worker("w0", &worker_args), env.worker("w1", &worker_args)];
    let start = Instant::now();
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_secs(4);
    let mut generation = 2;
    loop {
        let cs = env.clusters();
        if cs.len() == clusters.len() && cs.iter().all(common::in_sync) {
            break;
        }
        for c in &cs {
            let phase = c["phase"].as_str().unwrap_or("");
            assert!(phase != "failed" && phase != "aborting" && phase != "aborted", "cluster went wrong: {c}");
        }
        assert!(start.elapsed() < Duration::from_secs(900), "fleet not replicating after 15 min: {cs:?}\n{}", workers[0].log_tail());
        if Instant::now() >= next_kill {
            let victim = kills % workers.len();
            workers[victim].kill9();
            kills += 1;
            workers[victim] = env.worker(&format!("w{generation}"), &worker_args);
            generation += 1;
            next_kill = Instant::now() + Duration::from_secs(4);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("fleet replicating after {:?} and {kills} worker kills", start.elapsed());
    assert!(kills >= 3, "the test must actually kill workers ({kills})");

    // Changes after hydration flow through replication too.
    for (_, dsn) in &clusters {
        psql(dsn, "INSERT INTO items (payload, n) SELECT 'late', g FROM generate_series(1, 50) g; \
                   UPDATE items SET n = -n WHERE id % 7 = 0; DELETE FROM pairs WHERE b % 5 = 0;");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (name, dsn) in &clusters {
        let target = env.target_dsn(name);
        loop {
            let same = digest(dsn, "items", "id") == digest(&target, "items", "id")
                && digest(dsn, "pairs", "a, b") == digest(&target, "pairs", "a, b");
            if same {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: target does not match its source");
            std::thread::sleep(Duration::from_millis(200));
        }
        // Sequences were copied: the next id on the target does not collide with copied rows.
        let max_id: i64 = psql(&target, "SELECT max(id) FROM items").parse().expect("max id");
        let seq: i64 = psql(&target, "SELECT last_value FROM items_id_seq").parse().expect("seq");
        assert!(seq >= 3000 && seq <= max_id, "{name}: sequence at {seq}, rows up to {max_id}");
    }

    // The event log: each phase entered exactly once per epoch, epochs consecutive, in order.
    let rows = env.cp_query(
        "SELECT m.cluster || ',' || e.to_phase || ',' || e.epoch FROM dmf.events e JOIN dmf.migrations m ON m.id = e.migration \
         WHERE e.kind = 'transition' ORDER BY e.id",
    );
    let mut per: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    let mut seen = HashSet::new();
    for line in rows.lines() {
        let parts: Vec<&str> = line.split(',').collect();
        let (cluster, phase, epoch) = (parts[0].to_string(), parts[1].to_string(), parts[2].parse::<i64>().expect("epoch"));
        assert!(seen.insert((cluster.clone(), epoch)), "{cluster}: epoch {epoch} entered twice");
        per.entry(cluster).or_default().push((phase, epoch));
    }
    for (name, _) in &clusters {
        let entries = &per[name];
        let phases: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        let expected = ["preflight", "provisioning", "schema", "hydrating", "replicating", "validating", "shadow_reads"];
        assert!(phases.len() >= 5 && phases[..] == expected[..phases.len()], "{name}: {phases:?}");
        let epochs: Vec<i64> = entries.iter().map(|(_, e)| *e).collect();
        assert_eq!(epochs, (1..=phases.len() as i64).collect::<Vec<_>>(), "{name}");
    }
    // Waves went in order: no wave-3 cluster left pending before every wave-1 cluster settled.
    let order = env.cp_query(
        "SELECT string_agg(c.wave::text, ',' ORDER BY e.id) FROM dmf.events e JOIN dmf.migrations m ON m.id = e.migration \
         JOIN dmf.clusters c ON c.name = m.cluster WHERE e.kind = 'transition' AND e.to_phase = 'preflight'",
    );
    let waves: Vec<i32> = order.split(',').map(|w| w.parse().expect("wave")).collect();
    let mut sorted = waves.clone();
    sorted.sort();
    assert_eq!(waves, sorted, "waves released out of order");
}
