//! `dmf enqueue fleet.toml`.

use super::ControlPlane;

/// What `dmf enqueue --help` shows after the flags.
const MANIFEST_FORMAT: &str = r#"Manifest format (TOML):

  [fleet]
  name = "payments"
  max_concurrent = 10        # clusters in preflight..hydrating at once
  # max_active = 60          # clusters started and not finished at once (replicating, auditing,
                             # in shadow reads, flipped and soaking count): default no bound
  max_per_source_host = 2    # per source host
  breaker_threshold = 0.2    # stop releasing waves above this failure rate

  [[cluster]]
  name = "orders"
  source = "postgres://migrator@db1:5432/orders"
  source_password_env = "ORDERS_PW"   # or source_password_file = "/run/secrets/orders", or
                                      # source_password_secret = "arn:aws:secretsmanager:...";
                                      # resolved by each dmf process when it connects. A password
                                      # inline in `source` works too, but is then kept in the
                                      # control plane (dmf.clusters): enqueue warns
  wave = 1
  # target = "postgres://..."     adopt an existing target instead of provisioning one
  # target_instance = "postgres://admin@pool1:5432"   provider "local" on a pool of existing
                                # instances: dmf makes the cluster's database there (named as the
                                # source's) and removes it on abort; roles are instance-wide, so
                                # clusters sharing an instance and a role name must agree on it
  # target_password_env = "..."   or target_password_file / target_password_secret: the
                                # adopted target's (or the target_instance's) password
  # provider = "local"            or "aws": an Aurora PostgreSQL target (needs [cluster.aws])
  # replication = "logical"       or "dms" (provider "aws"): AWS DMS hydrates and replicates
  # pause_before = ["hydrating"]  wait for `dmf resume` before entering these phases
  # teardown_target = false       keep a provisioned target on abort

  [cluster.aws]                   # with provider = "aws"
  subnet_ids = ["subnet-0a", "subnet-0b"]   # or subnet_group = "an-existing-one"
  # region = "eu-west-1"          default: the worker's AWS chain
  # source_instance = "orders-db" or source_cluster; default: found by the source's address
  # security_group_ids = ["sg-0c"]
  # target_cluster = "dmf-orders"; engine_version = "15.4"
  # instance_class = "db.r6g.large"; readers = 1
  # manage_master_password = true  RDS keeps the master password in Secrets Manager
  # master_username = "dmf"; master_password_env = "ORDERS_PW"   default: dmf makes one
  # connect_via = "host:port"     dmf reaches the writer through this (a tunnel)
  # final_snapshot = false; provision_timeout_s = 3600
  # dms_instance_class = "dms.r5.large"; dms_storage_gb = 100; dms_ssl_mode = "require"
  # dms_serverless_max_capacity = 16   DMS Serverless instead of an instance
"#;

#[derive(clap::Args)]
#[command(after_help = MANIFEST_FORMAT)]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// The fleet manifest.
    pub manifest: std::path::PathBuf,
    #[arg(long)]
    pub json: bool,
    /// Send AWS calls (Secrets Manager, for a `*_password_secret`) here instead of AWS.
    #[arg(long, env = "DMF_AWS_ENDPOINT_URL", hide = true)]
    pub aws_endpoint_url: Option<String>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let file = a.manifest.display().to_string();
    let text = std::fs::read_to_string(&a.manifest).map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?;
    let manifest = dmf_scheduler::Manifest::parse(&file, &text)?;
    for w in &manifest.warnings {
        tracing::warn!("{w}");
    }
    let db = a.cp.connect().await?;
    let aws = dmf_aws::Clients::new(dmf_aws::Options { endpoint_url: a.aws_endpoint_url.clone(), ..dmf_aws::Options::default() });
    let ids = dmf_scheduler::enqueue(&db, &manifest, &super::actor(), &aws).await?;
    let clusters: Vec<_> = manifest
        .fleet
        .clusters
        .iter()
        .zip(&ids)
        .map(|(c, id)| serde_json::json!({ "cluster": c.name, "wave": c.wave, "migration": id }))
        .collect();
    if a.json {
        crate::output::json(&serde_json::json!({ "fleet": manifest.fleet.name, "clusters": clusters, "warnings": manifest.warnings }))
    } else {
        crate::output::line(&format!("fleet {}: {} clusters enqueued", manifest.fleet.name, ids.len()));
        Ok(())
    }
}
