//! A cluster's `[cluster.aws]` table in the fleet manifest: where its source lives on RDS, the
//! Aurora target to provision, and how DMS runs when `replication = "dms"`.

use serde::{Deserialize, Serialize};

/// The `[cluster.aws]` table. Every field has a default except where the subnets come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Region of the source and target; default: the worker's AWS chain (AWS_REGION, profile).
    #[serde(default)]
    pub region: Option<String>,
    /// The RDS instance behind the source; default: found by the source's endpoint address.
    #[serde(default)]
    pub source_instance: Option<String>,
    /// The Aurora cluster behind the source, when the source is Aurora.
    #[serde(default)]
    pub source_cluster: Option<String>,
    /// Identifier of the Aurora target; default `dmf-<cluster>`. An existing cluster under it is
    /// adopted.
    #[serde(default)]
    pub target_cluster: Option<String>,
    /// Aurora PostgreSQL version; default: AWS's default for the source's major version.
    #[serde(default)]
    pub engine_version: Option<String>,
    #[serde(default = "default_instance_class")]
    pub instance_class: String,
    /// Reader instances besides the writer.
    #[serde(default = "default_readers")]
    pub readers: u32,
    /// Subnets for a DB subnet group dmf creates (`<target>-subnets`)...
    #[serde(default)]
    pub subnet_ids: Vec<String>,
    /// ...or an existing DB subnet group.
    #[serde(default)]
    pub subnet_group: Option<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    #[serde(default = "default_master_username")]
    pub master_username: String,
    /// Environment variable of the worker holding the master password; default: dmf makes one
    /// and keeps it in the control plane with the migration.
    #[serde(default)]
    pub master_password_env: Option<String>,
    /// RDS makes and keeps the master password in AWS Secrets Manager
    /// (`ManageMasterUserPassword`); dmf reads it from there when it connects and the control
    /// plane holds only the secret's ARN.
    #[serde(default)]
    pub manage_master_password: bool,
    #[serde(default = "default_port")]
    pub port: i32,
    /// `host:port` through which dmf reaches the target's writer (a bastion tunnel or a load
    /// balancer); routes still point at the writer and reader endpoints.
    #[serde(default)]
    pub connect_via: Option<String>,
    /// Take a final snapshot when an abort tears the target down.
    #[serde(default)]
    pub final_snapshot: bool,
    /// Longest wait for the target to become available.
    #[serde(default = "default_provision_timeout")]
    pub provision_timeout_s: u64,
    #[serde(default = "default_dms_class")]
    pub dms_instance_class: String,
    #[serde(default = "default_dms_storage")]
    pub dms_storage_gb: i32,
    /// Run DMS Serverless with at most this many capacity units instead of an instance.
    #[serde(default)]
    pub dms_serverless_max_capacity: Option<i32>,
    /// How DMS connects to both sides: none, require, verify-ca or verify-full.
    #[serde(default = "default_ssl_mode")]
    pub dms_ssl_mode: String,
}

fn default_instance_class() -> String {
    "db.r6g.large".into()
}
fn default_readers() -> u32 {
    1
}
fn default_master_username() -> String {
    "dmf".into()
}
fn default_port() -> i32 {
    5432
}
fn default_provision_timeout() -> u64 {
    3600
}
fn default_dms_class() -> String {
    "dms.r5.large".into()
}
fn default_dms_storage() -> i32 {
    100
}
fn default_ssl_mode() -> String {
    "require".into()
}

impl ClusterSettings {
    /// Check what serde cannot: a message naming the field, or Ok.
    pub fn validate(&self) -> Result<(), String> {
        match (self.subnet_ids.is_empty(), &self.subnet_group) {
            (true, None) => return Err("aws: give subnet_ids (dmf creates a DB subnet group) or subnet_group (an existing one)".into()),
            (false, Some(_)) => return Err("aws: subnet_ids and subnet_group exclude each other".into()),
            _ => {}
        }
        if self.manage_master_password && self.master_password_env.is_some() {
            return Err("aws: manage_master_password and master_password_env exclude each other".into());
        }
        if self.source_instance.is_some() && self.source_cluster.is_some() {
            return Err("aws: source_instance and source_cluster exclude each other".into());
        }
        if self.readers > 15 {
            return Err(format!("aws.readers: an Aurora cluster has at most 15 readers, got {}", self.readers));
        }
        if let Some(id) = &self.target_cluster {
            if crate::identifier(id) != *id {
                return Err(format!("aws.target_cluster: {id:?} is not an RDS identifier (lowercase letters, digits and single hyphens, starting with a letter)"));
            }
        }
        if !self.master_username.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || !self.master_username.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(format!("aws.master_username: {:?} must be letters, digits or '_', starting with a letter", self.master_username));
        }
        if let Some(via) = &self.connect_via {
            let ok = via.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(format!("aws.connect_via: {via:?} is not host:port"));
            }
        }
        if !matches!(self.dms_ssl_mode.as_str(), "none" | "require" | "verify-ca" | "verify-full") {
            return Err(format!("aws.dms_ssl_mode: {:?} is not one of none, require, verify-ca, verify-full", self.dms_ssl_mode));
        }
        if self.dms_serverless_max_capacity.is_some_and(|c| c < 1) {
            return Err("aws.dms_serverless_max_capacity: must be positive".into());
        }
        Ok(())
    }

    /// The target cluster's identifier.
    pub fn target_id(&self, cluster: &str) -> String {
        self.target_cluster.clone().unwrap_or_else(|| crate::identifier(&format!("dmf-{cluster}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_json: serde_json::Value) -> Result<ClusterSettings, String> {
        let s: ClusterSettings = serde_json::from_value(toml_json).map_err(|e| e.to_string())?;
        s.validate().map(|_| s)
    }

    #[test]
    fn defaults_and_checks() {
        let s = parse(serde_json::json!({ "subnet_ids": ["subnet-1", "subnet-2"] })).expect("valid");
        assert_eq!(s.readers, 1);
        assert_eq!(s.target_id("orders_eu"), "dmf-orders-eu");
        assert!(parse(serde_json::json!({})).unwrap_err().contains("subnet_ids"));
        assert!(parse(serde_json::json!({ "subnet_group": "g", "readrs": 2 })).unwrap_err().contains("readrs"));
        assert!(parse(serde_json::json!({ "subnet_group": "g", "connect_via": "nohost" })).unwrap_err().contains("host:port"));
        assert!(parse(serde_json::json!({ "subnet_group": "g", "target_cluster": "Bad_Name" })).unwrap_err().contains("target_cluster"));
    }
}
