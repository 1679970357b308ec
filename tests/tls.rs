//! TLS to every database (issue 19 item 4): a source and a target that accept only `hostssl`
//! connections with a test CA, migrated end to end with `sslmode=verify-full`, flipped and rolled
//! back with load through the proxy; a server whose certificate the CA did not sign is refused,
//! and so is a server that asks for a clear-text password without TLS.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost; another CA.
struct Certs {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn certs(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).expect("tls dir");
    for ca in ["ca", "other-ca"] {
        openssl(dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &format!("/CN=dmf test {ca}"), "-keyout", &format!("{ca}.key"), "-out", &format!("{ca}.crt")]);
    }
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"]);
    std::fs::write(dir.join("san.ext"), "subjectAltName = IP:127.0.0.1, DNS:localhost\n").expect("san");
    openssl(dir, &["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt"]);
    // the servers run as postgres and want their key private
    let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status();
    let _ = Command::new("chmod").args(["600"]).arg(dir.join("server.key")).status();
    Certs { ca: dir.join("ca.crt"), other_ca: dir.join("other-ca.crt"), cert: dir.join("server.crt"), key: dir.join("server.key") }
}

/// Only TLS connections from now on (`postgres` trusted over TLS for the test's own set-up,
/// everyone else with a password).
fn hostssl_only(c: &LocalCluster) {
    std::fs::write(
        c.data_dir().join("pg_hba.conf"),
        "local all all trust\nlocal replication all trust\n\
         hostssl all postgres 127.0.0.1/32 trust\nhostssl replication postgres 127.0.0.1/32 trust\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\nhostssl replication all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("pg_hba.conf");
    c.psql("postgres", "SELECT pg_reload_conf()").expect("reload");
}

#[test]
fn migrated_flipped_and_rolled_back_over_verify_full_tls_only() {
    let env = Env::new("tls");
    let c = certs(&env.path().join("tls"));
    let conf = format!("ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n", c.cert.display(), c.key.display());
    let src = env.source_conf("src", &conf);
    let dst = env.source_conf("dst", &conf);
    let verify = |cl: &LocalCluster, ca: &Path| {
        format!("postgres://migrator:migrator-pw@127.0.0.1:{}/app?sslmode=verify-full&sslrootcert={}", cl.port, ca.display())
    };
    for cl in [&src, &dst] {
        cl.psql("postgres", "CREATE DATABASE app").expect("db");
        cl.psql("postgres", "CREATE ROLE migrator LOGIN SUPERUSER PASSWORD 'migrator-pw'").expect("migrator");
    }
    run_ok(Command::new(pgbench_bin()).args(["-i", "-s", "1", "-q", "-d"]).arg(src.dsn("app")));
    psql(&src.dsn("app"), &format!("ALTER TABLE pgbench_history REPLICA IDENTITY FULL; {APP_CLIENT_GRANTS}"));
    for cl in [&src, &dst] {
        hostssl_only(cl);
        let plain = try_psql(&format!("{}?sslmode=disable", cl.dsn("app")), "SELECT 1");
        assert!(plain.is_err(), "clear text is refused from now on");
    }
    let tls = |cl: &LocalCluster| format!("{}?sslmode=require", cl.dsn("app"));

    // a server whose certificate the CA does not vouch for is refused, by name
    let out = env.enqueue("wrong.toml", &format!("[fleet]\nname = \"w\"\n\n[[cluster]]\nname = \"w\"\nsource = \"{}\"\n", verify(&src, &c.other_ca)));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster w") && (err.contains("UnknownIssuer") || err.contains("certificate")), "{err}");

    let manifest = format!(
        "[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{}\"\ntarget = \"{}\"\n",
        verify(&src, &c.ca),
        verify(&dst, &c.ca)
    );
    let out = env.enqueue("fleet.toml", &manifest);
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));
    // the proxy requires TLS from its clients too
    let proxy = env.proxy("proxy", "app", &["--tls-cert", c.cert.to_str().expect("path"), "--tls-key", c.key.to_str().expect("path"), "--client-tls", "required"]);
    let refused = try_psql(&proxy.dsn("app"), "SELECT 1").expect_err("a client without TLS");
    assert!(refused.contains("TLS is required"), "{refused}");
    let through = format!("postgres://{APP_CLIENT}:{APP_CLIENT_PW}@127.0.0.1:{}/app?sslmode=verify-full&sslrootcert={}", proxy.port, c.ca.display());
    assert_eq!(psql(&through, "SELECT count(*) FROM pgbench_branches"), "1");
    let _scheduler = env.scheduler();
    let worker = env.worker("w1", &["--audit-window-s", "2", "--shadow-reads-s", "2", "--soak-s", "600", "--flip-max-lag-ms", "100"]);
    env.wait_for("hydrated", Duration::from_secs(180), |cs| cs.first().is_some_and(|c| in_sync(c) || c["phase"] == "aborted"));
    assert!(in_sync(&env.clusters()[0]), "{}", worker.log_tail());
    assert_eq!(psql(&tls(&dst), "SELECT count(*) FROM pgbench_accounts"), "100000");

    let args = ["-c", "2", "-j", "1", "-T", "40", "-R", "100"];
    let bench = Bench::start(env.path(), "flip", &through, &args);
    env.wait_for("flipped", Duration::from_secs(120), |cs| cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("flipped" | "failed" | "aborted"))));
    assert_eq!(env.phase_of("app"), "flipped", "{}", worker.log_tail());
    let r = bench.wait();
    assert!(r.ok && r.failed == 0 && r.processed > 0, "load across the flip:\n{}", r.report);
    let history = psql(&tls(&dst), "SELECT count(*) FROM pgbench_history");
    assert_eq!(history.parse::<i64>().expect("count"), r.processed, "every transaction is on the target");

    let bench = Bench::start(env.path(), "rollback", &through, &["-c", "2", "-j", "1", "-T", "12", "-R", "100"]);
    std::thread::sleep(Duration::from_secs(3));
    let out = env.dmf(&["rollback", "app"]);
    assert!(out.status.success(), "dmf rollback: {}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("rolled back", Duration::from_secs(90), |cs| cs.first().is_some_and(|c| matches!(c["phase"].as_str(), Some("rolled_back" | "failed"))));
    assert_eq!(env.phase_of("app"), "rolled_back", "{}", worker.log_tail());
    let back = bench.wait();
    assert!(back.ok && back.failed == 0, "load across the rollback:\n{}", back.report);
    let history = psql(&tls(&src), "SELECT count(*) FROM pgbench_history");
    assert_eq!(history.parse::<i64>().expect("count"), r.processed + back.processed, "every transaction of both runs is on the source");
    env.assert_no_secret(&["migrator-pw"], &[], false);
}

/// Under the default `sslmode=prefer`, a server that offers no TLS and asks for the password in
/// clear text gets no password: the connection fails, by name, unless the string says
/// `sslmode=disable`.
#[test]
fn no_clear_text_password_without_tls_unless_disable_says_so() {
    let env = Env::new("tls-cleartext");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE app").expect("db");
    src.psql("postgres", "CREATE ROLE migrator LOGIN SUPERUSER PASSWORD 'migrator-pw'").expect("migrator");
    std::fs::write(src.data_dir().join("pg_hba.conf"), "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 password\n").expect("hba");
    src.psql("postgres", "SELECT pg_reload_conf()").expect("reload");
    let dsn = src.dsn("app").replacen("postgres://postgres@", "postgres://migrator:migrator-pw@", 1);
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{dsn}\"\n"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clear text"), "{err}");
    let out = env.enqueue("fleet2.toml", &format!("[fleet]\nname = \"g\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{dsn}?sslmode=disable\"\n"));
    assert!(out.status.success(), "sslmode=disable allows it: {}", String::from_utf8_lossy(&out.stderr));
}

/// The control-plane connection of every dmf process keeps the same rule: a control plane without
/// TLS that asks for the password in clear text does not get it (neither from a command nor from
/// a worker) unless the URL says `sslmode=disable`.
#[test]
fn the_control_plane_gets_no_clear_text_password_without_tls() {
    let env = Env::new("tls-cp");
    env.cp.psql("postgres", "CREATE ROLE dmf_cp LOGIN SUPERUSER PASSWORD 'cp-pw'").expect("role");
    std::fs::write(env.cp.data_dir().join("pg_hba.conf"), "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 password\n").expect("hba");
    env.cp.psql("postgres", "SELECT pg_reload_conf()").expect("reload");
    let url = env.url.replacen("postgres://postgres@", "postgres://dmf_cp:cp-pw@", 1);
    let status = |url: &str| Command::new(dmf_bin()).args(["status", "--json"]).env("DMF_DATABASE_URL", url).env("DMF_LOG", "warn").stdin(std::process::Stdio::null()).output_within(COMMAND_LIMIT);

    let out = status(&url);
    assert!(!out.status.success(), "dmf status logged in with a clear-text password: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clear text") && !err.contains("cp-pw"), "{err}");

    let mut worker = env.worker_env("w1", &[], &[("DMF_DATABASE_URL", &url)]);
    let logged = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(&worker.log).unwrap_or_default().contains("clear text")
    });
    assert!(logged, "the worker names why it cannot reach the control plane:\n{}", worker.log_tail());
    let sessions = env.cp.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE usename = 'dmf_cp'").expect("sessions");
    assert_eq!(sessions, "0", "{}", worker.log_tail());
    worker.kill9();

    let out = status(&format!("{url}?sslmode=disable"));
    assert!(out.status.success(), "sslmode=disable allows it: {}", String::from_utf8_lossy(&out.stderr));
}
