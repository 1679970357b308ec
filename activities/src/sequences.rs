//! Sequences, which logical replication does not carry: copied after hydration and again inside
//! the flip's hold.

use tokio_postgres::Client;

use crate::error::Error;
use crate::{pg, HEARTBEAT_SCHEMA};

/// Set every sequence on the target to the source's current value (again at the flip). Returns
/// the sequences set, with their values.
pub(crate) async fn copy_sequences(source: &Client, target: &Client) -> Result<Vec<(String, i64)>, Error> {
    let rows = source
        .query(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename), last_value FROM pg_sequences \
             WHERE schemaname <> $1 AND last_value IS NOT NULL",
            &[&HEARTBEAT_SCHEMA],
        )
        .await
        .map_err(pg::err("read sequences"))?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // one round trip for all of them: the flip does this inside its hold
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let values: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    target
        .execute("SELECT setval(s::regclass, v, true) FROM unnest($1::text[], $2::int8[]) AS t (s, v)", &[&names, &values])
        .await
        .map_err(pg::err(&format!("set sequences {}", names.join(", "))))?;
    Ok(names.into_iter().zip(values).collect())
}
