//! Idempotent activities, one per phase: preflight, provision, schema, hydrate, replicate, audit,
//! shift_reads, flip, soak, rollback (the flip in reverse), cleanup.
//!
//! Each activity converges: running it twice, or again after a crash half-way, reaches the same end
//! state (check-then-create, names derived from the migration id, `IF NOT EXISTS`). What an activity
//! learns that a later one needs (the target's connection string, reports) goes into the migration's
//! durable `state` in the control plane, never only into memory.

pub mod audit;
pub mod cleanup;
pub mod conns;
pub mod dms;
pub mod drift;
pub mod error;
mod fault;
pub mod findings;
pub mod flip;
pub mod health;
pub mod hydrate;
pub mod lease;
pub mod objects;
pub mod pg;
pub mod post_data;
pub mod preflight;
pub mod provision;
pub mod providers;
pub mod replconn;
pub mod repl_role;
pub mod replicate;
pub mod roles;
pub mod schema;
pub mod sequences;
pub mod shift_reads;
pub mod slots;
pub mod soak;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

use dmf_db::{Db, MigrationRow};
use dmf_workflows::{LagGuard, Outcome, Phase};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use error::Error;

/// Tunables of the activities, shared by every migration a worker runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the `local` provider creates target clusters.
    pub local_base_dir: PathBuf,
    /// Parallel COPY streams per hydration.
    pub hydrate_jobs: usize,
    /// Tables larger than this are split into block ranges copied in parallel; smaller ones are
    /// copied whole (with FREEZE), several tables at a time.
    pub split_bytes: u64,
    /// Abort when heartbeat lag stays above the limit for longer than the window.
    pub lag: LagGuard,
    /// Abort when the slot stays inactive for longer than this.
    pub slot_inactive_window: Duration,
    /// How often a replicating migration is checked.
    pub watch_interval: Duration,
    /// Longest wait for one heartbeat to reach the target.
    pub heartbeat_timeout: Duration,
    /// Local targets run with fsync off (tests, demo, benchmarks).
    pub fast_local_targets: bool,
    /// The data auditor (validating).
    pub audit: audit::AuditConfig,
    /// How long reads go to the target, with every guard quiet, before the flip.
    pub shadow_reads_for: Duration,
    /// The flip and the rollback.
    pub flip: flip::FlipConfig,
    /// How long traffic stays on the target, with replication back to the source, before the
    /// migration completes.
    pub soak: Duration,
    /// Keep replication back to the source after completion (a later rollback stays lossless).
    pub keep_reverse_replication: bool,
    /// AWS clients (the `aws` provider and DMS), per region, made on first use.
    pub aws: dmf_aws::Clients,
    /// Abort before the flip when a slot keeps more WAL than this on the source (None: no limit).
    pub max_slot_wal: Option<u64>,
    /// Drop the slots of a migration that has been `failed` before the flip for longer than this
    /// (None: never).
    pub drop_slots_after_failed: Option<Duration>,
    /// The health connections kept between a migration's watch ticks (shared by every clone).
    pub conns: std::sync::Arc<conns::Conns>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            local_base_dir: std::env::temp_dir().join("dmf-clusters"),
            hydrate_jobs: 4,
            split_bytes: 256 << 20,
            lag: LagGuard { limit: Duration::from_secs(5), window: Duration::from_secs(60) },
            slot_inactive_window: Duration::from_secs(60),
            watch_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(5),
            fast_local_targets: false,
            audit: audit::AuditConfig::default(),
            shadow_reads_for: Duration::from_secs(600),
            flip: flip::FlipConfig::default(),
            soak: Duration::from_secs(3600),
            keep_reverse_replication: false,
            aws: dmf_aws::Clients::default(),
            max_slot_wal: Some(20 << 30),
            drop_slots_after_failed: Some(Duration::from_secs(24 * 3600)),
            conns: std::sync::Arc::default(),
        }
    }
}

/// Where a cluster's target comes from (the manifest's `provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// A PostgreSQL cluster made with initdb/pg_ctl, or a target the manifest names.
    Local,
    /// An Aurora cluster made through the RDS API.
    Aws,
}

impl Provider {
    pub fn parse(name: &str) -> Option<Provider> {
        match name {
            "local" => Some(Provider::Local),
            "aws" => Some(Provider::Aws),
            _ => None,
        }
    }
}

/// How the target is kept in sync with the source (the manifest's `replication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// Native logical replication: publication, slot, subscription.
    Logical,
    /// An AWS DMS full-load-and-cdc task.
    Dms,
}

impl Replication {
    /// The replication a cluster's settings name (logical when they name none); the unknown name
    /// as the error.
    pub fn of(settings: &serde_json::Value) -> Result<Replication, String> {
        match settings.get("replication") {
            None | Some(serde_json::Value::Null) => Ok(Replication::Logical),
            Some(serde_json::Value::String(s)) if s == "logical" => Ok(Replication::Logical),
            Some(serde_json::Value::String(s)) if s == "dms" => Ok(Replication::Dms),
            Some(other) => Err(other.to_string()),
        }
    }
}

/// Everything an activity run needs.
#[derive(Clone)]
pub struct Context {
    pub db: Db,
    pub migration: MigrationRow,
    /// Fired when the lease is lost, the migration moves on, or the worker stops.
    pub cancel: CancellationToken,
    pub config: Config,
    pub provider: Provider,
    pub replication: Replication,
    /// The worker's own bound on its lease (`check_cancel` stops the run once it has passed).
    pub lease: Option<lease::LeaseClock>,
}

/// The names of the replication objects a migration owns, derived from its id so that every
/// attempt finds the ones an earlier attempt made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub publication: String,
    pub slot: String,
    pub subscription: String,
}

impl Names {
    pub fn of(id: Uuid) -> Names {
        let short = id.simple().to_string()[..12].to_string();
        Names {
            publication: format!("dmf_pub_{short}"),
            slot: format!("dmf_slot_{short}"),
            subscription: format!("dmf_sub_{short}"),
        }
    }

    /// The auditor's own slot on the source (forward migrations only).
    pub fn audit_slot(&self) -> String {
        self.slot.replacen("dmf_slot_", "dmf_audit_", 1)
    }

    /// Replication back from the target to the source after the flip (publication and slot on
    /// the target, subscription on the source).
    pub fn reverse_of(id: Uuid) -> Names {
        let short = id.simple().to_string()[..12].to_string();
        Names {
            publication: format!("dmf_rpub_{short}"),
            slot: format!("dmf_rslot_{short}"),
            subscription: format!("dmf_rsub_{short}"),
        }
    }
}

/// Schema that holds dmf's heartbeat table on the source (replicated to the target).
pub const HEARTBEAT_SCHEMA: &str = "_dmf";

/// Fetch the AWS Secrets Manager passwords a migration references (its source, adopted target and
/// roles in the settings; a provisioned Aurora target's managed master password in the state)
/// that this process has not read lately, for its next connections
/// (`dmf_db::secret::remember`). A secret that cannot be read is remembered with why: the
/// connection that needs it fails with that, naming the reference.
pub async fn fetch_secrets(m: &MigrationRow, clients: &dmf_aws::Clients) {
    let mut arns = dmf_db::secret::aws_secrets(&m.settings);
    // a provisioned target's master password RDS manages
    if let Ok(state::TargetPassword { target_password: Some(dmf_db::secret::PasswordRef::AwsSecret(arn)) }) = m.record::<state::TargetPassword>() {
        arns.push(arn);
    }
    for arn in arns {
        if dmf_db::secret::fresh(&arn) {
            continue;
        }
        let read = dmf_aws::secrets::password(clients, &arn).await.map_err(|e| e.to_string());
        if let Err(why) = &read {
            tracing::warn!(secret = %arn, error = %why, "cannot read a password from AWS Secrets Manager");
        }
        dmf_db::secret::remember(&arn, read);
    }
}

impl Context {
    /// A run of `migration`'s current phase; its provider and replication are read here, once.
    /// The source's and an adopted target's passwords are resolved from their references here,
    /// by this worker, for this run only.
    pub fn new(db: Db, mut migration: MigrationRow, cancel: CancellationToken, config: Config) -> Result<Context, Error> {
        migration.resolve_logins("worker").map_err(|e| Error::NeedsOperator(e.to_string()))?;
        let provider = Provider::parse(&migration.provider)
            .ok_or_else(|| Error::NeedsOperator(format!("cluster {}: provider {:?} is not available in this build", migration.cluster, migration.provider)))?;
        let replication = Replication::of(&migration.settings).map_err(|other| {
            Error::NeedsOperator(format!("cluster {}: replication {other:?} is not available in this build", migration.cluster))
        })?;
        Ok(Context { db, migration, cancel, config, provider, replication, lease: None })
    }

    /// Replication goes through AWS DMS (not native logical replication).
    pub fn uses_dms(&self) -> bool {
        self.replication == Replication::Dms
    }

    pub fn names(&self) -> Names {
        Names::of(self.migration.id)
    }

    pub fn cluster(&self) -> &str {
        &self.migration.cluster
    }

    pub fn source_dsn(&self) -> &str {
        &self.migration.source_dsn
    }

    /// The record `R` of this migration's durable state, as it was when this run began.
    /// A record that does not parse needs an operator: retrying reads the same bytes.
    pub fn record<R: dmf_db::state::Record>(&self) -> Result<R, Error> {
        self.migration.record::<R>().map_err(|e| match e {
            dmf_db::Error::Corrupt(what) => Error::NeedsOperator(what),
            other => Error::Db(other),
        })
    }

    /// The target: adopted (from the manifest) or provisioned (from the durable state).
    pub fn target_dsn(&self) -> Result<Option<String>, Error> {
        state::target_login(&self.migration, "worker")
    }

    /// Where the routes send traffic on the target: the writer endpoint of a provisioned Aurora
    /// cluster (dmf itself may reach it another way, `connect_via`), else the target.
    pub fn route_target(&self) -> Result<Option<String>, Error> {
        Ok(self.record::<state::TargetEndpoints>()?.target_route_dsn.or(self.target_dsn()?))
    }

    /// Where shadow reads go on the target: an Aurora cluster's reader endpoint, else the target.
    pub fn route_read_target(&self) -> Result<Option<String>, Error> {
        Ok(self.record::<state::TargetEndpoints>()?.target_read_dsn.or(self.route_target()?))
    }

    pub fn require_target(&self) -> Result<String, Error> {
        self.target_dsn()?
            .ok_or_else(|| Error::NeedsOperator(format!("cluster {}: no target provisioned yet", self.cluster())))
    }

    /// Write `patch` into this migration's durable state.
    pub async fn save(&self, patch: state::Patch) -> Result<(), Error> {
        Ok(self.db.merge_state(self.migration.id, patch).await?)
    }

    /// Stop here when the run was cancelled, or when this worker's lease may have run out (it
    /// stalled): another worker may run the migration now, so this one must not act on it.
    pub fn check_cancel(&self) -> Result<(), Error> {
        if self.lease.as_ref().is_some_and(|l| !l.valid()) {
            tracing::warn!(cluster = %self.cluster(), migration = %self.migration.id, "this worker's lease ran out while it ran (it stalled): it stops acting");
            self.cancel.cancel();
        }
        if self.cancel.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Run the activity of `phase`, and turn whatever happened into an outcome for the state machine.
pub async fn run(phase: Phase, ctx: &Context) -> Outcome {
    // `DMF_FAULT_PANIC=<cluster>:<phase>`: the activity panics once (the worker's panic tests)
    if fault::fires("DMF_FAULT_PANIC", &format!("{}:{phase}", ctx.cluster())).is_some() {
        panic!("DMF_FAULT_PANIC: the {phase} activity of {} panics", ctx.cluster());
    }
    let result = match phase {
        Phase::Preflight => preflight::run(ctx).await,
        Phase::Provisioning => provision::run(ctx).await,
        Phase::Schema => schema::run(ctx).await,
        Phase::Hydrating => match ctx.replication {
            Replication::Logical => hydrate::run(ctx).await,
            Replication::Dms => dms::hydrate(ctx).await,
        },
        Phase::Replicating => replicate::run(ctx).await,
        Phase::Validating => audit::run(ctx).await,
        Phase::ShadowReads => shift_reads::run(ctx).await,
        Phase::Flipping => flip::run_forward(ctx).await,
        Phase::Flipped => soak::run(ctx).await,
        Phase::RollingBack => flip::run_back(ctx).await,
        Phase::Aborting => cleanup::run(ctx).await,
        Phase::Pending | Phase::Aborted | Phase::Failed | Phase::Completed | Phase::RolledBack => {
            return Outcome::Fail { error: format!("phase {phase} has no activity") }
        }
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => e.into_outcome(),
    };
    if !matches!(outcome, Outcome::Watch(_) | Outcome::Done) {
        // an abort, a failure or a retry: nothing is kept for a next tick of this phase (a tick
        // may have kept its connections before a later step aborted it)
        ctx.config.conns.forget(ctx.migration.id);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_and_replication_are_read_from_what_the_manifest_stored() {
        assert_eq!(Provider::parse("local"), Some(Provider::Local));
        assert_eq!(Provider::parse("aws"), Some(Provider::Aws));
        assert_eq!(Provider::parse("gcp"), None);
        assert_eq!(Replication::of(&serde_json::json!({})), Ok(Replication::Logical));
        assert_eq!(Replication::of(&serde_json::json!({ "replication": "logical" })), Ok(Replication::Logical));
        assert_eq!(Replication::of(&serde_json::json!({ "replication": "dms" })), Ok(Replication::Dms));
        assert_eq!(Replication::of(&serde_json::json!({ "replication": "bdr" })), Err("\"bdr\"".to_string()));
    }
}
