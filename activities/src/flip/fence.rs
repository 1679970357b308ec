//! Fencing a database against writes that do not come through a proxy, and undoing it exactly.
//!
//! The fence makes new sessions read-only by default (`ALTER DATABASE ... SET
//! default_transaction_read_only = on`; logical replication apply workers keep applying) and ends
//! every client session except ours and the ones the live proxies hold (they are held at a
//! transaction boundary and move with their settings at release). The caller records the setting
//! from before (`current_setting`) so that unfencing restores it, not a guess. Sessions passed in
//! here are dmf's own, made writable (`pg::connect_writable`).

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::Error;
use crate::pg;

/// The database-level setting as it is now.
pub async fn current_setting(client: &Client) -> Result<Option<String>, Error> {
    let row = client.query_one(include_str!("sql/fence_setting.sql"), &[]).await.map_err(pg::err("read the database's settings"))?;
    Ok(row.get(0))
}

/// Fence the database `client` is connected to, sparing the sessions `spared`; returns how many
/// client sessions were ended, once they are all gone.
pub async fn fence(client: &Client, spared: &[i32]) -> Result<i64, Error> {
    let db = database(client).await?;
    pg::exec(client, "fence the database", &format!("ALTER DATABASE {} SET default_transaction_read_only = on", pg::ident(&db))).await?;
    let ended: Vec<i32> = client
        .query_one(include_str!("sql/terminate_others.sql"), &[&spared])
        .await
        .map_err(pg::err("end the sessions that bypass the proxies"))?
        .get(0);
    // pg_terminate_backend's own wait looks only every 100 ms: polling here is faster
    let started = Instant::now();
    while !ended.is_empty() {
        let left: i64 = client
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY ($1)", &[&ended])
            .await
            .map_err(pg::err("wait for the ended sessions"))?
            .get(0);
        if left == 0 {
            break;
        }
        if started.elapsed() > END_WAIT {
            return Err(Error::Replication(format!("{left} sessions on {db} were told to end and still run after {END_WAIT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(ended.len() as i64)
}

/// How long the fence waits for the sessions it ended to be gone.
const END_WAIT: Duration = Duration::from_secs(5);

/// Restore the database-level setting to `previous` (None: not set at all).
pub async fn unfence(client: &Client, previous: Option<&str>) -> Result<(), Error> {
    let db = pg::ident(&database(client).await?);
    let sql = match previous {
        None => format!("ALTER DATABASE {db} RESET default_transaction_read_only"),
        Some(v) => format!("ALTER DATABASE {db} SET default_transaction_read_only = {}", pg::literal(v)),
    };
    pg::exec(client, "unfence the database", &sql).await
}

async fn database(client: &Client) -> Result<String, Error> {
    Ok(client.query_one("SELECT current_database()", &[]).await.map_err(pg::err("name the database"))?.get(0))
}
