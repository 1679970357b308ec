//! Fencing a database against writes that do not come through a proxy, and undoing it exactly.
//!
//! The fence, in one transaction, makes new sessions read-only by default (`ALTER DATABASE ... SET
//! default_transaction_read_only = on`; logical replication apply workers keep applying) and takes
//! CONNECT away from every role but ours (superusers cannot be kept out), so that no new session
//! can opt out with `SET` or `BEGIN READ WRITE`; then it ends every client session except ours and
//! the ones the live proxies hold (they are held at a transaction boundary and move with their
//! settings at release). The caller records what was there before (`before`) so that lifting the
//! fence restores that, not a guess. Sessions passed in here are dmf's own, made writable
//! (`pg::connect_writable`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::Error;
use crate::pg;

/// What the fence changes, as it is before the fence (see `sql/fence_before.sql`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Before {
    /// The database-level `default_transaction_read_only` (None: not set).
    pub setting: Option<String>,
    /// Who may connect ("PUBLIC" or role names), other than our role and superusers.
    pub connect: Vec<String>,
    /// Our role could connect only through PUBLIC: the fence grants it CONNECT itself.
    pub granted_self: bool,
}

/// The database as the fence would find it now; `replication_role` (the migration's, see
/// `repl_role`) keeps CONNECT through the fence.
pub async fn before(client: &Client, replication_role: &str) -> Result<Before, Error> {
    let row = client
        .query_one(include_str!("sql/fence_before.sql"), &[&replication_role])
        .await
        .map_err(pg::err("read the database's settings and privileges"))?;
    Ok(Before { setting: row.get("setting"), connect: row.get("connect"), granted_self: row.get("granted_self") })
}

fn grantee(g: &str) -> String {
    if g == "PUBLIC" {
        "PUBLIC".into()
    } else {
        pg::ident(g)
    }
}

/// Fence the database `client` is connected to, sparing the sessions `spared`; returns, once the
/// ended sessions are gone, how many there were and which ones could not be ended.
pub async fn fence(client: &Client, before: &Before, spared: &[i32]) -> Result<Fenced, Error> {
    let db = database(client).await?;
    let ident = pg::ident(&db);
    let mut sql = format!("ALTER DATABASE {ident} SET default_transaction_read_only = on;\n");
    if before.granted_self {
        sql.push_str(&format!("GRANT CONNECT ON DATABASE {ident} TO CURRENT_USER;\n"));
    }
    for g in &before.connect {
        sql.push_str(&format!("REVOKE CONNECT ON DATABASE {ident} FROM {};\n", grantee(g)));
    }
    // one implicit transaction: the database is fenced whole or not at all
    pg::exec(client, "fence the database", &sql).await?;
    let row = client.query_one(include_str!("sql/terminate_others.sql"), &[&spared]).await.map_err(pg::err("end the sessions that bypass the proxies"))?;
    let (ended, unendable): (Vec<i32>, Vec<String>) = (row.get("ended"), row.get("unendable"));
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
    Ok(Fenced { ended: ended.len() as i64, unendable })
}

/// What the fence did to the sessions it found.
#[derive(Debug, Clone, Default)]
pub struct Fenced {
    /// Client sessions ended (and gone).
    pub ended: i64,
    /// Superuser sessions dmf's role could not end ("user (pid)"): they can write past the fence.
    pub unendable: Vec<String>,
}

impl Fenced {
    /// Err(why) when something can still write on `db` past this fence (`prepared`: the database's
    /// prepared transactions, which survive their sessions and commit whenever asked to).
    pub fn holds(&self, db: &str, prepared: &[String]) -> Result<(), String> {
        if !self.unendable.is_empty() {
            return Err(format!("superuser sessions on the {db} that dmf's role cannot end: {}; they could write past the fence", self.unendable.join(", ")));
        }
        if !prepared.is_empty() {
            return Err(prepared_reason(db, prepared));
        }
        Ok(())
    }
}

/// The database's prepared (two-phase) transactions, described.
pub async fn prepared_transactions(client: &Client) -> Result<Vec<String>, Error> {
    Ok(client.query_one(include_str!("sql/prepared_xacts.sql"), &[]).await.map_err(pg::err("list prepared transactions"))?.get(0))
}

/// Why a flip cannot go on with prepared transactions on `db`.
pub fn prepared_reason(db: &str, prepared: &[String]) -> String {
    format!("{db} has prepared transactions, which could commit after the final marker: {}; COMMIT PREPARED or ROLLBACK PREPARED them", prepared.join(", "))
}

/// How long the fence waits for the sessions it ended to be gone.
const END_WAIT: Duration = Duration::from_secs(5);

/// Lift the fence: the setting and the CONNECT privileges as they were (`before`).
pub async fn unfence(client: &Client, before: &Before) -> Result<(), Error> {
    let db = pg::ident(&database(client).await?);
    let mut sql = match &before.setting {
        None => format!("ALTER DATABASE {db} RESET default_transaction_read_only;\n"),
        Some(v) => format!("ALTER DATABASE {db} SET default_transaction_read_only = {};\n", pg::literal(v)),
    };
    for g in &before.connect {
        sql.push_str(&format!("GRANT CONNECT ON DATABASE {db} TO {};\n", grantee(g)));
    }
    if before.granted_self {
        sql.push_str(&format!("REVOKE CONNECT ON DATABASE {db} FROM CURRENT_USER;\n"));
    }
    pg::exec(client, "unfence the database", &sql).await
}

async fn database(client: &Client) -> Result<String, Error> {
    Ok(client.query_one("SELECT current_database()", &[]).await.map_err(pg::err("name the database"))?.get(0))
}
