//! The proxy following its route: a move under load, read-your-writes with a lagging read
//! endpoint, shadow traffic, losing the control plane, and a graceful drain.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

async fn connect(dsn: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await.expect("connect through the proxy");
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_move_under_pgbench_load_keeps_prepared_statements_and_settings() {
    let env = Env::new("proxy-move");
    let src = env.source("src");
    let dst = env.source("dst");
    for c in [&src, &dst] {
        c.psql("postgres", "CREATE DATABASE app").expect("create app");
        run_ok(Command::new(pgbench_bin()).args(["-i", "-s", "1", "-q", "-d"]).arg(c.dsn("app")));
    }
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{}\"\n", src.dsn("app")));
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let proxy = env.proxy("proxy", "app", &[]);

    // A session with settings, a SQL-level and a protocol-level prepared statement.
    let s = connect(&proxy.dsn("app")).await;
    s.batch_execute("SET dmf_test.flavour = 'mint'; SET statement_timeout = '7s'; PREPARE answer AS SELECT 40 + 2").await.expect("session state");
    let probe = s.prepare("SELECT current_setting('dmf_test.flavour'), inet_server_port()").await.expect("prepare");
    let row = s.query_one(&probe, &[]).await.expect("probe");
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("mint".to_string(), src.port as i32));
    // A session holding a temporary table cannot move.
    let t = connect(&proxy.dsn("app")).await;
    t.batch_execute("CREATE TEMP TABLE scratch (x int)").await.expect("temp table");

    let log = env.path().join("pgbench.log");
    let bench = Command::new(pgbench_bin())
        .args(["-n", "-c", "8", "-j", "2", "-T", "12", "-M", "prepared", "-P", "1"])
        .arg(proxy.dsn("app"))
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(env.path().join("pgbench.err")).expect("log"))
        .spawn()
        .expect("pgbench");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let moved_at = Instant::now();
    env.route_set("app", &["--hold"]);
    env.route_set("app", &["--primary", &dst.dsn("app"), "--release"]);
    let move_took = moved_at.elapsed();
    let result = bench.wait_with_output().expect("pgbench");
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    let stderr = std::fs::read_to_string(env.path().join("pgbench.err")).unwrap_or_default();
    assert!(result.status.success(), "pgbench failed across the move:\n{report}\n{stderr}");
    assert!(report.contains("number of failed transactions: 0 (0.000%)"), "client errors across the move:\n{report}\n{stderr}");
    let on_dst: i64 = psql(&dst.dsn("app"), "SELECT count(*) FROM pgbench_history").parse().expect("count");
    assert!(on_dst > 0, "transactions after the move ran on the new primary");

    let row = s.query_one(&probe, &[]).await.expect("the prepared statement survived the move");
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("mint".to_string(), dst.port as i32));
    let row = s.query_one("SHOW statement_timeout", &[]).await.expect("show");
    assert_eq!(row.get::<_, String>(0), "7s");
    let row = s.query_one("EXECUTE answer", &[]).await.expect("SQL prepared statement survived");
    assert_eq!(row.get::<_, i32>(0), 42);
    let err = t.simple_query("SELECT 1").await.expect_err("a session with a temp table is closed at the move");
    assert!(format!("{err:?}").contains("temporary table"), "clear error: {err:?}");
    assert_eq!(proxy.metric("sessions_closed_unmovable"), 1.0);
    assert!(proxy.metric("sessions_moved") >= 9.0, "pgbench's 8 sessions and ours moved");
    eprintln!("hold + move acknowledged in {move_took:?}; held transactions: {}", proxy.metric("held_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_with_a_read_endpoint_seconds_behind() {
    let env = Env::new("proxy-ryw");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE ryw (id serial PRIMARY KEY, v text)");
    let standby = src.physical_standby(env.path(), "standby", "recovery_min_apply_delay = '3s'").expect("standby");
    env.route_set("app", &["--read", &standby.dsn("app"), "--mode", "split_reads"]);
    let proxy = env.proxy("proxy", "app", &[]);
    let writer = connect(&proxy.dsn("app")).await;
    for i in 0..20 {
        let id: i32 = writer.query_one("INSERT INTO ryw (v) VALUES ($1) RETURNING id", &[&format!("w{i}")]).await.expect("insert").get(0);
        let rows = writer.query("SELECT v FROM ryw WHERE id = $1", &[&id]).await.expect("read back");
        assert_eq!(rows.len(), 1, "write {i} (id {id}) not visible to the session that made it");
        let rows = writer.simple_query(&format!("SELECT v FROM ryw WHERE id = {id}")).await.expect("read back, simple");
        assert!(rows.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))), "simple read of write {i}");
    }
    // A session that wrote nothing reads from the read endpoint, which is still behind.
    let reader = connect(&proxy.dsn("app")).await;
    let seen: i64 = reader.query_one("SELECT count(*) FROM ryw", &[]).await.expect("count").get(0);
    assert!(seen < 20, "the read endpoint lags by 3 s, yet the reader saw {seen} rows: reads were not routed to it");
    assert!(proxy.metric("reads_to_read_endpoint") >= 1.0);
    assert!(proxy.metric("reads_to_primary") >= 40.0, "read-after-write kept on the primary");
    // Once the read endpoint has applied the writes, the writer reads there again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = proxy.metric("reads_to_read_endpoint");
        let n: i64 = writer.query_one("SELECT count(*) FROM ryw", &[]).await.expect("count").get(0);
        assert_eq!(n, 20, "a read must never miss the session's own writes");
        if proxy.metric("reads_to_read_endpoint") > before {
            break;
        }
        assert!(Instant::now() < deadline, "reads never returned to the read endpoint after it caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Transactions and writes always go to the primary: the standby is read-only.
    writer.batch_execute("BEGIN; SELECT count(*) FROM ryw; INSERT INTO ryw (v) VALUES ('in tx'); COMMIT").await.expect("transaction on the primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_traffic_reports_divergences_and_never_writes() {
    let env = Env::new("proxy-shadow");
    let src = env.source("src");
    let shadow = env.source("shadow");
    let schema = "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 100) g";
    env.enqueue_app(&src, schema);
    shadow.psql("postgres", "CREATE DATABASE app").expect("create app");
    psql(&shadow.dsn("app"), schema);
    env.route_set("app", &["--shadow", &shadow.dsn("app"), "--shadow-fraction", "1"]);
    let proxy = env.proxy("proxy", "app", &["--lease-ms", "900"]);
    let c = connect(&proxy.dsn("app")).await;
    for id in 1..=20i32 {
        let v: String = c.query_one("SELECT v FROM items WHERE id = $1", &[&id]).await.expect("select").get(0);
        assert_eq!(v, format!("v{id}"));
    }
    for id in 21..=30 {
        c.simple_query(&format!("SELECT v FROM items WHERE id = {id}")).await.expect("simple select");
    }
    for id in 31..=35i32 {
        assert_eq!(c.execute("UPDATE items SET v = 'changed' WHERE id = $1", &[&id]).await.expect("update"), 1);
    }
    c.batch_execute("BEGIN; UPDATE items SET v = 'in tx' WHERE id = 36; COMMIT").await.expect("transaction");
    let wait_mirrored = |n: f64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while proxy.metric("shadow_mirrored") < n {
            assert!(
                Instant::now() < deadline,
                "only {} statements mirrored ({} dropped, {} failed):\n{}",
                proxy.metric("shadow_mirrored"),
                proxy.metric("shadow_dropped"),
                proxy.metric("shadow_failures"),
                proxy.proc.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_mirrored(35.0);
    assert_eq!(proxy.metric("shadow_divergences"), 0.0, "identical data, identical outcomes");
    assert_eq!(psql(&shadow.dsn("app"), "SELECT count(*) FROM items WHERE v IN ('changed', 'in tx')"), "0", "mirrored writes are rolled back");
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM items WHERE v IN ('changed', 'in tx')"), "6");
    // Drift on the shadow side is reported with the statement.
    psql(&shadow.dsn("app"), "UPDATE items SET v = 'drift' WHERE id = 50");
    c.query_one("SELECT v FROM items WHERE id = $1", &[&50i32]).await.expect("select");
    c.execute("DELETE FROM items WHERE id = $1", &[&99i32]).await.expect("delete");
    psql(&shadow.dsn("app"), "DELETE FROM items WHERE id = 98");
    c.execute("DELETE FROM items WHERE id = $1", &[&98i32]).await.expect("delete");
    wait_mirrored(38.0);
    assert_eq!(proxy.metric("shadow_divergences"), 2.0, "a changed row and a row count");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = env.dmf_json(&["route", "show", "app", "--json"]);
        let recent = &doc["proxies"][0]["stats"]["shadow"]["recent_divergences"];
        if recent.as_array().is_some_and(|a| a.len() == 2) {
            let text = recent.to_string();
            assert!(text.contains("SELECT v FROM items WHERE id = $1") && text.contains("DELETE FROM items"), "{text}");
            assert!(doc["proxies"][0]["stats"]["shadow"]["latency_ratio"].as_f64().is_some_and(|r| r > 0.0));
            break;
        }
        assert!(Instant::now() < deadline, "divergences never reached the control plane: {doc}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(proxy.metric("shadow_dropped"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_the_control_plane_for_longer_than_its_lease_sends_nothing() {
    let env = Env::new("proxy-lease");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE t (id int PRIMARY KEY)");
    let proxy = env.proxy("proxy", "app", &["--lease-ms", "1500", "--hold-timeout-s", "3"]);
    let idle = connect(&proxy.dsn("app")).await;
    let open = connect(&proxy.dsn("app")).await;
    open.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.expect("open transaction");
    env.cp.stop_mode("immediate").expect("stop the control plane");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = open.batch_execute("COMMIT").await.expect_err("no commit without the lease");
    assert!(format!("{err:?}").contains("lease"), "{err:?}");
    let started = Instant::now();
    let err = idle.batch_execute("INSERT INTO t VALUES (2)").await.expect_err("no write without the lease");
    assert!(format!("{err:?}").contains("control plane"), "{err:?}");
    assert!(started.elapsed() >= Duration::from_secs(2), "held up to the hold timeout first");
    let out = Command::new(dmf_activities::providers::local::program("psql").expect("psql")).args(["-X", "-d", &proxy.dsn("app"), "-c", "INSERT INTO t VALUES (3)"]).output_within(COMMAND_LIMIT);
    assert!(!out.status.success(), "new sessions refused without the lease");
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM t"), "0", "nothing reached the database");
    env.cp.start().expect("restart the control plane");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(dmf_activities::providers::local::program("psql").expect("psql")).args(["-X", "-d", &proxy.dsn("app"), "-c", "INSERT INTO t VALUES (4)"]).output_within(COMMAND_LIMIT);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the proxy never served again: {}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(psql(&src.dsn("app"), "SELECT string_agg(id::text, ',') FROM t"), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_open_transactions_finish_then_closes_sessions() {
    let env = Env::new("proxy-drain");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE t (id int PRIMARY KEY)");
    let mut proxy = env.proxy("proxy", "app", &["--drain-s", "20"]);
    let open = connect(&proxy.dsn("app")).await;
    let idle = connect(&proxy.dsn("app")).await;
    open.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.expect("open transaction");
    proxy.terminate();
    // the idle session is closed once the proxy has seen the signal
    let deadline = Instant::now() + Duration::from_secs(10);
    while idle.simple_query("SELECT 1").await.is_ok() {
        assert!(Instant::now() < deadline, "an idle session is closed at shutdown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    open.batch_execute("INSERT INTO t VALUES (2); COMMIT").await.expect("the open transaction finishes");
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM t"), "2");
    let deadline = Instant::now() + Duration::from_secs(15);
    while proxy.proc.is_alive() {
        assert!(Instant::now() < deadline, "proxy did not exit after draining:\n{}", proxy.proc.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.proc.child.wait().expect("status").success());
    let doc = env.dmf_json(&["route", "show", "app", "--json"]);
    assert_eq!(doc["proxies"][0]["state"], "stopped", "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_waits_for_transactions_in_flight_and_ends_those_past_its_deadline() {
    let env = Env::new("proxy-hold");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE t (id int PRIMARY KEY)");
    let proxy = env.proxy("proxy", "app", &[]);
    let quick = connect(&proxy.dsn("app")).await;
    let stuck = connect(&proxy.dsn("app")).await;
    stuck.batch_execute("BEGIN; INSERT INTO t VALUES (1)").await.expect("open transaction");
    let started = Instant::now();
    env.route_set("app", &["--hold", "--hold-deadline-ms", "700"]);
    let acked_in = started.elapsed();
    assert!(acked_in >= Duration::from_millis(600) && acked_in < Duration::from_secs(5), "hold acknowledged after the deadline, in {acked_in:?}");
    // the proxy's FATAL arrives while this client is not reading: it sees its connection closed
    let err = stuck.batch_execute("COMMIT").await.expect_err("the transaction past the deadline was ended");
    assert!(err.is_closed() || format!("{err:?}").contains("hold deadline"), "{err:?}");
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM t"), "0", "its write was rolled back");
    // a new transaction waits at the hold and runs once released
    let waiter = tokio::spawn(async move { quick.batch_execute("INSERT INTO t VALUES (2)").await.map(|_| Instant::now()) });
    metric_reaches(&proxy, "held_now", 1.0).await;
    let held_since = Instant::now();
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM t"), "0", "held, not run");
    // held for a known while, which the hold-time metric must account for
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM t"), "0", "still held, not run");
    let released = Instant::now();
    env.route_set("app", &["--release"]);
    let ran_at = waiter.await.expect("join").expect("the held transaction runs after release");
    assert!(ran_at >= released);
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM t"), "1");
    assert_eq!(proxy.metric("held_now"), 0.0);
    let held_at_least = (released - held_since).as_micros() as f64;
    let hold_time = proxy.metric("hold_time_us_total");
    assert!(hold_time >= held_at_least, "hold_time_us_total {hold_time} < the {held_at_least} µs the test held");
}

/// Wait up to 10 s for a proxy counter to reach `want`.
async fn metric_reaches(proxy: &ProxyProc, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric(name) != want {
        assert!(Instant::now() < deadline, "metric {name} stayed at {} (wanted {want})", proxy.metric(name));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server process stopped (SIGSTOP) until this is dropped, even by a failing assertion: a
/// stopped backend would hold up the cluster's shutdown.
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().expect("kill").success());
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pg_backend_pid").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_its_client_left_is_reset_and_reused_but_never_across_logins_or_routes() {
    let env = Env::new("proxy-idle");
    let src = env.source("src");
    let dst = env.source("dst");
    env.enqueue_app(&src, "CREATE TABLE t (id int PRIMARY KEY)");
    dst.psql("postgres", "CREATE DATABASE app").expect("create app on dst");
    let proxy = env.proxy("proxy", "app", &[]);

    // A session that leaves every kind of state behind, then disconnects.
    let a = connect(&proxy.dsn("app")).await;
    let first = backend_pid(&a).await;
    a.batch_execute(
        "SET statement_timeout = '7s'; SET application_name = 'changed'; CREATE TEMP TABLE scratch (x int); \
         PREPARE answer AS SELECT 42; SELECT pg_advisory_lock(42); LISTEN news; DECLARE held CURSOR WITH HOLD FOR SELECT 1",
    )
    .await
    .expect("session state");
    a.prepare("SELECT $1::int + 1").await.expect("protocol-level statement");
    drop(a);
    metric_reaches(&proxy, "backends_idle", 1.0).await;

    // The next client with the same login gets that backend, clean.
    let b = connect(&proxy.dsn("app")).await;
    assert_eq!(backend_pid(&b).await, first, "the parked backend was reused");
    assert_eq!(proxy.metric("backends_reused_total"), 1.0);
    assert_eq!(proxy.metric("backends_idle"), 0.0);
    let row = b
        .query_one(
            "SELECT current_setting('statement_timeout'), current_setting('application_name'), \
             (SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'), \
             (SELECT count(*) FROM pg_prepared_statements WHERE name = 'answer' OR statement = 'SELECT $1::int + 1'), \
             (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
             (SELECT count(*) FROM pg_listening_channels()), (SELECT count(*) FROM pg_cursors WHERE name = 'held')",
            &[],
        )
        .await
        .expect("state after reuse");
    assert_eq!(row.get::<_, String>(0), "0", "settings were reset");
    assert_ne!(row.get::<_, String>(1), "changed", "application_name is back to the startup value");
    for (i, what) in [(2, "temporary tables"), (3, "prepared statements"), (4, "advisory locks"), (5, "LISTEN channels"), (6, "cursors")] {
        assert_eq!(row.get::<_, i64>(i), 0, "{what} of the previous client survived");
    }
    // the new client's own statements work (the backend's statement bookkeeping was reset too)
    let st = b.prepare("SELECT $1::int + 1").await.expect("prepare on the reused backend");
    assert_eq!(b.query_one(&st, &[&1i32]).await.expect("run").get::<_, i32>(0), 2);
    drop(b);
    metric_reaches(&proxy, "backends_idle", 1.0).await;

    // Another login (other startup parameters) never gets it.
    let other = connect(&format!("{}&application_name=billing", proxy.dsn("app"))).await;
    assert_ne!(backend_pid(&other).await, first, "a client with other startup parameters got someone else's backend");
    drop(other);
    metric_reaches(&proxy, "backends_idle", 2.0).await;

    // A parked backend its server ended is not handed out.
    psql(&src.dsn("postgres"), &format!("SELECT pg_terminate_backend({first}, 5000)"));
    let c = connect(&proxy.dsn("app")).await;
    let third = backend_pid(&c).await;
    assert_ne!(third, first, "a terminated backend was handed out");
    c.batch_execute("INSERT INTO t VALUES (1)").await.expect("the new backend works");
    drop(c);
    metric_reaches(&proxy, "backends_idle", 2.0).await;

    // One parked for a while is asked a round trip first: a server process that no longer
    // answers (stopped here; in life, ended just before the handout) is not handed out.
    tokio::time::sleep(dmf_proxy::backend::pool::CHECK_AFTER + Duration::from_millis(500)).await;
    let stopped = Stopped::new(third);
    let e = tokio::time::timeout(Duration::from_secs(10), connect(&proxy.dsn("app"))).await.expect("a client is served despite a stuck parked backend");
    let fourth = tokio::time::timeout(Duration::from_secs(5), backend_pid(&e)).await.expect("the client's first statement is answered");
    drop(stopped);
    assert_ne!(fourth, third, "a backend that did not answer was handed out");
    drop(e);
    metric_reaches(&proxy, "backends_idle", 2.0).await;

    // After a route change nothing parked before it is used, and the reaper closes it all.
    env.route_set("app", &["--primary", &dst.dsn("app")]);
    let d = connect(&proxy.dsn("app")).await;
    let port: i32 = d.query_one("SELECT inet_server_port()", &[]).await.expect("port").get(0);
    assert_eq!(port, dst.port as i32, "the new client is on the new primary");
    metric_reaches(&proxy, "backends_idle", 0.0).await;
    let left = psql(&src.dsn("postgres"), "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app'");
    assert_eq!(left, "0", "backends parked on the old primary were closed");
    assert_eq!(proxy.metric("backends_reused_total"), 1.0);
}

/// Idle polling (`--idle-poll-us`): through back-to-back statements the proxy polls its sockets
/// instead of sleeping between them; once the traffic stops it goes back to sleep and stays
/// asleep; with 0 it never polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_polls_through_short_waits_and_sleeps_once_traffic_stops() {
    let env = Env::new("proxy-poll");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE t (id int PRIMARY KEY)");
    // a wide window: under a parallel test suite a debug build's gaps can exceed the default
    let polling = env.proxy("polling", "app", &["--idle-poll-us", "2000", "--threads", "1"]);
    let off = env.proxy("off", "app", &["--idle-poll-us", "0", "--threads", "1"]);
    for proxy in [&polling, &off] {
        let c = connect(&proxy.dsn("app")).await;
        for _ in 0..2000 {
            c.simple_query("SELECT 1").await.expect("statement through the proxy");
        }
    }
    metric_reaches(&polling, "idle_polling", 0.0).await;
    let polled = polling.metric("idle_poll_us_total");
    assert!(polled > 0.0, "2000 back-to-back statements were relayed without polling");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(polling.metric("idle_polling"), 0.0, "polling started again without traffic");
    assert_eq!(polling.metric("idle_poll_us_total"), polled, "polling started again without traffic");
    assert_eq!(off.metric("idle_poll_us_total"), 0.0, "--idle-poll-us 0 polled");
    assert_eq!(off.metric("idle_poll_window_us"), 0.0, "--idle-poll-us 0 polled");
}

/// Relay threads (`--threads`): each new client goes to the thread with the fewest connections
/// (the last thread on a tie: thread 0 runs the control tasks too) and is relayed there, sessions
/// on different threads keep their own settings and prepared statements, and a backend parked by
/// a session on one thread serves a client on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_relay_threads_and_backends_are_reused_across_them() {
    let env = Env::new("proxy-threads");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE t (id int PRIMARY KEY, who text)");
    let proxy = env.proxy("threads", "app", &["--threads", "2", "--idle-poll-us", "2000"]);
    let on1 = connect(&proxy.dsn("app")).await;
    assert_eq!(proxy.thread_metric("relay_connections", 1), 1.0, "the first client did not go to thread 1");
    let on0 = connect(&proxy.dsn("app")).await;
    assert_eq!(proxy.thread_metric("relay_connections", 0), 1.0, "the second client did not go to thread 0");

    // Both sessions at once, each with its own setting and prepared statement.
    on1.batch_execute("SET application_name = 'one'").await.expect("SET on thread 1");
    on0.batch_execute("SET application_name = 'zero'").await.expect("SET on thread 0");
    let before = proxy.thread_ticks("dmf-relay-1");
    async fn work(c: &tokio_postgres::Client, base: i32, who: &str) {
        let st = c.prepare("INSERT INTO t VALUES ($1, current_setting('application_name')) RETURNING who").await.expect("prepare");
        for i in 0..1500 {
            let got: String = c.query_one(&st, &[&(base + i)]).await.expect("insert through the proxy").get(0);
            assert_eq!(got, who, "a session saw another session's setting");
        }
    }
    tokio::join!(work(&on1, 0, "one"), work(&on0, 10_000, "zero"));
    assert!(proxy.thread_ticks("dmf-relay-1") > before, "thread dmf-relay-1 relayed 1500 statements without using any CPU");
    metric_reaches(&proxy, "idle_polling", 0.0).await;
    assert!(proxy.thread_metric("relay_idle_poll_us_total", 1) > 0.0, "thread 1 relayed 1500 back-to-back statements without polling");
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM t"), "3000");
    let (pid1, pid0) = (backend_pid(&on1).await, backend_pid(&on0).await);

    // Thread 1's client leaves first, then thread 0's: the next client goes to thread 1 and gets
    // the backend parked last, thread 0's; the one after it goes to thread 0 and gets thread 1's.
    drop(on1);
    metric_reaches(&proxy, "backends_idle", 1.0).await;
    drop(on0);
    metric_reaches(&proxy, "backends_idle", 2.0).await;
    let c = connect(&proxy.dsn("app")).await;
    assert_eq!(proxy.thread_metric("relay_connections", 1), 1.0, "the next client did not go to thread 1");
    assert_eq!(backend_pid(&c).await, pid0, "thread 1's client did not get the backend thread 0 parked");
    let d = connect(&proxy.dsn("app")).await;
    assert_eq!(proxy.thread_metric("relay_connections", 0), 1.0, "the client after it did not go to thread 0");
    assert_eq!(backend_pid(&d).await, pid1, "thread 0's client did not get the backend thread 1 parked");
    for (c, base) in [(&c, 20_000), (&d, 30_000)] {
        for i in 0..200 {
            c.execute("INSERT INTO t VALUES ($1, 'reused')", &[&(base + i)]).await.expect("a reused backend relays on its new thread");
        }
    }
    assert_eq!(proxy.metric("backends_reused_total"), 2.0);
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM t WHERE who = 'reused'"), "400");
}

/// A proxy whose route is at rest polls it instead of listening: every notification in the
/// control plane's database wakes every session listening there, whatever its channel, and a
/// fleet's idle proxies listening cost the control plane more than their polls. A hold first wakes
/// every proxy (a new epoch, read at their next poll) and then reaches them all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_whose_route_is_at_rest_polls_it_and_a_hold_still_reaches_it_at_once() {
    let env = Env::new("proxy-rest");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE t (id int PRIMARY KEY)");
    // the least the proxy takes: 15 s after its start or a change
    let args = ["--listen-after-change-s", "1"];
    let (p1, p2) = (env.proxy("p1", "app", &args), env.proxy("p2", "app", &args));
    let listening = || env.cp_query("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %dmf_route_%'").parse::<i64>().expect("count");
    let until = |what: &str, want: i64| {
        let deadline = Instant::now() + Duration::from_secs(40);
        while listening() != want {
            assert!(Instant::now() < deadline, "{what}: {} proxies listening, want {want}", listening());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // a proxy that just started listens (it may have started for a move), then rests
    until("both proxies started", 2);
    until("both routes at rest", 0);

    // the hold: every proxy is woken first (within seconds: they poll), then the hold itself is
    // acknowledged by both within a second, and a transaction waits at it until the release
    let client = connect(&p2.dsn("app")).await;
    let out = env.dmf(&["route", "set", "app", "--hold", "--wait-ms", "1000"]);
    assert!(out.status.success(), "the hold did not reach both proxies within 1 s of it: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(listening(), 2, "a held route is listened to");
    let waiter = tokio::spawn(async move { client.batch_execute("INSERT INTO t VALUES (1)").await });
    metric_reaches(&p2, "held_now", 1.0).await;
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM t"), "0", "held, not run");
    env.route_set("app", &["--release"]);
    waiter.await.expect("join").expect("the held transaction runs after the release");
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM t"), "1");
    assert_eq!(p1.metric("held_now"), 0.0);
}
