//! The local provider on a pool of existing instances (`target_instance` in the manifest): the
//! cluster's target is a database dmf makes on one of them, named as the source's database, with
//! the roles it needs shared among the clusters on that instance. Cleanup removes the database,
//! the replication slots in it and the roles no other cluster claims: the instance is left as it
//! was, as a cluster of its own would be.
//!
//! A database is dmf's only when it says so: it is made under a name of the migration's own
//! (`dmf_new_<id>`), marked with a comment naming the migration, then renamed. A crash at any step
//! leaves either the scratch name (dmf's by its name) or the marked database; a database of the
//! cluster's name without the mark was there before, and dmf neither adopts nor removes it.

use std::collections::BTreeMap;

use sha2::Digest;
use tokio_postgres::Client;

use crate::error::Error;
use crate::roles::{PasswordRef, SourceRoles};
use crate::state::{Patch, TargetCreated, TargetDsn, TargetPassword};
use crate::{pg, Context};
use dmf_workflows::Outcome;

/// The pool instance a cluster's database goes on, as the manifest names it.
pub fn instance(ctx: &Context) -> Option<&str> {
    ctx.migration.settings.get("target_instance").and_then(|v| v.as_str())
}

/// An instance as the role claims name it: `host:port`.
pub fn instance_key(dsn: &str) -> Result<String, Error> {
    let (_, config) = dmf_pgconn::tls::parse(dsn).map_err(|e| Error::NeedsOperator(format!("target_instance: not a connection string: {e}")))?;
    let host = pg::tcp_host(&config).unwrap_or_else(|| "localhost".into());
    Ok(format!("{host}:{}", config.get_ports().first().copied().unwrap_or(5432)))
}

/// The password reference of the instance (the manifest's `target_password_*`).
fn password(ctx: &Context) -> Result<Option<PasswordRef>, Error> {
    PasswordRef::from_json(ctx.migration.settings.get("target_password"))
        .map_err(|why| Error::NeedsOperator(format!("cluster {}: target_password: {why}", ctx.cluster())))
}

/// dmf's administrative session on the instance (its maintenance database).
async fn admin(ctx: &Context, dsn: &str) -> Result<Client, Error> {
    let login = dmf_db::secret::login(&with_dbname(dsn, "postgres"), password(ctx)?.as_ref(), "worker")
        .map_err(|why| Error::NeedsOperator(format!("cluster {}: the target instance's password: {why}", ctx.cluster())))?;
    pg::connect(&login, &format!("target instance of {}", ctx.cluster())).await
}

/// The comment that marks a database as this migration's.
fn mark(ctx: &Context) -> String {
    format!("dmf migration {} of cluster {}", ctx.migration.id, ctx.cluster())
}

/// The name a database has while dmf makes it.
fn scratch(ctx: &Context) -> String {
    format!("dmf_new_{}", &ctx.migration.id.simple().to_string()[..12])
}

/// `dsn` naming database `dbname` instead of its own.
pub fn with_dbname(dsn: &str, dbname: &str) -> String {
    let Some(rest) = dsn.strip_prefix("postgres://").map(|r| ("postgres://", r)).or_else(|| dsn.strip_prefix("postgresql://").map(|r| ("postgresql://", r))) else {
        return format!("{dsn} dbname={}", keyword_value(dbname));
    };
    let (scheme, rest) = rest;
    let (base, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = base.split_once('/').map(|(a, _)| a).unwrap_or(base);
    let encoded: String = dbname
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    // a dbname parameter would override the path: it goes
    let query: Vec<&str> = query.map(|q| q.split('&').filter(|p| !p.starts_with("dbname=")).collect()).unwrap_or_default();
    if query.is_empty() {
        format!("{scheme}{authority}/{encoded}")
    } else {
        format!("{scheme}{authority}/{encoded}?{}", query.join("&"))
    }
}

fn keyword_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The comment on database `name`: None when there is no such database, Some(None) when it has none.
async fn comment_of(admin: &Client, name: &str) -> Result<Option<Option<String>>, Error> {
    let row = admin
        .query_opt("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(pg::err("look up a database on the target instance"))?;
    Ok(row.map(|r| r.get(0)))
}

pub async fn provision(ctx: &Context, dsn: &str) -> Result<Outcome, Error> {
    let cluster = ctx.cluster().to_string();
    let dbname = pg::dbname(ctx.source_dsn())?;
    let key = instance_key(dsn)?;
    // recorded first: from here on cleanup looks for the database (under either name)
    ctx.save(Patch::of(&TargetCreated { target_created: true }).and(&TargetPassword { target_password: password(ctx)? })).await?;
    let admin = admin(ctx, dsn).await?;
    let (mark, scratch) = (mark(ctx), scratch(ctx));
    match comment_of(&admin, &dbname).await? {
        Some(c) if c.as_deref() == Some(mark.as_str()) => {}
        Some(_) => {
            return Err(Error::NeedsOperator(format!(
                "cluster {cluster}: database {dbname:?} already exists on target instance {key} and dmf did not make it for this migration; drop it or place the cluster on another instance"
            )))
        }
        None => {
            if comment_of(&admin, &scratch).await?.is_none() {
                pg::exec(&admin, "create the target database", &format!("CREATE DATABASE {}", pg::ident(&scratch))).await?;
            }
            pg::exec(&admin, "mark the target database", &format!("COMMENT ON DATABASE {} IS {}", pg::ident(&scratch), pg::literal(&mark))).await?;
            pg::exec(&admin, "name the target database", &format!("ALTER DATABASE {} RENAME TO {}", pg::ident(&scratch), pg::ident(&dbname))).await?;
        }
    }
    ctx.save(Patch::of(&TargetDsn { target_dsn: Some(with_dbname(&dmf_db::secret::redact(dsn), &dbname)) })).await?;
    tracing::info!(cluster = %cluster, migration = %ctx.migration.id, instance = %key, database = %dbname, "pool target database ready");
    Ok(Outcome::Done)
}

/// The extensions the instance can install.
pub async fn available_extensions(ctx: &Context, dsn: &str) -> Result<Vec<String>, Error> {
    let admin = admin(ctx, dsn).await?;
    let rows = admin.query("SELECT name FROM pg_available_extensions", &[]).await.map_err(pg::err("list the target instance's extensions"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether this migration's database is on the instance (under its name or the scratch one).
pub async fn database_exists(ctx: &Context, dsn: &str) -> Result<bool, Error> {
    let admin = admin(ctx, dsn).await?;
    let dbname = pg::dbname(ctx.source_dsn())?;
    Ok(comment_of(&admin, &dbname).await?.flatten().as_deref() == Some(mark(ctx).as_str()))
}

/// Remove what this migration made on the instance: its database (and the slots in it) and the
/// roles only it claimed. Safe to repeat.
pub async fn teardown(ctx: &Context, dsn: &str) -> Result<(), Error> {
    let cluster = ctx.cluster().to_string();
    let key = instance_key(dsn)?;
    let admin = admin(ctx, dsn).await?;
    let dbname = pg::dbname(ctx.source_dsn())?;
    let mark = mark(ctx);
    let short = ctx.migration.id.simple().to_string()[..12].to_string();
    let scratch = scratch(ctx);
    for name in [scratch.clone(), dbname] {
        // the scratch name is this migration's own (unmarked until the comment is made); any
        // other database is ours only with our mark
        let ours = match comment_of(&admin, &name).await? {
            None => false,
            Some(c) => c.as_deref() == Some(mark.as_str()) || (name == scratch && c.is_none()),
        };
        if !ours {
            continue;
        }
        // a logical slot in a database keeps DROP DATABASE from running (reverse replication's)
        // (a reverse subscription left by an interrupted rollback may still read one: its
        // walsender is ended first)
        admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND slot_name LIKE '%' || $2 AND active_pid IS NOT NULL",
                &[&name, &short],
            )
            .await
            .map_err(pg::err("end the readers of the replication slots in the target database"))?;
        admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND slot_name LIKE '%' || $2 AND NOT active",
                &[&name, &short],
            )
            .await
            .map_err(pg::err("drop the replication slots in the target database"))?;
        pg::exec(&admin, "drop the target database", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg::ident(&name))).await?;
        tracing::info!(cluster = %cluster, migration = %ctx.migration.id, instance = %key, database = %name, "pool target database removed");
    }
    // the role replication back to the source logs in as, should an interrupted rollback have
    // left it
    crate::repl_role::drop(&admin, &crate::repl_role::name(&crate::Names::reverse_of(ctx.migration.id))).await?;
    // one control-plane transaction holds the instance's roles from the decision to the drop: no
    // other cluster claims a role between
    let (release, orphans) = ctx.db.release_target_roles(&key, &cluster).await?;
    let mut dropped = Vec::new();
    for role in orphans {
        match admin.batch_execute(&format!("DROP ROLE IF EXISTS {}", pg::ident(&role))).await {
            Ok(()) => dropped.push(role),
            // another cluster's database has come to own something of it since: it stays theirs
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST) => {
                tracing::warn!(cluster = %cluster, migration = %ctx.migration.id, instance = %key, role = %role, "role still in use on the instance: kept")
            }
            Err(e) => return Err(pg::err("drop a role dmf made on the target instance")(e)),
        }
    }
    release.finish(&dropped).await?;
    Ok(())
}

/// Claim the roles `needed` on the instance for this cluster (preflight, and again right before
/// the schema step makes them: the source may have changed between); the conflicts with other
/// clusters' claims, by role, in words (then nothing is claimed).
pub async fn claim_roles(ctx: &Context, dsn: &str, needed: &SourceRoles, refs: &BTreeMap<String, PasswordRef>) -> Result<Vec<(String, String)>, Error> {
    let key = instance_key(dsn)?;
    let cluster = ctx.cluster();
    let mine = role_specs(&key, needed, refs);
    let mut conflicts = Vec::new();
    for other in ctx.db.claim_target_roles(&key, cluster, &mine).await? {
        let differences = spec_differences(&mine[&other.role], &other.spec);
        conflicts.push((
            other.role.clone(),
            format!(
                "role {} on target instance {key}: clusters {cluster} and {} both need it, differently: {}; place them on different instances or make the role agree",
                other.role,
                other.cluster,
                differences.join("; ")
            ),
        ));
    }
    Ok(conflicts)
}

/// What a cluster needs of each of its roles on a shared instance, for comparison with the other
/// clusters there: attributes, memberships, and where the password comes from (a fingerprint of
/// the source's verifier, or the manifest's reference), never the password.
pub fn role_specs(instance: &str, needed: &SourceRoles, refs: &BTreeMap<String, PasswordRef>) -> BTreeMap<String, serde_json::Value> {
    needed
        .roles
        .iter()
        .filter(|r| !crate::roles::Role::predefined(&r.name))
        .map(|r| {
            let mut member_of: Vec<String> = needed.memberships.iter().filter(|m| m.member == r.name).map(|m| format!("{}{}", m.group, if m.admin { " WITH ADMIN" } else { "" })).collect();
            member_of.sort();
            let password = match (refs.get(&r.name), needed.verifiers.as_ref().and_then(|v| v.get(&r.name))) {
                (Some(reference), _) => serde_json::json!({ "reference": reference }),
                (None, Some(Some(verifier))) => serde_json::json!({ "verifier_fingerprint": fingerprint(instance, &r.name, verifier) }),
                _ => serde_json::json!("none"),
            };
            (r.name.clone(), serde_json::json!({ "attributes": r.options(), "member_of": member_of, "password": password }))
        })
        .collect()
}

/// A fingerprint of a role's password verifier for comparison with another cluster's: SHA-256
/// iterated 4096 times over the verifier, salted by the instance and the role (as SCRAM's own
/// stretching), so that the control plane's copy is no faster to attack than a SCRAM verifier
/// (a plain SHA-256 of an MD5 verifier would be).
fn fingerprint(instance: &str, role: &str, verifier: &str) -> String {
    let mut h = sha2::Sha256::digest(format!("dmf target role {instance} {role}\n{verifier}").as_bytes());
    for _ in 0..4096 {
        let mut next = sha2::Sha256::new();
        next.update(h);
        next.update(verifier.as_bytes());
        h = next.finalize();
    }
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// How two clusters' specs of one role differ, in words.
pub fn spec_differences(mine: &serde_json::Value, theirs: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    if mine["attributes"] != theirs["attributes"] {
        out.push(format!("attributes {} against {}", mine["attributes"], theirs["attributes"]));
    }
    if mine["member_of"] != theirs["member_of"] {
        out.push(format!("member of {} against {}", mine["member_of"], theirs["member_of"]));
    }
    if mine["password"] != theirs["password"] {
        out.push(
            "the password differs (or is the same password hashed on different sources: give it to both by the same reference, [cluster.roles.<name>] password_env)".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_database_name_keeps_everything_else() {
        assert_eq!(with_dbname("postgres://admin@h:5433/postgres?sslmode=require", "my db"), "postgres://admin@h:5433/my%20db?sslmode=require");
        assert_eq!(with_dbname("postgresql://h:5433", "orders"), "postgresql://h:5433/orders");
        assert_eq!(with_dbname("postgres://h/x?dbname=postgres&sslmode=require", "orders"), "postgres://h/orders?sslmode=require");
        assert_eq!(with_dbname("host=h port=5433 dbname=postgres", "o'k"), "host=h port=5433 dbname=postgres dbname='o\\'k'");
        let (_, c) = dmf_pgconn::tls::parse(&with_dbname("host=h port=5433 dbname=postgres", "o'k")).expect("parses");
        assert_eq!(c.get_dbname(), Some("o'k"));
        assert_eq!(instance_key("postgres://admin@h:5433/x").expect("key"), "h:5433");
    }

    #[test]
    fn specs_name_what_differs_and_never_a_verifier() {
        let role = |name: &str, login: bool| crate::roles::Role {
            name: name.into(),
            superuser: false,
            inherit: true,
            createrole: false,
            createdb: false,
            login,
            replication: false,
            bypassrls: false,
            connlimit: -1,
            valid_until: None,
        };
        let verifier = "SCRAM-SHA-256$4096:c2FsdA==$a:b".to_string();
        let a = SourceRoles { roles: vec![role("app", true)], memberships: vec![], verifiers: Some([("app".to_string(), Some(verifier.clone()))].into()) };
        let mut b = a.clone();
        b.verifiers = Some([("app".to_string(), Some("SCRAM-SHA-256$4096:b3RoZXI=$c:d".to_string()))].into());
        let (sa, sb) = (role_specs("h:1", &a, &BTreeMap::new()), role_specs("h:1", &b, &BTreeMap::new()));
        assert_ne!(sa, role_specs("h:2", &a, &BTreeMap::new()), "salted by the instance");
        assert!(!sa["app"].to_string().contains(&verifier));
        assert_eq!(spec_differences(&sa["app"], &sa["app"]), Vec::<String>::new());
        let d = spec_differences(&sa["app"], &sb["app"]);
        assert!(d.len() == 1 && d[0].starts_with("the password differs"), "{d:?}");
        let refs: BTreeMap<String, PasswordRef> = [("app".to_string(), PasswordRef::Env("APP_PW".into()))].into();
        assert_eq!(role_specs("h:1", &a, &refs), role_specs("h:1", &b, &refs), "the same reference agrees");
        let mut c = a.clone();
        c.roles[0].login = false;
        let d = spec_differences(&sa["app"], &role_specs("h:1", &c, &BTreeMap::new())["app"]);
        assert!(d[0].contains("LOGIN") && d[0].contains("NOLOGIN"), "{d:?}");
    }
}
