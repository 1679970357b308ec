//! Hydration progress per table chunk, written by the copy and read by `dmf status`.

use uuid::Uuid;

use crate::state::{CopyClock, Patch};
use crate::{Db, Error};

impl Db {
    /// Forget the progress of an earlier hydration attempt (its snapshot is gone; it starts over).
    pub async fn reset_copy_progress(&self, migration: Uuid, planned: &[(String, i32, i64)]) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM dmf.copy_progress WHERE migration = $1").bind(migration).execute(&mut *tx).await?;
        // one statement for every chunk (a large schema plans thousands)
        let tables: Vec<&str> = planned.iter().map(|(t, _, _)| t.as_str()).collect();
        let chunks: Vec<i32> = planned.iter().map(|(_, c, _)| *c).collect();
        let totals: Vec<i64> = planned.iter().map(|(_, _, b)| *b).collect();
        sqlx::query(include_str!("queries/plan_copy_progress.sql")).bind(migration).bind(&tables).bind(&chunks).bind(&totals).execute(&mut *tx).await?;
        // the control plane's clock, as the progress rows' updated_at it is compared with
        let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
        let started = Patch::of(&CopyClock { copy_started_at: Some(now) });
        sqlx::query(include_str!("queries/merge_state_only.sql"))
            .bind(migration)
            .bind(started.into_json())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn record_copy_progress(
        &self,
        migration: Uuid,
        table: &str,
        chunk: i32,
        rows: i64,
        bytes: i64,
        done: bool,
    ) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        sqlx::query(include_str!("queries/copy_progress.sql"))
            .bind(migration)
            .bind(table)
            .bind(chunk)
            .bind(rows)
            .bind(bytes)
            .bind(done)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
