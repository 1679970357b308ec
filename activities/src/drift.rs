//! Schema drift: the source's tables and columns against the target's while replication runs.
//! Logical replication carries no DDL: a column added on the source stops the target's apply at
//! the next write to its table (which would otherwise show only as lag), a column retyped there
//! no longer matches, a table created there is not on the target, one dropped there leaves the
//! target's copy behind. Any of them aborts the migration before traffic moves, naming each table
//! and what differs. A column only the target has (dropped on the source, or added on the
//! subscriber first, the safe order for such changes) is not drift: the apply fills it with its
//! default.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::error::Error;
use crate::pg;

/// A table's columns in order: (name, type).
type Columns = Vec<(String, String)>;

async fn tables(client: &Client, side: &str) -> Result<BTreeMap<String, Columns>, Error> {
    let mut out: BTreeMap<String, Columns> = BTreeMap::new();
    // (types qualified alike whatever each login's search_path; the connection is the guards',
    // kept between ticks with this setting: `conns`)
    client.batch_execute("SET search_path = pg_catalog").await.map_err(pg::err(&format!("set the {side}'s search_path")))?;
    let rows = client.query(include_str!("sql/table_columns.sql"), &[]).await.map_err(pg::err(&format!("list the {side}'s tables and columns")))?;
    for r in rows {
        out.entry(r.get("tbl")).or_default().push((r.get("col"), r.get("type")));
    }
    Ok(out)
}

/// What differs between the source's tables and the target's, one phrase per difference; `None`
/// when they match.
pub async fn check(source: &Client, target: &Client) -> Result<Option<String>, Error> {
    let (s, t) = (tables(source, "source").await?, tables(target, "target").await?);
    let found = differences(&s, &t);
    Ok((!found.is_empty()).then(|| found.join("; ")))
}

fn differences(source: &BTreeMap<String, Columns>, target: &BTreeMap<String, Columns>) -> Vec<String> {
    let mut found = Vec::new();
    for (table, on_target) in target {
        let Some(on_source) = source.get(table) else {
            found.push(format!("table {table} was dropped on the source"));
            continue;
        };
        for (col, ty) in on_source {
            match on_target.iter().find(|(c, _)| c == col) {
                None => found.push(format!("table {table}: column {col} ({ty}) was added on the source and the target lacks it")),
                Some((_, target_ty)) if target_ty != ty => found.push(format!("table {table}: column {col} is {ty} on the source but {target_ty} on the target")),
                Some(_) => {}
            }
        }
    }
    for table in source.keys().filter(|t| !target.contains_key(*t)) {
        found.push(format!("table {table} was created on the source and is not on the target"));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(cols: &[(&str, &str)]) -> Columns {
        cols.iter().map(|(c, ty)| (c.to_string(), ty.to_string())).collect()
    }

    #[test]
    fn every_kind_of_drift_is_named_with_its_table() {
        let target: BTreeMap<String, Columns> = [
            ("public.orders".to_string(), t(&[("id", "bigint"), ("total", "numeric")])),
            ("public.items".to_string(), t(&[("id", "bigint"), ("old", "text")])),
            ("public.gone".to_string(), t(&[("id", "bigint")])),
            ("public.same".to_string(), t(&[("id", "bigint")])),
        ]
        .into();
        let source: BTreeMap<String, Columns> = [
            ("public.orders".to_string(), t(&[("id", "bigint"), ("total", "numeric"), ("note", "text")])),
            ("public.items".to_string(), t(&[("id", "integer")])),
            ("public.fresh".to_string(), t(&[("id", "bigint")])),
            ("public.same".to_string(), t(&[("id", "bigint")])),
        ]
        .into();
        assert_eq!(
            differences(&source, &target),
            [
                "table public.gone was dropped on the source",
                "table public.items: column id is integer on the source but bigint on the target",
                "table public.orders: column note (text) was added on the source and the target lacks it",
                "table public.fresh was created on the source and is not on the target",
            ]
        );
        assert!(differences(&source, &source).is_empty());
    }
}
