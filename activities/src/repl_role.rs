//! The dedicated replication role a subscription logs in as. The connection string of `CREATE
//! SUBSCRIPTION` lands in the subscriber's catalog: it must not hold dmf's own credentials (a
//! superuser's, an Aurora master password). So each migration has a role of its own on the
//! publishing side, `dmf_repl_<id>`, that can only log in and replicate (the REPLICATION
//! attribute, or `rds_replication` on RDS and Aurora), with CONNECT on the one database. Its
//! password is made anew each time a subscription is made, set as a SCRAM verifier (the clear
//! text never reaches the publisher), and given only to the subscription: nothing else keeps it.
//! The role is dropped with the replication it served.

use tokio_postgres::Client;

use crate::error::Error;
use crate::pg;

/// The role's name for `names` (forward and reverse replication share it: each side has its own).
pub fn name(names: &crate::Names) -> String {
    names.subscription.replacen("dmf_sub_", "dmf_repl_", 1).replacen("dmf_rsub_", "dmf_repl_", 1)
}

/// Make (or give a new password to) `role` on the publisher `client` is connected to, and return
/// the connection string a subscription uses to reach it: `dsn`'s host, port, database and TLS
/// settings with the role and its new password.
pub async fn ensure(client: &Client, role: &str, dsn: &str) -> Result<String, Error> {
    let password = uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
    let verifier = pg::literal(&postgres_protocol::password::scram_sha_256(password.as_bytes()));
    let ident = pg::ident(role);
    let unsafe_role: Option<bool> = client
        .query_opt(include_str!("sql/repl_role_unsafe.sql"), &[&role])
        .await
        .map_err(pg::err("look up the replication role"))?
        .map(|r| r.get(0));
    if unsafe_role == Some(true) {
        return Err(Error::NeedsOperator(format!(
            "role {role} exists with more than a replication role needs (attributes, members or groups); dmf made no such role: drop it, or find who did"
        )));
    }
    if unsafe_role.is_some() {
        pg::exec(client, "renew the replication role's password", &format!("ALTER ROLE {ident} PASSWORD {verifier}")).await?;
    } else {
        match pg::exec(client, "create the replication role", &format!("CREATE ROLE {ident} LOGIN REPLICATION PASSWORD {verifier}")).await {
            Ok(()) => {}
            // RDS and Aurora: the REPLICATION attribute is a superuser's to give; rds_replication
            // is what rds_superuser may grant instead
            Err(Error::Postgres { source, .. }) if source.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                pg::exec(client, "create the replication role (RDS)", &format!("CREATE ROLE {ident} LOGIN PASSWORD {verifier}; GRANT rds_replication TO {ident}")).await?
            }
            Err(e) => return Err(e),
        }
    }
    pg::exec(client, "let the replication role connect", &format!("GRANT CONNECT ON DATABASE {} TO {ident}", pg::ident(&pg::dbname(dsn)?))).await?;
    // the subscriber's libpq under prefer would answer a clear-text request without TLS:
    // require TLS where the server offers it (as dmf's own connections do)
    let (policy, config) = dmf_pgconn::tls::parse(dsn).map_err(|e| Error::NeedsOperator(format!("bad connection string {}: {e}", dmf_db::secret::redact(dsn))))?;
    let mode = match policy.mode {
        dmf_pgconn::tls::SslMode::Prefer => dmf_pgconn::tls::mode_for_libpq(&config, std::time::Duration::from_secs(10))
            .await
            .map_err(|e| Error::NeedsOperator(format!("the subscription's connection to {}: {e}", dmf_db::secret::redact(dsn))))?,
        other => other,
    };
    conninfo(dsn, role, &password, mode)
}

/// `dsn`'s server, database and TLS settings as a key=value connection string for `user`.
fn conninfo(dsn: &str, user: &str, password: &str, mode: dmf_pgconn::tls::SslMode) -> Result<String, Error> {
    let (tls, config) = dmf_pgconn::tls::parse(dsn).map_err(|e| Error::NeedsOperator(format!("bad connection string {}: {e}", dmf_db::secret::redact(dsn))))?;
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut out = Vec::new();
    if let Some(tokio_postgres::config::Host::Tcp(h)) = config.get_hosts().first() {
        out.push(format!("host={}", quote(h)));
    }
    if let Some(p) = config.get_ports().first() {
        out.push(format!("port={p}"));
    }
    if let Some(d) = config.get_dbname() {
        out.push(format!("dbname={}", quote(d)));
    }
    out.push(format!("user={}", quote(user)));
    out.push(format!("password={}", quote(password)));
    // libpq (the subscriber's) reads these as dmf does; the root certificate's path must exist
    // where the subscriber runs
    out.push(format!("sslmode={}", mode.as_str()));
    if let Some(root) = &tls.root_cert {
        out.push(format!("sslrootcert={}", quote(&root.display().to_string())));
    }
    Ok(out.join(" "))
}

/// Drop `role` from the cluster `client` is connected to (nothing when it is not there). It owns
/// nothing; its CONNECT grant goes with it.
pub async fn drop(client: &Client, role: &str) -> Result<(), Error> {
    let ident = pg::ident(role);
    let db: String = client.query_one("SELECT current_database()", &[]).await.map_err(pg::err("name the database"))?.get(0);
    let db = pg::ident(&db);
    let exists: bool =
        client.query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&role]).await.map_err(pg::err("look up the replication role"))?.get(0);
    if exists {
        pg::exec(client, "drop the replication role", &format!("REVOKE CONNECT ON DATABASE {db} FROM {ident}; DROP ROLE {ident}")).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subscription_gets_the_server_and_tls_of_dmfs_connection_with_the_role_instead() {
        let c = conninfo("postgres://migrator:secret@db1:5433/shop?sslmode=require", "dmf_repl_x", "p'w", dmf_pgconn::tls::SslMode::Require).expect("conninfo");
        assert_eq!(c, "host='db1' port=5433 dbname='shop' user='dmf_repl_x' password='p\\'w' sslmode=require");
        let c = conninfo("postgres://m@db1/shop?sslmode=verify-full&sslrootcert=/etc/ca.pem", "r", "p", dmf_pgconn::tls::SslMode::VerifyFull).expect("conninfo");
        assert!(c.ends_with("sslmode=verify-full sslrootcert='/etc/ca.pem'"), "{c}");
        assert!(!c.contains("secret") && !c.contains("migrator"));
        assert_eq!(name(&crate::Names::reverse_of(uuid::Uuid::nil())), name(&crate::Names::of(uuid::Uuid::nil())));
    }
}
