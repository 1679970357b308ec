//! The factory run as a factory: a fleet of small clusters on pool instances, every cluster with
//! its proxy, some with live write traffic as their own roles, workers SIGKILLed throughout, the
//! control plane and one proxy restarted, and some clusters sabotaged between hydration and their
//! flip. Every healthy cluster completes; every sabotaged one aborts, named, before any traffic
//! moved; no client transaction fails, no committed write is lost, and a sweep of every instance
//! finds nothing left behind.
//!
//! The test runs 12 clusters; `bench/fleet.sh` runs the same driver with 400
//! (`fleet_bench`, ignored here) and prints the figures.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{psql, try_psql, Env, Guard, LocalCluster, Proc, ProxyProc};

/// How a cluster is sabotaged, and the abort reason (and words of its detail) that must name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sabotage {
    AddColumn,
    DropSlot,
    DisableSubscription,
    ChangeTargetRow,
    LockTargetTable,
    DropTable,
}

const SABOTAGES: [Sabotage; 6] =
    [Sabotage::AddColumn, Sabotage::DropSlot, Sabotage::DisableSubscription, Sabotage::ChangeTargetRow, Sabotage::LockTargetTable, Sabotage::DropTable];

impl Sabotage {
    fn expected(self) -> (&'static str, &'static str) {
        match self {
            Sabotage::AddColumn => ("schema_drift", "orders"),
            Sabotage::DropSlot => ("slot_lost", "dmf_slot_"),
            Sabotage::DisableSubscription => ("replication_stopped", "disabled"),
            Sabotage::ChangeTargetRow => ("audit_mismatch", "customers"),
            Sabotage::LockTargetTable => ("replication_lag", "waited"),
            Sabotage::DropTable => ("schema_drift", "dropped"),
        }
    }
}

struct Plan {
    clusters: usize,
    sources: usize,
    targets: usize,
    wave: usize,
    max_concurrent: usize,
    /// Clusters started and not finished at once (the manifest's `max_active`).
    max_active: usize,
    per_source_host: usize,
    traffic: usize,
    sabotaged: usize,
    kill_every: Duration,
    rows: (u64, u64),
    worker_args: Vec<String>,
    /// The harness's test timings (watch 0.5 s, short leases) or production's.
    test_timings: bool,
    timeout: Duration,
    /// Print the figures (the bench).
    report: bool,
}

/// A tiny deterministic generator (xorshift), seeded from `SEED` or the clock; the seed is printed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(42) | 1
        });
        eprintln!("fleet: SEED={seed}");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Enough connections, slots and apply workers for dozens of migrations per instance.
const INSTANCE_CONF: &str = "
max_connections = 400
max_replication_slots = 200
max_wal_senders = 200
max_logical_replication_workers = 64
max_worker_processes = 96
max_sync_workers_per_subscription = 1
shared_buffers = 32MB
";

const SCHEMA: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers (id), amount numeric(12,2), created_at timestamptz DEFAULT now());
CREATE INDEX orders_customer ON orders (customer_id);
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE events (id bigserial PRIMARY KEY, client int NOT NULL, payload text, at timestamptz DEFAULT now());
INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 200) g;
";

struct Cluster {
    name: String,
    source: usize,
    target: usize,
    dsn: String,
    sabotage: Option<Sabotage>,
    traffic: bool,
}

/// One application's write load through its proxy, in 60-second pgbench segments that go on until
/// its cluster has completed.
struct Load {
    cluster: usize,
    dsn: String,
    script: PathBuf,
    running: Option<(Child, PathBuf, PathBuf)>,
    segments: usize,
    processed: i64,
    failed: i64,
    reports: Vec<String>,
}

impl Load {
    fn start_segment(&mut self, dir: &std::path::Path) {
        let n = self.segments;
        self.segments += 1;
        let out = dir.join(format!("load-{}-{n}.out", self.cluster));
        let err = dir.join(format!("load-{}-{n}.err", self.cluster));
        let child = Command::new(common::pgbench_bin())
            .args(["-n", "-c", "2", "-j", "1", "-R", "4", "-T", "60", "-f"])
            .arg(&self.script)
            .arg(&self.dsn)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("load log"))
            .stderr(std::fs::File::create(&err).expect("load log"))
            .spawn()
            .expect("start pgbench");
        self.running = Some((child, out, err));
    }

    /// Whether the running segment has ended (its counts added).
    fn poll(&mut self) -> bool {
        let Some((child, out, err)) = &mut self.running else { return true };
        match child.try_wait() {
            Ok(None) => false,
            Ok(Some(status)) => {
                let r = common::BenchResult::parse(status.success(), &std::fs::read_to_string(&out).unwrap_or_default(), &std::fs::read_to_string(&err).unwrap_or_default())
                    .unwrap_or_else(|e| panic!("load of cluster {}: {e}", self.cluster));
                self.processed += r.processed;
                self.failed += r.failed;
                if r.failed > 0 || !r.ok {
                    self.reports.push(r.report);
                }
                self.running = None;
                true
            }
            Err(e) => panic!("load of cluster {}: {e}", self.cluster),
        }
    }
}

/// The resident memory high-water mark of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU time (user and system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What the activities recorded for `cluster`, through `dmf status` as an operator reads it; a
/// control plane that is restarting or too busy to take a connection is asked again.
fn state_of(env: &Env, cluster: &str) -> common::MigrationState {
    let mut last = String::new();
    for _ in 0..30 {
        let out = env.dmf(&["status", cluster, "--json"]);
        if out.status.success() {
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("dmf status {cluster} --json: bad JSON ({e})"));
            return serde_json::from_value(doc["clusters"][0]["state"].clone()).unwrap_or_else(|e| panic!("state of {cluster} in dmf status --json: {e}: {doc}"));
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("dmf status {cluster} failed for a minute: {last}");
}

fn run(plan: Plan) {
    let mut rng = Rng::new();
    let env = Env::with_control_plane_conf("fleet-scale", "max_connections = 2000\nshared_buffers = 256MB\n");
    let started_setup = Instant::now();
    let mut sources: Vec<Guard> = Vec::new();
    for i in 0..plan.sources {
        let s = LocalCluster::ephemeral(env.path(), &format!("src{i}"), INSTANCE_CONF).expect("source instance");
        // the instance-wide application role of this source's services, and the template of
        // their databases
        s.psql("postgres", &format!("CREATE ROLE app_s{i} LOGIN PASSWORD 'app-s{i}-pw'")).expect("source role");
        s.psql("postgres", "CREATE DATABASE tmpl").expect("template database");
        psql(&s.dsn("tmpl"), SCHEMA);
        psql(&s.dsn("tmpl"), &format!("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO app_s{i}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_s{i}"));
        sources.push(s);
    }
    let targets: Vec<Guard> =
        (0..plan.targets).map(|i| LocalCluster::ephemeral(env.path(), &format!("pool{i}"), INSTANCE_CONF).expect("pool instance")).collect();

    // which clusters are sabotaged (every kind at least once when there are six or more) and which
    // carry traffic (never a sabotaged one)
    let mut picks: Vec<usize> = (0..plan.clusters).collect();
    for i in (1..picks.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        picks.swap(i, j);
    }
    let sabotaged: HashMap<usize, Sabotage> = picks[..plan.sabotaged].iter().enumerate().map(|(n, k)| (*k, SABOTAGES[n % SABOTAGES.len()])).collect();
    let traffic: HashSet<usize> = picks[plan.sabotaged..plan.sabotaged + plan.traffic].iter().copied().collect();

    let mut clusters = Vec::new();
    let mut manifest = format!(
        "[fleet]\nname = \"scale\"\nmax_concurrent = {}\nmax_active = {}\nmax_per_source_host = {}\nbreaker_threshold = 0.5\n",
        plan.max_concurrent, plan.max_active, plan.per_source_host
    );
    let mut users: Vec<String> = (0..plan.sources).map(|i| format!("\"app_s{i}\" \"app-s{i}-pw\"\n")).collect();
    for k in 0..plan.clusters {
        let (si, ti) = (k % plan.sources, (k / plan.sources) % plan.targets);
        let name = format!("c{k:04}");
        let s = &sources[si];
        s.psql("postgres", &format!("CREATE DATABASE {name} TEMPLATE tmpl")).expect("database");
        let rows = rng.range(plan.rows.0, plan.rows.1);
        // a role of this cluster's own (a grant names it, so it is copied), and the writer role
        // of a cluster with traffic
        let mut sql = format!(
            "INSERT INTO orders (customer_id, amount) SELECT 1 + g % 200, g / 100.0 FROM generate_series(1, {rows}) g; SELECT setval('invoice_no', {}); \
             CREATE ROLE r_{name} NOLOGIN; GRANT SELECT ON customers TO r_{name};",
            1000 + rows
        );
        if traffic.contains(&k) {
            sql.push_str(&format!("CREATE ROLE w_{name} LOGIN PASSWORD 'w-{name}-pw'; GRANT INSERT, SELECT ON events TO w_{name}; GRANT USAGE ON SEQUENCE events_id_seq TO w_{name};"));
            users[si].push_str(&format!("\"w_{name}\" \"w-{name}-pw\"\n"));
        }
        psql(&s.dsn(&name), &sql);
        let wave = k / plan.wave + 1;
        let pause = if sabotaged.get(&k) == Some(&Sabotage::ChangeTargetRow) { "pause_before = [\"validating\"]\n" } else { "" };
        manifest.push_str(&format!(
            "\n[[cluster]]\nname = \"{name}\"\nsource = \"{}\"\nwave = {wave}\ntarget_instance = \"{}\"\n{pause}",
            s.dsn(&name),
            targets[ti].dsn("postgres")
        ));
        clusters.push(Cluster { name, source: si, target: ti, dsn: s.dsn(&format!("c{k:04}")), sabotage: sabotaged.get(&k).copied(), traffic: traffic.contains(&k) });
    }
    let users_files: Vec<PathBuf> = users
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let p = env.path().join(format!("users-src{i}.txt"));
            std::fs::write(&p, text).expect("users file");
            p
        })
        .collect();
    eprintln!("fleet: {} clusters on {} sources and {} pool instances set up in {:?}", plan.clusters, plan.sources, plan.targets, started_setup.elapsed());

    let enqueued = Instant::now();
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));

    // a proxy per cluster, sidecar of its application
    let proxy_args = ["--threads", "1", "--idle-poll-us", "0"];
    let mut proxies: Vec<ProxyProc> = clusters
        .iter()
        .map(|c| env.proxy(&format!("proxy-{}", c.name), &c.name, &[&proxy_args[..], &["--users-file", users_files[c.source].to_str().expect("utf-8")]].concat()))
        .collect();
    let mut loads: Vec<Load> = clusters
        .iter()
        .enumerate()
        .filter(|(_, c)| c.traffic)
        .map(|(k, c)| {
            let script = env.path().join(format!("write-{}.sql", c.name));
            std::fs::write(&script, "INSERT INTO events (client, payload) VALUES (:client_id, 'written through the proxy');\n").expect("script");
            let dsn = proxies[k].dsn_as(&format!("w_{}", c.name), &format!("w-{}-pw", c.name), &c.name);
            Load { cluster: k, dsn, script, running: None, segments: 0, processed: 0, failed: 0, reports: Vec::new() }
        })
        .collect();
    for l in &mut loads {
        l.start_segment(env.path());
    }

    let scheduler = env.scheduler();
    let worker_args: Vec<&str> = plan.worker_args.iter().map(String::as_str).collect();
    let start_worker = |n: usize| -> Proc {
        if plan.test_timings {
            env.worker(&format!("w{n}"), &worker_args)
        } else {
            let dir = env.targets_dir();
            let mut args = vec!["worker", "--name"];
            let name = format!("w{n}");
            args.push(&name);
            args.extend_from_slice(&["--local-dir", dir.to_str().expect("utf-8")]);
            args.extend_from_slice(&worker_args);
            env.spawn_dmf(&name, &args)
        }
    };
    let mut workers = vec![start_worker(0), start_worker(1)];
    let mut generation = 2;
    let mut kills = 0;
    let mut next_kill = Instant::now() + plan.kill_every;
    let mut cp_restarted = false;
    let mut proxy_restarted: Option<String> = None;
    let mut lock_holders: Vec<Child> = Vec::new();
    // sabotage: when (after it was first seen following its source) and whether done
    let mut sabotage_at: HashMap<usize, Instant> = HashMap::new();
    let mut sabotaged_in: HashMap<usize, String> = HashMap::new();
    let (mut peak_cp_connections, mut peak_qps, mut last_xacts): (i64, f64, Option<(Instant, i64)>) = (0, 0.0, None);
    let mut peak_rss: BTreeMap<&str, u64> = BTreeMap::new();
    // the last CPU time seen of every dmf process (killed workers' included), by pid
    let mut cpu: HashMap<u32, (&str, u64)> = HashMap::new();
    let mut phases: HashMap<String, (String, String)> = HashMap::new();
    let settled_at;
    loop {
        let now = Instant::now();
        assert!(enqueued.elapsed() < plan.timeout, "fleet not settled after {:?}: {:?}\n{}", plan.timeout, phases, workers[0].log_tail());
        // phases, straight from the control plane (dmf status is the operator's view)
        let rows = match try_psql(&env.url, "SELECT cluster || '|' || phase || '|' || paused || '|' || coalesce(abort_reason, '') || '|' || coalesce(replace(last_error, E'\\n', ' '), '') FROM dmf.migrations") {
            Ok(r) => r,
            Err(_) if cp_restarted => String::new(),
            Err(e) => panic!("control plane: {e}"),
        };
        for line in rows.lines() {
            let f: Vec<&str> = line.splitn(5, '|').collect();
            if f.len() == 5 {
                phases.insert(f[0].to_string(), (f[1].to_string(), format!("{}|{}|{}", f[2], f[3], f[4])));
            }
        }
        let phase = |k: usize| phases.get(&clusters[k].name).map(|p| p.0.as_str()).unwrap_or("");
        for (name, (p, detail)) in &phases {
            assert!(p != "failed", "cluster {name} failed: {detail}\n{}", workers[0].log_tail());
            let k: usize = name[1..].parse().expect("cluster number");
            assert!(
                clusters[k].sabotage.is_some() || !matches!(p.as_str(), "aborting" | "aborted"),
                "healthy cluster {name} went to {p}: {detail}"
            );
        }
        let completed = phases.values().filter(|p| p.0 == "completed").count();
        let aborted = phases.values().filter(|p| p.0 == "aborted").count();
        if completed + aborted == plan.clusters {
            settled_at = Instant::now();
            break;
        }

        // control-plane load
        if let Ok(v) = try_psql(&env.url, "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') || ' ' || (SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database)") {
            let f: Vec<i64> = v.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if f.len() == 2 {
                peak_cp_connections = peak_cp_connections.max(f[0]);
                if let Some((t, x)) = last_xacts {
                    let dt = now.duration_since(t).as_secs_f64();
                    if dt > 0.5 {
                        peak_qps = f64::max(peak_qps, (f[1] - x) as f64 / dt);
                    }
                }
                last_xacts = Some((now, f[1]));
            }
        }
        for (kind, pids) in [("worker", workers.iter().map(|w| w.child.id()).collect::<Vec<_>>()), ("scheduler", vec![scheduler.child.id()]), ("proxy", proxies.iter().map(|p| p.proc.child.id()).collect())] {
            let max = pids.iter().map(|p| rss_kib(*p)).max().unwrap_or(0);
            let e = peak_rss.entry(kind).or_default();
            *e = (*e).max(max);
            for pid in pids {
                let ticks = cpu_ticks(pid);
                if ticks > 0 {
                    cpu.insert(pid, (kind, ticks));
                }
            }
        }

        // faults
        if now >= next_kill {
            let victim = kills % workers.len();
            workers[victim].kill9();
            kills += 1;
            workers[victim] = start_worker(generation);
            generation += 1;
            next_kill = now + plan.kill_every;
        }
        // mid-run: early enough that the healthy clusters, which now finish close together, are
        // not all done before it (a sixth of them, a third of the fleet at most)
        if !cp_restarted && completed >= (plan.clusters / 3).min(((plan.clusters - plan.sabotaged) / 6).max(1)) {
            eprintln!("fleet: restarting the control plane ({completed} completed)");
            env.cp.stop().expect("stop the control plane");
            std::thread::sleep(Duration::from_secs(1));
            env.cp.start().expect("start the control plane");
            cp_restarted = true;
        }
        if proxy_restarted.is_none() {
            // a proxy of a cluster without traffic that has not flipped yet
            if let Some(k) = (0..clusters.len()).find(|k| !clusters[*k].traffic && clusters[*k].sabotage.is_none() && matches!(phase(*k), "validating" | "shadow_reads")) {
                let c = &clusters[k];
                eprintln!("fleet: killing and restarting the proxy of {}", c.name);
                proxies[k].proc.kill9();
                proxies[k] = env.proxy(&format!("proxy-{}-2", c.name), &c.name, &[&proxy_args[..], &["--users-file", users_files[c.source].to_str().expect("utf-8")]].concat());
                proxy_restarted = Some(c.name.clone());
            }
        }

        // sabotage, at a random moment after the cluster follows its source and before its flip
        for (k, c) in clusters.iter().enumerate() {
            let Some(kind) = c.sabotage else { continue };
            if sabotaged_in.contains_key(&k) {
                continue;
            }
            let p = phase(k);
            let paused = phases.get(&c.name).is_some_and(|p| p.1.starts_with("true"));
            let ready = match kind {
                // before the audit gate opens: the migration waits before validating
                Sabotage::ChangeTargetRow => p == "validating" && paused,
                _ => matches!(p, "replicating" | "validating" | "shadow_reads"),
            };
            if !ready {
                assert!(!matches!(p, "flipping" | "flipped" | "completed"), "cluster {} reached {p} before it was sabotaged", c.name);
                continue;
            }
            let at = *sabotage_at.entry(k).or_insert_with(|| now + Duration::from_millis(if kind == Sabotage::ChangeTargetRow { 0 } else { rng.range(0, 4000) }));
            if now < at {
                continue;
            }
            let state = state_of(&env, &c.name);
            let target = state.target.target_dsn.clone().unwrap_or_else(|| panic!("{}: no target yet in {p}", c.name));
            let short = c.name.clone();
            match kind {
                Sabotage::AddColumn => {
                    psql(&c.dsn, "ALTER TABLE orders ADD COLUMN note text; INSERT INTO orders (customer_id, amount, note) VALUES (1, 1, 'after the DDL')");
                }
                Sabotage::DropTable => {
                    psql(&c.dsn, "DROP TABLE events");
                }
                Sabotage::DropSlot => {
                    // the subscription's walsender holds the slot: end it and drop the slot at once
                    let slot = psql(&c.dsn, "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'dmf\\_slot\\_%' AND database = current_database()");
                    let mut dropped = false;
                    for _ in 0..50 {
                        let sql = format!("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active_pid IS NOT NULL; SELECT pg_drop_replication_slot('{slot}')");
                        if try_psql(&c.dsn, &sql).is_ok() {
                            dropped = true;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    assert!(dropped, "{short}: could not drop slot {slot:?} from outside");
                }
                Sabotage::DisableSubscription => {
                    let sub = psql(&target, "SELECT subname FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())");
                    psql(&target, &format!("ALTER SUBSCRIPTION {sub} DISABLE"));
                }
                Sabotage::ChangeTargetRow => {
                    psql(&target, "UPDATE customers SET name = 'changed on the target' WHERE id = 7");
                    let out = env.dmf(&["resume", &c.name]);
                    assert!(out.status.success(), "resume {short}: {}", String::from_utf8_lossy(&out.stderr));
                }
                Sabotage::LockTargetTable => {
                    // a session on the target holds the table for minutes (SHARE, as a CREATE INDEX
                    // does: reads go on); a write on the source then waits for it in the apply
                    // worker, and every change after it too
                    let holder = Command::new(dmf_activities::providers::local::program("psql").expect("psql"))
                        .args(["-X", "-q", "-d", &target, "-c", "BEGIN; LOCK TABLE orders IN SHARE MODE; SELECT pg_sleep(600)"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("lock holder");
                    lock_holders.push(holder);
                    std::thread::sleep(Duration::from_millis(500));
                    psql(&c.dsn, "INSERT INTO orders (customer_id, amount) VALUES (1, 1)");
                }
            }
            eprintln!("fleet: {short} sabotaged ({kind:?}) in {p}");
            sabotaged_in.insert(k, p.to_string());
        }

        // traffic goes on until its cluster completed
        for l in &mut loads {
            if l.poll() && phase(l.cluster) != "completed" {
                l.start_segment(env.path());
            }
        }
        std::thread::sleep(Duration::from_millis(if plan.clusters > 50 { 1000 } else { 300 }));
    }
    let fleet_minutes = settled_at.duration_since(enqueued).as_secs_f64() / 60.0;
    let deadline = Instant::now() + Duration::from_secs(120);
    for l in &mut loads {
        while !l.poll() {
            assert!(Instant::now() < deadline, "load of cluster {} did not end", l.cluster);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for mut h in lock_holders {
        let _ = h.kill();
        let _ = h.wait();
    }
    drop(workers);
    drop(scheduler);
    eprintln!("fleet: settled in {fleet_minutes:.1} min with {kills} worker kills");
    assert!(kills >= 2, "the run must kill workers ({kills})");
    assert!(cp_restarted, "the control plane was not restarted");
    assert!(proxy_restarted.is_some(), "no proxy was restarted");

    // outcomes: the sabotaged clusters aborted, named, before any traffic moved
    let reasons = env.cp_query("SELECT cluster || '|' || coalesce(abort_reason, '') || ': ' || coalesce(replace(last_error, E'\\n', ' '), '') FROM dmf.migrations WHERE phase = 'aborted' ORDER BY cluster");
    let reasons: BTreeMap<String, String> = reasons.lines().filter_map(|l| l.split_once('|')).map(|(c, r)| (c.to_string(), r.to_string())).collect();
    // traffic moved = the flip's move pointed the route's primary at the target (a flip that
    // began and was undone, its catch-up blocked by the sabotage, moved nothing: its hold was
    // released on the source)
    let flipped = env.cp_query(
        "SELECT string_agg(DISTINCT e.cluster, ',') FROM dmf.events e JOIN dmf.migrations m ON m.cluster = e.cluster \
         WHERE m.phase = 'aborted' AND e.kind = 'route' AND e.actor LIKE '% flip' AND (e.detail::jsonb->>'moved')::boolean",
    );
    assert!(flipped.is_empty(), "aborted clusters whose traffic had moved to the target: {flipped}");
    // (the same look finds every completed cluster's move)
    let moved = env.cp_query(
        "SELECT count(DISTINCT e.cluster) FROM dmf.events e JOIN dmf.migrations m ON m.cluster = e.cluster \
         WHERE m.phase = 'completed' AND e.kind = 'route' AND e.actor LIKE '% flip' AND (e.detail::jsonb->>'moved')::boolean",
    );
    assert_eq!(moved, (plan.clusters - plan.sabotaged).to_string(), "completed clusters whose route a flip moved");
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for (k, c) in clusters.iter().enumerate() {
        let Some(kind) = c.sabotage else { continue };
        let reason = reasons.get(&c.name).unwrap_or_else(|| panic!("{} ({kind:?}, in {:?}) did not abort: {:?}", c.name, sabotaged_in.get(&k), phases.get(&c.name)));
        let (want, words) = kind.expected();
        // an apply worker stuck on a lock trips the lag guard or, once its walsender gave up on
        // it, the inactive-slot guard: either way the lock must be named
        let reason_ok = reason.starts_with(want) || (kind == Sabotage::LockTargetTable && reason.starts_with("slot_inactive"));
        assert!(reason_ok && reason.contains(words), "{} ({kind:?}): aborted with {reason:?}, expected {want} naming {words}", c.name);
        *by_reason.entry(want.to_string()).or_default() += 1;
        if plan.report {
            println!("aborted {} {kind:?} (in {}): {reason}", c.name, sabotaged_in.get(&k).map(String::as_str).unwrap_or("?"));
        }
    }
    let completed = phases.values().filter(|p| p.0 == "completed").count();

    // traffic: no failed transaction, every committed write on the new primary, the flip's pause
    let (mut failed, mut lost, mut pauses) = (0i64, 0i64, Vec::new());
    for l in &loads {
        let c = &clusters[l.cluster];
        failed += l.failed;
        for r in &l.reports {
            eprintln!("load of {}: {r}", c.name);
        }
        let target = env.target_dsn(&c.name);
        let rows: i64 = psql(&target, "SELECT count(*) FROM events").parse().expect("count");
        lost += (l.processed - rows).abs();
        assert!(l.processed > 0, "{}: no write went through", c.name);
        let held = state_of(&env, &c.name).flip.held_ms.unwrap_or_else(|| panic!("{}: no flip pause recorded", c.name));
        pauses.push(held);
    }
    pauses.sort_by(f64::total_cmp);

    // a sweep of every instance: nothing of dmf's left
    let mut leaked = Vec::new();
    let completed_names: HashSet<String> = phases.iter().filter(|(_, p)| p.0 == "completed").map(|(n, _)| n.clone()).collect();
    let per_instance = "SELECT 'slot ' || slot_name FROM pg_replication_slots UNION ALL SELECT 'subscription ' || subname FROM pg_subscription \
                        UNION ALL SELECT 'origin ' || roname FROM pg_replication_origin UNION ALL SELECT 'role ' || rolname FROM pg_roles WHERE rolname LIKE 'dmf\\_repl\\_%'";
    let per_database = "SELECT 'publication ' || pubname FROM pg_publication UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = '_dmf'";
    for (i, s) in sources.iter().enumerate() {
        leaked.extend(psql(&s.dsn("postgres"), per_instance).lines().map(|l| format!("source {i}: {l}")));
        for c in clusters.iter().filter(|c| c.source == i) {
            leaked.extend(psql(&c.dsn, per_database).lines().map(|l| format!("source {i} {}: {l}", c.name)));
        }
    }
    for (i, t) in targets.iter().enumerate() {
        leaked.extend(psql(&t.dsn("postgres"), per_instance).lines().map(|l| format!("pool {i}: {l}")));
        let dbs = psql(&t.dsn("postgres"), "SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')");
        for db in dbs.lines() {
            if !completed_names.contains(db) {
                leaked.push(format!("pool {i}: database {db}"));
                continue;
            }
            leaked.extend(psql(&t.dsn(db), per_database).lines().map(|l| format!("pool {i} {db}: {l}")));
        }
        for c in clusters.iter().filter(|c| c.target == i && c.sabotage.is_some()) {
            leaked.extend(psql(&t.dsn("postgres"), &format!("SELECT 'role ' || rolname FROM pg_roles WHERE rolname IN ('r_{0}', 'w_{0}')", c.name)).lines().map(|l| format!("pool {i}: {l}")));
        }
    }
    let claims = env.cp_query("SELECT count(*) FROM dmf.target_roles t JOIN dmf.migrations m ON m.cluster = t.cluster WHERE m.phase = 'aborted'");
    if claims != "0" {
        leaked.push(format!("control plane: {claims} role claims of aborted clusters"));
    }

    if plan.report {
        let durations = env.cp_query(
            "WITH t AS (SELECT e.migration, e.to_phase AS phase, e.at, lead(e.at) OVER (PARTITION BY e.migration ORDER BY e.id) AS until \
             FROM dmf.events e WHERE e.kind = 'transition') \
             SELECT phase || ' ' || count(*) || ' ' || round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM until - at))::numeric, 1) || ' ' \
             || round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM until - at))::numeric, 1) || ' ' || round(max(extract(epoch FROM until - at))::numeric, 1) \
             FROM t WHERE until IS NOT NULL GROUP BY phase ORDER BY min(at)",
        );
        println!("\n{:<16} {:>7} {:>9} {:>9} {:>9}", "phase", "entered", "p50 (s)", "p99 (s)", "max (s)");
        for line in durations.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 5 {
                println!("{:<16} {:>7} {:>9} {:>9} {:>9}", f[0], f[1], f[2], f[3], f[4]);
            }
        }
        println!(
            "\nflip pause of the {} clusters with traffic (ms): p50 {:.1} p99 {:.1} max {:.1}",
            pauses.len(),
            percentile(&pauses, 0.5),
            percentile(&pauses, 0.99),
            pauses.last().copied().unwrap_or(0.0)
        );
        println!("aborted by reason: {by_reason:?}");
        println!("control plane: peak {peak_cp_connections} client connections, peak {peak_qps:.0} transactions/s");
        println!(
            "peak RSS (MiB): worker {:.1}, scheduler {:.1}, proxy {:.1} (largest of {})",
            peak_rss.get("worker").copied().unwrap_or(0) as f64 / 1024.0,
            peak_rss.get("scheduler").copied().unwrap_or(0) as f64 / 1024.0,
            peak_rss.get("proxy").copied().unwrap_or(0) as f64 / 1024.0,
            proxies.len()
        );
        let ticks_per_s = 100.0;
        let cpu_of = |kind: &str| cpu.values().filter(|(k, _)| *k == kind).map(|(_, t)| *t).sum::<u64>() as f64 / ticks_per_s;
        let minutes = fleet_minutes.max(1.0 / 60.0);
        println!(
            "CPU: workers {:.0} s in all ({:.2} s per cluster), scheduler {:.0} s, proxies {:.0} s ({:.2} s per proxy per minute)",
            cpu_of("worker"),
            cpu_of("worker") / plan.clusters as f64,
            cpu_of("scheduler"),
            cpu_of("proxy"),
            cpu_of("proxy") / proxies.len() as f64 / minutes
        );
        println!("faults: {kills} worker SIGKILLs, control plane restarted, proxy of {} restarted", proxy_restarted.as_deref().unwrap_or("-"));
        let jobs = env.cp_query("SELECT count(*) || ' jobs (' || count(*) FILTER (WHERE status = 'Done') || ' done)' FROM apalis.jobs");
        println!("queue: {jobs} in apalis.jobs at the end");
        println!("leftovers found by the sweep: {}", leaked.len());
        for l in &leaked {
            println!("  {l}");
        }
        println!(
            "fleet_completed={completed} fleet_aborted={} failed_txns={failed} lost_writes={lost} leaked={}",
            reasons.len(),
            leaked.len()
        );
        println!("fleet_minutes={fleet_minutes:.1}");
    }
    assert!(leaked.is_empty(), "left behind: {leaked:#?}");
    assert_eq!(failed, 0, "failed client transactions");
    assert_eq!(lost, 0, "committed writes missing on the new primary");
    assert_eq!(completed, plan.clusters - plan.sabotaged, "completed clusters");
    assert_eq!(reasons.len(), plan.sabotaged, "aborted clusters: {reasons:?}");
    drop(proxies);
    drop(targets);
    drop(sources);
}

#[test]
fn a_sabotaged_fleet_under_faults_completes_the_healthy_and_aborts_the_rest_cleanly() {
    run(Plan {
        clusters: 12,
        sources: 2,
        targets: 2,
        wave: 6,
        max_concurrent: 12,
        max_active: 12,
        per_source_host: 6,
        traffic: 3,
        sabotaged: 6,
        kill_every: Duration::from_secs(8),
        rows: (1000, 3000),
        worker_args: ["--audit-window-s", "10", "--shadow-reads-s", "10", "--soak-s", "30", "--lag-window-s", "20", "--concurrency", "8"].map(String::from).to_vec(),
        test_timings: true,
        timeout: Duration::from_secs(900),
        report: true,
    });
}

/// `bench/fleet.sh`: the fleet at size (`CLUSTERS`, default 400), with production's timings but
/// for the windows (audit and shadow reads 10 s, soak 30 s).
#[test]
#[ignore = "a benchmark: run by bench/fleet.sh"]
fn fleet_bench() {
    let n = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let clusters = n("CLUSTERS", 400);
    run(Plan {
        clusters,
        sources: n("SOURCES", 8),
        targets: n("TARGETS", 4),
        wave: 50,
        max_concurrent: n("MAX_CONCURRENT", 50),
        max_active: n("MAX_ACTIVE", 60),
        per_source_host: n("PER_SOURCE_HOST", 8),
        traffic: n("TRAFFIC", 40).min(clusters / 4),
        sabotaged: n("SABOTAGED", 12).min(clusters / 4),
        kill_every: Duration::from_secs(20),
        rows: (1000, 20000),
        worker_args: ["--audit-window-s", "10", "--shadow-reads-s", "10", "--soak-s", "30", "--lag-window-s", "30", "--concurrency", "32"].map(String::from).to_vec(),
        test_timings: false,
        timeout: Duration::from_secs(n("TIMEOUT_S", 3600) as u64),
        report: true,
    });
}
