//! RDS: the instance or cluster behind a source and whether its parameter group lets it replicate
//! logically; an Aurora PostgreSQL target (cluster parameter group with logical replication on,
//! subnet group, cluster, a writer and readers) created or adopted by identifier; its teardown.

use aws_sdk_rds::types::{ApplyMethod, DbCluster, DbInstance, Parameter, Tag};
use serde::{Deserialize, Serialize};

use crate::{Aws, Error};

/// The parameter that turns on logical replication (wal_level = logical) on RDS and Aurora.
pub const LOGICAL_REPLICATION: &str = "rds.logical_replication";

/// Where a source lives on RDS, and what its parameter group says about logical replication.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// `instance` (RDS for PostgreSQL) or `cluster` (Aurora).
    pub kind: String,
    pub identifier: String,
    pub engine: String,
    pub engine_version: Option<String>,
    /// The parameter group that decides `rds.logical_replication` (the cluster's, for Aurora).
    pub parameter_group: Option<String>,
    /// Its value there; None when the group never set it (the engine default: off).
    pub logical_replication: Option<String>,
    /// Whether the running database has applied the group (`in-sync`, `pending-reboot`...).
    pub parameter_apply_status: Option<String>,
    /// What to reboot for a change of the parameter to apply.
    pub reboot: String,
}

impl Source {
    pub fn logical_replication_on(&self) -> bool {
        matches!(self.logical_replication.as_deref(), Some("1" | "on" | "true"))
    }

    /// What must change before the source can replicate logically, one sentence each; empty when
    /// nothing.
    pub fn problems(&self) -> Vec<String> {
        let what = format!("{} {}", if self.kind == "cluster" { "cluster" } else { "instance" }, self.identifier);
        let modify = if self.kind == "cluster" { "modify-db-cluster-parameter-group" } else { "modify-db-parameter-group" };
        let Some(group) = self.parameter_group.as_deref() else {
            return vec![format!("{what} has no parameter group: attach one with {LOGICAL_REPLICATION} = 1 and reboot {}", self.reboot)];
        };
        if !self.logical_replication_on() {
            let value = self.logical_replication.as_deref().map(|v| format!("{v:?}")).unwrap_or_else(|| "not set (off)".into());
            let mut s = format!(
                "{LOGICAL_REPLICATION} is {value} in parameter group {group} of {what}: set it to 1 (aws rds {modify} --parameters \
                 ParameterName={LOGICAL_REPLICATION},ParameterValue=1,ApplyMethod=pending-reboot), then reboot {}: the parameter is static",
                self.reboot
            );
            if group.starts_with("default.") {
                s.push_str(&format!("; {group} is a default group, which cannot be modified: create a custom group of the same family, set the parameter there and attach it to {what}"));
            }
            return vec![s];
        }
        if self.parameter_apply_status.as_deref() == Some("pending-reboot") {
            return vec![format!("{LOGICAL_REPLICATION} is set in parameter group {group} but {what} has not applied it yet: reboot {}", self.reboot)];
        }
        Vec::new()
    }
}

/// How to find a source: by identifier when the manifest names one, else by its endpoint address.
#[derive(Debug, Clone, Copy)]
pub struct SourceLookup<'a> {
    pub host: &'a str,
    pub instance: Option<&'a str>,
    pub cluster: Option<&'a str>,
}

/// The Aurora PostgreSQL target dmf provisions, all by identifier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetSpec {
    pub cluster_id: String,
    pub engine_version: Option<String>,
    /// Parameter group family, `aurora-postgresql<major>`.
    pub family: String,
    /// Cluster parameter group dmf creates with logical replication on.
    pub parameter_group: String,
    pub subnet_group: String,
    /// Subnets for a subnet group dmf creates; empty when `subnet_group` exists already.
    pub subnet_ids: Vec<String>,
    pub security_group_ids: Vec<String>,
    pub instance_class: String,
    pub readers: u32,
    pub master_username: String,
    pub database: String,
    pub port: i32,
    pub tags: Vec<(String, String)>,
    /// RDS keeps the master password in Secrets Manager (`ManageMasterUserPassword`).
    #[serde(default)]
    pub managed_password: bool,
}

impl TargetSpec {
    pub fn writer_id(&self) -> String {
        format!("{}-writer", self.cluster_id)
    }

    /// The writer first: the first instance of an Aurora cluster becomes its writer.
    pub fn instance_ids(&self) -> Vec<String> {
        std::iter::once(self.writer_id()).chain((1..=self.readers).map(|i| format!("{}-reader-{i}", self.cluster_id))).collect()
    }

    fn tags(&self) -> Vec<Tag> {
        self.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
    }
}

/// One instance of the target as AWS reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceState {
    pub id: String,
    pub status: String,
    pub writer: bool,
}

/// The target as AWS reports it after an `ensure_target`.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct TargetState {
    pub cluster_status: Option<String>,
    /// The writer (cluster) endpoint.
    pub endpoint: Option<String>,
    pub reader_endpoint: Option<String>,
    pub port: Option<i32>,
    pub instances: Vec<InstanceState>,
    /// What this call created; everything else of the target existed and was adopted.
    pub created: Vec<String>,
    /// The Secrets Manager secret holding the master password, when RDS manages it.
    #[serde(default)]
    pub master_user_secret_arn: Option<String>,
}

impl TargetState {
    /// The cluster and every instance are available and the endpoints are known.
    pub fn ready(&self) -> bool {
        self.cluster_status.as_deref() == Some("available")
            && self.endpoint.is_some()
            && !self.instances.is_empty()
            && self.instances.iter().all(|i| i.status == "available")
    }

    /// One line for logs and the migration's state.
    pub fn summary(&self) -> String {
        let instances: Vec<String> = self.instances.iter().map(|i| format!("{} {}", i.id, i.status)).collect();
        format!("cluster {}; {}", self.cluster_status.as_deref().unwrap_or("absent"), instances.join(", "))
    }
}

impl Aws {
    /// The RDS instance or Aurora cluster behind a source, or None when it is not on RDS in this
    /// region (found neither by the identifier given nor by its endpoint address).
    pub async fn find_source(&self, lookup: SourceLookup<'_>) -> Result<Option<Source>, Error> {
        if let Some(id) = lookup.cluster {
            return match self.db_cluster(id).await? {
                Some(c) => Ok(Some(self.source_of_cluster(&c).await?)),
                None => Err(Error::Conflict(format!("source cluster {id} does not exist in {}", self.region))),
            };
        }
        if let Some(id) = lookup.instance {
            return match self.db_instance(id).await? {
                Some(i) => Ok(Some(self.source_of_instance(&i).await?)),
                None => Err(Error::Conflict(format!("source instance {id} does not exist in {}", self.region))),
            };
        }
        let host = lookup.host.to_ascii_lowercase();
        let mut marker = None;
        loop {
            let out = self.rds.describe_db_instances().set_marker(marker).send().await.map_err(|e| Error::from_sdk("DescribeDBInstances", e))?;
            if let Some(i) = out.db_instances().iter().find(|i| i.endpoint().and_then(|e| e.address()).is_some_and(|a| a.eq_ignore_ascii_case(&host))) {
                return Ok(Some(self.source_of_instance(i).await?));
            }
            marker = out.marker().map(str::to_string);
            if marker.is_none() {
                break;
            }
        }
        let mut marker = None;
        loop {
            let out = self.rds.describe_db_clusters().set_marker(marker).send().await.map_err(|e| Error::from_sdk("DescribeDBClusters", e))?;
            let matches = |c: &&DbCluster| {
                let eq = |a: Option<&str>| a.is_some_and(|a| a.eq_ignore_ascii_case(&host));
                eq(c.endpoint()) || eq(c.reader_endpoint()) || c.custom_endpoints().iter().any(|e| e.eq_ignore_ascii_case(&host))
            };
            if let Some(c) = out.db_clusters().iter().find(matches) {
                return Ok(Some(self.source_of_cluster(c).await?));
            }
            marker = out.marker().map(str::to_string);
            if marker.is_none() {
                return Ok(None);
            }
        }
    }

    async fn source_of_instance(&self, i: &DbInstance) -> Result<Source, Error> {
        let id = i.db_instance_identifier().unwrap_or_default().to_string();
        if let Some(cluster) = i.db_cluster_identifier() {
            // An Aurora member: the cluster's parameter group decides.
            if let Some(c) = self.db_cluster(cluster).await? {
                return self.source_of_cluster(&c).await;
            }
        }
        let group = i.db_parameter_groups().first();
        let name = group.and_then(|g| g.db_parameter_group_name()).map(str::to_string);
        let value = match &name {
            Some(n) => self.parameter(n, false).await?,
            None => None,
        };
        Ok(Source {
            kind: "instance".into(),
            identifier: id.clone(),
            engine: i.engine().unwrap_or_default().to_string(),
            engine_version: i.engine_version().map(str::to_string),
            parameter_group: name,
            logical_replication: value,
            parameter_apply_status: group.and_then(|g| g.parameter_apply_status()).map(str::to_string),
            reboot: format!("instance {id}"),
        })
    }

    async fn source_of_cluster(&self, c: &DbCluster) -> Result<Source, Error> {
        let id = c.db_cluster_identifier().unwrap_or_default().to_string();
        let name = c.db_cluster_parameter_group().map(str::to_string);
        let value = match &name {
            Some(n) => self.parameter(n, true).await?,
            None => None,
        };
        let pending = c.db_cluster_members().iter().find_map(|m| m.db_cluster_parameter_group_status().filter(|s| *s != "in-sync"));
        Ok(Source {
            kind: "cluster".into(),
            identifier: id.clone(),
            engine: c.engine().unwrap_or_default().to_string(),
            engine_version: c.engine_version().map(str::to_string),
            parameter_group: name,
            logical_replication: value,
            parameter_apply_status: Some(pending.unwrap_or("in-sync").to_string()),
            reboot: format!("every instance of cluster {id}"),
        })
    }

    /// The value of `rds.logical_replication` in a (cluster) parameter group, None when unset.
    async fn parameter(&self, group: &str, cluster: bool) -> Result<Option<String>, Error> {
        let mut marker = None;
        loop {
            let (params, next) = if cluster {
                let out = self
                    .rds
                    .describe_db_cluster_parameters()
                    .db_cluster_parameter_group_name(group)
                    .set_marker(marker)
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk("DescribeDBClusterParameters", e))?;
                (out.parameters().to_vec(), out.marker().map(str::to_string))
            } else {
                let out = self
                    .rds
                    .describe_db_parameters()
                    .db_parameter_group_name(group)
                    .set_marker(marker)
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk("DescribeDBParameters", e))?;
                (out.parameters().to_vec(), out.marker().map(str::to_string))
            };
            if let Some(p) = params.iter().find(|p| p.parameter_name() == Some(LOGICAL_REPLICATION)) {
                return Ok(p.parameter_value().map(str::to_string));
            }
            marker = next;
            if marker.is_none() {
                return Ok(None);
            }
        }
    }

    pub async fn db_cluster(&self, id: &str) -> Result<Option<DbCluster>, Error> {
        match self.rds.describe_db_clusters().db_cluster_identifier(id).send().await {
            Ok(out) => Ok(out.db_clusters().first().cloned()),
            Err(e) => none_if_not_found(Error::from_sdk("DescribeDBClusters", e)),
        }
    }

    pub async fn db_instance(&self, id: &str) -> Result<Option<DbInstance>, Error> {
        match self.rds.describe_db_instances().db_instance_identifier(id).send().await {
            Ok(out) => Ok(out.db_instances().first().cloned()),
            Err(e) => none_if_not_found(Error::from_sdk("DescribeDBInstances", e)),
        }
    }

    /// Create whatever part of the target does not exist yet and adopt what does; call again until
    /// the returned state is `ready()`. `password` is used only when the cluster is created.
    /// `password`: the master password, or None when RDS manages it (`spec.managed_password`).
    pub async fn ensure_target(&self, spec: &TargetSpec, password: Option<&str>) -> Result<TargetState, Error> {
        let mut created = Vec::new();
        self.ensure_parameter_group(spec, &mut created).await?;
        self.ensure_subnet_group(spec, &mut created).await?;
        let cluster = match self.db_cluster(&spec.cluster_id).await? {
            Some(c) => {
                self.check_adoptable(spec, &c).await?;
                c
            }
            None => {
                let r = self
                    .rds
                    .create_db_cluster()
                    .db_cluster_identifier(&spec.cluster_id)
                    .engine("aurora-postgresql")
                    .set_engine_version(spec.engine_version.clone())
                    .db_cluster_parameter_group_name(&spec.parameter_group)
                    .db_subnet_group_name(&spec.subnet_group)
                    .set_vpc_security_group_ids((!spec.security_group_ids.is_empty()).then(|| spec.security_group_ids.clone()))
                    .master_username(&spec.master_username)
                    .set_master_user_password(password.map(str::to_string))
                    .set_manage_master_user_password(spec.managed_password.then_some(true))
                    .database_name(&spec.database)
                    .port(spec.port)
                    .copy_tags_to_snapshot(true)
                    .set_tags(Some(spec.tags()))
                    .send()
                    .await
                    .map(|out| out.db_cluster().cloned())
                    .map_err(|e| Error::from_sdk("CreateDBCluster", e));
                if r.is_ok() {
                    created.push(format!("cluster {}", spec.cluster_id));
                }
                Error::or_adopt(r, format!("CreateDBCluster {}", spec.cluster_id), || self.db_cluster(&spec.cluster_id)).await?
            }
        };
        // Each instance as AWS reports it now: described, or as its creation answered (the next
        // call describes it).
        let mut instances = Vec::new();
        for id in spec.instance_ids() {
            let instance = match self.db_instance(&id).await? {
                Some(i) => {
                    if i.db_cluster_identifier() != Some(spec.cluster_id.as_str()) {
                        return Err(Error::Conflict(format!(
                            "instance {id} exists but belongs to {}, not to cluster {}",
                            i.db_cluster_identifier().unwrap_or("no cluster"),
                            spec.cluster_id
                        )));
                    }
                    i
                }
                None => {
                    let r = self
                        .rds
                        .create_db_instance()
                        .db_instance_identifier(&id)
                        .db_cluster_identifier(&spec.cluster_id)
                        .engine("aurora-postgresql")
                        .db_instance_class(&spec.instance_class)
                        .set_tags(Some(spec.tags()))
                        .send()
                        .await
                        .map(|out| out.db_instance().cloned())
                        .map_err(|e| Error::from_sdk("CreateDBInstance", e));
                    if r.is_ok() {
                        created.push(format!("instance {id}"));
                    }
                    Error::or_adopt(r, format!("CreateDBInstance {id}"), || self.db_instance(&id)).await?
                }
            };
            instances.push(instance);
        }
        // The cluster as it is now: its members (which is the writer) and endpoints settle after
        // the instances are made.
        let cluster = self.db_cluster(&spec.cluster_id).await?.unwrap_or(cluster);
        let writers: Vec<&str> = cluster.db_cluster_members().iter().filter(|m| m.is_cluster_writer() == Some(true)).filter_map(|m| m.db_instance_identifier()).collect();
        let states = instances
            .iter()
            .map(|i| {
                let id = i.db_instance_identifier().unwrap_or_default();
                InstanceState { id: id.to_string(), status: i.db_instance_status().unwrap_or("unknown").to_string(), writer: writers.contains(&id) }
            })
            .collect();
        Ok(TargetState {
            cluster_status: cluster.status().map(str::to_string),
            endpoint: cluster.endpoint().map(str::to_string),
            reader_endpoint: cluster.reader_endpoint().map(str::to_string),
            port: cluster.port(),
            instances: states,
            created,
            master_user_secret_arn: cluster.master_user_secret().and_then(|s| s.secret_arn()).map(str::to_string),
        })
    }

    async fn ensure_parameter_group(&self, spec: &TargetSpec, created: &mut Vec<String>) -> Result<(), Error> {
        let name = &spec.parameter_group;
        let existing = match self.rds.describe_db_cluster_parameter_groups().db_cluster_parameter_group_name(name).send().await {
            Ok(out) => out.db_cluster_parameter_groups().first().cloned(),
            Err(e) => none_if_not_found(Error::from_sdk("DescribeDBClusterParameterGroups", e))?,
        };
        match existing {
            Some(g) if g.db_parameter_group_family().is_some_and(|f| f != spec.family) => {
                return Err(Error::Conflict(format!(
                    "cluster parameter group {name} exists with family {}, not {}",
                    g.db_parameter_group_family().unwrap_or_default(),
                    spec.family
                )))
            }
            Some(_) => {}
            None => {
                let r = self
                    .rds
                    .create_db_cluster_parameter_group()
                    .db_cluster_parameter_group_name(name)
                    .db_parameter_group_family(&spec.family)
                    .description(format!("dmf: logical replication for {}", spec.cluster_id))
                    .set_tags(Some(spec.tags()))
                    .send()
                    .await;
                match r.map_err(|e| Error::from_sdk("CreateDBClusterParameterGroup", e)) {
                    Ok(_) => created.push(format!("cluster parameter group {name}")),
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !matches!(self.parameter(name, true).await?.as_deref(), Some("1")) {
            let p = Parameter::builder().parameter_name(LOGICAL_REPLICATION).parameter_value("1").apply_method(ApplyMethod::PendingReboot).build();
            self.rds
                .modify_db_cluster_parameter_group()
                .db_cluster_parameter_group_name(name)
                .parameters(p)
                .send()
                .await
                .map_err(|e| Error::from_sdk("ModifyDBClusterParameterGroup", e))?;
        }
        Ok(())
    }

    async fn ensure_subnet_group(&self, spec: &TargetSpec, created: &mut Vec<String>) -> Result<(), Error> {
        let name = &spec.subnet_group;
        let exists = match self.rds.describe_db_subnet_groups().db_subnet_group_name(name).send().await {
            Ok(out) => !out.db_subnet_groups().is_empty(),
            Err(e) => none_if_not_found(Error::from_sdk("DescribeDBSubnetGroups", e))?.unwrap_or(false),
        };
        if exists {
            return Ok(());
        }
        if spec.subnet_ids.is_empty() {
            return Err(Error::Conflict(format!("DB subnet group {name} does not exist: name an existing aws.subnet_group or give aws.subnet_ids")));
        }
        let r = self
            .rds
            .create_db_subnet_group()
            .db_subnet_group_name(name)
            .db_subnet_group_description(format!("dmf: subnets of {}", spec.cluster_id))
            .set_subnet_ids(Some(spec.subnet_ids.clone()))
            .set_tags(Some(spec.tags()))
            .send()
            .await;
        match r.map_err(|e| Error::from_sdk("CreateDBSubnetGroup", e)) {
            Ok(_) => {
                created.push(format!("subnet group {name}"));
                Ok(())
            }
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A cluster found under the target's identifier must be Aurora PostgreSQL and able to
    /// replicate logically.
    async fn check_adoptable(&self, spec: &TargetSpec, c: &DbCluster) -> Result<(), Error> {
        let id = &spec.cluster_id;
        if c.engine() != Some("aurora-postgresql") {
            return Err(Error::Conflict(format!("cluster {id} exists with engine {}, not aurora-postgresql", c.engine().unwrap_or("unknown"))));
        }
        if c.status() == Some("deleting") {
            return Err(Error::Conflict(format!("cluster {id} is being deleted; wait until it is gone and resume")));
        }
        let group = c.db_cluster_parameter_group().unwrap_or_default();
        if group != spec.parameter_group && !matches!(self.parameter(group, true).await?.as_deref(), Some("1")) {
            return Err(Error::Conflict(format!(
                "cluster {id} exists with parameter group {group}, where {LOGICAL_REPLICATION} is not 1: set it and reboot the cluster, or remove the cluster so that dmf creates it"
            )));
        }
        Ok(())
    }

    /// Remove the target: its instances, then (once they are gone) the cluster, then the groups dmf
    /// made. Deletion takes AWS minutes: call again until it returns true.
    pub async fn teardown_target(&self, spec: &TargetSpec, final_snapshot: Option<&str>, remove_groups: bool) -> Result<bool, Error> {
        let mut remaining = 0;
        for id in spec.instance_ids() {
            let Some(i) = self.db_instance(&id).await? else { continue };
            remaining += 1;
            if i.db_instance_status() == Some("deleting") {
                continue;
            }
            match self.rds.delete_db_instance().db_instance_identifier(&id).skip_final_snapshot(true).send().await {
                Ok(_) => tracing::info!(instance = %id, "deleting target instance"),
                Err(e) => busy_or_gone(Error::from_sdk("DeleteDBInstance", e))?,
            }
        }
        if remaining > 0 {
            return Ok(false);
        }
        if let Some(c) = self.db_cluster(&spec.cluster_id).await? {
            if c.status() != Some("deleting") {
                let r = self
                    .rds
                    .delete_db_cluster()
                    .db_cluster_identifier(&spec.cluster_id)
                    .skip_final_snapshot(final_snapshot.is_none())
                    .set_final_db_snapshot_identifier(final_snapshot.map(str::to_string))
                    .send()
                    .await;
                match r {
                    Ok(_) => tracing::info!(cluster = %spec.cluster_id, "deleting target cluster"),
                    Err(e) => busy_or_gone(Error::from_sdk("DeleteDBCluster", e))?,
                }
            }
            if self.db_cluster(&spec.cluster_id).await?.is_some() {
                return Ok(false);
            }
        }
        if remove_groups {
            if let Err(e) = self.rds.delete_db_cluster_parameter_group().db_cluster_parameter_group_name(&spec.parameter_group).send().await {
                let e = Error::from_sdk("DeleteDBClusterParameterGroup", e);
                if !e.is_not_found() {
                    return if e.is_invalid_state() { Ok(false) } else { Err(e) };
                }
            }
            if !spec.subnet_ids.is_empty() {
                if let Err(e) = self.rds.delete_db_subnet_group().db_subnet_group_name(&spec.subnet_group).send().await {
                    let e = Error::from_sdk("DeleteDBSubnetGroup", e);
                    if !e.is_not_found() {
                        return if e.is_invalid_state() { Ok(false) } else { Err(e) };
                    }
                }
            }
        }
        Ok(true)
    }
}

/// A describe that found nothing.
pub(crate) fn none_if_not_found<T>(e: Error) -> Result<Option<T>, Error> {
    if e.is_not_found() {
        Ok(None)
    } else {
        Err(e)
    }
}

/// A delete refused because the resource is already going (or gone) or busy: look again later.
fn busy_or_gone(e: Error) -> Result<(), Error> {
    if e.is_not_found() || e.is_invalid_state() {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(value: Option<&str>, group: &str, apply: &str) -> Source {
        Source {
            kind: "instance".into(),
            identifier: "orders-db".into(),
            engine: "postgres".into(),
            engine_version: Some("15.4".into()),
            parameter_group: Some(group.into()),
            logical_replication: value.map(str::to_string),
            parameter_apply_status: Some(apply.into()),
            reboot: "instance orders-db".into(),
        }
    }

    #[test]
    fn preflight_says_what_to_change_and_that_it_needs_a_reboot() {
        let p = source(None, "orders-params", "in-sync").problems();
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("not set (off) in parameter group orders-params of instance orders-db"), "{}", p[0]);
        assert!(p[0].contains("then reboot instance orders-db"), "{}", p[0]);
        let p = source(Some("0"), "default.postgres15", "in-sync").problems();
        assert!(p[0].contains("default group, which cannot be modified"), "{}", p[0]);
        let p = source(Some("1"), "orders-params", "pending-reboot").problems();
        assert!(p[0].contains("has not applied it yet: reboot instance orders-db"), "{}", p[0]);
        assert!(source(Some("1"), "orders-params", "in-sync").problems().is_empty());
    }

    #[test]
    fn the_writer_is_created_first() {
        let spec = TargetSpec {
            cluster_id: "dmf-orders".into(),
            engine_version: None,
            family: "aurora-postgresql15".into(),
            parameter_group: "dmf-orders-params".into(),
            subnet_group: "dmf-orders-subnets".into(),
            subnet_ids: vec![],
            security_group_ids: vec![],
            instance_class: "db.r6g.large".into(),
            readers: 2,
            master_username: "dmf".into(),
            database: "orders".into(),
            port: 5432,
            tags: vec![],
            managed_password: false,
        };
        assert_eq!(spec.instance_ids(), vec!["dmf-orders-writer", "dmf-orders-reader-1", "dmf-orders-reader-2"]);
    }
}
