//! DMS: replication through AWS Database Migration Service. Source and target endpoints, a
//! replication instance (or a serverless replication config), and one full-load-and-cdc task with
//! table mappings, all created or adopted by identifier; start, progress with per-table statistics
//! and DMS validation state; stop and delete.

use aws_sdk_databasemigration::types::{
    ComputeConfig, DmsSslModeValue, Filter, MigrationTypeValue, ReplicationEndpointTypeValue, StartReplicationTaskTypeValue, Tag,
};
use serde::{Deserialize, Serialize};

use crate::{Aws, Error};

/// One side of the replication, as DMS connects to it (from inside AWS).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointSpec {
    /// `postgres` or `aurora-postgresql`.
    pub engine: String,
    pub server: String,
    pub port: i32,
    pub database: String,
    pub username: String,
    pub password: String,
    /// `none`, `require`, `verify-ca` or `verify-full`.
    pub ssl_mode: String,
}

/// Where the task runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Compute {
    /// A provisioned replication instance.
    Instance { class: String, storage_gb: i32 },
    /// DMS Serverless: a replication config that scales between the capacity units given.
    Serverless { max_capacity_units: i32 },
}

/// Everything of one cluster's DMS replication, by identifier (all derived from `prefix`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicationSpec {
    pub prefix: String,
    pub source: EndpointSpec,
    pub target: EndpointSpec,
    pub compute: Compute,
    /// Subnets of a replication subnet group dmf creates; empty: DMS's default.
    pub subnet_ids: Vec<String>,
    pub security_group_ids: Vec<String>,
    pub table_mappings: String,
    pub task_settings: String,
    pub tags: Vec<(String, String)>,
}

impl ReplicationSpec {
    pub fn source_endpoint_id(&self) -> String {
        format!("{}-source", self.prefix)
    }
    pub fn target_endpoint_id(&self) -> String {
        format!("{}-target", self.prefix)
    }
    /// The replication instance, or the serverless replication config.
    pub fn compute_id(&self) -> String {
        format!("{}-replication", self.prefix)
    }
    pub fn task_id(&self) -> String {
        format!("{}-task", self.prefix)
    }
    pub fn subnet_group_id(&self) -> String {
        format!("{}-subnets", self.prefix)
    }
    fn tags(&self) -> Vec<Tag> {
        self.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
    }
}

/// Per-table statistics of a task, as DescribeTableStatistics reports them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TableStats {
    pub schema: String,
    pub table: String,
    pub state: Option<String>,
    pub full_load_rows: i64,
    pub inserts: i64,
    pub updates: i64,
    pub deletes: i64,
    /// DMS validation: `Validated`, `Pending records`, `Mismatched records`, `Not enabled`...
    pub validation_state: Option<String>,
    pub validation_pending: i64,
    pub validation_failed: i64,
}

/// Where the replication stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Progress {
    /// The task's (or serverless replication's) status; `waiting for <what>` before it exists.
    pub status: String,
    pub full_load_percent: i32,
    pub tables_loaded: i32,
    pub tables_loading: i32,
    pub tables_queued: i32,
    pub tables_errored: i32,
    pub elapsed_ms: i64,
    pub last_failure: Option<String>,
    pub stop_reason: Option<String>,
    pub tables: Vec<TableStats>,
    /// Why `tables` is empty when the statistics could not be read (the AWS error).
    pub tables_unavailable: Option<String>,
}

/// The counters DMS reports alike for a task (`ReplicationTaskStats`) and a serverless replication
/// (`ReplicationStats`), two types of the same shape.
pub trait Counters {
    fn counters(&self) -> (i32, i32, i32, i32, i32, i64);
}

macro_rules! counters {
    ($($t:ty),*) => {$(
        impl Counters for $t {
            fn counters(&self) -> (i32, i32, i32, i32, i32, i64) {
                (self.full_load_progress_percent(), self.tables_loaded(), self.tables_loading(), self.tables_queued(), self.tables_errored(), self.elapsed_time_millis())
            }
        }
    )*};
}
counters!(aws_sdk_databasemigration::types::ReplicationTaskStats, aws_sdk_databasemigration::types::ReplicationStats);

impl Progress {
    /// A progress with DMS's counters and nothing else.
    fn counted(stats: &impl Counters) -> Progress {
        let (full_load_percent, tables_loaded, tables_loading, tables_queued, tables_errored, elapsed_ms) = stats.counters();
        Progress { full_load_percent, tables_loaded, tables_loading, tables_queued, tables_errored, elapsed_ms, ..Progress::default() }
    }

    fn waiting(what: String) -> Progress {
        Progress { status: format!("waiting for {what}"), ..Progress::default() }
    }

    /// The full load is over and changes are being applied.
    pub fn full_load_done(&self) -> bool {
        self.status == "running" && self.full_load_percent >= 100 && self.tables_loading == 0 && self.tables_queued == 0
    }

    /// The task stopped on an error, or some tables failed to load.
    pub fn failure(&self) -> Option<String> {
        if self.status == "failed" {
            return Some(self.last_failure.clone().or_else(|| self.stop_reason.clone()).unwrap_or_else(|| "DMS task failed".into()));
        }
        if self.tables_errored > 0 {
            let errored: Vec<String> = self.tables.iter().filter(|t| t.state.as_deref() == Some("Table error")).map(|t| format!("{}.{}", t.schema, t.table)).collect();
            return Some(format!("{} tables failed to load{}", self.tables_errored, if errored.is_empty() { String::new() } else { format!(": {}", errored.join(", ")) }));
        }
        None
    }

    /// Tables that DMS validation found different.
    pub fn mismatched_tables(&self) -> Vec<String> {
        self.tables.iter().filter(|t| t.validation_failed > 0 || t.validation_state.as_deref() == Some("Mismatched records")).map(|t| format!("{}.{}", t.schema, t.table)).collect()
    }

    /// One line for `dmf status`.
    pub fn summary(&self) -> String {
        let mut s = format!("dms {} {}%", self.status, self.full_load_percent);
        if self.tables_loaded + self.tables_loading + self.tables_queued + self.tables_errored > 0 {
            s.push_str(&format!(" {}/{} tables", self.tables_loaded, self.tables_loaded + self.tables_loading + self.tables_queued + self.tables_errored));
        }
        if self.tables_errored > 0 {
            s.push_str(&format!(" {} errored", self.tables_errored));
        }
        let validated = self.tables.iter().filter(|t| t.validation_state.as_deref() == Some("Validated")).count();
        if !self.tables.is_empty() {
            s.push_str(&format!(" validated {validated}/{}", self.tables.len()));
        }
        s
    }
}

/// Table mappings that include every table of `schemas`.
pub fn table_mappings(schemas: &[String]) -> String {
    let rules: Vec<serde_json::Value> = schemas
        .iter()
        .enumerate()
        .map(|(i, schema)| {
            serde_json::json!({
                "rule-type": "selection",
                "rule-id": (i + 1).to_string(),
                "rule-name": format!("include-{schema}"),
                "object-locator": { "schema-name": schema, "table-name": "%" },
                "rule-action": "include",
            })
        })
        .collect();
    serde_json::json!({ "rules": rules }).to_string()
}

/// Task settings: tables exist on the target already (dmf copies the schema first) and are
/// emptied before their load, so a restarted load converges; DMS validation on; logging on.
pub fn task_settings() -> String {
    serde_json::json!({
        "TargetMetadata": { "SupportLobs": true, "FullLobMode": false, "LobMaxSize": 32 },
        "FullLoadSettings": { "TargetTablePrepMode": "TRUNCATE_BEFORE_LOAD", "MaxFullLoadSubTasks": 8 },
        "ValidationSettings": { "EnableValidation": true, "ThreadCount": 5 },
        "Logging": { "EnableLogging": true },
    })
    .to_string()
}

fn filter(name: &str, value: &str) -> Result<Filter, Error> {
    Filter::builder().name(name).values(value).build().map_err(|e| Error::Config(format!("DMS filter {name}: {e}")))
}

fn ssl_mode(mode: &str) -> DmsSslModeValue {
    DmsSslModeValue::from(mode)
}

impl Aws {
    /// Create whatever of the replication does not exist yet, adopt what does, and start the task
    /// once DMS can run it. Call again until `Progress::full_load_done`.
    pub async fn ensure_replication(&self, spec: &ReplicationSpec) -> Result<Progress, Error> {
        if !spec.subnet_ids.is_empty() {
            self.ensure_replication_subnet_group(spec).await?;
        }
        let source = self.ensure_endpoint(spec, &spec.source_endpoint_id(), &spec.source, ReplicationEndpointTypeValue::Source).await?;
        let target = self.ensure_endpoint(spec, &spec.target_endpoint_id(), &spec.target, ReplicationEndpointTypeValue::Target).await?;
        match &spec.compute {
            Compute::Instance { class, storage_gb } => {
                let (instance, status) = self.ensure_instance(spec, class, *storage_gb).await?;
                if status != "available" {
                    return Ok(Progress::waiting(format!("replication instance {} ({status})", spec.compute_id())));
                }
                let task = match self.task(spec).await? {
                    Some(t) => t,
                    None => {
                        let r = self
                            .dms
                            .create_replication_task()
                            .replication_task_identifier(spec.task_id())
                            .source_endpoint_arn(&source)
                            .target_endpoint_arn(&target)
                            .replication_instance_arn(&instance)
                            .migration_type(MigrationTypeValue::FullLoadAndCdc)
                            .table_mappings(&spec.table_mappings)
                            .replication_task_settings(&spec.task_settings)
                            .set_tags(Some(spec.tags()))
                            .send()
                            .await
                            .map(|out| out.replication_task().cloned())
                            .map_err(|e| Error::from_sdk("CreateReplicationTask", e));
                        Error::or_adopt(r, format!("CreateReplicationTask {}", spec.task_id()), || self.task(spec)).await?
                    }
                };
                let arn = task.replication_task_arn().unwrap_or_default().to_string();
                let start = match task.status() {
                    Some("ready") => Some(StartReplicationTaskTypeValue::StartReplication),
                    Some("stopped") => Some(StartReplicationTaskTypeValue::ResumeProcessing),
                    _ => None,
                };
                if let Some(kind) = start {
                    self.dms
                        .start_replication_task()
                        .replication_task_arn(&arn)
                        .start_replication_task_type(kind.clone())
                        .send()
                        .await
                        .map_err(|e| Error::from_sdk("StartReplicationTask", e))?;
                    tracing::info!(task = %spec.task_id(), ?kind, "DMS task started");
                }
                self.task_progress(spec).await.map(|p| p.unwrap_or_else(|| Progress::waiting(format!("task {}", spec.task_id()))))
            }
            Compute::Serverless { max_capacity_units } => {
                let config = self.ensure_replication_config(spec, &source, &target, *max_capacity_units).await?;
                let replication = self.serverless_replication(&config).await?;
                let status = replication.as_ref().and_then(|r| r.status()).unwrap_or("created").to_string();
                if matches!(status.as_str(), "created" | "stopped") {
                    let kind = if status == "stopped" { "resume-processing" } else { "start-replication" };
                    self.dms
                        .start_replication()
                        .replication_config_arn(&config)
                        .start_replication_type(kind)
                        .send()
                        .await
                        .map_err(|e| Error::from_sdk("StartReplication", e))?;
                    tracing::info!(config = %spec.compute_id(), kind, "DMS serverless replication started");
                }
                self.serverless_progress(&config).await
            }
        }
    }

    async fn ensure_replication_subnet_group(&self, spec: &ReplicationSpec) -> Result<(), Error> {
        let id = spec.subnet_group_id();
        let found = self
            .dms
            .describe_replication_subnet_groups()
            .filters(filter("replication-subnet-group-id", &id)?)
            .send()
            .await
            .map(|o| !o.replication_subnet_groups().is_empty());
        let exists = match found {
            Ok(exists) => exists,
            Err(e) => crate::rds::none_if_not_found(Error::from_sdk("DescribeReplicationSubnetGroups", e))?.unwrap_or(false),
        };
        if exists {
            return Ok(());
        }
        let r = self
            .dms
            .create_replication_subnet_group()
            .replication_subnet_group_identifier(&id)
            .replication_subnet_group_description(format!("dmf: {}", spec.prefix))
            .set_subnet_ids(Some(spec.subnet_ids.clone()))
            .set_tags(Some(spec.tags()))
            .send()
            .await;
        match r.map_err(|e| Error::from_sdk("CreateReplicationSubnetGroup", e)) {
            Ok(_) => Ok(()),
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The endpoint's ARN, created when missing.
    async fn ensure_endpoint(&self, spec: &ReplicationSpec, id: &str, e: &EndpointSpec, kind: ReplicationEndpointTypeValue) -> Result<String, Error> {
        if let Some(arn) = self.endpoint_arn(id).await? {
            return Ok(arn);
        }
        let r = self
            .dms
            .create_endpoint()
            .endpoint_identifier(id)
            .endpoint_type(kind)
            .engine_name(&e.engine)
            .server_name(&e.server)
            .port(e.port)
            .database_name(&e.database)
            .username(&e.username)
            .password(&e.password)
            .ssl_mode(ssl_mode(&e.ssl_mode))
            .set_tags(Some(spec.tags()))
            .send()
            .await
            .map(|out| out.endpoint().and_then(|e| e.endpoint_arn()).map(str::to_string))
            .map_err(|e| Error::from_sdk("CreateEndpoint", e));
        Error::or_adopt(r, format!("CreateEndpoint {id}"), || self.endpoint_arn(id)).await
    }

    async fn endpoint_arn(&self, id: &str) -> Result<Option<String>, Error> {
        match self.dms.describe_endpoints().filters(filter("endpoint-id", id)?).send().await {
            Ok(out) => Ok(out.endpoints().iter().find(|e| e.endpoint_identifier() == Some(id)).and_then(|e| e.endpoint_arn()).map(str::to_string)),
            Err(e) => crate::rds::none_if_not_found(Error::from_sdk("DescribeEndpoints", e)),
        }
    }

    /// The replication instance's ARN and status, created when missing.
    async fn ensure_instance(&self, spec: &ReplicationSpec, class: &str, storage_gb: i32) -> Result<(String, String), Error> {
        if let Some(found) = self.instance(spec).await? {
            return Ok(found);
        }
        let r = self
            .dms
            .create_replication_instance()
            .replication_instance_identifier(spec.compute_id())
            .replication_instance_class(class)
            .allocated_storage(storage_gb)
            .set_vpc_security_group_ids((!spec.security_group_ids.is_empty()).then(|| spec.security_group_ids.clone()))
            .set_replication_subnet_group_identifier((!spec.subnet_ids.is_empty()).then(|| spec.subnet_group_id()))
            .publicly_accessible(false)
            .multi_az(false)
            .set_tags(Some(spec.tags()))
            .send()
            .await
            .map(|out| {
                out.replication_instance()
                    .map(|i| (i.replication_instance_arn().unwrap_or_default().to_string(), i.replication_instance_status().unwrap_or("creating").to_string()))
            })
            .map_err(|e| Error::from_sdk("CreateReplicationInstance", e));
        Error::or_adopt(r, format!("CreateReplicationInstance {}", spec.compute_id()), || self.instance(spec)).await
    }

    async fn instance(&self, spec: &ReplicationSpec) -> Result<Option<(String, String)>, Error> {
        let id = spec.compute_id();
        match self.dms.describe_replication_instances().filters(filter("replication-instance-id", &id)?).send().await {
            Ok(out) => Ok(out
                .replication_instances()
                .iter()
                .find(|i| i.replication_instance_identifier() == Some(id.as_str()))
                .map(|i| (i.replication_instance_arn().unwrap_or_default().to_string(), i.replication_instance_status().unwrap_or("unknown").to_string()))),
            Err(e) => crate::rds::none_if_not_found(Error::from_sdk("DescribeReplicationInstances", e)),
        }
    }

    async fn task(&self, spec: &ReplicationSpec) -> Result<Option<aws_sdk_databasemigration::types::ReplicationTask>, Error> {
        let id = spec.task_id();
        match self.dms.describe_replication_tasks().filters(filter("replication-task-id", &id)?).without_settings(true).send().await {
            Ok(out) => Ok(out.replication_tasks().iter().find(|t| t.replication_task_identifier() == Some(id.as_str())).cloned()),
            Err(e) => crate::rds::none_if_not_found(Error::from_sdk("DescribeReplicationTasks", e)),
        }
    }

    /// Where the replication stands; None when there is no task (or serverless config).
    pub async fn replication_progress(&self, spec: &ReplicationSpec) -> Result<Option<Progress>, Error> {
        match &spec.compute {
            Compute::Instance { .. } => self.task_progress(spec).await,
            Compute::Serverless { .. } => match self.replication_config_arn(spec).await? {
                Some(arn) => self.serverless_progress(&arn).await.map(Some),
                None => Ok(None),
            },
        }
    }

    /// The task's status and statistics, with per-table statistics when DMS gives them; None when
    /// there is no task.
    pub async fn task_progress(&self, spec: &ReplicationSpec) -> Result<Option<Progress>, Error> {
        let Some(task) = self.task(spec).await? else { return Ok(None) };
        let stats = task.replication_task_stats();
        let mut p = Progress {
            status: task.status().unwrap_or("unknown").to_string(),
            last_failure: task.last_failure_message().map(str::to_string),
            stop_reason: task.stop_reason().map(str::to_string),
            ..stats.map(Progress::counted).unwrap_or_default()
        };
        if let Some(arn) = task.replication_task_arn() {
            match self.table_statistics(arn).await {
                Ok(tables) => p.tables = tables,
                // Statistics are progress, not a verdict: their absence is reported, not fatal.
                Err(e) if !e.is_retryable() || e.code().is_some_and(|c| c.starts_with("HTTP")) => p.tables_unavailable = Some(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(p))
    }

    async fn table_statistics(&self, task_arn: &str) -> Result<Vec<TableStats>, Error> {
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .dms
                .describe_table_statistics()
                .replication_task_arn(task_arn)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| Error::from_sdk("DescribeTableStatistics", e))?;
            for t in page.table_statistics() {
                out.push(TableStats {
                    schema: t.schema_name().unwrap_or_default().to_string(),
                    table: t.table_name().unwrap_or_default().to_string(),
                    state: t.table_state().map(str::to_string),
                    full_load_rows: t.full_load_rows(),
                    inserts: t.inserts(),
                    updates: t.updates(),
                    deletes: t.deletes(),
                    validation_state: t.validation_state().map(str::to_string),
                    validation_pending: t.validation_pending_records(),
                    validation_failed: t.validation_failed_records(),
                });
            }
            marker = page.marker().map(str::to_string);
            if marker.is_none() {
                return Ok(out);
            }
        }
    }

    async fn ensure_replication_config(&self, spec: &ReplicationSpec, source: &str, target: &str, max_capacity_units: i32) -> Result<String, Error> {
        if let Some(arn) = self.replication_config_arn(spec).await? {
            return Ok(arn);
        }
        let compute = ComputeConfig::builder()
            .max_capacity_units(max_capacity_units)
            .set_vpc_security_group_ids((!spec.security_group_ids.is_empty()).then(|| spec.security_group_ids.clone()))
            .set_replication_subnet_group_id((!spec.subnet_ids.is_empty()).then(|| spec.subnet_group_id()))
            .multi_az(false)
            .build();
        let r = self
            .dms
            .create_replication_config()
            .replication_config_identifier(spec.compute_id())
            .source_endpoint_arn(source)
            .target_endpoint_arn(target)
            .compute_config(compute)
            .replication_type(MigrationTypeValue::FullLoadAndCdc)
            .table_mappings(&spec.table_mappings)
            .replication_settings(&spec.task_settings)
            .set_tags(Some(spec.tags()))
            .send()
            .await
            .map(|out| out.replication_config().and_then(|c| c.replication_config_arn()).map(str::to_string))
            .map_err(|e| Error::from_sdk("CreateReplicationConfig", e));
        Error::or_adopt(r, format!("CreateReplicationConfig {}", spec.compute_id()), || self.replication_config_arn(spec)).await
    }

    async fn replication_config_arn(&self, spec: &ReplicationSpec) -> Result<Option<String>, Error> {
        let id = spec.compute_id();
        match self.dms.describe_replication_configs().filters(filter("replication-config-id", &id)?).send().await {
            Ok(out) => Ok(out.replication_configs().iter().find(|c| c.replication_config_identifier() == Some(id.as_str())).and_then(|c| c.replication_config_arn()).map(str::to_string)),
            Err(e) => crate::rds::none_if_not_found(Error::from_sdk("DescribeReplicationConfigs", e)),
        }
    }

    async fn serverless_replication(&self, config_arn: &str) -> Result<Option<aws_sdk_databasemigration::types::Replication>, Error> {
        match self.dms.describe_replications().filters(filter("replication-config-arn", config_arn)?).send().await {
            Ok(out) => Ok(out.replications().first().cloned()),
            Err(e) => crate::rds::none_if_not_found(Error::from_sdk("DescribeReplications", e)),
        }
    }

    async fn serverless_progress(&self, config_arn: &str) -> Result<Progress, Error> {
        let Some(r) = self.serverless_replication(config_arn).await? else { return Ok(Progress::waiting("the serverless replication".into())) };
        let stats = r.replication_stats();
        Ok(Progress {
            status: r.status().unwrap_or("unknown").to_string(),
            last_failure: r.failure_messages().first().cloned(),
            stop_reason: r.stop_reason().map(str::to_string),
            ..stats.map(Progress::counted).unwrap_or_default()
        })
    }

    /// Stop and delete the task (or serverless replication), then the replication instance,
    /// endpoints and subnet group. DMS deletes take minutes: call again until it returns true.
    pub async fn teardown_replication(&self, spec: &ReplicationSpec) -> Result<bool, Error> {
        match &spec.compute {
            Compute::Instance { .. } => {
                if let Some(task) = self.task(spec).await? {
                    let arn = task.replication_task_arn().unwrap_or_default().to_string();
                    match task.status() {
                        Some("running" | "starting") => {
                            let r = self.dms.stop_replication_task().replication_task_arn(&arn).send().await;
                            settle(r.map(|_| ()).map_err(|e| Error::from_sdk("StopReplicationTask", e)))?;
                            tracing::info!(task = %spec.task_id(), "DMS task stopping");
                        }
                        Some("stopping" | "deleting" | "creating" | "modifying" | "moving") => {}
                        _ => {
                            let r = self.dms.delete_replication_task().replication_task_arn(&arn).send().await;
                            settle(r.map(|_| ()).map_err(|e| Error::from_sdk("DeleteReplicationTask", e)))?;
                            tracing::info!(task = %spec.task_id(), "DMS task deleting");
                        }
                    }
                    return Ok(false);
                }
                if let Some((arn, status)) = self.instance(spec).await? {
                    if status != "deleting" {
                        let r = self.dms.delete_replication_instance().replication_instance_arn(&arn).send().await;
                        settle(r.map(|_| ()).map_err(|e| Error::from_sdk("DeleteReplicationInstance", e)))?;
                        tracing::info!(instance = %spec.compute_id(), "DMS replication instance deleting");
                    }
                    return Ok(false);
                }
            }
            Compute::Serverless { .. } => {
                if let Some(config) = self.replication_config_arn(spec).await? {
                    if let Some(r) = self.serverless_replication(&config).await? {
                        if matches!(r.status(), Some("running" | "starting" | "initializing" | "preparing_metadata_resources" | "testing_connection" | "fetching_metadata" | "calculating_capacity" | "provisioning_capacity" | "replication_starting")) {
                            let s = self.dms.stop_replication().replication_config_arn(&config).send().await;
                            settle(s.map(|_| ()).map_err(|e| Error::from_sdk("StopReplication", e)))?;
                            return Ok(false);
                        }
                    }
                    let d = self.dms.delete_replication_config().replication_config_arn(&config).send().await;
                    settle(d.map(|_| ()).map_err(|e| Error::from_sdk("DeleteReplicationConfig", e)))?;
                    return Ok(false);
                }
            }
        }
        for id in [spec.source_endpoint_id(), spec.target_endpoint_id()] {
            if let Some(arn) = self.endpoint_arn(&id).await? {
                let r = self.dms.delete_endpoint().endpoint_arn(&arn).send().await;
                settle(r.map(|_| ()).map_err(|e| Error::from_sdk("DeleteEndpoint", e)))?;
                tracing::info!(endpoint = %id, "DMS endpoint deleted");
            }
        }
        if !spec.subnet_ids.is_empty() {
            let r = self.dms.delete_replication_subnet_group().replication_subnet_group_identifier(spec.subnet_group_id()).send().await;
            settle(r.map(|_| ()).map_err(|e| Error::from_sdk("DeleteReplicationSubnetGroup", e)))?;
        }
        Ok(true)
    }
}

/// A stop or delete that found the resource gone or busy: look again on the next call.
fn settle(r: Result<(), Error>) -> Result<(), Error> {
    match r {
        Err(e) if !(e.is_not_found() || e.is_invalid_state()) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_include_every_table_of_each_schema() {
        let m: serde_json::Value = serde_json::from_str(&table_mappings(&["public".into(), "_dmf".into()])).expect("json");
        let rules = m["rules"].as_array().expect("rules");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1]["object-locator"]["schema-name"], "_dmf");
        assert_eq!(rules[1]["rule-id"], "2");
        assert_eq!(rules[0]["rule-action"], "include");
    }

    #[test]
    fn progress_tells_done_from_failed() {
        let mut p = Progress { status: "running".into(), full_load_percent: 100, tables_loaded: 3, ..Progress::default() };
        assert!(p.full_load_done());
        assert!(p.failure().is_none());
        p.tables_errored = 1;
        p.tables.push(TableStats { schema: "public".into(), table: "items".into(), state: Some("Table error".into()), ..TableStats::default() });
        assert_eq!(p.failure().as_deref(), Some("1 tables failed to load: public.items"));
        let f = Progress { status: "failed".into(), last_failure: Some("endpoint unreachable".into()), ..Progress::default() };
        assert_eq!(f.failure().as_deref(), Some("endpoint unreachable"));
        assert_eq!(p.summary(), "dms running 100% 3/4 tables 1 errored validated 0/1");
    }
}
