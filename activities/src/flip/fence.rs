//! Fencing a database against writes that do not come through a proxy, and undoing it exactly.
//!
//! The fence makes new sessions read-only by default (`ALTER DATABASE ... SET
//! default_transaction_read_only = on`; logical replication apply workers keep applying) and ends
//! every client session except ours and the ones the live proxies hold (they are held at a
//! transaction boundary and move with their settings at release). What the setting was before is
//! returned so that unfencing restores it, not a guess.

use tokio_postgres::Client;

use crate::error::Error;
use crate::pg;

/// What a fence did.
#[derive(Debug, Clone, PartialEq)]
pub struct Fenced {
    /// The database-level `default_transaction_read_only` before the fence (None: not set).
    pub previous: Option<String>,
    /// Client sessions ended.
    pub ended: i64,
}

/// The database-level setting as it is now.
pub async fn current_setting(client: &Client) -> Result<Option<String>, Error> {
    let row = client.query_one(include_str!("sql/fence_setting.sql"), &[]).await.map_err(pg::err("read the database's settings"))?;
    Ok(row.get(0))
}

/// Fence the database `client` is connected to. `previous` is the setting recorded by an earlier
/// attempt, if any: a re-run must not record its own fence as the thing to restore.
pub async fn fence(client: &Client, spared: &[i32], previous: Option<Option<String>>) -> Result<Fenced, Error> {
    let previous = match previous {
        Some(p) => p,
        None => current_setting(client).await?,
    };
    let db = database(client).await?;
    // this session writes the final marker after the fence
    pg::exec(client, "keep this session writable", "SET default_transaction_read_only = off").await?;
    pg::exec(client, "fence the database", &format!("ALTER DATABASE {} SET default_transaction_read_only = on", pg::ident(&db))).await?;
    let ended: i64 = client
        .query_one(include_str!("sql/terminate_others.sql"), &[&spared])
        .await
        .map_err(pg::err("end the sessions that bypass the proxies"))?
        .get(0);
    Ok(Fenced { previous, ended })
}

/// Restore the database-level setting to `previous` (None: not set at all).
pub async fn unfence(client: &Client, previous: Option<&str>) -> Result<(), Error> {
    let db = pg::ident(&database(client).await?);
    let sql = match previous {
        None => format!("ALTER DATABASE {db} RESET default_transaction_read_only"),
        Some(v) => format!("ALTER DATABASE {db} SET default_transaction_read_only = {}", pg::literal(v)),
    };
    pg::exec(client, "unfence the database", &sql).await
}

/// Whether the database is fenced now (new sessions read-only by default).
pub async fn is_fenced(client: &Client) -> Result<bool, Error> {
    Ok(current_setting(client).await?.is_some_and(|v| matches!(v.as_str(), "on" | "true" | "1" | "yes")))
}

async fn database(client: &Client) -> Result<String, Error> {
    Ok(client.query_one("SELECT current_database()", &[]).await.map_err(pg::err("name the database"))?.get(0))
}
