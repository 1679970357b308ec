//! Schema copy: the heartbeat table on the source, the roles the database names (see `roles`), then
//! the source's tables, types and functions (pg_dump's pre-data section) with their owners, grants
//! and default privileges on the target in one transaction. Indexes and constraints
//! (post-data) are built after the data copy, in parallel (see `hydrate`).

use std::path::Path;

use tokio::process::Command;

use crate::error::Error;
use crate::providers::local;
use crate::{pg, roles, Context, HEARTBEAT_SCHEMA};
use dmf_workflows::Outcome;

/// Run a PostgreSQL client program; its stderr becomes the error.
pub(crate) async fn run_program(name: &str, args: &[&str], what: &str) -> Result<String, Error> {
    run_program_with(name, args, None, &[], what).await
}

/// `run_program` logged in to `login` (a connection string, given as `--dbname` without its
/// password: the password goes in the program's environment as `PGPASSWORD`, which other users
/// cannot read, never on its command line), with extra environment (e.g. PGOPTIONS).
pub(crate) async fn run_program_with(name: &str, args: &[&str], login: Option<&str>, env: &[(&str, &str)], what: &str) -> Result<String, Error> {
    let mut cmd = Command::new(local::program(name)?);
    if let Some(dsn) = login {
        let bad = |e: String| Error::NeedsOperator(format!("{what}: bad connection string {}: {e}", dmf_db::secret::redact(dsn)));
        let (policy, config) = dmf_pgconn::tls::parse(dsn).map_err(bad)?;
        match config.get_password() {
            Some(pw) => {
                cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).as_ref());
                // libpq under prefer would answer a clear-text request without TLS: TLS is
                // required where the server offers it, and a server that would ask in clear text
                // without it gets no password
                if policy.mode == dmf_pgconn::tls::SslMode::Prefer {
                    let mode = dmf_pgconn::tls::mode_for_libpq(&config, std::time::Duration::from_secs(10)).await.map_err(|e| Error::NeedsOperator(format!("{what}: {e}")))?;
                    let (_, rest) = dmf_pgconn::tls::TlsPolicy::split(dsn).map_err(|e| bad(e.to_string()))?;
                    cmd.arg("--dbname").arg(dmf_db::secret::redact(&rest)).env("PGSSLMODE", mode.as_str());
                } else {
                    cmd.arg("--dbname").arg(dmf_db::secret::redact(dsn));
                }
            }
            None => {
                cmd.arg("--dbname").arg(dmf_db::secret::redact(dsn)).env_remove("PGPASSWORD");
            }
        };
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(Error::io(format!("{what}: run {name}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: what.to_string(),
            status: out.status.to_string(),
            stderr: dmf_db::secret::redact(String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Dump the source's schema (custom format) to `file`, as of `snapshot` when given (an exported
/// snapshot that is still alive). Publications and subscriptions stay behind: dmf's own
/// publication must not reach the target, and the source's belong to the source.
pub(crate) async fn dump_schema(source_dsn: &str, section: &str, file: &Path, cluster: &str, snapshot: Option<&str>) -> Result<(), Error> {
    let file = file.display().to_string();
    let section = format!("--section={section}");
    let mut args = vec!["--schema-only", "--no-publications", "--no-subscriptions", "--format=custom", &section, "--file", &file];
    let snapshot = snapshot.map(|s| format!("--snapshot={s}"));
    if let Some(s) = &snapshot {
        args.push(s);
    }
    run_program_with("pg_dump", &args, Some(source_dsn), &[], &format!("pg_dump {section} of {cluster}")).await.map(|_| ())
}

pub(crate) async fn ensure_heartbeat(source: &tokio_postgres::Client) -> Result<(), Error> {
    let s = pg::ident(HEARTBEAT_SCHEMA);
    pg::exec(
        source,
        "create heartbeat table on the source",
        &format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.heartbeat (id int PRIMARY KEY, seq bigint NOT NULL, written_at timestamptz NOT NULL);
             INSERT INTO {s}.heartbeat VALUES (1, 0, now()) ON CONFLICT (id) DO NOTHING;"
        ),
    )
    .await
}

pub(crate) async fn count_user_tables(client: &tokio_postgres::Client) -> Result<i64, Error> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') \
               AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'",
            &[],
        )
        .await
        .map_err(pg::err("count tables"))?
        .get(0))
}

pub async fn run(ctx: &Context) -> Result<Outcome, Error> {
    let cluster = ctx.cluster();
    let target_dsn = ctx.require_target()?;
    let source = pg::connect(ctx.source_dsn(), &format!("source of {cluster}")).await?;
    let target = pg::connect(&target_dsn, &format!("target of {cluster}")).await?;
    ensure_heartbeat(&source).await?;
    let on_source = count_user_tables(&source).await?;
    let on_target = count_user_tables(&target).await?;
    if on_target == on_source {
        // An earlier attempt committed the schema (the restore is one transaction).
        return Ok(Outcome::Done);
    }
    if on_target != 0 {
        return Err(Error::NeedsOperator(format!(
            "cluster {cluster}: the target has {on_target} tables and the source {on_source}; something else wrote to the target"
        )));
    }
    // the owners and grantees of what is restored must exist first
    let refs = roles::references(&ctx.migration.settings).map_err(|m| Error::NeedsOperator(format!("cluster {cluster}: {m}")))?;
    let needed = roles::read(&source).await?;
    if let Some(instance) = crate::providers::pool::instance(ctx) {
        // roles are the instance's: claimed again with what the source has now, and recorded as
        // dmf's before they are made (a crash between would leave them nobody's), so that the
        // last cluster there to leave drops them
        let conflicts = crate::providers::pool::claim_roles(ctx, instance, &needed, &refs).await?;
        if !conflicts.is_empty() {
            let detail = conflicts.into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("; ");
            return Ok(Outcome::Abort { reason: dmf_workflows::AbortReason::PreflightFailed, detail });
        }
        let missing = roles::missing_on(&target, &needed).await?;
        ctx.db.target_roles_made(&crate::providers::pool::instance_key(instance)?, &missing).await?;
    }
    let made = roles::copy(cluster, &needed, &refs, &target).await?;
    tracing::info!(cluster = %cluster, migration = %ctx.migration.id, roles = needed.roles.len(), made = made.len(), "roles on the target");
    let dir = tempdir(&ctx.config.local_base_dir, &format!("schema-{}", ctx.migration.id))?;
    let file = dir.join("pre.dump");
    let result = async {
        dump_schema(ctx.source_dsn(), "pre-data", &file, cluster, None).await?;
        run_program_with(
            "pg_restore",
            &["--section=pre-data", "--single-transaction", "--exit-on-error", &file.display().to_string()],
            Some(&target_dsn),
            &[],
            &format!("pg_restore pre-data into the target of {cluster}"),
        )
        .await
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    tracing::info!(cluster = %cluster, migration = %ctx.migration.id, tables = on_source, "schema copied");
    Ok(Outcome::Done)
}

/// A private scratch directory for dump files.
pub(crate) fn tempdir(base: &Path, name: &str) -> Result<std::path::PathBuf, Error> {
    let dir = base.join("scratch").join(name);
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
    Ok(dir)
}
