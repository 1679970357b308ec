//! Security (issue 19): who the proxy lets in and as whom, secrets kept out of argv, outputs and
//! logs, quoting that does not depend on the server's settings, and SCRAM that does not reveal
//! which users exist.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A source whose database `shop` is reached by dmf as `migrator` (a superuser with a password,
/// as in the issue) and by the application as `shop_app`.
fn shop(env: &Env) -> (Guard, String) {
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE shop").expect("database");
    src.psql("postgres", "CREATE ROLE migrator LOGIN SUPERUSER PASSWORD 'migrator-pw'; CREATE ROLE shop_app LOGIN PASSWORD 'shop-pw'")
        .expect("roles");
    psql(&src.dsn("shop"), "CREATE TABLE orders (id int PRIMARY KEY, v text); INSERT INTO orders VALUES (1, 'a'); GRANT SELECT, INSERT ON orders TO shop_app");
    let dsn = src.dsn("shop").replacen("postgres://postgres@", "postgres://migrator:migrator-pw@", 1);
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"shop\"\nsource = \"{dsn}\"\n"));
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    (src, dsn)
}

/// Item 1: a client that only names dmf's role never gets a backend logged in with the route's
/// password; neither trust nor the default (what the server asks) admits dmf's role without its
/// password; neither is the default beyond a loopback listener.
#[test]
fn the_proxy_never_logs_a_client_in_with_dmfs_credentials() {
    let env = Env::new("sec-proxy-login");
    let (_src, _) = shop(&env);
    let proxy = env.proxy("proxy", "shop", &[]);
    let err = try_psql(&proxy.dsn_as("migrator", "", "shop"), "SELECT current_user").expect_err("dmf's role through a trusting proxy");
    assert!(err.contains("migrator"), "the refusal names the user: {err}");
    assert!(!err.contains("migrator-pw"), "{err}");
    // The application's own role, with its password from the users file, works.
    let users = env.path().join("users.txt");
    std::fs::write(&users, "\"shop_app\" \"shop-pw\"\n\"migrator\" \"migrator-pw\"\n").expect("users file");
    let with_users = env.proxy("proxy-users", "shop", &["--users-file", users.to_str().expect("path")]);
    assert_eq!(psql(&with_users.dsn_as("shop_app", "shop-pw", "shop"), "SELECT current_user || ':' || count(*) FROM orders"), "shop_app:1");
    // The default on loopback asks what the server asks: it trusts every user on loopback here,
    // but dmf's role is asked its password all the same.
    let err = try_psql(&with_users.dsn_as("migrator", "", "shop"), "SELECT 1").expect_err("dmf's role without its password");
    assert!(err.contains("password"), "{err}");
    // Even with its password in the users file, trust does not admit dmf's role.
    let trusting = env.proxy("proxy-trust", "shop", &["--client-auth", "trust", "--users-file", users.to_str().expect("path")]);
    let err = try_psql(&trusting.dsn_as("migrator", "", "shop"), "SELECT 1").expect_err("trust for dmf's role");
    assert!(err.contains("dmf's own role"), "{err}");
    // A proxy listening beyond loopback does not default to trust.
    let port = dmf_activities::providers::local::free_port().expect("port");
    let listen = format!("0.0.0.0:{port}");
    let mut open = env.spawn_dmf("proxy-open", &["proxy", "--cluster", "shop", "--listen", &listen]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while open.is_alive() {
        assert!(Instant::now() < deadline, "a proxy on 0.0.0.0 without --client-auth started:\n{}", open.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(open.log_tail().contains("--client-auth"), "{}", open.log_tail());
}

/// One whole message from the server.
fn read_message(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    use std::io::Read;
    let mut head = [0u8; 5];
    s.read_exact(&mut head).expect("message header");
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("message body");
    (head[0], body)
}

/// The server-first message a SCRAM login as `user` gets from `port` (the salt is in it).
fn scram_server_first(port: u16, user: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(&startup_packet(user, "shop")).expect("startup");
    let (tag, body) = read_message(&mut s);
    assert_eq!((tag, &body[..4]), (b'R', &10i32.to_be_bytes()[..]), "AuthenticationSASL");
    let first = b"n,,n=,r=abcdefghijklmnopqrstuvwx";
    let mut msg = b"SCRAM-SHA-256\0".to_vec();
    msg.extend_from_slice(&(first.len() as i32).to_be_bytes());
    msg.extend_from_slice(first);
    let mut out = vec![b'p'];
    out.extend_from_slice(&((msg.len() + 4) as i32).to_be_bytes());
    out.extend(msg);
    s.write_all(&out).expect("SASLInitialResponse");
    let (tag, body) = read_message(&mut s);
    assert_eq!((tag, &body[..4]), (b'R', &11i32.to_be_bytes()[..]), "AuthenticationSASLContinue");
    String::from_utf8_lossy(&body[4..]).into_owned()
}

/// Item 8: a user the proxy does not know gets the same salt on every attempt, as a known user
/// does (PostgreSQL's mock authentication), so that the salt does not tell who exists.
#[test]
fn scram_does_not_reveal_which_users_exist() {
    let env = Env::new("sec-scram-mock");
    let (_src, _) = shop(&env);
    let users = env.users_file(&[("shop_app", "shop-pw")]);
    let proxy = env.proxy("proxy", "shop", &["--client-auth", "scram", "--users-file", users.to_str().expect("path")]);
    let salt = |user: &str| {
        let first = scram_server_first(proxy.port, user);
        first.split(',').find_map(|a| a.strip_prefix("s=")).map(str::to_string).unwrap_or_else(|| panic!("no salt in {first}"))
    };
    assert_eq!(salt("shop_app"), salt("shop_app"), "a known user's salt is its verifier's");
    let unknown = salt("nobody");
    assert_eq!(unknown, salt("nobody"), "an unknown user's salt is as stable as a known user's");
    assert_ne!(unknown, salt("nobody_else"), "and differs between users, as real salts do");
}

/// Item 7: keys with a backslash and a quote are compared and named right on a source where
/// `standard_conforming_strings` is off (backslashes in plain literals are escapes there).
#[test]
fn keys_with_backslashes_and_quotes_audit_right_without_standard_conforming_strings() {
    let env = Env::new("sec-quoting");
    let src = env.source_conf("src", "standard_conforming_strings = off\nescape_string_warning = off");
    src.psql("postgres", "CREATE DATABASE app").expect("db");
    let dsn = src.dsn("app");
    // every key has a backslash before a quote, so that chunk bounds and re-checked keys do too
    psql(&dsn, r"CREATE TABLE odd (k text PRIMARY KEY, v int); INSERT INTO odd SELECT E'k\\''' || lpad(g::text, 5, '0') || E'\\', g FROM generate_series(1, 3000) g");
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{dsn}\"\npause_before = [\"validating\"]\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let _worker = env.worker("w1", &[]);
    env.wait_for("validating (paused)", Duration::from_secs(180), |cs| cs.first().is_some_and(|c| c["phase"] == "validating" && c["paused"] == true));
    let clean = env.dmf_json(&["audit", "app", "--full", "--chunk-rows", "300", "--json"]);
    assert_eq!(clean["full_compare"]["status"], "clean", "{clean}");
    assert_eq!(clean["full_compare"]["rows_compared"], 3000, "{clean}");
    psql(&env.target_dsn("app"), r"UPDATE odd SET v = -1 WHERE k = E'k\\''01234\\'");
    let found = env.dmf_json(&["audit", "app", "--full", "--chunk-rows", "300", "--json"]);
    let text = found.to_string();
    assert!(text.contains(r#"k\\'01234\\"#), "the changed row is named by its exact key: {found}");
}

/// Item 2: a migration from a source that wants passwords never puts one on a command line (the
/// schema and post-data dumps and restores run while this test watches every process), in the
/// `--json` outputs or in the logs.
#[test]
fn no_password_on_a_command_line_in_an_output_or_in_a_log() {
    let env = Env::new("sec-no-leak");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE shop").expect("database");
    src.psql("postgres", "CREATE ROLE migrator LOGIN SUPERUSER PASSWORD 'migrator-pw'").expect("role");
    // enough tables that pg_dump and pg_restore run for a while
    let tables: String = (0..150).map(|i| format!("CREATE TABLE t{i} (id int PRIMARY KEY, v text); CREATE INDEX t{i}_v ON t{i} (v);")).collect();
    psql(&src.dsn("shop"), &tables);
    let dsn = src.dsn("shop").replacen("postgres://postgres@", "postgres://migrator:migrator-pw@", 1);
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"shop\"\nsource = \"{dsn}\"\npause_before = [\"validating\"]\n"));
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let enqueued = String::from_utf8_lossy(&out.stdout).into_owned();
    // watch every process's command line while the migration hydrates
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut seen, mut leaked) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
                    let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
                    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    if cmdline.contains("pg_dump") || cmdline.contains("pg_restore") {
                        seen += 1;
                        if cmdline.contains("migrator-pw") {
                            leaked.push(cmdline);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (seen, leaked)
        })
    };
    let _scheduler = env.scheduler();
    let _worker = env.worker("w1", &[]);
    env.wait_for("validating (paused)", Duration::from_secs(180), |cs| cs.first().is_some_and(|c| c["phase"] == "validating" && c["paused"] == true));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, leaked) = watcher.join().expect("watcher");
    assert!(seen > 0, "the watcher saw pg_dump or pg_restore run");
    assert!(leaked.is_empty(), "a password on {} command lines, the first: {:?}", leaked.len(), leaked.first());
    let route = env.dmf(&["route", "show", "shop", "--json"]);
    assert!(route.status.success(), "{}", String::from_utf8_lossy(&route.stderr));
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    assert!(route.contains("postgres://migrator@"), "the route still names its user: {route}");
    // a manifest error that quotes the line with the password
    let bad = env.enqueue("bad.toml", &format!("[fleet]\nname = \"g\"\n\n[[cluster]]\nname = \"x\"\nsource = \"{dsn}\"\nbogus = \n"));
    assert!(!bad.status.success());
    let bad = format!("{}{}", String::from_utf8_lossy(&bad.stdout), String::from_utf8_lossy(&bad.stderr));
    env.assert_no_secret(&["migrator-pw"], &[&enqueued, &route, &bad], false);
}

/// Item 3: the source's password by reference (a file only the worker and `dmf enqueue` read):
/// the control plane never holds it, routes carry none, the subscription logs in as a replication
/// role of its own, a proxy follows its route logged in to the control plane as a role that can
/// only read routes and keep its own row, and an inline password still works but is warned of.
#[test]
fn secrets_by_reference_never_reach_the_control_plane_routes_or_proxies() {
    let env = Env::new("sec-by-ref");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE shop").expect("database");
    src.psql("postgres", "CREATE ROLE migrator LOGIN SUPERUSER PASSWORD 'migrator-pw'").expect("role");
    psql(&src.dsn("shop"), &format!("CREATE TABLE orders (id int PRIMARY KEY, v text); INSERT INTO orders SELECT g, 'v' FROM generate_series(1, 500) g; {APP_CLIENT_GRANTS}"));
    let pw_file = env.path().join("source.pw");
    std::fs::write(&pw_file, "migrator-pw\n").expect("password file");
    let dsn = src.dsn("shop").replacen("postgres://postgres@", "postgres://migrator@", 1);
    // an inline password is refused next to a reference, and warned of alone
    let both = env.enqueue("both.toml", &format!("[fleet]\nname = \"g\"\n\n[[cluster]]\nname = \"x\"\nsource = \"{}\"\nsource_password_env = \"X\"\n", dsn.replacen("migrator@", "migrator:migrator-pw@", 1)));
    assert!(!both.status.success());
    let both = String::from_utf8_lossy(&both.stderr).into_owned();
    assert!(both.contains("keep one") && !both.contains("migrator-pw"), "{both}");
    let manifest = format!(
        "[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"shop\"\nsource = \"{dsn}\"\nsource_password_file = \"{}\"\npause_before = [\"validating\"]\n",
        pw_file.display()
    );
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let enqueued = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(enqueued.contains("\"warnings\": []"), "no warning for a reference: {enqueued}");
    let _scheduler = env.scheduler();
    let _worker = env.worker("w1", &[]);
    env.wait_for("validating (paused)", Duration::from_secs(180), |cs| cs.first().is_some_and(|c| c["phase"] == "validating" && c["paused"] == true));
    // the subscription on the target logs in as the migration's replication role
    let target = env.target_dsn("shop");
    let conninfo = psql(&target, "SELECT subconninfo FROM pg_subscription");
    assert!(conninfo.contains("user='dmf_repl_") && !conninfo.contains("migrator"), "{conninfo}");
    // a proxy logged in to the control plane as a member of dmf_proxy follows the route
    env.cp_query("CREATE ROLE shop_proxy LOGIN PASSWORD 'proxy-pw' IN ROLE dmf_proxy");
    let cp_url = env.url.replacen("postgres://postgres@", "postgres://shop_proxy@", 1);
    let proxy = env.proxy_env("proxy", "shop", &[], &[("DMF_DATABASE_URL", cp_url.as_str()), ("PGPASSWORD", "proxy-pw")]);
    assert_eq!(psql(&proxy.dsn("shop"), "SELECT count(*) FROM orders"), "500");
    env.route_set("shop", &["--hold"]);
    env.route_set("shop", &["--release"]);
    assert_eq!(psql(&proxy.dsn("shop"), "SELECT count(*) FROM orders"), "500");
    let denied = try_psql(&cp_url.replacen("shop_proxy@", "shop_proxy:proxy-pw@", 1), "SELECT count(*) FROM dmf.clusters").expect_err("a proxy reads routes only");
    assert!(denied.contains("permission denied"), "{denied}");
    env.assert_no_secret(&["migrator-pw", "proxy-pw"], &[&enqueued, &both], true);
    // an inline password still works, with a warning that says where it is kept
    let inline = env.enqueue("inline.toml", &format!("[fleet]\nname = \"h\"\n\n[[cluster]]\nname = \"y\"\nsource = \"{}\"\n", dsn.replacen("migrator@", "migrator:migrator-pw@", 1)));
    assert!(inline.status.success(), "{}", String::from_utf8_lossy(&inline.stderr));
    let warned = String::from_utf8_lossy(&inline.stdout);
    assert!(warned.contains("inline.toml:6: cluster y: the source's password is inline: the control plane keeps it in dmf.clusters"), "{warned}");
}

/// Item 5: a target the local provider makes outside `--fast-local-targets` is not open to every
/// local user: dmf's role there has a generated password, held by reference (a file only its
/// owner reads), and every role needs its password, over TCP and the socket.
#[test]
fn local_targets_require_a_password_held_by_reference() {
    let env = Env::new("sec-local-target");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'x')");
    // (the manifest pauses nowhere: the test stops the worker once the target replicates)
    let _scheduler = env.scheduler();
    let _worker = env.worker_production_targets("w1", &[]);
    env.wait_for("replicating", Duration::from_secs(180), |cs| cs.first().is_some_and(in_sync));
    let target = env.target_dsn("app");
    assert!(!target.contains(':') || !target.split("://").nth(1).unwrap_or("").split('@').next().unwrap_or("").contains(':'), "no password in the state: {target}");
    let err = try_psql(&target, "SELECT 1").expect_err("dmf's role without its password");
    assert!(err.contains("password"), "{err}");
    let state = env.dmf_json(&["status", "app", "--json"]);
    let file = state["clusters"][0]["state"]["target_password"]["password_file"].as_str().unwrap_or_else(|| panic!("a password_file reference: {state}")).to_string();
    let meta = std::fs::metadata(&file).expect("the password file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o077, 0, "{file} is readable by its owner only");
    let password = std::fs::read_to_string(&file).expect("read").trim().to_string();
    let with_pw = target.replacen("postgres://postgres@", &format!("postgres://postgres:{password}@"), 1);
    assert_eq!(psql(&with_pw, "SELECT count(*) FROM notes"), "1");
    let socket = format!("host={} port={} dbname=app user=postgres", std::path::Path::new(&file).parent().expect("dir").display(), target.rsplit(':').next().and_then(|p| p.split('/').next()).expect("port"));
    assert!(try_psql(&socket, "SELECT 1").is_err(), "the socket asks a password too");
    env.assert_no_secret(&[&password], &[], true);
}

/// Resident and peak resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u64 {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<u64>().ok()).expect("field") / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Item 6: clients that connect and go silent are disconnected at the authentication deadline;
/// a server that never answers a login is an error at the connect deadline; clients past
/// `--max-client-conn` are refused; large messages share one memory budget, so that a client
/// whose message would pass it gets an error while the others carry on, and the proxy's memory
/// stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_limits_bound_its_connections_and_memory() {
    use std::io::Write;
    let env = Env::new("sec-limits");
    let src = env.source("src");
    env.enqueue_app(&src, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    // 200 clients send a startup packet and go silent in the middle of SCRAM
    let scram = env.proxy("scram", "app", &["--client-auth", "scram", "--users-file", env.users_file(&[]).to_str().expect("path"), "--auth-timeout-s", "3"]);
    let mut silent: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", scram.port)).expect("connect");
            s.write_all(&startup_packet(APP_CLIENT, "app")).expect("startup");
            s
        })
        .collect();
    assert_eq!(psql(&scram.dsn("app"), "SELECT count(*) FROM t"), "1", "a client with its password gets in meanwhile");
    let started = std::time::Instant::now();
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let (tag, _) = read_message(s);
        assert_eq!(tag, b'R', "AuthenticationSASL first");
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(s, &mut rest);
    }
    assert!(started.elapsed() < Duration::from_secs(15), "silent clients are disconnected at the deadline: {:?}", started.elapsed());
    drop(silent);

    // a server that accepts connections and never answers: the login fails at the deadline
    let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("mute server");
    let mute_port = mute.local_addr().expect("addr").port();
    let limited = env.proxy(
        "limited",
        "app",
        // the raw logins below give no password: loopback clients are trusted
        &["--client-auth", "trust", "--max-client-conn", "3", "--max-buffer-bytes", "314572800", "--server-connect-timeout-s", "2"],
    );
    let pid = limited.proc.child.id();
    let (rss_before, _) = memory_mib(pid);
    // one client holds a 200 MiB query half sent
    let mut half = std::net::TcpStream::connect(("127.0.0.1", limited.port)).expect("connect");
    half.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    half.write_all(&startup_packet(APP_CLIENT, "app")).expect("startup");
    while read_message(&mut half).0 != b'Z' {}
    let big = format!("SELECT length('{}')\0", "x".repeat(200 << 20));
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((big.len() + 4) as i32).to_be_bytes());
    query.extend_from_slice(big.as_bytes());
    half.write_all(&query[..100 << 20]).expect("the first half");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // a second large query would take the buffers past the budget: that client gets an error
    let (other, conn) = tokio_postgres::connect(&limited.dsn("app"), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    let err = other.simple_query(&format!("SELECT length('{}')", "y".repeat(250 << 20))).await.expect_err("past the budget");
    let text = format!("{err:?}");
    assert!(text.contains("53200") || text.contains("does not fit in the proxy's buffers"), "{text}");
    // the others carry on: a small query, and the first client's large one
    assert_eq!(psql(&limited.dsn("app"), "SELECT count(*) FROM t"), "1");
    half.write_all(&query[100 << 20..]).expect("the second half");
    let mut answer = None;
    loop {
        match read_message(&mut half) {
            (b'D', body) => answer = Some(String::from_utf8_lossy(&body[6..]).into_owned()),
            (b'Z', _) => break,
            (b'E', body) => panic!("the first large query failed: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    assert_eq!(answer.as_deref(), Some(&(200 << 20).to_string()[..]));
    let (rss_after, peak) = memory_mib(pid);
    assert!(peak < 300 + 120, "peak resident memory {peak} MiB with a 300 MiB budget (before: {rss_before} MiB)");
    assert!(rss_after < rss_before + 64, "memory given back: {rss_after} MiB after, {rss_before} MiB before");
    // clients past --max-client-conn are refused with a clear error
    let idle: Vec<tokio_postgres::Client> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let (c, conn) = tokio_postgres::connect(&limited.dsn("app"), tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(conn);
            v.push(c);
        }
        v
    };
    let refused = try_psql(&limited.dsn("app"), "SELECT 1").expect_err("a fourth client");
    assert!(refused.contains("too many clients already (3, --max-client-conn)"), "{refused}");
    drop(idle);
    drop(half);
    // the login to a mute server ends at the connect deadline, with an error naming it
    env.route_set("app", &["--primary", &format!("postgres://postgres@127.0.0.1:{mute_port}/app")]);
    let started = std::time::Instant::now();
    let err = try_psql(&limited.dsn("app"), "SELECT 1").expect_err("a mute server");
    assert!(started.elapsed() < Duration::from_secs(10) && err.contains("no login within 2s"), "{err} after {:?}", started.elapsed());
    drop(mute);
}

/// Item 3: a source password kept in AWS Secrets Manager (the emulator), referenced by ARN: read
/// by `dmf enqueue` for its check and by the worker when it connects, never stored.
#[test]
fn a_source_password_in_aws_secrets_manager_is_read_by_the_process_that_connects() {
    let env = Env::new("sec-aws-secret");
    let moto = Moto::start(env.path(), &[]);
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE shop").expect("database");
    src.psql("postgres", "CREATE ROLE migrator LOGIN SUPERUSER PASSWORD 'migrator-sm-pw'").expect("role");
    psql(&src.dsn("shop"), "CREATE TABLE orders (id int PRIMARY KEY, v text); INSERT INTO orders VALUES (1, 'a')");
    let arn = moto.create_secret("shop-migrator", r#"{"username": "migrator", "password": "migrator-sm-pw"}"#);
    let dsn = src.dsn("shop").replacen("postgres://postgres@", "postgres://migrator@", 1);
    let path = env.path().join("fleet.toml");
    std::fs::write(&path, format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"shop\"\nsource = \"{dsn}\"\nsource_password_secret = \"{arn}\"\npause_before = [\"validating\"]\n"))
        .expect("manifest");
    let vars = moto.worker_env();
    let envs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = std::process::Command::new(dmf_bin())
        .args(["enqueue", path.to_str().expect("path"), "--json"])
        .env("DMF_DATABASE_URL", &env.url)
        .env("DMF_LOG", "warn")
        .envs(envs.iter().copied())
        .output_within(COMMAND_LIMIT);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let _worker = env.worker_env("w1", &[], &envs);
    env.wait_for("validating (paused)", Duration::from_secs(180), |cs| cs.first().is_some_and(|c| c["phase"] == "validating" && c["paused"] == true));
    env.assert_no_secret(&["migrator-sm-pw"], &[&String::from_utf8_lossy(&out.stdout)], true);
}
