//! Preflight: everything that would make logical replication fail or lose data, checked before any
//! object exists on either side. Errors block the migration; warnings are reported and do not.

use crate::error::Error;
pub use crate::findings::{Finding, Report, Severity};
use crate::state::Patch;
use crate::{pg, providers, roles, Context, Provider};
use dmf_workflows::{AbortReason, Outcome};

/// Check a source (and the target, when one is adopted) and report.
pub async fn check(ctx: &Context) -> Result<Report, Error> {
    let cluster = ctx.cluster();
    let source = pg::connect(ctx.source_dsn(), &format!("source of {cluster}")).await?;
    let mut report = Report::default();
    let s = source.query_one(include_str!("sql/preflight_settings.sql"), &[]).await.map_err(pg::err("preflight settings"))?;
    let wal_level: String = s.get("wal_level");
    if wal_level != "logical" {
        report.error("wal_level", Some("wal_level".into()), format!("wal_level is {wal_level}; set wal_level = logical and restart the source"));
    }
    let (max_slots, used_slots): (i32, i32) = (s.get("max_slots"), s.get("used_slots"));
    if max_slots - used_slots < 1 {
        report.error("replication_slots", None, format!("no free replication slot ({used_slots} of {max_slots} used); raise max_replication_slots"));
    }
    let (max_senders, used_senders): (i32, i32) = (s.get("max_senders"), s.get("used_senders"));
    if max_senders - used_senders < 2 {
        report.error("wal_senders", None, format!("fewer than 2 free WAL senders ({used_senders} of {max_senders} used); raise max_wal_senders"));
    }
    let superuser: bool = s.get("is_superuser");
    if !s.get::<_, bool>("can_replicate") {
        report.error("privileges", None, "the source role has neither SUPERUSER nor REPLICATION".into());
    }
    if !superuser && !s.get::<_, bool>("can_create") {
        report.error("privileges", None, "the source role cannot CREATE in the database (needed for the heartbeat schema)".into());
    }
    if !s.get::<_, bool>("can_make_replication_role") {
        report.error(
            "privileges",
            None,
            "the source role can make no replication role for the subscription (dmf_repl_<id>): it needs SUPERUSER, or on RDS/Aurora CREATEROLE and rds_superuser".into(),
        );
    }
    let large_objects: i64 = s.get("large_objects");
    if large_objects > 0 {
        report.error("large_objects", None, format!("{large_objects} large objects: logical replication does not carry them"));
    }
    report.source_bytes = s.get("db_bytes");
    roles(ctx, &source, &mut report).await?;
    let supers = source.query(include_str!("sql/superuser_sessions.sql"), &[]).await.map_err(pg::err("list superuser sessions"))?;
    for user in supers.iter().map(|r| r.get::<_, String>(0)) {
        report.warn(
            "superuser_sessions",
            Some(user.clone()),
            format!("superuser {user} has sessions on the source: the flip ends them, but a superuser can reconnect past its fence (REVOKE CONNECT) and override its read-only default; keep it from writing during the flip"),
        );
    }

    let tables = source.query(include_str!("sql/user_tables.sql"), &[]).await.map_err(pg::err("list source tables"))?;
    report.tables = tables.len();
    for t in &tables {
        let name = pg::qualified(t.get("schema"), t.get("name"));
        if t.get::<_, bool>("partitioned") {
            continue; // rows live in the partitions, which are checked one by one
        }
        let replident: String = t.get("replident");
        let usable = match replident.as_str() {
            "f" => true,
            "i" => t.get("has_replident_index"),
            "d" => t.get("has_pk"),
            _ => false,
        };
        if !usable {
            report.error(
                "replica_identity",
                Some(name.clone()),
                format!("table {name} has no primary key and no replica identity: once published, UPDATE and DELETE on it fail on the source; add a primary key or ALTER TABLE {name} REPLICA IDENTITY FULL"),
            );
        } else if replident == "f" {
            report.warn("replica_identity", Some(name.clone()), format!("table {name} uses REPLICA IDENTITY FULL: updates replicate slowly"));
        }
        if t.get::<_, bool>("unlogged") {
            report.error("unlogged_table", Some(name.clone()), format!("table {name} is UNLOGGED: logical replication does not carry its changes"));
        }
        if !superuser && !t.get::<_, bool>("owned") {
            report.error("privileges", Some(name.clone()), format!("the source role neither is superuser nor owns {name}, so it cannot publish it"));
        }
    }

    let extensions: Vec<String> = source
        .query("SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1", &[])
        .await
        .map_err(pg::err("list source extensions"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // None: not known before the target exists
    let available: Option<Vec<String>> = match ctx.migration.target_dsn.as_deref() {
        Some(target_dsn) => {
            let target = pg::connect(target_dsn, &format!("target of {cluster}")).await?;
            let n: i64 = target
                .query_one(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
                    &[],
                )
                .await
                .map_err(pg::err("inspect target"))?
                .get(0);
            if n > 0 {
                report.error("target_not_empty", None, format!("the adopted target already has {n} tables; dmf copies into an empty database"));
            }
            let v: i32 = target.query_one("SELECT current_setting('server_version_num')::int", &[]).await.map_err(pg::err("target version"))?.get(0);
            if v / 10000 < s.get::<_, i32>("version_num") / 10000 {
                report.warn("target_version", None, format!("the target's major version ({}) is older than the source's", v / 10000));
            }
            let names = target.query("SELECT name FROM pg_available_extensions", &[]).await.map_err(pg::err("list target extensions"))?;
            Some(names.iter().map(|r| r.get::<_, String>(0)).collect())
        }
        None if ctx.provider == Provider::Aws => {
            providers::aws::check_source(ctx, &mut report).await?;
            // Aurora's extensions are known once it exists: the schema copy fails on a missing one.
            None
        }
        None => match providers::pool::instance(ctx) {
            Some(instance) => Some(providers::pool::available_extensions(ctx, instance).await?),
            None => Some(providers::local::available_extensions()?),
        },
    };
    for ext in extensions.into_iter().filter(|e| available.as_ref().is_some_and(|a| !a.contains(e))) {
        report.error("extension_missing", Some(ext.clone()), format!("extension {ext} is installed on the source but not available on the target"));
    }
    Ok(report)
}

/// Every login role the database needs must get its password on the target: read from the source,
/// or resolved from the manifest's reference by this worker.
async fn roles(ctx: &Context, source: &tokio_postgres::Client, report: &mut Report) -> Result<(), Error> {
    let cluster = ctx.cluster();
    let refs = match roles::references(&ctx.migration.settings) {
        Ok(r) => r,
        Err(m) => {
            report.error("role_passwords", None, m);
            return Ok(());
        }
    };
    let needed = roles::read(source).await?;
    let missing = needed.without_password(&refs);
    if !missing.is_empty() {
        report.error(
            "role_passwords",
            Some(missing.join(", ")),
            format!(
                "dmf's source role cannot read the source's passwords (pg_authid) and the manifest gives none for the login roles {}: add [cluster.roles.<name>] with password_env or password_file for each",
                missing.join(", ")
            ),
        );
    }
    if let Some(instance) = providers::pool::instance(ctx) {
        // roles are instance-wide: every cluster on the instance must need each shared role alike
        for (role, message) in providers::pool::claim_roles(ctx, instance, &needed, &refs).await? {
            report.error("shared_role", Some(role), message);
        }
    }
    for (name, r) in &refs {
        if let Err(e) = roles::resolve(r, cluster, name) {
            report.error("role_passwords", Some(name.clone()), e.to_string());
        }
        if !needed.roles.iter().any(|n| &n.name == name) {
            report.warn("role_passwords", Some(name.clone()), format!("the manifest gives a password for role {name}, which nothing in the source database names"));
        }
    }
    Ok(())
}

pub async fn run(ctx: &Context) -> Result<Outcome, Error> {
    let report = check(ctx).await?;
    ctx.save(Patch::of(&report)).await?;
    let errors: Vec<String> = report.errors().map(|f| f.message.clone()).collect();
    for f in &report.findings {
        tracing::info!(cluster = %ctx.cluster(), migration = %ctx.migration.id, severity = ?f.severity, check = f.check, "{}", f.message);
    }
    if errors.is_empty() {
        Ok(Outcome::Done)
    } else {
        Ok(Outcome::Abort { reason: AbortReason::PreflightFailed, detail: errors.join("; ") })
    }
}
