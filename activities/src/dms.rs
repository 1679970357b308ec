//! Replication through AWS DMS, for clusters with `replication = "dms"`: hydrating creates (or
//! adopts) the endpoints, the replication instance or serverless config and the full-load-and-cdc
//! task, and starts it; replicating (and every later guard check) watches the task's status, its
//! per-table statistics and DMS validation, and the heartbeat lag; abort and the end of forward
//! replication stop and delete all of it. Progress is kept in the migration's state as `dms`,
//! which `dmf status` shows.

use std::time::Duration;

use dmf_aws::dms::{Compute, EndpointSpec, Progress, ReplicationSpec};
use dmf_aws::settings::ClusterSettings;
use dmf_workflows::{AbortReason, Outcome};
use tracing::Instrument;

use crate::error::Error;
use crate::providers::aws;
use crate::health::Sample;
use crate::state::{AwsSource, DmsProgress, DmsRemoved, DmsSpec, Patch};
use crate::{health, objects, pg, post_data, Context, HEARTBEAT_SCHEMA};

/// One side as DMS reaches it, from a connection string.
fn endpoint(dsn: &str, engine: &str, ssl_mode: &str, what: &str) -> Result<EndpointSpec, Error> {
    let (_, c) = dmf_pgconn::tls::parse(dsn).map_err(|e| Error::NeedsOperator(format!("bad connection string for the {what}: {e}")))?;
    let server = pg::tcp_host(&c).ok_or_else(|| Error::NeedsOperator(format!("the {what} is reached over a Unix socket; DMS needs a host name")))?;
    Ok(EndpointSpec {
        engine: engine.into(),
        server,
        port: c.get_ports().first().copied().unwrap_or(5432) as i32,
        database: pg::dbname(dsn)?,
        username: c.get_user().unwrap_or("postgres").to_string(),
        password: c.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default(),
        ssl_mode: ssl_mode.into(),
    })
}

/// The replication of this cluster: DMS reaches the source by its connection string and the target
/// by its writer endpoint (what the routes use, not `connect_via`); every schema with tables on the
/// source is mapped, dmf's heartbeat schema included, so that lag is measured through DMS too.
async fn spec(ctx: &Context, s: &ClusterSettings) -> Result<ReplicationSpec, Error> {
    // (the route's string has no password: `durable_spec` puts the endpoints' passwords in)
    let target = ctx.route_target()?.ok_or_else(|| Error::NeedsOperator(format!("cluster {}: no target provisioned yet", ctx.cluster())))?;
    let source_engine = match ctx.record::<AwsSource>()?.aws_source {
        Some(s) if s.engine == "aurora-postgresql" => "aurora-postgresql",
        _ => "postgres",
    };
    let source = pg::connect(ctx.source_dsn(), &format!("source of {}", ctx.cluster())).await?;
    let mut schemas: Vec<String> = source
        .query(include_str!("sql/user_tables.sql"), &[])
        .await
        .map_err(pg::err("list source tables"))?
        .iter()
        .map(|r| r.get::<_, String>("schema"))
        .collect();
    schemas.push(HEARTBEAT_SCHEMA.to_string());
    schemas.sort();
    schemas.dedup();
    Ok(ReplicationSpec {
        prefix: format!("{}-dms", s.target_id(ctx.cluster())),
        source: endpoint(ctx.source_dsn(), source_engine, &s.dms_ssl_mode, "source")?,
        target: endpoint(&target, "aurora-postgresql", &s.dms_ssl_mode, "target")?,
        compute: match s.dms_serverless_max_capacity {
            Some(max_capacity_units) => Compute::Serverless { max_capacity_units },
            None => Compute::Instance { class: s.dms_instance_class.clone(), storage_gb: s.dms_storage_gb },
        },
        subnet_ids: s.subnet_ids.clone(),
        security_group_ids: s.security_group_ids.clone(),
        table_mappings: dmf_aws::dms::table_mappings(&schemas),
        task_settings: dmf_aws::dms::task_settings(),
        tags: vec![("dmf:cluster".into(), ctx.cluster().to_string()), ("dmf:migration".into(), ctx.migration.id.to_string())],
    })
}

/// The spec the hydration made durable (the tables' schemas are fixed by then), else a new one.
/// The control plane keeps it without the endpoints' passwords: they are put in here, from the
/// connection strings as this worker resolved them for this run.
async fn durable_spec(ctx: &Context, s: &ClusterSettings) -> Result<ReplicationSpec, Error> {
    let mut spec = match ctx.record::<DmsSpec>()?.dms_spec {
        Some(spec) => spec,
        None => {
            let spec = spec(ctx, s).await?;
            let mut kept = spec.clone();
            kept.source.password.clear();
            kept.target.password.clear();
            ctx.save(Patch::of(&DmsSpec { dms_spec: Some(kept) })).await?;
            spec
        }
    };
    let fresh = spec_logins(ctx)?;
    spec.source.password = fresh.0;
    spec.target.password = fresh.1;
    Ok(spec)
}

/// The source's and the target's (writer endpoint's) passwords, resolved for this run.
fn spec_logins(ctx: &Context) -> Result<(String, String), Error> {
    let password_of = |dsn: &str, what: &str| -> Result<String, Error> {
        let (_, c) = dmf_pgconn::tls::parse(dsn).map_err(|e| Error::NeedsOperator(format!("bad connection string for the {what}: {e}")))?;
        Ok(c.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default())
    };
    let target = ctx.route_target()?.ok_or_else(|| Error::NeedsOperator(format!("cluster {}: no target provisioned yet", ctx.cluster())))?;
    let reference = ctx.record::<crate::state::TargetPassword>()?.target_password;
    let target = dmf_db::secret::login(&target, reference.as_ref(), "worker").map_err(|why| Error::NeedsOperator(format!("cluster {}: {why}", ctx.cluster())))?;
    Ok((password_of(ctx.source_dsn(), "source")?, password_of(&target, "target")?))
}

async fn record(ctx: &Context, p: &Progress) -> Result<(), Error> {
    ctx.save(Patch::of(&DmsProgress { dms: Some(p.clone()), dms_summary: Some(p.summary()) })).await
}

/// Hydrating: create or adopt everything DMS needs and start the task; done once the full load is
/// over. The publication is made too: the auditor's sampling slot reads through it.
pub async fn hydrate(ctx: &Context) -> Result<Outcome, Error> {
    let s = aws::settings(ctx)?;
    let client = aws::clients(ctx, &s).await?;
    let source = pg::connect(ctx.source_dsn(), &format!("source of {}", ctx.cluster())).await?;
    objects::ensure_publication(&source, &ctx.names()).await?;
    let spec = durable_spec(ctx, &s).await?;
    let p = client.ensure_replication(&spec).instrument(aws::span(ctx)).await.map_err(aws::aws_error(ctx))?;
    record(ctx, &p).await?;
    if let Some(failure) = p.failure() {
        return Err(Error::NeedsOperator(format!("cluster {}: DMS task {}: {failure}", ctx.cluster(), spec.task_id())));
    }
    tracing::info!(cluster = %ctx.cluster(), migration = %ctx.migration.id, "{}", p.summary());
    if p.full_load_done() {
        // Indexes and constraints after the load, as the native path builds them after its copy.
        post_data::build_post_data(ctx, &ctx.require_target()?).await?;
        tracing::info!(cluster = %ctx.cluster(), migration = %ctx.migration.id, "DMS full load done; indexes and constraints built");
        return Ok(Outcome::Done);
    }
    Ok(Outcome::Watch(ctx.config.watch_interval.max(Duration::from_secs(1))))
}

/// One guard check of the DMS replication: the task's progress into the state; a failed or
/// stopped task, or records DMS validation found different, abort; the heartbeat's trip through
/// DMS gives the lag. A task that is not running (starting, modifying) counts like an inactive slot.
pub async fn sample(ctx: &Context) -> Result<Sample, Error> {
    let s = aws::settings(ctx)?;
    let client = aws::clients(ctx, &s).await?;
    let spec = durable_spec(ctx, &s).await?;
    let Some(p) = client.replication_progress(&spec).instrument(aws::span(ctx)).await.map_err(aws::aws_error(ctx))? else {
        return Err(Error::Abort { reason: AbortReason::ReplicationStopped, detail: format!("DMS task {} no longer exists", spec.task_id()) });
    };
    record(ctx, &p).await?;
    if let Some(failure) = p.failure() {
        return Err(Error::Abort { reason: AbortReason::ReplicationStopped, detail: format!("DMS task {}: {failure}", spec.task_id()) });
    }
    if p.status == "stopped" {
        let why = p.stop_reason.clone().unwrap_or_else(|| "no reason given".into());
        return Err(Error::Abort { reason: AbortReason::ReplicationStopped, detail: format!("DMS task {} stopped: {why}", spec.task_id()) });
    }
    let mismatched = p.mismatched_tables();
    if !mismatched.is_empty() {
        return Err(Error::Abort { reason: AbortReason::AuditMismatch, detail: format!("DMS validation found mismatched records in {}", mismatched.join(", ")) });
    }
    let (source, target) = health::sides(ctx).await?;
    let (lag, lag_timed_out) = health::heartbeat_lag(ctx, &source, &target).await?;
    Ok(Sample { lag, lag_timed_out, lag_bytes: None, slot_active: p.status == "running", slots: Vec::new() })
}

/// Stop and delete the DMS replication (abort, or forward replication ending after the flip).
/// Returns false while DMS is still stopping or deleting.
pub async fn remove(ctx: &Context) -> Result<bool, Error> {
    if ctx.record::<DmsRemoved>()?.dms_removed {
        return Ok(true);
    }
    let Some(spec) = ctx.record::<DmsSpec>()?.dms_spec else {
        return Ok(true); // hydration never got as far as DMS
    };
    let s = aws::settings(ctx)?;
    let client = aws::clients(ctx, &s).await?;
    let done = client.teardown_replication(&spec).instrument(aws::span(ctx)).await.map_err(aws::aws_error(ctx))?;
    if done {
        ctx.save(Patch::of(&DmsRemoved { dms_removed: true })).await?;
        tracing::info!(cluster = %ctx.cluster(), migration = %ctx.migration.id, task = %spec.task_id(), "DMS replication removed");
    }
    Ok(done)
}
