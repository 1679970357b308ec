//! The proxy is invisible (issue 22): a client gets through `dmf proxy` what it gets directly
//! from the server. Each test runs the same client against the server and through the proxy and
//! compares: logins (what each user is asked, wrong and missing passwords, a database the route
//! does not serve), the server process a session runs on (its pid in BackendKeyData, in its own
//! notifications, in pg_stat_activity, and after a move), the ends of a session (the server's
//! FATAL, a server process killed, errors inside `with` blocks), interrupts, and the timing of a
//! client waiting on its socket, in clear and over TLS.

mod common;

use std::process::Command;

use common::*;

fn psql_bin() -> std::path::PathBuf {
    dmf_activities::providers::local::program("psql").expect("psql")
}

/// psql's exit status and its error line without the "connection to server at ..., port N
/// failed: " part that names where it connected (that differs by design).
fn psql_error(dsn: &str) -> (Option<i32>, String) {
    psql_answer(dsn, "SELECT current_database()", &[])
}

/// psql running `sql` on `dsn` (with `args` before it): its exit status and its error line, or
/// its output, without where it connected.
fn psql_answer(dsn: &str, sql: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(psql_bin())
        .args(["-X", "-A", "-t"])
        .args(args)
        .args(["-d", dsn, "-c", sql])
        .env("PGPASSFILE", "/dev/null")
        .env_remove("PGPASSWORD")
        .output_within(COMMAND_LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let line = stderr.lines().find(|l| l.contains("FATAL") || l.contains("fe_sendauth") || l.contains("ERROR")).map(str::to_string);
    let line = line.unwrap_or_else(|| String::from_utf8_lossy(&out.stdout).trim().to_string());
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

/// psql's answer (`-w`: it never prompts; no password file) for `user` with `password` (none
/// when empty) to `port`.
fn login_answer(user: &str, password: &str, port: u16) -> (Option<i32>, String) {
    let pw = if password.is_empty() { String::new() } else { format!(":{password}") };
    psql_answer(&format!("postgres://{user}{pw}@127.0.0.1:{port}/app?sslmode=disable"), "SELECT current_user", &["-w"])
}

#[test]
fn a_client_is_asked_at_login_what_the_server_asks_of_its_user() {
    let env = Env::new("invisible-auth");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE app").expect("create database app");
    // clear-text passwords to this server (it has no TLS) are allowed by the route
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{}?sslmode=disable\"\n", src.dsn("app")));
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let users = [("t_user", "trust"), ("p_user", "password"), ("m_user", "md5"), ("s_user", "scram-sha-256")];
    for (user, method) in users {
        let enc = if method == "md5" { "md5" } else { "scram-sha-256" };
        psql(&src.dsn("app"), &format!("SET password_encryption = '{enc}'; CREATE ROLE {user} LOGIN PASSWORD '{user}-pw'"));
    }
    // each user's own method first (the first matching pg_hba line wins); a role that does not
    // exist meets SCRAM, as on a server that asks everyone a password
    let hba = src.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("hba");
    let ours: String = users.iter().map(|(u, m)| format!("host all {u} 127.0.0.1/32 {m}\n")).collect();
    std::fs::write(&hba, format!("{ours}host all nobody 127.0.0.1/32 scram-sha-256\n{rules}")).expect("hba");
    psql(&src.dsn("postgres"), "SELECT pg_reload_conf()");
    let file = env.path().join("users.txt");
    let held: String = users.iter().map(|(u, _)| format!("\"{u}\" \"{u}-pw\"\n")).collect();
    std::fs::write(&file, held).expect("users file");
    // no parked backends: each login below logs in to the server (a parked one would serve the
    // next client of the same login, as a pooler's does, whatever the server's rules became)
    let proxy = env.proxy("proxy", "app", &["--client-auth", "server", "--idle-backends", "0", "--users-file", file.to_str().expect("utf-8 path")]);
    let mut compared = 0;
    for (user, _) in users.iter().chain(&[("nobody", "")]) {
        for password in [format!("{user}-pw"), "wrong".to_string(), String::new()] {
            let want = login_answer(user, &password, src.port);
            let got = login_answer(user, &password, proxy.port);
            assert_eq!(got, want, "{user} with password {password:?}: through the proxy, then directly");
            compared += 1;
        }
    }
    assert_eq!(compared, 15);
    // the right password logs in both ways, and a wrong one is refused both ways
    assert_eq!(login_answer("s_user", "s_user-pw", proxy.port), (Some(0), "s_user".into()));
    assert_eq!(login_answer("t_user", "wrong", proxy.port), (Some(0), "t_user".into()), "the server trusts t_user: so does the proxy");
    assert_eq!(login_answer("m_user", "wrong", proxy.port).0, Some(2));
    // the server stops trusting t_user: a client the proxy still takes for trusted (its answer
    // is kept a few seconds) is logged in without a password, so the server refuses it; the
    // users file's password never stands in for a client that proved nothing
    let now = std::fs::read_to_string(&hba).expect("hba").replace("host all t_user 127.0.0.1/32 trust", "host all t_user 127.0.0.1/32 scram-sha-256");
    std::fs::write(&hba, now).expect("hba");
    psql(&src.dsn("postgres"), "SELECT pg_reload_conf()");
    let (status, line) = login_answer("t_user", "", proxy.port);
    assert_eq!(status, Some(2), "refused: {line}");
    assert!(line.contains("t_user"), "{line}");
}

/// psycopg where a session ends badly: an error inside `with conn.transaction()` and the rollback
/// on the way out, a `with connect()` block left by an exception during a COPY (its rollback fails
/// and is logged, not raised), and the server process killed outright, so that its socket closes
/// without a word. Each with the exception the client saw and whether its connection closed.
fn session_ends_badly(dsn: &str) -> String {
    let script = r#"
import sys, logging, time, psycopg
dsn = sys.argv[1]
logged = []
class Keep(logging.Handler):
    def emit(self, record):
        logged.append(record.levelname + " " + record.getMessage().split(" on <")[0])
logging.getLogger("psycopg").addHandler(Keep())
def name(e):
    return type(e).__module__ + "." + type(e).__name__ + " | " + " / ".join(l.strip() for l in str(e).splitlines())

# an error inside a transaction block: the block rolls back and the error is what is raised
conn = psycopg.connect(dsn)
try:
    with conn.transaction():
        conn.execute("SELECT 1/0")
except Exception as e:
    print("with-error:", name(e), "| status", conn.info.transaction_status.name)
print("after with-error:", conn.execute("SELECT 'usable'").fetchone()[0])
# the server ends the session inside the block: the rollback on the way out must not hide why
try:
    with conn.transaction():
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
except Exception as e:
    print("with-terminated:", name(e), "| closed", conn.closed)

# left by an exception while a COPY streams: the rollback fails, is logged, and the exception is
# the one raised
try:
    with psycopg.connect(dsn) as conn:
        conn.pgconn.exec_(b"copy (select generate_series(1, 10)) to stdout")
        print("copy status:", conn.info.transaction_status.name)
        1 / 0
except ZeroDivisionError:
    print("copy: ZeroDivisionError raised, logged", logged, "| closed", conn.closed)

# the server process killed: its socket closes with no message
conn = psycopg.connect(dsn, autocommit=True)
pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
import os, signal
t = time.monotonic()
try:
    conn.execute("SELECT pg_sleep(0.2); SELECT 1")
    os.kill(pid, signal.SIGKILL)
    conn.execute("SELECT pg_sleep(2)")
    print("killed: no error")
except Exception as e:
    print("killed:", name(e), "| closed", conn.closed != 0, "| prompt", time.monotonic() - t < 5)
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(dsn).output_within(COMMAND_LIMIT);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_session_that_ends_badly_ends_for_the_client_as_it_does_directly() {
    let env = Env::new("invisible-badly");
    let src = env.source("src");
    env.enqueue_app(&src, "SELECT 1");
    let proxy = env.proxy("proxy", "app", &[]);
    let direct = format!("postgres://{APP_CLIENT}:{APP_CLIENT_PW}@127.0.0.1:{}/app?sslmode=disable", src.port);
    let want = session_ends_badly(&direct);
    println!("directly:\n{want}");
    assert!(want.contains("killed: psycopg.OperationalError"), "directly: {want}");
    // the server restarts its processes after one was killed: wait until it takes logins again
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while try_psql(&direct, "SELECT 1").is_err() {
        assert!(std::time::Instant::now() < deadline, "the server did not come back after the kill");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let got = session_ends_badly(&proxy.dsn("app"));
    assert_eq!(got, want, "through the proxy, then directly");
}

/// A client that waits for its socket to become readable, with a timeout, as event loops and
/// psycopg's `notifies(timeout=)` do: what it finds and roughly when. Times are reported in
/// coarse bands (a shared machine is noisy); a server message held back by the proxy moves a
/// band.
fn socket_waits(dsn: &str, other: &str) -> String {
    let script = r#"
import sys, select, time, psycopg
dsn, other = sys.argv[1], sys.argv[2]
def band(t):
    return "<0.25s" if t < 0.25 else "<1.5s" if t < 1.5 else ">=1.5s"
def wait(conn, timeout):
    t = time.monotonic()
    r, _, _ = select.select([conn.pgconn.socket], [], [], timeout)
    return bool(r), time.monotonic() - t

# a notification from another session to an idle listener
conn = psycopg.connect(dsn, autocommit=True)
conn.execute("LISTEN ch")
ready, _ = wait(conn, 0.3)
print("idle listener readable before any NOTIFY:", ready)
with psycopg.connect(other, autocommit=True) as o:
    sent = time.monotonic()
    o.execute("NOTIFY ch, 'x'")
ready, _ = wait(conn, 3)
print("readable after the NOTIFY:", ready, band(time.monotonic() - sent))
conn.pgconn.consume_input()
n = conn.pgconn.notifies()
print("notification:", n.relname.decode(), n.extra.decode())

# a query that sleeps: nothing readable before it ends, then its answer at once
conn.pgconn.send_query(b"SELECT pg_sleep(0.6)")
conn.pgconn.flush()
ready, _ = wait(conn, 0.3)
print("readable during pg_sleep(0.6):", ready)
ready, waited = wait(conn, 3)
print("readable at its end:", ready, band(waited))
while conn.pgconn.get_result() is not None:
    pass

# a notice the server flushes in the middle of a statement arrives in the middle
conn.pgconn.send_query(b"DO $$ BEGIN RAISE NOTICE 'halfway'; PERFORM pg_sleep(2); END $$")
conn.pgconn.flush()
ready, waited = wait(conn, 3)
print("readable at the notice:", ready, band(waited))
while conn.pgconn.get_result() is not None:
    pass

# a session idle in a transaction past its timeout: the server's FATAL when it ends it
conn.execute("SET idle_in_transaction_session_timeout = '600ms'")
conn.execute("BEGIN")
ready, waited = wait(conn, 3)
print("readable at the idle timeout:", ready, band(waited))
notices = []
conn.add_notice_handler(lambda d: notices.append(d.sqlstate))
lost = None
for _ in range(30):
    try:
        conn.pgconn.consume_input()
    except Exception as e:
        lost = str(e).strip().splitlines()[0]
        break
    wait(conn, 0.1)
print("then:", psycopg.pq.ConnStatus(conn.pgconn.status).name, lost)
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(dsn).arg(other).output_within(COMMAND_LIMIT);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_client_waiting_on_its_socket_sees_server_messages_when_it_would_directly() {
    let env = Env::new("invisible-waits");
    // the server and the proxy both offer TLS, with one certificate: a client is compared in
    // clear and encrypted (a message held back in a TLS buffer would show, and so would a
    // connection ended without TLS's close_notify)
    let dir = env.path().join("tls");
    std::fs::create_dir_all(&dir).expect("tls dir");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    run_ok(Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"]).arg(&key).arg("-out").arg(&cert));
    let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
    let _ = Command::new("chmod").arg("600").arg(&key).status();
    let src = env.source_conf("src", &format!("ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n", cert.display(), key.display()));
    env.enqueue_app(&src, "SELECT 1");
    let proxy = env.proxy("proxy", "app", &["--tls-cert", cert.to_str().expect("path"), "--tls-key", key.to_str().expect("path")]);
    let at = |port: u16, ssl: &str| format!("postgres://{APP_CLIENT}:{APP_CLIENT_PW}@127.0.0.1:{port}/app?sslmode={ssl}");
    for ssl in ["disable", "require"] {
        let want = socket_waits(&at(src.port, ssl), &at(src.port, "disable"));
        assert!(
            want.contains("readable after the NOTIFY: True <0.25s")
                && want.contains("readable during pg_sleep(0.6): False")
                && want.contains("readable at the notice: True <0.25s")
                && want.contains("readable at the idle timeout: True <1.5s")
                && want.contains("then: BAD"),
            "directly, sslmode={ssl}: {want}"
        );
        assert_eq!(socket_waits(&at(proxy.port, ssl), &at(src.port, "disable")), want, "sslmode={ssl}: through the proxy, then directly");
    }
}
