//! Test harness: a throwaway control plane, source clusters and `dmf` processes, all under one
//! temporary directory, stopped and removed when the `Env` drops (also during a panic).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use dmf_activities::providers::local::{Guard, LocalCluster};
pub use dmf_activities::state::MigrationState;

pub struct Env {
    pub cp: Guard,
    pub url: String,
    children: Mutex<Vec<(String, Child)>>,
    // Last: removed after everything in it is stopped.
    pub base: tempfile::TempDir,
}

/// The application role every test source has, and its password (see [`Env::source_conf`]).
pub const APP_CLIENT: &str = "app_client";
pub const APP_CLIENT_PW: &str = "app-client-pw";

/// Grants that name [`APP_CLIENT`] in a database, so that a migration copies the role (with its
/// password) to the target and the proxies' sessions can log in there after a flip.
pub const APP_CLIENT_GRANTS: &str = "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_client; \
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO app_client";

fn unique() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A `dmf` process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }
}

pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn dmf_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dmf")
}

/// A command's output within a deadline: a child that hangs (a client waiting for an answer that
/// never comes) is killed and the test fails, with what it printed, instead of CI running out of
/// time with no word of which call hung.
pub trait OutputWithin {
    fn output_within(&mut self, limit: Duration) -> Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self, limit: Duration) -> Output {
        use std::io::Read;
        let mut child = self.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("start {self:?}: {e}"));
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut all = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut all);
                }
                all
            })
        };
        let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for child") {
                break status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                // (not joined: a grandchild may still hold the pipes)
                panic!("{self:?} did not finish within {limit:?} (killed)");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
    }
}

/// How long one psql or dmf command of a test may take before it counts as hung.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// Run SQL with psql against a connection string; returns trimmed unaligned output.
pub fn psql(dsn: &str, sql: &str) -> String {
    match try_psql(dsn, sql) {
        Ok(out) => out,
        Err(e) => panic!("psql failed on {dsn}: {sql}\n{e}"),
    }
}

/// psql that reports failure (its stderr) instead of panicking.
pub fn try_psql(dsn: &str, sql: &str) -> Result<String, String> {
    let psql = dmf_activities::providers::local::program("psql").expect("psql");
    let out = Command::new(psql)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql])
        .stdin(Stdio::null())
        .output_within(COMMAND_LIMIT);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

impl Env {
    pub fn new(name: &str) -> Env {
        Env::with_control_plane_conf(name, "")
    }

    /// An `Env` whose control plane has extra postgresql.conf lines (a fleet's connections).
    pub fn with_control_plane_conf(name: &str, conf: &str) -> Env {
        let base = tempfile::Builder::new().prefix(&format!("dmf-{name}-")).tempdir_in("/tmp").expect("tempdir");
        dmf_activities::providers::local::prepare_dir(base.path()).expect("prepare base dir");
        let cp = LocalCluster::ephemeral(base.path(), "control-plane", conf).expect("control plane");
        let url = cp.dsn("postgres");
        let env = Env { cp, url, children: Mutex::new(Vec::new()), base };
        let out = env.dmf(&["init"]);
        assert!(out.status.success(), "dmf init: {}", String::from_utf8_lossy(&out.stderr));
        env
    }

    pub fn path(&self) -> &Path {
        self.base.path()
    }

    /// A fresh source cluster for this test.
    pub fn source(&self, name: &str) -> Guard {
        self.source_conf(name, "")
    }

    /// A fresh source cluster with extra postgresql.conf lines. It has the application role
    /// [`APP_CLIENT`] that [`ProxyProc::dsn`] logs in as: it reads and writes every table and may
    /// create objects in `public` of every database made after it, but is no superuser, and no
    /// object names it (so a migration does not copy it to a target: flip tests make their own).
    pub fn source_conf(&self, name: &str, conf: &str) -> Guard {
        let c = LocalCluster::ephemeral(self.path(), name, conf).expect("source cluster");
        c.psql("postgres", &format!("CREATE ROLE {APP_CLIENT} LOGIN PASSWORD '{APP_CLIENT_PW}' IN ROLE pg_read_all_data, pg_write_all_data"))
            .expect("application role");
        c.psql("template1", &format!("GRANT CREATE ON SCHEMA public TO {APP_CLIENT}")).expect("application role's grant");
        c
    }

    /// A users file for a proxy with [`APP_CLIENT`]'s password and `more` (user, password) pairs.
    pub fn users_file(&self, more: &[(&str, &str)]) -> PathBuf {
        let path = self.path().join(format!("users-{}.txt", unique()));
        let mut text = format!("\"{APP_CLIENT}\" \"{APP_CLIENT_PW}\"\n");
        for (u, p) in more {
            text.push_str(&format!("\"{u}\" \"{p}\"\n"));
        }
        std::fs::write(&path, text).expect("users file");
        path
    }

    pub fn dmf(&self, args: &[&str]) -> Output {
        Command::new(dmf_bin())
            .args(args)
            .env("DMF_DATABASE_URL", &self.url)
            .env("DMF_LOG", "warn")
            .stdin(Stdio::null())
            .output_within(COMMAND_LIMIT)
    }

    /// Run dmf and parse its `--json` output; panics with stderr on failure.
    pub fn dmf_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.dmf(args);
        assert!(out.status.success(), "dmf {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("dmf {args:?}: bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub fn enqueue(&self, file_name: &str, manifest: &str) -> Output {
        let path = self.path().join(file_name);
        std::fs::write(&path, manifest).expect("write manifest");
        self.dmf(&["enqueue", path.to_str().expect("utf-8 path"), "--json"])
    }

    fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        self.spawn_env(name, args, &[])
    }

    /// Any `dmf` command as a background process (its output in `<name>.log`).
    pub fn spawn_dmf(&self, name: &str, args: &[&str]) -> Proc {
        self.spawn_env(name, args, &[])
    }

    fn spawn_env(&self, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let log = self.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(dmf_bin())
            .args(args)
            .env("DMF_DATABASE_URL", &self.url)
            .env("DMF_LOG", "info")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn dmf");
        Proc { child, log }
    }

    pub fn targets_dir(&self) -> PathBuf {
        self.path().join("targets")
    }

    /// A worker with test-friendly timings; `extra` adds or overrides flags.
    pub fn worker(&self, name: &str, extra: &[&str]) -> Proc {
        self.worker_env(name, extra, &[])
    }

    /// `worker` with extra environment variables (fault injection).
    pub fn worker_env(&self, name: &str, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        self.worker_with(name, true, extra, envs)
    }

    /// A worker whose local targets are made as in production: without `--fast-local-targets`,
    /// so that dmf's role there has a generated password.
    pub fn worker_production_targets(&self, name: &str, extra: &[&str]) -> Proc {
        self.worker_with(name, false, extra, &[])
    }

    fn worker_with(&self, name: &str, fast: bool, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
        let dir = self.targets_dir();
        let mut args = vec!["worker", "--name", name, "--local-dir", dir.to_str().expect("utf-8 path")];
        if fast {
            args.push("--fast-local-targets");
        }
        for (flag, value) in [("--watch-interval", "0.5"), ("--lease-ttl-s", "6"), ("--heartbeat-s", "1"), ("--reconcile-s", "2")] {
            if !extra.contains(&flag) {
                args.extend_from_slice(&[flag, value]);
            }
        }
        args.extend_from_slice(extra);
        self.spawn_env(name, &args, envs)
    }

    pub fn scheduler(&self) -> Proc {
        self.spawn("scheduler", &["scheduler", "--interval", "0.3"])
    }

    pub fn status(&self) -> serde_json::Value {
        self.dmf_json(&["status", "--json"])
    }

    /// Clusters by name -> their status object.
    pub fn clusters(&self) -> Vec<serde_json::Value> {
        self.status()["clusters"].as_array().cloned().unwrap_or_default()
    }

    pub fn phase_of(&self, cluster: &str) -> String {
        self.clusters()
            .iter()
            .find(|c| c["cluster"] == cluster)
            .and_then(|c| c["phase"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Poll `dmf status` until `done` holds; panic with the status and logs after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut(&[serde_json::Value]) -> bool) {
        let start = Instant::now();
        loop {
            let clusters = self.clusters();
            if done(&clusters) {
                return;
            }
            if start.elapsed() > timeout {
                let phases: Vec<String> = clusters
                    .iter()
                    .map(|c| format!("{} {} {}", c["cluster"], c["phase"], c["last_error"]))
                    .collect();
                let mut logs = String::new();
                for entry in std::fs::read_dir(self.path()).into_iter().flatten().flatten() {
                    if entry.path().extension().is_some_and(|e| e == "log") {
                        logs.push_str(&format!("--- {}\n{}\n", entry.path().display(), tail(&entry.path(), 30)));
                    }
                }
                panic!("timed out after {:?} waiting for {what}\n{}\n{logs}", timeout, phases.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Make database `app` on `src`, run `setup_sql` in it, and enqueue it as the one cluster
    /// `app` of fleet `f`. Returns the source connection string.
    pub fn enqueue_app(&self, src: &LocalCluster, setup_sql: &str) -> String {
        src.psql("postgres", "CREATE DATABASE app").expect("create database app");
        let dsn = src.dsn("app");
        psql(&dsn, setup_sql);
        let out = self.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{dsn}\"\n"));
        assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
        dsn
    }

    /// A control-plane query (for checks the CLI does not expose, like the raw event log).
    pub fn cp_query(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }

    /// What the activities recorded for `cluster`, as `dmf status --json` shows it.
    pub fn state(&self, cluster: &str) -> MigrationState {
        let doc = self.dmf_json(&["status", cluster, "--json"]);
        let state = doc["clusters"][0]["state"].clone();
        serde_json::from_value(state).unwrap_or_else(|e| panic!("state of {cluster} in dmf status --json: {e}: {doc}"))
    }

    /// What the activities recorded for every cluster, by name, from one `dmf status --json`.
    pub fn states(&self) -> std::collections::HashMap<String, MigrationState> {
        self.clusters()
            .into_iter()
            .map(|c| {
                let name = c["cluster"].as_str().unwrap_or_default().to_string();
                let state = serde_json::from_value(c["state"].clone()).unwrap_or_else(|e| panic!("state of {name} in dmf status --json: {e}"));
                (name, state)
            })
            .collect()
    }

    /// The target connection string a migration provisioned.
    pub fn target_dsn(&self, cluster: &str) -> String {
        self.state(cluster).target.target_dsn.unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Stop every target the workers provisioned (the processes themselves are Procs owned
        // by the test and already dropped).
        dmf_activities::providers::local::stop_all_under(&self.targets_dir());
    }
}

/// Hydrated and following the source: replicating, or past it into validating (the auditor) or
/// shadow reads (the default `--shadow-reads-s` keeps a migration there for ten minutes).
pub fn in_sync(c: &serde_json::Value) -> bool {
    matches!(c["phase"].as_str(), Some("replicating" | "validating" | "shadow_reads"))
}

/// Row count and an order-independent digest of a table's rows.
pub fn digest(dsn: &str, table: &str, order_by: &str) -> String {
    psql(dsn, &format!("SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, '|' ORDER BY {order_by}), '')) FROM {table} t"))
}

/// Replication objects dmf could leave behind on a cluster: slots, publications, subscriptions,
/// and the heartbeat schema.
pub fn leftovers(dsn: &str) -> String {
    psql(
        dsn,
        "SELECT (SELECT count(*) FROM pg_replication_slots) || ' slots, ' || \
                (SELECT count(*) FROM pg_publication) || ' publications, ' || \
                (SELECT count(*) FROM pg_subscription) || ' subscriptions, ' || \
                (SELECT count(*) FROM pg_namespace WHERE nspname = '_dmf') || ' heartbeat schemas, ' || \
                (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'dmf\\_repl\\_%') || ' replication roles'",
    )
}

pub const CLEAN: &str = "0 slots, 0 publications, 0 subscriptions, 0 heartbeat schemas, 0 replication roles";

/// Small but varied data: a serial key, a composite key, an index, a sequence.
pub const SAMPLE_SCHEMA: &str = "
CREATE TABLE items (id bigserial PRIMARY KEY, payload text, n int, at timestamptz DEFAULT now());
INSERT INTO items (payload, n) SELECT md5(g::text), g FROM generate_series(1, 3000) g;
CREATE INDEX items_n ON items (n);
CREATE TABLE pairs (a int, b int, v text, PRIMARY KEY (a, b));
INSERT INTO pairs SELECT g % 50, g, 'v' || g FROM generate_series(1, 1500) g;
";

/// A running `dmf proxy`, killed when dropped.
pub struct ProxyProc {
    pub proc: Proc,
    pub port: u16,
    pub metrics_port: u16,
}

impl Env {
    /// Start `dmf proxy` for `cluster` on free ports and wait until it accepts connections.
    /// Unless `extra` names a `--users-file`, the proxy gets one with [`APP_CLIENT`]'s password.
    pub fn proxy(&self, name: &str, cluster: &str, extra: &[&str]) -> ProxyProc {
        self.proxy_env(name, cluster, extra, &[])
    }

    /// `proxy` with extra environment variables (e.g. another control-plane URL).
    pub fn proxy_env(&self, name: &str, cluster: &str, extra: &[&str], envs: &[(&str, &str)]) -> ProxyProc {
        let users = self.users_file(&[]);
        // a free port can be taken by someone else's outgoing connection before the proxy binds
        // it (a fleet's hundreds of connections): pick others and start again
        for attempt in 0.. {
            let port = dmf_activities::providers::local::free_port().expect("port");
            let metrics_port = dmf_activities::providers::local::free_port().expect("port");
            let listen = format!("127.0.0.1:{port}");
            let metrics = format!("127.0.0.1:{metrics_port}");
            let mut args = vec!["proxy", "--cluster", cluster, "--listen", &listen, "--metrics", &metrics];
            if !extra.contains(&"--users-file") {
                args.extend_from_slice(&["--users-file", users.to_str().expect("utf-8 path")]);
            }
            args.extend_from_slice(extra);
            let mut proc = self.spawn_env(name, &args, envs);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_ok() {
                    return ProxyProc { proc, port, metrics_port };
                }
                if !proc.is_alive() {
                    let log = proc.log_tail();
                    assert!(attempt < 5 && log.contains("Address already in use"), "dmf proxy exited:\n{log}");
                    break;
                }
                assert!(Instant::now() < deadline, "dmf proxy did not start:\n{}", proc.log_tail());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// `dmf route set <cluster> <args> --wait-ms 10000`.
    pub fn route_set(&self, cluster: &str, args: &[&str]) {
        let mut all = vec!["route", "set", cluster];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--wait-ms", "10000"]);
        let out = self.dmf(&all);
        assert!(out.status.success(), "dmf {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl ProxyProc {
    /// A connection string through this proxy as the application role [`APP_CLIENT`], with its
    /// password, as an application logs in.
    pub fn dsn(&self, db: &str) -> String {
        self.dsn_as(APP_CLIENT, APP_CLIENT_PW, db)
    }

    /// A connection string through this proxy as `user` with `password` (none when empty): the
    /// proxy asks what the server asks of the user and checks it against its users file, which
    /// also holds the password it logs in to the backend with.
    pub fn dsn_as(&self, user: &str, password: &str, db: &str) -> String {
        let pw = if password.is_empty() { String::new() } else { format!(":{password}") };
        format!("postgres://{user}{pw}@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// One counter from the proxy's Prometheus endpoint.
    pub fn metric(&self, name: &str) -> f64 {
        self.metric_labelled(name, "")
    }

    /// One relay thread's value of a per-thread metric (`dmf_proxy_relay_*{thread="N"}`).
    pub fn thread_metric(&self, name: &str, thread: usize) -> f64 {
        self.metric_labelled(name, &format!("thread=\"{thread}\""))
    }

    /// The first series of metric `name` whose labels contain `label`.
    fn metric_labelled(&self, name: &str, label: &str) -> f64 {
        let body = http_get(self.metrics_port, "/metrics");
        let prefix = format!("dmf_proxy_{name}{{");
        body.lines()
            .find(|l| l.starts_with(&prefix) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}{{{label}}} in:\n{body}"))
    }

    /// CPU time (user + system, clock ticks) of the proxy's thread named `name`.
    pub fn thread_ticks(&self, name: &str) -> u64 {
        let task = format!("/proc/{}/task", self.proc.child.id());
        for t in std::fs::read_dir(&task).expect("proxy threads").flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let stat = std::fs::read_to_string(t.path().join("stat")).expect("thread stat");
                let f: Vec<&str> = stat.rsplit_once(") ").expect("stat fields").1.split(' ').collect();
                return f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
            }
        }
        panic!("the proxy has no thread named {name}");
    }

    /// SIGTERM (graceful drain).
    pub fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.proc.child.id().to_string()]).status();
    }
}

/// A plain HTTP GET on loopback; the whole response, headers included.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect for HTTP GET");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n").as_bytes()).expect("HTTP request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("HTTP response");
    response
}

pub fn pgbench_bin() -> PathBuf {
    dmf_activities::providers::local::program("pgbench").expect("pgbench")
}

/// A pgbench run in the background, with its per-transaction log (`-l`) under `dir`.
pub struct Bench {
    pub child: Child,
    started: Instant,
    /// `-T`, or a minute-long allowance for a run by transaction count.
    runs_for: Duration,
    pub out: PathBuf,
    pub err: PathBuf,
    pub log_prefix: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long past its run time a pgbench run may take to end.
pub const BENCH_GRACE: Duration = Duration::from_secs(180);

/// What a finished pgbench run reported.
#[derive(Debug)]
pub struct BenchResult {
    pub ok: bool,
    pub processed: i64,
    /// Failed transactions plus clients pgbench aborted (it does not count those as failed).
    pub failed: i64,
    pub report: String,
}

impl BenchResult {
    /// Read pgbench's summary strictly: a summary without its counts is an error, not a zero.
    pub fn parse(ok: bool, stdout: &str, stderr: &str) -> Result<BenchResult, String> {
        let report = format!("{stdout}{stderr}");
        let number = |prefix: &str| -> Result<i64, String> {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| rest.trim().split(['/', ' ']).next().and_then(|n| n.parse().ok()))
                .ok_or_else(|| format!("pgbench printed no {prefix:?} line:\n{report}"))
        };
        let processed = number("number of transactions actually processed:")?;
        let failed_transactions = number("number of failed transactions:")?;
        // "client 3 script 0 aborted in command 4 query 0: ..." per client; "Run was aborted"
        let aborted_clients = report.lines().filter(|l| l.contains("client ") && l.contains(" script ") && l.contains(" aborted in command")).count() as i64;
        let run_aborted = report.contains("Run was aborted");
        let failed = failed_transactions + aborted_clients.max(i64::from(run_aborted));
        Ok(BenchResult { ok: ok && !run_aborted, processed, failed, report })
    }
}

impl Bench {
    /// Start pgbench (TPC-B unless `args` say otherwise) against `dsn`, named `name` in `dir`.
    pub fn start(dir: &Path, name: &str, dsn: &str, args: &[&str]) -> Bench {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let log_prefix = dir.join(format!("{name}-txn"));
        let child = Command::new(pgbench_bin())
            .args(["-n", "-l", &format!("--log-prefix={}", log_prefix.display())])
            .args(args)
            .arg(dsn)
            .stdout(std::fs::File::create(&out).expect("pgbench log"))
            .stderr(std::fs::File::create(&err).expect("pgbench log"))
            .spawn()
            .expect("start pgbench");
        let runs_for = args
            .iter()
            .position(|a| *a == "-T")
            .and_then(|i| args.get(i + 1))
            .and_then(|t| t.parse().ok())
            .map_or(Duration::from_secs(60), Duration::from_secs);
        Bench { child, started: Instant::now(), runs_for, out, err, log_prefix }
    }

    /// Wait for pgbench to end and read its summary; panics when it printed none, or when it has
    /// not ended [`BENCH_GRACE`] after it should have (its clients wait for answers that do not
    /// come).
    pub fn wait(mut self) -> BenchResult {
        let ends = self.started + self.runs_for + BENCH_GRACE;
        let ok = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s.success(),
                Ok(None) if Instant::now() < ends => std::thread::sleep(Duration::from_millis(50)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let err = std::fs::read_to_string(&self.err).unwrap_or_default();
                    panic!("pgbench {} did not end {BENCH_GRACE:?} after its run time (killed); its clients hung:\n{err}", self.out.display());
                }
                Err(_) => break false,
            }
        };
        let stdout = std::fs::read_to_string(&self.out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.err).unwrap_or_default();
        BenchResult::parse(ok, &stdout, &stderr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every transaction pgbench logged: (completed at, in µs since the epoch; latency in µs).
    pub fn transactions(&self) -> Vec<(i64, i64)> {
        let dir = self.log_prefix.parent().expect("log dir");
        let prefix = self.log_prefix.file_name().and_then(|n| n.to_str()).expect("log prefix").to_string();
        let mut all = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if !entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
                continue;
            }
            for line in std::fs::read_to_string(entry.path()).unwrap_or_default().lines() {
                // client_id transaction_no time script_no time_epoch time_us
                // (a failed transaction has a word instead of its time: it has no latency)
                let f: Vec<&str> = line.split_whitespace().collect();
                let num = |i: usize| f.get(i).and_then(|x| x.parse::<i64>().ok());
                if let (Some(latency), Some(sec), Some(us)) = (num(2), num(4), num(5)) {
                    all.push((sec * 1_000_000 + us, latency));
                }
            }
        }
        all
    }
}

/// Run a program to completion; panics with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output_within(3 * COMMAND_LIMIT);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A TCP forwarder on loopback that can be cut (every connection closed, new ones refused) and
/// restored: a network partition between one process and a server.
pub struct Partition {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Partition {
    pub fn to(port: u16) -> Partition {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        let local = listener.local_addr().expect("addr").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", port)) else { continue };
                let mut list = o.lock().unwrap_or_else(|p| p.into_inner());
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        list.push(s);
                    }
                }
                drop(list);
                for (mut from, mut to) in [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())]
                    .into_iter()
                    .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Partition { port: local, cut, open }
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A local AWS API emulator (moto in server mode, `tests/moto/server.py`) on a free loopback port,
/// with fault injection; stopped when dropped (its stdin closes too, should the test die first).
pub struct Moto {
    child: Child,
    pub port: u16,
    pub url: String,
    faults: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Start the emulator with its own settings (`DMF_MOTO_*`, see tests/moto/server.py).
    pub fn start(dir: &Path, envs: &[(&str, &str)]) -> Moto {
        use std::io::BufRead;
        let faults = dir.join("moto-faults.json");
        std::fs::write(&faults, "[]").expect("faults file");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto/server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("0")
            .env("DMF_MOTO_FAULTS", &faults)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("moto.log")).expect("moto log"))
            .spawn()
            .expect("start moto (python3 -m pip install 'moto[server]')");
        let stdout = child.stdout.take().expect("moto stdout");
        let mut port = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("moto output");
            if let Some(p) = line.strip_prefix("port ") {
                port = p.trim().parse::<u16>().ok();
            }
            if line.trim() == "ready" {
                break;
            }
        }
        let port = port.unwrap_or_else(|| panic!("moto did not start: {}", tail(&dir.join("moto.log"), 30)));
        Moto { child, port, url: format!("http://127.0.0.1:{port}"), faults }
    }

    /// The environment a worker needs to reach the emulator: the endpoint override and the
    /// standard chain's variables (dummy credentials, region).
    pub fn worker_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DMF_AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Make the next calls of some actions fail (see tests/moto/server.py).
    pub fn set_faults(&self, faults: serde_json::Value) {
        std::fs::write(&self.faults, faults.to_string()).expect("write faults");
    }

    /// How many calls each action received.
    pub fn calls(&self, action: &str) -> u64 {
        let response = http_get(self.port, "/__dmf_faults");
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("fault counts: {e}: {response}"));
        v["calls"][action].as_u64().unwrap_or(0)
    }

    fn aws_py(&self, args: &[&str]) -> serde_json::Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto/aws.py");
        let out = run_ok(Command::new("python3").arg(script).arg(&self.url).args(args));
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("aws.py {args:?}: {e}: {out}"))
    }

    /// A VPC with two subnets and a security group, and an RDS for PostgreSQL instance per
    /// `name:on|off` (rds.logical_replication set or not in its parameter group).
    pub fn seed(&self, sources: &[&str]) -> serde_json::Value {
        let mut args = vec!["seed"];
        args.extend_from_slice(sources);
        self.aws_py(&args)
    }

    /// A Secrets Manager secret `name` holding `value` (given on stdin, never on a command
    /// line); returns its ARN.
    pub fn create_secret(&self, name: &str, value: &str) -> String {
        use std::io::Write;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto/aws.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([self.url.as_str(), "create-secret", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("aws.py");
        child.stdin.take().expect("stdin").write_all(value.as_bytes()).expect("secret value");
        let out = child.wait_with_output().expect("aws.py");
        assert!(out.status.success(), "aws.py create-secret: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("aws.py output");
        v["arn"].as_str().expect("arn").to_string()
    }

    /// What exists in the emulator (RDS clusters, instances, groups; DMS endpoints, instances, tasks).
    pub fn inventory(&self) -> serde_json::Value {
        self.aws_py(&["inventory"])
    }
}

/// A protocol 3.0 startup packet for `user` and database `db`.
pub fn startup_packet(user: &str, db: &str) -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// Where a secret was found by [`Env::assert_no_secret`].
fn secret_in(secrets: &[&str], text: &str) -> Option<String> {
    secrets.iter().find(|s| text.contains(**s)).map(|s| s.to_string())
}

impl Env {
    /// No password in `secrets` shows anywhere a user or another process can read it: the command
    /// line of any process on this machine, the logs of this test's dmf processes, the `--json`
    /// outputs of `dmf status` and `dmf route show` (and `outputs`, other texts the test kept),
    /// and, with `control_plane`, every table of the control plane.
    pub fn assert_no_secret(&self, secrets: &[&str], outputs: &[&str], control_plane: bool) {
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if let Some(s) = secret_in(secrets, &cmdline) {
                panic!("password {s:?} on the command line of process {:?}: {cmdline}", entry.file_name());
            }
        }
        for entry in std::fs::read_dir(self.path()).expect("test dir").flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if let Some(s) = secret_in(secrets, &text) {
                    panic!("password {s:?} in {}", path.display());
                }
            }
        }
        let mut texts: Vec<(String, String)> = outputs.iter().enumerate().map(|(i, t)| (format!("output {i}"), t.to_string())).collect();
        for args in [&["status", "--json"][..], &["route", "show", "--json"][..]] {
            let out = self.dmf(args);
            texts.push((format!("dmf {args:?}"), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))));
        }
        for (what, text) in texts {
            if let Some(s) = secret_in(secrets, &text) {
                panic!("password {s:?} in {what}: {text}");
            }
        }
        if control_plane {
            let tables = psql(&self.url, "SELECT string_agg(format('%I.%I', schemaname, tablename), ' ') FROM pg_tables WHERE schemaname IN ('dmf', 'apalis')");
            for table in tables.split_whitespace() {
                for s in secrets {
                    let n = psql(&self.url, &format!("SELECT count(*) FROM {table} t WHERE strpos(t::text, '{s}') > 0"));
                    assert_eq!(n, "0", "password {s:?} in {n} rows of the control plane's {table}");
                }
            }
        }
    }
}
