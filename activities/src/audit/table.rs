//! What the auditor knows of a table: its columns and key, and the SQL fragments that read rows
//! by key or key range in a text form that is the same on both sides (settings pinned).

use tokio_postgres::Client;

use crate::error::Error;
use crate::pg;

/// A row's identity: the key columns' text, or for a table without a primary key the whole row's.
pub type Key = Vec<Option<String>>;

#[derive(Debug, Clone)]
pub struct TableInfo {
    /// `"schema"."name"`, how results and progress name the table.
    pub qualified: String,
    pub schema: String,
    pub name: String,
    /// Column names, unquoted, in table order.
    pub columns: Vec<String>,
    /// Primary key columns, unquoted, in key order; empty for a table without one.
    pub key: Vec<String>,
    pub key_types: Vec<String>,
    pub estimated_rows: i64,
}

impl TableInfo {
    pub fn keyed(&self) -> bool {
        !self.key.is_empty()
    }

    fn list(cols: &[String], suffix: &str) -> String {
        cols.iter().map(|c| format!("{}{suffix}", pg::ident(c))).collect::<Vec<_>>().join(", ")
    }

    /// The row's text form: what both sides hash.
    pub fn row_text(&self) -> String {
        format!("ROW({})::text", Self::list(&self.columns, ""))
    }

    /// `(count, sum of row hashes)` of the rows matching `predicate`.
    pub fn hash_sql(&self, predicate: &str) -> String {
        format!(
            "SELECT count(*)::int8, COALESCE(sum(hashtextextended({}, 0)), 0)::text FROM {} WHERE {predicate}",
            self.row_text(),
            self.qualified
        )
    }

    /// Every row's key and a fingerprint (row hash; for a keyless table, how many copies).
    pub fn fingerprints_sql(&self, predicate: &str) -> String {
        if self.keyed() {
            format!(
                "SELECT ARRAY[{}], hashtextextended({}, 0) FROM {} WHERE {predicate}",
                Self::list(&self.key, "::text"),
                self.row_text(),
                self.qualified
            )
        } else {
            format!("SELECT ARRAY[{rt}], count(*)::int8 FROM {} WHERE {predicate} GROUP BY {rt}", self.qualified, rt = self.row_text())
        }
    }

    /// Rows by key: the key and every column's text (keyless: the row text and its count).
    pub fn rows_by_key_sql(&self, keys: &[Key]) -> String {
        let wanted = keys.iter().map(|k| self.key_literal(k)).collect::<Vec<_>>().join(", ");
        if self.keyed() {
            format!(
                "SELECT ARRAY[{}], ARRAY[{}] FROM {} WHERE ({}) IN ({wanted})",
                Self::list(&self.key, "::text"),
                Self::list(&self.columns, "::text"),
                self.qualified,
                Self::list(&self.key, "")
            )
        } else {
            format!(
                "SELECT ARRAY[{rt}], ARRAY[count(*)::text] FROM {} WHERE ({rt}) IN ({wanted}) GROUP BY {rt}",
                self.qualified,
                rt = self.row_text()
            )
        }
    }

    /// A key as a SQL row of typed literals.
    pub fn key_literal(&self, key: &Key) -> String {
        let parts: Vec<String> = key
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ty = self.key_types.get(i).map(String::as_str).unwrap_or("text");
                match v {
                    Some(v) => format!("{}::{ty}", pg::literal(v)),
                    None => format!("NULL::{ty}"),
                }
            })
            .collect();
        format!("({})", parts.join(", "))
    }

    /// `lo <= key < hi`, open where a bound is missing.
    pub fn range_predicate(&self, lo: Option<&[String]>, hi: Option<&[String]>) -> String {
        let tuple = format!("({})", Self::list(&self.key, ""));
        let bound = |b: &[String]| self.key_literal(&b.iter().cloned().map(Some).collect());
        match (lo, hi) {
            (None, None) => "true".to_string(),
            (Some(l), None) => format!("{tuple} >= {}", bound(l)),
            (None, Some(h)) => format!("{tuple} < {}", bound(h)),
            (Some(l), Some(h)) => format!("{tuple} >= {} AND {tuple} < {}", bound(l), bound(h)),
        }
    }

    /// A key as JSON for results: `{"col": "value"}`.
    pub fn key_json(&self, key: &Key) -> serde_json::Value {
        let names: Vec<String> = if self.keyed() { self.key.clone() } else { vec!["row".to_string()] };
        serde_json::Value::Object(names.into_iter().zip(key.iter()).map(|(n, v)| (n, v.clone().map_or(serde_json::Value::Null, serde_json::Value::String))).collect())
    }
}

/// The tables to compare, as the source has them.
pub async fn load_tables(client: &Client) -> Result<Vec<TableInfo>, Error> {
    let rows = client.query(include_str!("../sql/audit_tables.sql"), &[]).await.map_err(pg::err("list tables to audit"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let (schema, name): (String, String) = (r.get("schema"), r.get("name"));
            TableInfo {
                qualified: pg::qualified(&schema, &name),
                schema,
                name,
                columns: r.get::<_, Option<Vec<String>>>("columns").unwrap_or_default(),
                key: r.get::<_, Option<Vec<String>>>("key_columns").unwrap_or_default(),
                key_types: r.get::<_, Option<Vec<String>>>("key_types").unwrap_or_default(),
                estimated_rows: r.get("estimated_rows"),
            }
        })
        .collect())
}
