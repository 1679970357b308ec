//! The `aws` provider: where the source lives on RDS (preflight), an Aurora PostgreSQL target
//! provisioned through `dmf-aws` (created or adopted by identifier, waited for with backoff up to
//! a timeout), the connection strings dmf and the routes use, and the target's teardown on abort.
//!
//! What the provider learns is kept in the migration's state under `aws_*` keys: the source's RDS
//! identity (`aws_source`), the target spec (`aws_target_spec`, so that teardown removes exactly
//! what was asked for), the target's status (`aws_target`), and the master password when dmf made
//! it (`aws_master_password`).

use std::time::Duration;

use dmf_aws::rds::{SourceLookup, TargetSpec};
use dmf_aws::settings::ClusterSettings;
use dmf_aws::Aws;
use dmf_workflows::{AbortReason, Outcome};
use serde_json::json;
use tracing::Instrument;

use crate::error::Error;
use crate::findings::Report;
use crate::state::{AwsPassword, AwsSource, AwsTarget, AwsTargetPlan, AwsTeardown, Patch, TargetCreated, TargetDsn, TargetEndpoints, TargetPassword};
use crate::{pg, Context};

/// The cluster's `[cluster.aws]` table.
pub fn settings(ctx: &Context) -> Result<ClusterSettings, Error> {
    let raw = ctx.migration.settings.get("aws").cloned().unwrap_or_else(|| json!({}));
    let s: ClusterSettings = serde_json::from_value(raw).map_err(|e| Error::NeedsOperator(format!("cluster {}: aws settings: {e}", ctx.cluster())))?;
    s.validate().map_err(|e| Error::NeedsOperator(format!("cluster {}: {e}", ctx.cluster())))?;
    Ok(s)
}

/// The clients of the cluster's region.
pub async fn clients(ctx: &Context, s: &ClusterSettings) -> Result<Aws, Error> {
    ctx.config.aws.get(s.region.as_deref()).await.map_err(aws_error(ctx))
}

/// The span AWS calls run in: dmf-aws's own log lines name the cluster and migration through it.
pub fn span(ctx: &Context) -> tracing::Span {
    tracing::info_span!("aws", cluster = %ctx.cluster(), migration = %ctx.migration.id)
}

/// Wrap an AWS error with the cluster it happened for.
pub fn aws_error(ctx: &Context) -> impl Fn(dmf_aws::Error) -> Error + '_ {
    move |source| Error::Aws { cluster: ctx.cluster().to_string(), source }
}

/// Preflight: the RDS instance or cluster behind the source and whether `rds.logical_replication`
/// is on and applied; what to change (and reboot) when it is not.
pub async fn check_source(ctx: &Context, report: &mut Report) -> Result<(), Error> {
    let s = settings(ctx)?;
    let aws = clients(ctx, &s).await?;
    let (_, config) = dmf_pgconn::tls::parse(ctx.source_dsn())
        .map_err(|e| Error::NeedsOperator(format!("cluster {}: bad source connection string: {e}", ctx.cluster())))?;
    let host = pg::tcp_host(&config).unwrap_or_default();
    let lookup = SourceLookup { host: &host, instance: s.source_instance.as_deref(), cluster: s.source_cluster.as_deref() };
    match aws.find_source(lookup).instrument(span(ctx)).await {
        Ok(Some(source)) => {
            for problem in source.problems() {
                report.error("rds_logical_replication", source.parameter_group.clone(), problem);
            }
            ctx.save(Patch::of(&AwsSource { aws_source: Some(source) })).await?;
        }
        Ok(None) => report.warn(
            "rds_source",
            None,
            format!("the source ({host}) is not an RDS instance or cluster in {}: rds.logical_replication not checked (wal_level is)", aws.region),
        ),
        Err(dmf_aws::Error::Conflict(message)) => report.error("rds_source", None, message),
        Err(e) => return Err(aws_error(ctx)(e)),
    }
    Ok(())
}

/// Percent-encode a user name or password for a connection URL.
fn url_part(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn dsn(user: &str, password: &str, host: &str, port: i32, db: &str) -> String {
    format!("postgres://{}:{}@{host}:{port}/{}", url_part(user), url_part(password), url_part(db))
}

/// What dmf asks AWS for: identifiers from the cluster's name (or the manifest), the family from
/// the engine version (or the source's major version).
async fn target_spec(ctx: &Context, s: &ClusterSettings) -> Result<TargetSpec, Error> {
    let id = s.target_id(ctx.cluster());
    let major = match s.engine_version.as_deref().and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok()) {
        Some(m) => m,
        None => {
            let source = pg::connect(ctx.source_dsn(), &format!("source of {}", ctx.cluster())).await?;
            let v: i32 = source.query_one("SELECT current_setting('server_version_num')::int", &[]).await.map_err(pg::err("source version"))?.get(0);
            (v / 10000) as u32
        }
    };
    Ok(TargetSpec {
        parameter_group: format!("{id}-params"),
        subnet_group: s.subnet_group.clone().unwrap_or_else(|| format!("{id}-subnets")),
        subnet_ids: s.subnet_ids.clone(),
        security_group_ids: s.security_group_ids.clone(),
        engine_version: s.engine_version.clone(),
        family: format!("aurora-postgresql{major}"),
        instance_class: s.instance_class.clone(),
        readers: s.readers,
        master_username: s.master_username.clone(),
        database: pg::dbname(ctx.source_dsn())?,
        port: s.port,
        tags: vec![("dmf:cluster".into(), ctx.cluster().to_string()), ("dmf:migration".into(), ctx.migration.id.to_string())],
        cluster_id: id,
        managed_password: s.manage_master_password,
    })
}

/// The master password: None where RDS manages it (`manage_master_password`: it is read from
/// Secrets Manager when dmf connects); from the worker's environment when the manifest names a
/// variable; else made once and kept with the migration before the cluster is created, so that a
/// re-run (or a teardown) uses the same one.
async fn master_password(ctx: &Context, s: &ClusterSettings) -> Result<Option<String>, Error> {
    if s.manage_master_password {
        return Ok(None);
    }
    given_or_made_password(ctx, s).await.map(Some)
}

async fn given_or_made_password(ctx: &Context, s: &ClusterSettings) -> Result<String, Error> {
    if let Some(var) = &s.master_password_env {
        return std::env::var(var).map_err(|_| Error::NeedsOperator(format!("cluster {}: aws.master_password_env names {var}, which the worker's environment lacks", ctx.cluster())));
    }
    if let Some(p) = ctx.record::<AwsPassword>()?.aws_master_password {
        return Ok(p);
    }
    let p = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    ctx.save(Patch::of(&AwsPassword { aws_master_password: Some(p.clone()) })).await?;
    Ok(p)
}

/// Provisioning: create or adopt the Aurora target, wait (watch ticks with backoff, up to
/// `provision_timeout_s`) until it is available, then record the connection strings: dmf's own
/// (through `connect_via` when set) and the routes' (writer and reader endpoints).
pub async fn provision(ctx: &Context) -> Result<Outcome, Error> {
    let m = &ctx.migration;
    let s = settings(ctx)?;
    let client = clients(ctx, &s).await?;
    // the spec made durable by the first run, so that every run (and teardown) asks for the same
    let spec = match provisioned(ctx)? {
        Some(spec) => spec,
        None => target_spec(ctx, &s).await?,
    };
    let password = master_password(ctx, &s).await?;
    // The spec is durable before anything is created: teardown removes what it names.
    let since = match ctx.record::<AwsTargetPlan>()?.aws_wait_since {
        Some(t) => t,
        None => {
            let now = chrono::Utc::now();
            let plan = AwsTargetPlan { aws_target_spec: Some(spec.clone()), aws_wait_since: Some(now) };
            ctx.save(Patch::of(&plan).and(&TargetCreated { target_created: true })).await?;
            now
        }
    };
    let state = client.ensure_target(&spec, password.as_deref()).instrument(span(ctx)).await.map_err(aws_error(ctx))?;
    for what in &state.created {
        tracing::info!(cluster = %m.cluster, migration = %m.id, region = %client.region, "created {what}");
    }
    ctx.save(Patch::of(&AwsTarget { aws_target: Some(state.clone()) })).await?;
    let waited = (chrono::Utc::now() - since).to_std().unwrap_or_default();
    if !state.ready() {
        if waited > Duration::from_secs(s.provision_timeout_s) {
            return Err(Error::Abort {
                reason: AbortReason::PhaseTimeout,
                detail: format!("Aurora target {} not available after {}s: {}", spec.cluster_id, waited.as_secs(), state.summary()),
            });
        }
        // Backoff: a quarter of the time waited so far, between 1 and 30 seconds.
        let next = (waited / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        tracing::info!(cluster = %m.cluster, migration = %m.id, waited_s = waited.as_secs(), next_s = next.as_secs(), "waiting for the Aurora target: {}", state.summary());
        return Ok(Outcome::Watch(next));
    }
    let (Some(writer), Some(port)) = (state.endpoint.clone(), state.port) else {
        return Err(Error::NeedsOperator(format!("cluster {}: Aurora target {} is available but has no endpoint", m.cluster, spec.cluster_id)));
    };
    let reader = state.reader_endpoint.clone().unwrap_or_else(|| writer.clone());
    // A managed password stays in Secrets Manager: the connection strings carry none, and the
    // state only the secret's ARN (read again whenever dmf connects)
    let reference = match (&password, &state.master_user_secret_arn) {
        (Some(_), _) => None,
        (None, Some(arn)) => Some(dmf_db::secret::PasswordRef::AwsSecret(arn.clone())),
        (None, None) => {
            return Err(Error::NeedsOperator(format!("cluster {}: Aurora target {} reports no managed master password secret", m.cluster, spec.cluster_id)))
        }
    };
    let pw = password.as_deref().unwrap_or("");
    let with = |host: &str, port: i32| {
        if password.is_some() {
            dsn(&spec.master_username, pw, host, port, &spec.database)
        } else {
            format!("postgres://{}@{host}:{port}/{}", url_part(&spec.master_username), url_part(&spec.database))
        }
    };
    let route_dsn = with(&writer, port);
    let read_dsn = with(&reader, port);
    let own_dsn = match &s.connect_via {
        Some(via) => {
            let (host, p) = via.rsplit_once(':').unwrap_or((via.as_str(), "5432"));
            with(host, p.parse().unwrap_or(5432))
        }
        None => route_dsn.clone(),
    };
    if let Some(dmf_db::secret::PasswordRef::AwsSecret(arn)) = &reference {
        dmf_db::secret::remember(arn, dmf_aws::secrets::password(&ctx.config.aws, arn).await.map_err(|e| e.to_string()));
    }
    // The target must answer dmf before the schema is copied into it.
    let login = dmf_db::secret::login(&own_dsn, reference.as_ref(), "worker").map_err(|why| Error::NeedsOperator(format!("cluster {}: {why}", m.cluster)))?;
    pg::connect(&login, &format!("target of {}", m.cluster)).await?;
    let endpoints = TargetEndpoints { target_route_dsn: Some(route_dsn), target_read_dsn: Some(read_dsn) };
    ctx.save(Patch::of(&TargetDsn { target_dsn: Some(own_dsn) }).and(&endpoints).and(&TargetPassword { target_password: reference })).await?;
    tracing::info!(cluster = %m.cluster, migration = %m.id, writer = %writer, reader = %reader, waited_s = waited.as_secs(), "Aurora target ready");
    Ok(Outcome::Done)
}

/// Whether this migration provisioned an Aurora target (and so may tear it down).
pub fn provisioned(ctx: &Context) -> Result<Option<TargetSpec>, Error> {
    Ok(ctx.record::<AwsTargetPlan>()?.aws_target_spec)
}

/// Abort: remove the Aurora target dmf provisioned, per the cluster's policy (`teardown_target`,
/// `aws.final_snapshot`). Returns false while AWS is still deleting.
pub async fn teardown(ctx: &Context, spec: &TargetSpec) -> Result<bool, Error> {
    let s = settings(ctx)?;
    let client = clients(ctx, &s).await?;
    let snapshot = s.final_snapshot.then(|| format!("{}-final-{}", spec.cluster_id, &ctx.migration.id.simple().to_string()[..8]));
    if !teardown_started(ctx)? {
        ctx.save(Patch::of(&AwsTeardown { aws_teardown_since: Some(chrono::Utc::now()) })).await?;
    }
    let gone = client.teardown_target(spec, snapshot.as_deref(), true).instrument(span(ctx)).await.map_err(aws_error(ctx))?;
    if gone {
        tracing::info!(cluster = %ctx.cluster(), migration = %ctx.migration.id, target = %spec.cluster_id, "Aurora target removed");
    }
    Ok(gone)
}

/// Once its teardown has begun, the target may no longer answer.
pub fn teardown_started(ctx: &Context) -> Result<bool, Error> {
    Ok(ctx.record::<AwsTeardown>()?.aws_teardown_since.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_encode_what_urls_cannot_hold() {
        assert_eq!(dsn("dmf", "p@ss:w/rd", "h.example", 5432, "orders"), "postgres://dmf:p%40ss%3Aw%2Frd@h.example:5432/orders");
        let parsed: tokio_postgres::Config = dsn("dmf", "p@ss:w/rd", "h", 5, "d").parse().expect("valid");
        assert_eq!(parsed.get_password(), Some(&b"p@ss:w/rd"[..]));
    }
}
