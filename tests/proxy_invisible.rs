//! The proxy is invisible (issue 22): a client gets through `dmf proxy` what it gets directly
//! from the server. Each test runs the same client against the server and through the proxy and
//! compares: connection errors (a database the route does not serve, a wrong password), and the
//! server process a session runs on (its pid in BackendKeyData, in its own notifications, in
//! pg_stat_activity, and after a move).

mod common;

use std::process::Command;

use common::*;

fn psql_bin() -> std::path::PathBuf {
    dmf_activities::providers::local::program("psql").expect("psql")
}

/// psql's exit status and its error line without the "connection to server at ..., port N
/// failed: " part that names where it connected (that differs by design).
fn psql_error(dsn: &str) -> (Option<i32>, String) {
    let out = Command::new(psql_bin()).args(["-X", "-A", "-t", "-d", dsn, "-c", "SELECT current_database()"]).output_within(COMMAND_LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stderr.lines().find(|l| l.contains("FATAL") || l.contains("ERROR")).unwrap_or(stdout.trim()).to_string();
    let line = match line.find("failed: ") {
        Some(i) => line[i + "failed: ".len()..].to_string(),
        None => line,
    };
    (out.status.code(), line)
}

#[test]
fn connection_errors_reach_the_client_as_the_server_gives_them() {
    let env = Env::new("invisible-connect");
    let src = env.source("src");
    env.enqueue_app(&src, "SELECT 1");
    // clients log in to the proxy with their passwords, as to the server (SCRAM both)
    let proxy = env.proxy("proxy", "app", &["--client-auth", "scram"]);
    let direct = |user: &str, pw: &str, db: &str| format!("postgres://{user}:{pw}@127.0.0.1:{}/{db}?sslmode=disable", src.port);
    let through = |user: &str, pw: &str, db: &str| format!("postgres://{user}:{pw}@127.0.0.1:{}/{db}?sslmode=disable", proxy.port);

    // the route's database: the same answer both ways
    assert_eq!(psql_error(&direct(APP_CLIENT, APP_CLIENT_PW, "app")), (Some(0), "app".into()));
    assert_eq!(psql_error(&through(APP_CLIENT, APP_CLIENT_PW, "app")), (Some(0), "app".into()));
    // a database that does not exist: 3D000 at connect time, not the route's database
    let want = psql_error(&direct(APP_CLIENT, APP_CLIENT_PW, "nosuchdb"));
    assert_eq!(want, (Some(2), "FATAL:  database \"nosuchdb\" does not exist".into()), "directly");
    assert_eq!(psql_error(&through(APP_CLIENT, APP_CLIENT_PW, "nosuchdb")), want, "through the proxy");
    // a wrong password: the server's words and code
    let want = psql_error(&direct(APP_CLIENT, "wrong", "app"));
    assert_eq!(want, (Some(2), format!("FATAL:  password authentication failed for user \"{APP_CLIENT}\"")), "directly");
    assert_eq!(psql_error(&through(APP_CLIENT, "wrong", "app")), want, "through the proxy");
}

#[test]
fn a_session_is_given_its_server_process_and_keeps_it_in_its_notifications_after_a_move() {
    let env = Env::new("invisible-pid");
    let src = env.source("src");
    let dst = env.source("dst");
    for c in [&src, &dst] {
        c.psql("postgres", "CREATE DATABASE app").expect("create app");
    }
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{}\"\n", src.dsn("app")));
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let proxy = env.proxy("proxy", "app", &[]);
    let moved = env.path().join("moved");
    let go_on = env.path().join("go-on");
    // psycopg reports the pid of BackendKeyData (conn.info.backend_pid) and each notification's;
    // the script waits (for the file `go-on`) while the test moves the route
    let script = r#"
import sys, os, time, psycopg
dsn, go_on, moved = sys.argv[1], sys.argv[2], sys.argv[3]
conn = psycopg.connect(dsn, autocommit=True)
given = conn.info.backend_pid
server = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
seen = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND datname = 'app'", (given,)).fetchone()[0]
conn.execute("LISTEN ch")
conn.execute("NOTIFY ch, 'before'")
before = next(conn.notifies(timeout=5))
# a session that listens cannot move (its channels would be lost): it stops listening first
conn.execute("UNLISTEN *")
print(f"given={given} server={server} in_pg_stat_activity={seen} notify_before={before.pid}", flush=True)
open(moved, "w").close()
while not os.path.exists(go_on):
    time.sleep(0.05)
server_after = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
conn.execute("LISTEN ch")
conn.execute("NOTIFY ch, 'after'")
after = next(conn.notifies(timeout=5))
print(f"server_after={server_after} notify_after={after.pid} given_after={conn.info.backend_pid}", flush=True)
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(proxy.dsn("app"))
        .arg(&go_on)
        .arg(&moved)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test.sh installs psycopg)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !moved.exists() {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the client never got its first notification");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if moved.exists() {
        env.route_set("app", &["--primary", &dst.dsn("app")]);
        std::fs::write(&go_on, "").expect("go on");
    }
    let out = child.wait_with_output().expect("client");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let field = |name: &str| -> i64 {
        text.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}="))).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} in {text}"))
    };
    // directly, all of these are one number: the session's server process
    assert_eq!(field("given"), field("server"), "BackendKeyData names the server process: {text}");
    assert_eq!(field("in_pg_stat_activity"), 1, "pg_stat_activity finds the pid the client was given: {text}");
    assert_eq!(field("notify_before"), field("given"), "a notification from the session's own NOTIFY carries its pid: {text}");
    // after the move the session runs on another server process; its own notifications still
    // carry the pid it was given
    assert_ne!(field("server_after"), field("server"), "the session moved: {text}");
    assert_eq!(field("notify_after"), field("given"), "after a move, its own notification carries the pid it was given: {text}");
}

/// What a client sees when the server ends its session: psql's output and exit status, and
/// psycopg's exception, message and closed connection, each with how long it took.
fn server_ends_session(dsn: &str) -> (String, String) {
    let out = Command::new(psql_bin()).args(["-X", "-A", "-t", "-d", dsn, "-c", "SELECT pg_terminate_backend(pg_backend_pid())"]).output_within(COMMAND_LIMIT);
    let psql = format!("status {:?}\nstdout {}\nstderr {}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let script = r#"
import sys, time, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
t = time.monotonic()
try:
    conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    print("no error")
except Exception as e:
    print(type(e).__module__ + "." + type(e).__name__, "|", str(e).splitlines()[0] if str(e) else "", "| sqlstate", getattr(getattr(e, "diag", None), "sqlstate", None))
print("closed", conn.closed != 0, "| prompt", time.monotonic() - t < 5)
try:
    conn.execute("SELECT 1")
    print("next: no error")
except Exception as e:
    print("next:", type(e).__name__)
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(dsn).output_within(COMMAND_LIMIT);
    let py = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (psql, py)
}

#[test]
fn a_session_the_server_ends_ends_for_the_client_as_it_does_directly() {
    let env = Env::new("invisible-end");
    let src = env.source("src");
    env.enqueue_app(&src, "SELECT 1");
    let proxy = env.proxy("proxy", "app", &[]);
    let direct = format!("postgres://{APP_CLIENT}:{APP_CLIENT_PW}@127.0.0.1:{}/app?sslmode=disable", src.port);
    let (psql_direct, py_direct) = server_ends_session(&direct);
    assert!(psql_direct.contains("terminating connection due to administrator command"), "directly: {psql_direct}");
    assert!(py_direct.contains("closed True | prompt True"), "directly: {py_direct}");
    let (psql_proxy, py_proxy) = server_ends_session(&proxy.dsn("app"));
    let port = |s: &str, p: u16| s.replace(&p.to_string(), "PORT");
    assert_eq!(port(&psql_proxy, proxy.port), port(&psql_direct, src.port), "psql through the proxy");
    assert_eq!(py_proxy, py_direct, "psycopg through the proxy");
}

/// psql interrupted (SIGINT, as Ctrl-C) while a query runs: what it prints, its status, and
/// whether it was prompt.
fn interrupted(dsn: &str) -> String {
    let mut child = Command::new(psql_bin())
        .args(["-X", "-A", "-t", "-d", dsn, "-c", "SELECT pg_sleep(30)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let sent = std::time::Instant::now();
    run_ok(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let deadline = sent + std::time::Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() {
        assert!(std::time::Instant::now() < deadline, "psql did not end after its cancel");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let prompt = sent.elapsed() < std::time::Duration::from_secs(5);
    let out = child.wait_with_output().expect("psql");
    format!("status {:?} prompt {prompt}\n{}{}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn an_interrupted_query_is_cancelled_as_directly_and_a_cancel_racing_a_close_does_not_hang() {
    let env = Env::new("invisible-cancel");
    let src = env.source("src");
    env.enqueue_app(&src, "SELECT 1");
    let proxy = env.proxy("proxy", "app", &[]);
    let direct = format!("postgres://{APP_CLIENT}:{APP_CLIENT_PW}@127.0.0.1:{}/app?sslmode=disable", src.port);
    let want = interrupted(&direct);
    assert!(want.contains("canceling statement due to user request") && want.contains("prompt true"), "directly: {want}");
    assert_eq!(interrupted(&proxy.dsn("app")), want, "through the proxy");

    // a cancel sent as the session closes, many times: each client ends promptly either way
    let script = r#"
import sys, threading, time, psycopg
dsn = sys.argv[1]
t0 = time.monotonic()
for i in range(20):
    conn = psycopg.connect(dsn, autocommit=True)
    def run():
        try:
            conn.execute("SELECT pg_sleep(5)")
        except Exception:
            pass
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    time.sleep(0.05)
    closer = threading.Thread(target=conn.close)
    conn.cancel()
    closer.start()
    closer.join(10)
    worker.join(10)
    assert not worker.is_alive() and not closer.is_alive(), f"hung at round {i}"
print("rounds ok", round(time.monotonic() - t0, 1))
"#;
    for dsn in [&direct, &proxy.dsn("app")] {
        let out = Command::new("python3").arg("-c").arg(script).arg(dsn).output_within(COMMAND_LIMIT);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("rounds ok"), "{dsn}: {text}");
    }
}
