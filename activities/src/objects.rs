//! The replication objects a migration owns, by name: the publication and slot on the sending
//! side, the subscription on the receiving side (forward, and reversed after the flip).

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::Error;
use crate::{pg, Names};

/// Whether the subscription `name` exists on `target`.
pub(crate) async fn subscription_exists(target: &Client, name: &str) -> Result<bool, Error> {
    Ok(target
        .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[&name])
        .await
        .map_err(pg::err("look up subscription"))?
        .is_some())
}

/// Create the publication (all tables when we may, else every user table by name).
pub(crate) async fn ensure_publication(source: &Client, names: &Names) -> Result<(), Error> {
    let exists = source
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&names.publication])
        .await
        .map_err(pg::err("look up publication"))?
        .is_some();
    if exists {
        return Ok(());
    }
    let superuser: bool = source
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map_err(pg::err("check role"))?
        .get(0);
    let sql = if superuser {
        format!("CREATE PUBLICATION {} FOR ALL TABLES", pg::ident(&names.publication))
    } else {
        let tables: Vec<String> = source
            .query(include_str!("sql/copy_plan.sql"), &[])
            .await
            .map_err(pg::err("list tables"))?
            .iter()
            .map(|r| pg::qualified(r.get("schema"), r.get("name")))
            .collect();
        format!("CREATE PUBLICATION {} FOR TABLE {}", pg::ident(&names.publication), tables.join(", "))
    };
    pg::exec(source, "create publication", &sql).await
}

/// Drop a slot, ending the session that holds it first.
pub(crate) async fn drop_slot(source: &Client, slot: &str) -> Result<bool, Error> {
    for _ in 0..50 {
        let row = source
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .map_err(pg::err("look up slot"))?;
        let Some(row) = row else { return Ok(false) };
        let pid: Option<i32> = row.get(0);
        if let Some(pid) = pid {
            source.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.map_err(pg::err("end the slot's session"))?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        match source.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await {
            Ok(_) => return Ok(true),
            // Became active again in between, or already gone: look again.
            Err(e) if e.code().is_some() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => return Err(pg::err("drop slot")(e)),
        }
    }
    Err(Error::Replication(format!("slot {slot} stayed active; could not drop it")))
}
