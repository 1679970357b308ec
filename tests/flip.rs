//! The cutover end to end: a cluster under pgbench TPC-B load from 8 clients through two proxies
//! goes through shadow reads and the final flip with no failed transaction and every committed
//! transaction on the target, then rolls back with every write made on the target on the source.

mod common;

use std::time::Duration;

use common::*;

/// pgbench's own invariant: every delta went to one account, teller and branch, and is in the
/// history. Returns (history rows, the four sums) as text for the assertion message.
fn ledger(dsn: &str) -> (i64, String) {
    let rows: i64 = psql(dsn, "SELECT count(*) FROM pgbench_history").parse().expect("history count");
    let sums = psql(
        dsn,
        "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) || ' ' || \
                (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches) || ' ' || \
                (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers) || ' ' || \
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    (rows, sums)
}

fn consistent(sums: &str) -> bool {
    let v: Vec<&str> = sums.split(' ').collect();
    v.len() == 4 && v.iter().all(|x| *x == v[0])
}

/// TPC-B as the application role `app_user` (not a superuser), through both proxies, 4 clients each, for `seconds`. Each pgbench is held to 300 tps:
/// the worker flips only once the target's lag is under `--flip-max-lag-ms`, and unbounded load
/// on a machine shared with the rest of the suite can keep it above that until the load is over.
fn load(env: &Env, name: &str, proxies: [&ProxyProc; 2], seconds: u32) -> [Bench; 2] {
    let t = seconds.to_string();
    let args = ["-c", "4", "-j", "1", "-T", t.as_str(), "-R", "300", "-P", "5"];
    [
        Bench::start(env.path(), &format!("{name}-a"), &proxies[0].dsn_as("app_user", "app-pw", "app"), &args),
        Bench::start(env.path(), &format!("{name}-b"), &proxies[1].dsn_as("app_user", "app-pw", "app"), &args),
    ]
}

fn finish(env: &Env, name: &str, benches: [Bench; 2]) -> (i64, Vec<(i64, i64)>) {
    let mut processed = 0;
    let mut txns = Vec::new();
    for b in benches {
        txns.extend(b.transactions());
        let r = b.wait();
        assert!(r.ok && r.failed == 0 && r.processed > 0, "{name}: pgbench failed or had failed transactions:\n{}\n{}", r.report, env.cp_query("SELECT phase || ' ' || coalesce(last_error, '') FROM dmf.migrations"));
        processed += r.processed;
    }
    (processed, txns)
}

#[test]
fn flip_under_load_through_two_proxies_loses_nothing_and_rolls_back() {
    let env = Env::new("flip");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE app").expect("create app");
    run_ok(std::process::Command::new(pgbench_bin()).args(["-i", "-s", "1", "-q", "-d"]).arg(src.dsn("app")));
    let source = src.dsn("app");
    // pgbench_history has no key: preflight insists on a replica identity before publishing it
    psql(&source, "ALTER TABLE pgbench_history REPLICA IDENTITY FULL");
    // an application role that is not a superuser: the fence must keep it out of the source
    psql(&source, "CREATE ROLE app_user LOGIN PASSWORD 'app-pw'; GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO app_user");
    let as_app = source.replacen("postgres://postgres@", "postgres://app_user:app-pw@", 1);
    assert_eq!(try_psql(&as_app, "SELECT current_user"), Ok("app_user".to_string()));
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{source}\"\n"));
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    // the proxies log app_user in to backends with the password of their users file
    let users = env.path().join("users.txt");
    std::fs::write(&users, "\"app_user\" \"app-pw\"\n").expect("users file");
    let users = ["--users-file", users.to_str().expect("path")];
    let p1 = env.proxy("proxy-1", "app", &users);
    let p2 = env.proxy("proxy-2", "app", &users);
    let _scheduler = env.scheduler();
    let worker = env.worker(
        "w1",
        &["--audit-window-s", "2", "--shadow-reads-s", "3", "--soak-s", "600", "--flip-max-lag-ms", "50", "--hold-deadline-ms", "2000"],
    );
    env.wait_for("hydrated", Duration::from_secs(180), |cs| cs.first().is_some_and(|c| in_sync(c) || c["phase"] == "aborted"));
    assert!(in_sync(&env.clusters()[0]), "{}", worker.log_tail());

    // --- the flip, under load; one more session keeps a setting and a prepared statement and asks
    // for them all through the flip (it is parked at the hold, so it moves on the backend prepared
    // there)
    let watcher = session_watcher(p1.dsn_as("app_user", "app-pw", "app"));
    let benches = load(&env, "flip", [&p1, &p2], 45);
    env.wait_for("flipped", Duration::from_secs(120), |cs| {
        cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("flipped" | "failed" | "aborted" | "aborting")))
    });
    assert_eq!(env.phase_of("app"), "flipped", "{}", worker.log_tail());
    let (first, txns) = finish(&env, "load across the flip", benches);
    let watched = watcher.stop();
    assert_eq!(watched.failures, 0, "the watching session's setting or prepared statement was lost: {:?}", watched.errors);
    assert!(watched.on_target > 0 && watched.on_source > 0, "the watching session ran on both sides: {watched:?}");
    let target = env.target_dsn("app");
    let (rows, sums) = ledger(&target);
    assert_eq!(rows, first, "every transaction pgbench counted is on the target");
    assert!(consistent(&sums), "balances on the target: {sums}");
    assert_eq!(psql(&env.url, &format!("SELECT route_epoch > 0 AND primary_endpoint = '{target}' FROM dmf.routes")), "t");

    let flip = env.state("app").flip;
    let held_ms = flip.held_ms.expect("held_ms");
    // the budget is 100 ms; a bound this generous catches a flip that stalls traffic for seconds
    assert!(held_ms < 2000.0, "the flip held traffic for {held_ms:.1} ms");
    let held_at = flip.held_at.expect("held_at").timestamp_micros();
    let window_end = held_at + (held_ms * 1000.0) as i64 + 1_000_000;
    let during = txns.iter().filter(|(at, _)| *at >= held_at && *at <= window_end).map(|(_, l)| *l).max().unwrap_or(0);
    let overall = txns.iter().map(|(_, l)| *l).max().unwrap_or(0);
    eprintln!(
        "flip: traffic held {held_ms:.1} ms; longest transaction completing during the flip {:.1} ms (longest of the run {:.1} ms); {first} transactions, 0 failed; steps {:?}",
        during as f64 / 1000.0,
        overall as f64 / 1000.0,
        flip.timings_ms
    );
    // the source is fenced: a session that bypasses the proxies cannot write there
    assert_eq!(psql(&source, "SHOW default_transaction_read_only"), "on");
    assert!(src.psql("app", "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 0)").is_err(), "a direct write to the fenced source must fail");
    // and no role but dmf's (and superusers) can even open a session there to opt out of it
    let opted_out = try_psql(&as_app, "SET default_transaction_read_only = off; INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 0)");
    assert!(opted_out.as_ref().is_err_and(|e| e.contains("permission denied for database")), "an application role on the fenced source: {opted_out:?}");
    assert!(p1.metric("sessions_moved") + p2.metric("sessions_moved") >= 8.0, "every load session moved");

    // --- the rollback, under load: writes made on the target reach the source
    let benches = load(&env, "rollback", [&p1, &p2], 15);
    std::thread::sleep(Duration::from_secs(4));
    let out = env.dmf(&["rollback", "app"]);
    assert!(out.status.success(), "dmf rollback: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("rolled back", Duration::from_secs(90), |cs| {
        cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("rolled_back" | "failed")))
    });
    assert_eq!(env.phase_of("app"), "rolled_back", "{}", worker.log_tail());
    let (second, _) = finish(&env, "load across the rollback", benches);
    let (rows, sums) = ledger(&source);
    assert_eq!(rows, first + second, "every transaction of both runs is on the source");
    assert!(consistent(&sums), "balances on the source: {sums}");
    assert_eq!(psql(&source, "SHOW default_transaction_read_only"), "off", "the source takes writes again");
    assert_eq!(try_psql(&as_app, "SHOW default_transaction_read_only"), Ok("off".to_string()), "the application role connects to the source again");
    assert_eq!(psql(&target, "SHOW default_transaction_read_only"), "on", "the target is fenced");
    assert_eq!(env.cp_query(&format!("SELECT primary_endpoint = '{source}' FROM dmf.routes")), "t", "the route points at the source");
    let rollback_held_ms = env.state("app").rollback.held_ms.expect("rollback held_ms");
    assert!(rollback_held_ms < 2000.0, "the rollback held traffic for {rollback_held_ms:.1} ms");
    eprintln!("rollback: traffic held {rollback_held_ms:.1} ms; {second} transactions, 0 failed");

    // the cutover records: the flip and the rollback, each acknowledged by both proxies, with
    // the stall clients had at the hold (8 sessions at 300 tps each: some waited)
    let report = env.dmf_json(&["report", "app", "--json"]);
    let cutovers = report["cutovers"].as_array().expect("cutovers");
    let moved: Vec<&serde_json::Value> = cutovers.iter().filter(|c| c["outcome"] == "moved").collect();
    assert_eq!(moved.iter().map(|c| c["way"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["flip", "rollback"], "{report}");
    for c in &moved {
        assert_eq!(c["proxies_acknowledged"].as_array().map(Vec::len), Some(2), "{c}");
        assert!(c["final_lsn"].is_string() && c["applied_lsn"].is_string(), "{c}");
        assert!(c["pause_ms"].as_f64().is_some_and(|p| p > 0.0 && p < 2000.0), "{c}");
        let stall = c["longest_stall_ms"].as_f64().unwrap_or(-1.0);
        assert!(stall >= 0.0 && stall < 5000.0, "the longest client stall is recorded: {c}");
        eprintln!("{} cutover: pause {:.1} ms, longest client stall {stall:.1} ms", c["way"], c["pause_ms"].as_f64().unwrap_or(0.0));
    }
    assert!(moved[0]["audit_at_gate"]["rows_compared"].as_i64().unwrap_or(0) > 0, "{report}");
    assert!(moved[0]["reverse_start_lsn"].is_string(), "{report}");
    env.assert_no_secret(&["app-pw"], &[], true);
}

/// What the watching session saw: queries answered on each side, and anything wrong.
#[derive(Debug, Default)]
struct Watched {
    on_source: u64,
    on_target: u64,
    /// The first few errors (`failures` counts them all).
    errors: Vec<String>,
    failures: u64,
}

impl Watched {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.errors.len() < 5 {
            self.errors.push(what);
        }
    }
}

struct Watcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Watched>,
}

impl Watcher {
    fn stop(self) -> Watched {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("watcher thread")
    }
}

/// A session with `SET work_mem` and `PREPARE` that checks both every few milliseconds and notes
/// which side answered, by the server's port.
fn session_watcher(dsn: String) -> Watcher {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let mut w = Watched::default();
            let c = match connect(&dsn).await {
                Ok(c) => c,
                Err(e) => {
                    w.fail(format!("connect: {e:?}"));
                    return w;
                }
            };
            if let Err(e) = c.batch_execute("SET work_mem = '7MB'; PREPARE port_of AS SELECT current_setting('port')").await {
                w.fail(format!("setup: {e:?}"));
                return w;
            }
            let mut first_port: Option<String> = None;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                match c.simple_query("SHOW work_mem; EXECUTE port_of").await {
                    Ok(msgs) => {
                        let values: Vec<String> = msgs
                            .iter()
                            .filter_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                                _ => None,
                            })
                            .collect();
                        if values.first().map(String::as_str) != Some("7MB") {
                            w.fail(format!("work_mem is {values:?}"));
                        }
                        let port = values.get(1).cloned().unwrap_or_default();
                        if first_port.get_or_insert_with(|| port.clone()) == &port {
                            w.on_source += 1;
                        } else {
                            w.on_target += 1;
                        }
                    }
                    Err(e) => w.fail(format!("query: {}", e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()))),
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            w
        })
    });
    Watcher { stop, thread }
}

async fn connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cut_off_from_the_control_plane_during_the_flip_writes_nowhere() {
    let env = Env::new("flip-cut");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE app").expect("create app");
    let source = src.dsn("app");
    psql(&source, "CREATE TABLE notes (id int PRIMARY KEY, body text)");
    psql(&source, APP_CLIENT_GRANTS);
    let out = env.enqueue(
        "fleet.toml",
        &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{source}\"\npause_before = [\"flipping\"]\n"),
    );
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    // one proxy reaches the control plane through a link the test can cut
    let cp_port: u16 = env.url.rsplit(':').next().and_then(|s| s.split('/').next()).and_then(|p| p.parse().ok()).expect("control-plane port");
    let link = Partition::to(cp_port);
    let cut_url = env.url.replace(&format!(":{cp_port}/"), &format!(":{}/", link.port));
    let cut_off = env.proxy_env("proxy-cut", "app", &["--lease-ms", "1500", "--hold-timeout-s", "3"], &[("DMF_DATABASE_URL", cut_url.as_str())]);
    let healthy = env.proxy("proxy-ok", "app", &[]);
    let _scheduler = env.scheduler();
    let worker = env.worker("w1", &["--audit-window-s", "1", "--shadow-reads-s", "1", "--soak-s", "600", "--flip-max-lag-ms", "200"]);
    env.wait_for("paused before the flip", Duration::from_secs(180), |cs| {
        cs.first().is_some_and(|c| (c["phase"] == "flipping" && c["paused"] == true) || c["phase"] == "aborted")
    });
    assert_eq!(env.phase_of("app"), "flipping", "{}", worker.log_tail());

    let session = connect(&cut_off.dsn("app")).await.expect("connect through the proxy");
    session.execute("INSERT INTO notes VALUES (1, 'before the cut')", &[]).await.expect("write before the cut");
    link.cut();
    let out = env.dmf(&["resume", "app"]);
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("flipped", Duration::from_secs(60), |cs| cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("flipped" | "failed"))));
    assert_eq!(env.phase_of("app"), "flipped", "{}", worker.log_tail());
    let target = env.target_dsn("app");

    // cut off: its open session cannot write, and it takes no new session
    let err = session.execute("INSERT INTO notes VALUES (2, 'cut off')", &[]).await.expect_err("a write through a proxy without its lease");
    assert!(err.as_db_error().is_some_and(|e| e.code().code() == "57P03") || err.is_closed(), "{err:?}");
    assert!(connect(&cut_off.dsn("app")).await.is_err(), "a new session through the cut-off proxy");
    for (side, dsn) in [("source", &source), ("target", &target)] {
        assert_eq!(psql(dsn, "SELECT count(*) FROM notes WHERE id = 2"), "0", "the cut-off write reached the {side}");
    }
    // the healthy proxy writes to the target (replication back to the source copies it there later)
    let ok = connect(&healthy.dsn("app")).await.expect("connect through the healthy proxy");
    ok.execute("INSERT INTO notes VALUES (3, 'after the flip')", &[]).await.expect("write after the flip");
    assert_eq!(psql(&target, "SELECT count(*) FROM notes WHERE id IN (1, 3)"), "2");

    // back in touch, it follows the route to the target
    link.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let c = connect(&cut_off.dsn("app")).await?;
            c.execute("INSERT INTO notes VALUES (4, 'reconnected')", &[]).await
        };
        match attempt.await {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "the proxy did not recover: {e:?}\n{}", cut_off.proc.log_tail()),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(psql(&target, "SELECT count(*) FROM notes WHERE id = 4"), "1");
}

/// A raw protocol client that can stop reading: tokio-postgres always drains its socket.
struct RawClient {
    s: std::net::TcpStream,
}

impl RawClient {
    fn connect(port: u16, user: &str, db: &str) -> RawClient {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
        let mut body = 196608i32.to_be_bytes().to_vec();
        for kv in ["user", user, "database", db] {
            body.extend_from_slice(kv.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        s.write_all(&msg).expect("startup");
        let mut c = RawClient { s };
        c.until_ready().expect("login");
        c
    }

    fn query(&mut self, sql: &str) {
        use std::io::Write;
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.s.write_all(&msg).expect("send a query");
    }

    /// Read messages until ReadyForQuery; Err with the first error's text, or with how the
    /// connection ended.
    fn until_ready(&mut self) -> Result<(), String> {
        use std::io::Read;
        let mut error = None;
        loop {
            let mut head = [0u8; 5];
            if let Err(e) = self.s.read_exact(&mut head) {
                return Err(error.unwrap_or_else(|| format!("connection ended: {e}")));
            }
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
            let mut body = vec![0u8; len];
            if let Err(e) = self.s.read_exact(&mut body) {
                return Err(error.unwrap_or_else(|| format!("connection ended: {e}")));
            }
            match head[0] {
                b'E' => error = Some(String::from_utf8_lossy(&body).replace('\0', " ")),
                b'Z' => return error.map_or(Ok(()), Err),
                _ => {}
            }
        }
    }
}

#[test]
fn a_transaction_stuck_on_a_client_that_stopped_reading_never_commits_behind_the_flip() {
    let env = Env::new("flip-stuck");
    let src = env.source("src");
    let source = env.enqueue_app(
        &src,
        "CREATE TABLE notes (id int PRIMARY KEY, body text); CREATE ROLE app_user LOGIN PASSWORD 'app-pw'; GRANT SELECT, INSERT ON notes TO app_user",
    );
    // pause before the flip so that the stuck transaction is in place when the hold comes
    psql(&env.url, "UPDATE dmf.migrations SET pause_before = '{flipping}'");
    let users = env.path().join("users.txt");
    std::fs::write(&users, "\"app_user\" \"app-pw\"\n").expect("users file");
    // the raw client logs in without a password: a proxy that trusts loopback clients
    let proxy = env.proxy("proxy", "app", &["--client-auth", "trust", "--users-file", users.to_str().expect("path")]);
    let _scheduler = env.scheduler();
    let worker = env.worker("w1", &["--audit-window-s", "1", "--shadow-reads-s", "1", "--soak-s", "600", "--flip-max-lag-ms", "200", "--hold-deadline-ms", "1000"]);
    env.wait_for("paused before the flip", Duration::from_secs(180), |cs| {
        cs.first().is_some_and(|c| (c["phase"] == "flipping" && c["paused"] == true) || c["phase"] == "aborted")
    });
    assert_eq!(env.phase_of("app"), "flipping", "{}", worker.log_tail());

    // a transaction writes, then asks for a result far larger than the sockets hold, then
    // commits, all in one query; the client stops reading the result: the proxy's session is
    // blocked writing to this client, and the server waits to send the rest before its COMMIT
    let mut stuck = RawClient::connect(proxy.port, "app_user", "app");
    stuck.query("BEGIN; INSERT INTO notes VALUES (42, 'in flight'); SELECT repeat('x', 2000) FROM generate_series(1, 20000); COMMIT");
    std::thread::sleep(Duration::from_secs(1));
    let out = env.dmf(&["resume", "app"]);
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("flipped, or the flip undone", Duration::from_secs(60), |cs| {
        cs.first().is_some_and(|c| c["phase"] == "flipped") || !env.state("app").flip.undone.is_empty()
    });
    // the client wakes up and reads everything
    let committed = stuck.until_ready();
    let flip = env.state("app").flip;
    eprintln!("stuck session: {committed:?}; flip: sessions ended {:?}, steps {:?}, undone {:?}", flip.sessions_ended, flip.steps, flip.undone);
    env.wait_for("flipped", Duration::from_secs(60), |cs| cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("flipped" | "failed"))));
    assert_eq!(env.phase_of("app"), "flipped", "{}", worker.log_tail());
    let target = env.target_dsn("app");
    let on_source = psql(&source, "SELECT count(*) FROM notes WHERE id = 42");
    let on_target = psql(&target, "SELECT count(*) FROM notes WHERE id = 42");
    assert_eq!(on_source, on_target, "a write committed on one side only (source {on_source}, target {on_target}): lost behind the flip");
    assert!(committed.is_err(), "the stuck session was ended at the hold deadline, so its COMMIT cannot succeed");
    assert_eq!(on_target, "0");
}

/// The fence's gaps: a prepared transaction on the source keeps the flip on the source until it
/// is resolved (it could commit after the final marker), and a superuser's session, which the
/// fence cannot keep out, is warned about in preflight and ended at the fence.
#[test]
fn prepared_transactions_hold_the_flip_back_and_superuser_sessions_are_ended() {
    let env = Env::new("flip-fence-gaps");
    let src = env.source_conf("src", "max_prepared_transactions = 4\n");
    src.psql("postgres", "CREATE DATABASE app").expect("create app");
    let source = src.dsn("app");
    psql(&source, "CREATE TABLE notes (id int PRIMARY KEY, body text)");
    // a superuser's session on the source, there from before preflight
    let psql_bin = dmf_activities::providers::local::program("psql").expect("psql");
    let superuser = std::process::Command::new(&psql_bin)
        .args(["-X", "-q", "-d", &source, "-c", "SELECT pg_sleep(300)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("a superuser session");
    std::thread::sleep(Duration::from_millis(500));
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{source}\"\npause_before = [\"flipping\"]\n"));
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let _proxy = env.proxy("proxy", "app", &[]);
    let _scheduler = env.scheduler();
    let worker = env.worker("w1", &["--audit-window-s", "1", "--shadow-reads-s", "1", "--soak-s", "600", "--flip-max-lag-ms", "200"]);
    env.wait_for("paused before the flip", Duration::from_secs(180), |cs| {
        cs.first().is_some_and(|c| (c["phase"] == "flipping" && c["paused"] == true) || c["phase"] == "aborted")
    });
    assert_eq!(env.phase_of("app"), "flipping", "{}", worker.log_tail());
    let findings = env.state("app").preflight.findings;
    assert!(
        findings.iter().any(|f| f.check == "superuser_sessions" && f.subject.as_deref() == Some("postgres")),
        "preflight warns about the superuser's sessions: {findings:?}"
    );

    // a prepared transaction: the flip goes back to shadow reads and names it
    psql(&source, "BEGIN; INSERT INTO notes VALUES (7, 'prepared'); PREPARE TRANSACTION 'pay-7'");
    let out = env.dmf(&["resume", "app"]);
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("the flip held back", Duration::from_secs(60), |cs| {
        cs.first().is_some_and(|c| c["phase"] == "flipped") || env.state("app").flip.last_reason.is_some_and(|r| r.contains("pay-7"))
    });
    assert_ne!(env.phase_of("app"), "flipped", "the flip went on with a prepared transaction on the source");
    let reason = env.state("app").flip.last_reason.unwrap_or_default();
    assert!(reason.contains("prepared transactions") && reason.contains("COMMIT PREPARED"), "{reason}");

    // resolved: the next attempt flips, ending the superuser's session on the way
    psql(&source, "COMMIT PREPARED 'pay-7'");
    env.wait_for("paused before the next flip", Duration::from_secs(60), |cs| cs.first().is_some_and(|c| c["phase"] == "flipping" && c["paused"] == true));
    let out = env.dmf(&["resume", "app"]);
    assert!(out.status.success(), "resume: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("flipped", Duration::from_secs(60), |cs| cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("flipped" | "failed"))));
    assert_eq!(env.phase_of("app"), "flipped", "{}", worker.log_tail());
    let ended = superuser.wait_with_output().expect("superuser session");
    assert!(!ended.status.success() && String::from_utf8_lossy(&ended.stderr).contains("terminat"), "the superuser's session was ended by the fence: {}", String::from_utf8_lossy(&ended.stderr));
    assert_eq!(psql(&env.target_dsn("app"), "SELECT body FROM notes WHERE id = 7"), "prepared", "the prepared transaction's write is on the target");
}
