//! Data-plane connections (tokio-postgres) and small SQL helpers shared by the activities.

use std::time::Duration;

use dmf_pgconn::tls::ConnectError;
use tokio_postgres::Client;

use crate::error::{describe, Error};

/// Open a connection; its connection task ends with the client. `role` names it in errors
/// ("source of orders", "target of orders"). TLS as the string's `sslmode` and `sslrootcert` say
/// (`dmf_pgconn::tls`; `prefer` by default); a password never goes in clear text over a
/// connection that is not encrypted unless the string says `sslmode=disable`.
pub async fn connect(dsn: &str, role: &str) -> Result<Client, Error> {
    connect_named(dsn, role, "dmf").await
}

/// `connect`, with the session named `application_name` (the connections `conns` keeps carry
/// their migration's name, so that the flip can end them before its hold).
pub async fn connect_named(dsn: &str, role: &str, application_name: &str) -> Result<Client, Error> {
    let configure = |config: &mut tokio_postgres::Config| {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name(application_name);
    };
    let (client, conn) = dmf_pgconn::tls::connect(dsn, configure).await.map_err(|e| match e {
        ConnectError::Postgres(e) => Error::Postgres { what: format!("connect to {role}: {}", describe(&e)), source: e },
        ConnectError::BadString(e) => Error::NeedsOperator(format!("bad connection string for {role}: {e}")),
        other => Error::NeedsOperator(format!("connect to {role}: {other}")),
    })?;
    let role = role.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%role, error = %e, "data-plane connection ended");
        }
    });
    Ok(client)
}

/// A connection whose session may write on a fenced database (`default_transaction_read_only`
/// set at the database level by the flip): dmf's own markers, DDL and replication objects.
pub async fn connect_writable(dsn: &str, role: &str) -> Result<Client, Error> {
    let c = connect(dsn, role).await?;
    exec(&c, "keep this session writable", "SET default_transaction_read_only = off").await?;
    Ok(c)
}

/// Quote an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote a schema-qualified name.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// Quote a string literal for SQL, whatever the session's `standard_conforming_strings`: a value
/// with a backslash becomes an escape string (`E'...'`, backslashes doubled), which every setting
/// reads the same way (as PostgreSQL's own `quote_literal` does).
pub fn literal(s: &str) -> String {
    let quoted = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// Map a tokio-postgres error to ours, with the server's message and what we were doing.
pub fn err(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Postgres { what: format!("{what}: {}", describe(&e)), source: e }
}

/// Run statements, naming what they were for in the error.
pub async fn exec(client: &Client, what: &str, sql: &str) -> Result<(), Error> {
    client.batch_execute(sql).await.map_err(err(what))
}

/// The TCP host of a connection string; None when it names a Unix socket or no host.
pub fn tcp_host(config: &tokio_postgres::Config) -> Option<String> {
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => Some(h.clone()),
        _ => None,
    }
}

/// The database name of a connection string.
pub fn dbname(dsn: &str) -> Result<String, Error> {
    let (_, config) = dmf_pgconn::tls::parse(dsn).map_err(|e| Error::NeedsOperator(format!("bad connection string: {e}")))?;
    Ok(config.get_dbname().or(config.get_user()).unwrap_or("postgres").to_string())
}

#[cfg(test)]
mod tests {
    use super::literal;

    #[test]
    fn literals_read_the_same_whatever_standard_conforming_strings_is() {
        assert_eq!(literal("plain"), "'plain'");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\'b"), r"E'a\\''b'");
        assert_eq!(literal(r"ends\"), r"E'ends\\'");
    }
}
