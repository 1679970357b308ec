//! Real clients through `dmf proxy`: psql (COPY both ways, notices, notifications, errors, TLS),
//! pgbench in every query mode, tokio-postgres, sqlx and psycopg 3; authentication of clients and
//! backends; malformed input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn psql_bin() -> std::path::PathBuf {
    dmf_activities::providers::local::program("psql").expect("psql")
}

#[test]
fn psql_copy_notices_notifications_errors_and_tls_pass_through() {
    let env = Env::new("proxy-psql");
    let src = env.source("src");
    env.enqueue_app(&src, "SELECT 1");
    let cert = env.path().join("proxy.crt");
    let key = env.path().join("proxy.key");
    run_ok(Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"]).arg(&key).arg("-out").arg(&cert));
    let proxy = env.proxy("proxy", "app", &["--tls-cert", cert.to_str().expect("path"), "--tls-key", key.to_str().expect("path")]);
    let script = env.path().join("script.sql");
    std::fs::write(
        &script,
        "CREATE TABLE t (id int PRIMARY KEY, v text);\n\
         COPY t FROM STDIN;\n1\tone\n2\ttwo\n3\tthree\n\\.\n\
         COPY t TO STDOUT;\n\
         DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$;\n\
         LISTEN ch;\n\
         NOTIFY ch, 'payload';\n\
         SELECT 1/0;\n\
         BEGIN;\nINSERT INTO t VALUES (4, 'four');\nROLLBACK;\n\
         SELECT count(*) AS rows FROM t;\n\
         \\conninfo\n",
    )
    .expect("script");
    let tls_dsn = format!("host=127.0.0.1 port={} dbname=app user=app_client password={APP_CLIENT_PW} sslmode=require", proxy.port);
    let out = Command::new(psql_bin()).args(["-X", "-A", "-t", "-d", &tls_dsn, "-f"]).arg(&script).output_within(COMMAND_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("1\tone\n2\ttwo\n3\tthree"), "COPY TO STDOUT came back: {stdout}\n{stderr}");
    assert!(stderr.contains("NOTICE:  hello from the server"), "notice passed: {stderr}");
    assert!(stdout.contains("Asynchronous notification \"ch\" with payload \"payload\" received"), "notification passed: {stdout}");
    assert!(stderr.contains("ERROR:  division by zero"), "error passed: {stderr}");
    assert!(stdout.lines().any(|l| l.trim() == "3"), "rolled-back insert not visible, count 3: {stdout}");
    assert!(stdout.contains("SSL connection (protocol: TLSv1"), "TLS with the proxy's certificate: {stdout}");
    // The data really is on the route's primary.
    assert_eq!(psql(&src.dsn("app"), "SELECT string_agg(v, ',' ORDER BY id) FROM t"), "one,two,three");
    // Without a certificate the proxy answers SSLRequest with 'N': sslmode=prefer goes on in
    // clear text, sslmode=require is refused by the client.
    let plain = env.proxy("plain", "app", &[]);
    let prefer = format!("host=127.0.0.1 port={} dbname=app user=app_client password={APP_CLIENT_PW} sslmode=prefer", plain.port);
    assert_eq!(psql(&prefer, "SELECT count(*) FROM t"), "3");
    let require = format!("host=127.0.0.1 port={} dbname=app user=app_client password={APP_CLIENT_PW} sslmode=require", plain.port);
    let out = Command::new(psql_bin()).args(["-X", "-d", &require, "-c", "SELECT 1"]).output_within(COMMAND_LIMIT);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server does not support SSL"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn pgbench(args: &[&str]) -> String {
    let bin = dmf_activities::providers::local::program("pgbench").expect("pgbench");
    // the application role's password, as an application gives it (never in argv)
    run_ok(Command::new(bin).args(args).env("PGPASSWORD", APP_CLIENT_PW))
}

fn processed(out: &str) -> u64 {
    assert!(out.contains("number of failed transactions: 0 (0.000%)"), "pgbench reported failures:\n{out}");
    out.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{out}"))
}

#[test]
fn pgbench_simple_extended_prepared_and_tpcb_pass_through() {
    let env = Env::new("proxy-pgbench");
    let src = env.source("src");
    env.enqueue_app(&src, "SELECT 1");
    let proxy = env.proxy("proxy", "app", &[]);
    let p = proxy.port.to_string();
    let base = ["-h", "127.0.0.1", "-p", p.as_str(), "-U", APP_CLIENT];
    // pgbench -i loads its tables with COPY FROM STDIN through the proxy
    let mut init = base.to_vec();
    init.extend(["-i", "-s", "1", "-q", "app"]);
    pgbench(&init);
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) FROM pgbench_accounts"), "100000");
    for mode in ["simple", "extended", "prepared"] {
        let mut args = base.to_vec();
        args.extend(["-n", "-S", "-c", "4", "-j", "2", "-T", "2", "-M", mode, "app"]);
        let n = processed(&pgbench(&args));
        assert!(n > 100, "select-only {mode}: {n} transactions");
        let mut tpcb = base.to_vec();
        tpcb.extend(["-n", "-c", "4", "-j", "2", "-T", "2", "-M", mode, "app"]);
        let n = processed(&pgbench(&tpcb));
        let history: u64 = psql(&src.dsn("app"), "SELECT count(*) FROM pgbench_history").parse().expect("count");
        assert!(n > 10 && history >= n, "TPC-B {mode}: {n} transactions, {history} history rows");
    }
    assert_eq!(proxy.metric("connections_active"), 0.0);
    assert!(proxy.metric("transactions_total") > 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_binary_copy_transactions_errors_and_cancel() {
    use futures::{SinkExt, StreamExt};
    let env = Env::new("proxy-tokio-postgres");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE kv (k int PRIMARY KEY, v text, at timestamptz, blob bytea)");
    let proxy = env.proxy("proxy", "app", &[]);
    let (mut client, conn) = tokio_postgres::connect(&proxy.dsn("app"), tokio_postgres::NoTls).await.expect("connect through the proxy");
    tokio::spawn(conn);
    let insert = client.prepare("INSERT INTO kv VALUES ($1, $2, now(), $3)").await.expect("prepare");
    for k in 0..50i32 {
        client.execute(&insert, &[&k, &format!("v{k}"), &vec![k as u8; 3]]).await.expect("execute prepared");
    }
    let row = client.query_one("SELECT count(*), sum(k)::int8, (SELECT blob FROM kv ORDER BY k DESC LIMIT 1) FROM kv WHERE k >= $1", &[&10i32]).await.expect("query");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, Vec<u8>>(2)), (40, (10..50).sum::<i64>(), vec![49u8; 3]));
    // COPY in and out
    let sink = client.copy_in("COPY kv (k, v) FROM STDIN").await.expect("copy in");
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from((100..1100).map(|k| format!("{k}\tcopied\n")).collect::<String>())).await.expect("copy data");
    assert_eq!(sink.finish().await.expect("copy done"), 1000);
    let stream = client.copy_out("COPY (SELECT k FROM kv WHERE v = 'copied' ORDER BY k) TO STDOUT").await.expect("copy out");
    let chunks: Vec<_> = stream.collect().await;
    let text: String = chunks.into_iter().map(|c| String::from_utf8_lossy(&c.expect("chunk")).into_owned()).collect();
    assert_eq!(text.lines().count(), 1000);
    // transactions: a rollback leaves nothing, a commit stays
    let tx = client.transaction().await.expect("begin");
    tx.execute("DELETE FROM kv", &[]).await.expect("delete");
    tx.rollback().await.expect("rollback");
    let tx = client.transaction().await.expect("begin");
    tx.execute("UPDATE kv SET v = 'done' WHERE k = 1", &[]).await.expect("update");
    tx.commit().await.expect("commit");
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) || ':' || (SELECT v FROM kv WHERE k = 1) FROM kv"), "1050:done");
    // errors keep their SQLSTATE
    let err = client.execute("INSERT INTO kv (k) VALUES (1)", &[]).await.expect_err("duplicate key");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION));
    // a cancel request reaches the backend through the proxy's key
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.execute("SELECT pg_sleep(30) AS cancel_me", &[]).await });
    // cancel once the backend runs the statement (a cancel that arrives first cancels nothing)
    let running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%AS cancel_me' AND pid <> pg_backend_pid()";
    while psql(&src.dsn("app"), running) != "1" {
        assert!(started.elapsed() < Duration::from_secs(10), "pg_sleep never started through the proxy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.expect("cancel request");
    let err = sleeper.await.expect("join").expect_err("cancelled");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));
    assert!(started.elapsed() < Duration::from_secs(10), "cancel took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_queries_transactions_and_statement_cache() {
    use sqlx::{Connection, Row};
    let env = Env::new("proxy-sqlx");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE people (id bigserial PRIMARY KEY, name text NOT NULL, tags text[])");
    let proxy = env.proxy("proxy", "app", &[]);
    let mut conn = sqlx::PgConnection::connect(&proxy.dsn("app")).await.expect("sqlx connect through the proxy");
    for i in 0..30 {
        // the same text each time: sqlx prepares it once (a named statement) and reuses it
        sqlx::query("INSERT INTO people (name, tags) VALUES ($1, $2)")
            .bind(format!("person {i}"))
            .bind(vec!["a".to_string(), format!("t{i}")])
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    let row = sqlx::query("SELECT count(*) AS n, max(name) AS top FROM people WHERE $1 = ANY(tags)").bind("a").fetch_one(&mut conn).await.expect("select");
    assert_eq!(row.get::<i64, _>("n"), 30);
    assert_eq!(row.get::<String, _>("top"), "person 9");
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("DELETE FROM people").execute(&mut *tx).await.expect("delete");
    tx.rollback().await.expect("rollback");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM people").fetch_one(&mut conn).await.expect("count");
    assert_eq!(n, 30);
    let err = sqlx::query("SELECT * FROM missing_table").execute(&mut conn).await.expect_err("missing table");
    assert_eq!(err.as_database_error().and_then(|e| e.code()).as_deref(), Some("42P01"));
    conn.close().await.expect("close");
}

#[test]
fn psycopg3_parameters_prepared_pipeline_copy_and_notifications() {
    let env = Env::new("proxy-psycopg");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE notes (id int PRIMARY KEY, body text)");
    let proxy = env.proxy("proxy", "app", &[]);
    let script = r#"
import sys, psycopg
dsn = sys.argv[1]
with psycopg.connect(dsn, autocommit=True) as conn:
    cur = conn.cursor()
    for i in range(20):
        cur.execute("INSERT INTO notes VALUES (%s, %s)", (i, f"note {i}"), prepare=True)
    cur.executemany("INSERT INTO notes VALUES (%s, %s)", [(i, f"many {i}") for i in range(100, 150)])
    with conn.pipeline():
        for i in range(200, 230):
            conn.execute("INSERT INTO notes VALUES (%s, %s)", (i, "piped"))
    with cur.copy("COPY notes FROM STDIN") as copy:
        for i in range(300, 400):
            copy.write_row((i, "copied"))
    cur.execute("SELECT count(*), count(*) FILTER (WHERE body = %s) FROM notes", ("copied",))
    assert cur.fetchone() == (200, 100), "counts"
    with conn.transaction():
        cur.execute("UPDATE notes SET body = 'x' WHERE id = %s", (1,))
    try:
        cur.execute("SELECT 1/0")
        raise SystemExit("no error")
    except psycopg.errors.DivisionByZero:
        pass
    conn.execute("LISTEN psy")
    conn.execute("NOTIFY psy, 'hi'")
    got = next(conn.notifies(timeout=5))
    assert got.payload == "hi", got
print("psycopg ok")
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(proxy.dsn("app")).output_within(COMMAND_LIMIT);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("psycopg ok"), "psycopg 3 through the proxy (scripts/test.sh installs psycopg):\n{text}");
    assert_eq!(psql(&src.dsn("app"), "SELECT count(*) || ':' || (SELECT body FROM notes WHERE id = 1) FROM notes"), "200:x");
}

#[test]
fn clients_authenticate_by_scram_or_md5_and_backends_by_scram_md5_or_password() {
    let env = Env::new("proxy-auth");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE app").expect("create database app");
    // the server offers no TLS and p_user's method is `password`: the route says sslmode=disable,
    // or the proxy would not send that password in clear text (checked below)
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{}?sslmode=disable\"\n", src.dsn("app")));
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    for (user, method) in [("s_user", "scram-sha-256"), ("m_user", "md5"), ("p_user", "password")] {
        let enc = if method == "md5" { "md5" } else { "scram-sha-256" };
        psql(&src.dsn("app"), &format!("SET password_encryption = '{enc}'; CREATE ROLE {user} LOGIN PASSWORD '{user}-pw'; GRANT ALL ON SCHEMA public TO {user}"));
    }
    // first matching pg_hba line wins: per-user methods before the harness's trust line
    let hba = src.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("hba");
    let ours = "host all s_user 127.0.0.1/32 scram-sha-256\nhost all m_user 127.0.0.1/32 md5\nhost all p_user 127.0.0.1/32 password\n";
    std::fs::write(&hba, format!("{ours}{rules}")).expect("hba");
    psql(&src.dsn("postgres"), "SELECT pg_reload_conf()");
    let users = env.path().join("users.txt");
    std::fs::write(&users, "\"s_user\" \"s_user-pw\"\n\"m_user\" \"m_user-pw\"\n\"p_user\" \"p_user-pw\"\n").expect("users file");
    let users = users.to_str().expect("path");
    for (mode, proxy_name) in [("scram", "scram-proxy"), ("md5", "md5-proxy")] {
        let proxy = env.proxy(proxy_name, "app", &["--client-auth", mode, "--users-file", users]);
        for user in ["s_user", "m_user", "p_user"] {
            let dsn = format!("postgres://{user}:{user}-pw@127.0.0.1:{}/app?sslmode=disable", proxy.port);
            assert_eq!(psql(&dsn, "SELECT current_user"), user, "client {mode}, backend method of {user}");
            let wrong = format!("postgres://{user}:nope@127.0.0.1:{}/app?sslmode=disable", proxy.port);
            let out = Command::new(psql_bin()).args(["-X", "-d", &wrong, "-c", "SELECT 1"]).output_within(COMMAND_LIMIT);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("authentication failed"), "wrong password refused ({mode}): {err}");
        }
        // the backend refusing the proxy's login reaches the client with the server's words
        let stranger = format!("postgres://nobody:x@127.0.0.1:{}/app?sslmode=disable", proxy.port);
        let out = Command::new(psql_bin()).args(["-X", "-d", &stranger, "-c", "SELECT 1"]).output_within(COMMAND_LIMIT);
        assert!(!out.status.success());
    }
    // a route that does not say sslmode=disable: no clear-text password to a server without TLS
    env.route_set("app", &["--primary", &src.dsn("app")]);
    let proxy = env.proxy("prefer-proxy", "app", &["--client-auth", "scram", "--users-file", users]);
    let p_user = format!("postgres://p_user:p_user-pw@127.0.0.1:{}/app?sslmode=disable", proxy.port);
    let refused = try_psql(&p_user, "SELECT 1").expect_err("clear text over an unencrypted backend connection");
    assert!(refused.contains("clear-text password over an unencrypted connection"), "{refused}");
    let s_user = format!("postgres://s_user:s_user-pw@127.0.0.1:{}/app?sslmode=disable", proxy.port);
    assert_eq!(psql(&s_user, "SELECT current_user"), "s_user", "SCRAM goes over the same connection");
}

/// Read until the proxy closes the connection (or 10 s pass); returns what it sent.
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// Log in and read up to the first ReadyForQuery.
fn logged_in(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(&startup_packet(APP_CLIENT, "app")).expect("startup");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
        let n = s.read(&mut buf).expect("login answer");
        assert!(n > 0, "closed during login");
        got.extend_from_slice(&buf[..n]);
    }
    s
}

#[test]
fn malformed_input_gets_a_protocol_error_and_a_closed_connection() {
    let env = Env::new("proxy-malformed");
    let src = env.source("src");
    env.enqueue_app(&src, "SELECT 1");
    // the raw logins below give no password: a proxy that trusts loopback clients
    let proxy = env.proxy("proxy", "app", &["--client-auth", "trust"]);
    // a first packet of no startup length (a client that sent a Terminate before its startup
    // packet, as node-postgres does when ended at once) is closed without a word, as the server
    // itself does
    for (what, bytes) in [("absurd startup length", vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]), ("startup length too small", vec![0, 0, 0, 2]), ("a Terminate first", vec![b'X', 0, 0, 0, 4])] {
        // (what came back, and whether the connection ended: closed or reset, not left open)
        let answer = |port: u16| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(&bytes).expect("send");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return (got, true),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => return (got, !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
                }
            }
        };
        let direct = answer(src.port);
        assert_eq!(direct, (Vec::new(), true), "{what}: the server ends the connection without a word");
        assert_eq!(answer(proxy.port), direct, "{what}: the proxy as the server");
    }
    let before_startup: Vec<(&str, Vec<u8>)> = vec![
        ("protocol 2.0", vec![0, 0, 0, 8, 0, 2, 0, 0]),
        ("parameters not terminated", vec![0, 0, 0, 13, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0]),
        ("no user", vec![0, 0, 0, 9, 0, 3, 0, 0, 0]),
        ("cancel request of the wrong length", vec![0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1]),
    ];
    for (what, bytes) in &before_startup {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
        s.write_all(bytes).expect("send");
        let (got, closed) = read_to_close(&mut s);
        assert!(closed, "{what}: connection left open");
        assert_eq!(got.first(), Some(&b'E'), "{what}: expected an ErrorResponse, got {got:?}");
        assert!(String::from_utf8_lossy(&got).contains("08P01"), "{what}: protocol violation code");
    }
    // GSSENCRequest is declined with 'N' and the client may go on
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect");
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).expect("gssenc");
    let mut one = [0u8; 1];
    s.read_exact(&mut one).expect("answer");
    assert_eq!(&one, b"N");
    drop(s);
    let after_login: Vec<(&str, Vec<u8>)> = vec![
        ("unknown message type", vec![b'!', 0, 0, 0, 4]),
        ("absurd message length", vec![b'Q', 0x7f, 0xff, 0xff, 0xff]),
        ("length below four", vec![b'Q', 0, 0, 0, 1]),
        ("Sync with a body", vec![b'S', 0, 0, 0x30, 0x00]),
        ("Query without its terminator", vec![b'Q', 0, 0, 0, 9, b's', b'e', b'l', b'e', b'c']),
        ("Bind with a lying parameter count", vec![b'B', 0, 0, 0, 12, 0, 0, 0, 0, 0, 5, 0, 0]),
    ];
    for (what, bytes) in &after_login {
        let mut s = logged_in(proxy.port);
        s.write_all(bytes).expect("send");
        let (got, closed) = read_to_close(&mut s);
        assert!(closed, "{what}: connection left open");
        assert!(got.first() == Some(&b'E') && String::from_utf8_lossy(&got).contains("08P01"), "{what}: expected a protocol error, got {:?}", String::from_utf8_lossy(&got));
    }
    // a message cut off by the client going away leaves nothing behind
    let mut s = logged_in(proxy.port);
    s.write_all(&[b'Q', 0, 0, 1, 0, b's']).expect("half a message");
    drop(s);
    // random garbage, many times: never a stuck task or a dead proxy
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..200 {
        let mut s = if round % 2 == 0 { TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect") } else { logged_in(proxy.port) };
        let len = 1 + (round * 7) % 300;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let (_, closed) = read_to_close(&mut s);
        assert!(closed, "garbage round {round}: connection left open");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric("connections_active") > 0.0 {
        assert!(Instant::now() < deadline, "sessions left open after malformed input");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(proxy.metric("protocol_errors") >= (before_startup.len() + after_login.len()) as f64);
    assert_eq!(psql(&proxy.dsn("app"), "SELECT 42"), "42", "the proxy still serves");
}
