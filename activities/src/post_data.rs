//! What is built after the data: indexes, constraints, triggers, rules and policies, restored from
//! the source's post-data section, skipping whatever an earlier attempt already built.

use std::collections::HashSet;
use std::path::Path;

use tokio_postgres::Client;

use crate::error::Error;
use crate::schema::{dump_schema, run_program, run_program_with, tempdir};
use crate::{pg, Context};

/// Names of objects that already exist on the target, to skip them on a re-run of post-data.
async fn existing_post_data(target: &Client) -> Result<HashSet<String>, Error> {
    let rows = target
        .query(
            "SELECT relname::text FROM pg_class WHERE relkind IN ('i','I') \
             UNION SELECT conname::text FROM pg_constraint \
             UNION SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal \
             UNION SELECT rulename::text FROM pg_rewrite \
             UNION SELECT polname::text FROM pg_policy",
            &[],
        )
        .await
        .map_err(pg::err("list target indexes and constraints"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Restore the post-data section dumped in `file` (indexes, constraints, triggers), in parallel,
/// skipping what an earlier attempt already built.
pub(crate) async fn restore_post_data(ctx: &Context, target: &Client, target_dsn: &str, file: &Path) -> Result<(), Error> {
    let cluster = ctx.cluster();
    let list = file.with_extension("list");
    let toc = run_program("pg_restore", &["--list", &file.display().to_string()], &format!("list post-data of {cluster}")).await?;
    let existing = existing_post_data(target).await?;
    let mut kept = String::new();
    for line in toc.lines() {
        if line.starts_with(';') || line.trim().is_empty() {
            continue;
        }
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let name = tokens.len().checked_sub(2).and_then(|i| tokens.get(i)).copied().unwrap_or("");
        if existing.contains(name) {
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    std::fs::write(&list, kept).map_err(Error::io(format!("write {}", list.display())))?;
    let jobs = ctx.config.hydrate_jobs.max(1).to_string();
    run_program_with(
        "pg_restore",
        &[
            "--section=post-data",
            "--exit-on-error",
            "--jobs",
            &jobs,
            "--use-list",
            &list.display().to_string(),
            &file.display().to_string(),
        ],
        Some(target_dsn),
        // Index builds sort: give each restore session room (the copy is over by now).
        &[("PGOPTIONS", "-c maintenance_work_mem=512MB")],
        &format!("build indexes and constraints on the target of {cluster}"),
    )
    .await
    .map(|_| ())
}

/// Build the indexes and constraints on a target that DMS loaded: dump post-data now and restore
/// what the target lacks.
pub(crate) async fn build_post_data(ctx: &Context, target_dsn: &str) -> Result<(), Error> {
    let cluster = ctx.cluster();
    let dir = tempdir(&ctx.config.local_base_dir, &format!("post-{}", ctx.migration.id))?;
    let file = dir.join("post.dump");
    let result = async {
        let target = pg::connect(target_dsn, &format!("target of {cluster}")).await?;
        dump_schema(ctx.source_dsn(), "post-data", &file, cluster, None).await?;
        restore_post_data(ctx, &target, target_dsn, &file).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
