//! The activities' records in the migration's durable state: one type per concern, each written
//! whole by the activity that owns it (see `dmf_db::state` for how records are stored).
//!
//! A record holds exactly the keys one activity writes together, so that writing it never
//! overwrites what another step recorded. Records from before the state was typed keep their
//! top-level keys (`Place::Top`), so rows written by an older dmf load unchanged.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use dmf_db::state::{Place, Record};
use serde::{Deserialize, Serialize};

use crate::flip::fence;
use crate::preflight;

pub use dmf_db::state::{CopyClock, DroppedSlots, Patch, Reverse, SlotsDropped, State};

macro_rules! record {
    ($ty:ty, $place:expr) => {
        impl Record for $ty {
            const PLACE: Place = $place;
        }
    };
}

/// The connection string dmf uses for a target it provisioned.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TargetDsn {
    pub target_dsn: Option<String>,
}
record!(TargetDsn, Place::Top);

/// Where the password of dmf's role on a target it provisioned is (a local target's generated
/// password file): the control plane holds the reference, never the password.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TargetPassword {
    pub target_password: Option<dmf_db::secret::PasswordRef>,
}
record!(TargetPassword, Place::Top);

/// The connection string dmf logs in to `m`'s target with: the adopted target's (resolved by
/// `MigrationRow::resolve_logins`), else the provisioned one's with the password its
/// [`TargetPassword`] points at, resolved now by this process (`who`).
pub fn target_login(m: &dmf_db::migration::MigrationRow, who: &str) -> Result<Option<String>, crate::error::Error> {
    if let Some(adopted) = &m.target_dsn {
        return Ok(Some(adopted.clone()));
    }
    let corrupt = |e: dmf_db::Error| match e {
        dmf_db::Error::Corrupt(what) => crate::error::Error::NeedsOperator(what),
        other => crate::error::Error::Db(other),
    };
    let Some(dsn) = m.record::<TargetDsn>().map_err(corrupt)?.target_dsn else { return Ok(None) };
    let reference = m.record::<TargetPassword>().map_err(corrupt)?.target_password;
    dmf_db::secret::login(&dsn, reference.as_ref(), who)
        .map(Some)
        .map_err(|why| crate::error::Error::NeedsOperator(format!("cluster {}: the target's password: {why}", m.cluster)))
}

/// An Aurora target's endpoints as the routes use them: the writer's, and the reader's for shadow
/// reads (dmf itself may reach the target another way, `connect_via`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TargetEndpoints {
    pub target_route_dsn: Option<String>,
    pub target_read_dsn: Option<String>,
}
record!(TargetEndpoints, Place::Top);

/// The target's connection strings together, as status shows them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TargetDsns {
    pub target_dsn: Option<String>,
    pub target_route_dsn: Option<String>,
    pub target_read_dsn: Option<String>,
}

/// dmf created the target (so abort may remove it); an adopted target is never removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TargetCreated {
    pub target_created: bool,
}
record!(TargetCreated, Place::Top);

/// The port picked for a local target, before its cluster exists (a retry reuses it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LocalPort {
    pub target_port: Option<u16>,
}
record!(LocalPort, Place::Top);

/// Where a local target's cluster lives.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LocalDir {
    pub target_dir: Option<String>,
}
record!(LocalDir, Place::Top);

record!(preflight::Report, Place::Key("preflight"));

/// The replication slot's consistent point, from hydration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SlotStart {
    pub slot_lsn: Option<String>,
}
record!(SlotStart, Place::Top);

/// Since when the source's slot has had no consumer (the slot guard's clock).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SlotWatch {
    pub slot_inactive_since: Option<DateTime<Utc>>,
}
record!(SlotWatch, Place::Top);

/// One replication slot of the migration, as the last check found it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SlotReport {
    pub name: String,
    /// Where it is: "source" (forward replication, the auditor's) or "target" (replication back
    /// after the flip).
    pub side: String,
    pub active: bool,
    /// WAL the slot keeps on its server (from its restart position to the current one).
    pub retained_bytes: Option<i64>,
    /// WAL its consumer has not confirmed yet.
    pub behind_bytes: Option<i64>,
    /// `pg_replication_slots.wal_status`: reserved, extended, unreserved, lost.
    pub wal_status: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

/// The migration's slots as the last check found them (`slots::report`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Slots {
    pub slots: Vec<SlotReport>,
}
record!(Slots, Place::Top);

/// Whether validation lets the cluster move on.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    #[default]
    Closed,
    Open,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Closed => "closed",
            Gate::Open => "open",
        }
    }
}

/// The auditor's progress in `validating`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuditState {
    /// When continuous sampling started (the audit window runs from here).
    pub sampling_since: Option<DateTime<Utc>>,
    pub gate: Gate,
    /// The full compare the gate was decided on.
    pub full_run: Option<i64>,
}
record!(AuditState, Place::Key("audit"));

/// When shadow reads started, and on which route epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ShadowReads {
    pub since: Option<DateTime<Utc>>,
    pub epoch: Option<i64>,
}
record!(ShadowReads, Place::Key("shadow_reads"));

/// A run of the flip protocol that was undone: why, and when.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Undone {
    pub reason: String,
    pub at: Option<DateTime<Utc>>,
}

/// One way of the flip protocol (the flip, or the rollback): its attempts, the steps done, what
/// undo must restore, and the measured hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FlipRecord {
    pub attempts: u64,
    /// A run started and has not finished: the next run undoes it first.
    pub in_progress: bool,
    pub started_at: Option<DateTime<Utc>>,
    /// Steps finished, in order.
    pub steps: Vec<String>,
    /// Milliseconds each step took.
    pub timings_ms: BTreeMap<String, f64>,
    /// What the fence changes on the old primary, as it was before (undo restores it).
    pub before: Option<fence::Before>,
    /// The old primary may be fenced (set before fencing, so undo unfences).
    pub fencing: bool,
    /// Rollback: the source was unfenced for the move (undo fences it again).
    pub to_unfenced: bool,
    pub hold_epoch: Option<i64>,
    pub held_at: Option<DateTime<Utc>>,
    /// Proxies that acknowledged the hold.
    pub proxies: Option<usize>,
    /// Client sessions the fence ended on the old primary.
    pub sessions_ended: Option<i64>,
    pub final_lsn: Option<String>,
    /// Forward: where replication back to the source starts.
    pub reverse_start_lsn: Option<String>,
    pub routed_epoch: Option<i64>,
    /// How long traffic was held, from the hold to the route's move.
    pub held_ms: Option<f64>,
    /// The worker (and job) that ran this run.
    pub worker: Option<String>,
    /// The proxies that acknowledged the hold (`listen on host`).
    pub acked_by: Vec<String>,
    /// The new primary's WAL position once it had applied the final marker: everything up to
    /// `final_lsn` on the old primary is in it.
    pub applied_lsn: Option<String>,
    /// The sequences copied inside the hold, with the values set: in the cutover record only
    /// (the record saved in the migration's state inside the hold leaves them out).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sequences: BTreeMap<String, i64>,
    /// The longest a client transaction waited at the hold, its move included (the proxies'
    /// acknowledgements of the release), milliseconds.
    pub longest_stall_ms: Option<f64>,
    /// Why the last run did not finish (or did not start).
    pub last_reason: Option<String>,
    pub undone: Vec<Undone>,
}

/// The flip's record (phase flipping).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Flip(pub FlipRecord);
record!(Flip, Place::Key("flip"));

/// The rollback's record (phase rolling_back).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Rollback(pub FlipRecord);
record!(Rollback, Place::Key("rollback"));

/// The Aurora or RDS source as AWS describes it (engine, instance, cluster).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AwsSource {
    pub aws_source: Option<dmf_aws::rds::Source>,
}
record!(AwsSource, Place::Top);

/// The master password dmf generated for an Aurora target it made.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AwsPassword {
    pub aws_master_password: Option<String>,
}
record!(AwsPassword, Place::Top);

impl std::fmt::Debug for AwsPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsPassword").field("aws_master_password", &self.aws_master_password.as_ref().map(|_| "<redacted>")).finish()
    }
}

/// The Aurora target asked for (teardown removes exactly this), and when dmf began waiting for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AwsTargetPlan {
    pub aws_target_spec: Option<dmf_aws::rds::TargetSpec>,
    pub aws_wait_since: Option<DateTime<Utc>>,
}
record!(AwsTargetPlan, Place::Top);

/// The Aurora target as AWS last reported it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AwsTarget {
    pub aws_target: Option<dmf_aws::rds::TargetState>,
}
record!(AwsTarget, Place::Top);

/// When the Aurora target's teardown began.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AwsTeardown {
    pub aws_teardown_since: Option<DateTime<Utc>>,
}
record!(AwsTeardown, Place::Top);

/// The DMS resources asked for (removed by abort).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DmsSpec {
    pub dms_spec: Option<dmf_aws::dms::ReplicationSpec>,
}
record!(DmsSpec, Place::Top);

/// The DMS task's progress as DMS last reported it, and its one-line summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DmsProgress {
    pub dms: Option<dmf_aws::dms::Progress>,
    pub dms_summary: Option<String>,
}
record!(DmsProgress, Place::Top);

/// The DMS resources are gone.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DmsRemoved {
    pub dms_removed: bool,
}
record!(DmsRemoved, Place::Top);

/// Every record of a migration's state but the secret ones, as `dmf status --json` shows it (and
/// the tests read it back).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MigrationState {
    pub target: TargetDsns,
    /// Where the password of dmf's role on a provisioned target is (a reference, never the value).
    pub target_password: Option<dmf_db::secret::PasswordRef>,
    pub target_created: bool,
    pub local_dir: Option<String>,
    pub local_port: Option<u16>,
    pub preflight: preflight::Report,
    pub slot_lsn: Option<String>,
    pub slot_inactive_since: Option<DateTime<Utc>>,
    /// The migration's slots and the WAL each keeps, as the last check found them.
    pub slots: Vec<SlotReport>,
    pub slots_dropped: Option<DroppedSlots>,
    pub copy_started_at: Option<DateTime<Utc>>,
    pub audit: AuditState,
    pub shadow_reads: ShadowReads,
    pub flip: FlipRecord,
    pub rollback: FlipRecord,
    pub reverse: Reverse,
    pub aws_source: Option<dmf_aws::rds::Source>,
    pub aws_target_plan: AwsTargetPlan,
    pub aws_target: Option<dmf_aws::rds::TargetState>,
    pub aws_teardown_since: Option<DateTime<Utc>>,
    pub dms_spec: Option<dmf_aws::dms::ReplicationSpec>,
    pub dms: DmsProgress,
    pub dms_removed: bool,
}

impl MigrationState {
    /// Every record of `state` (the secret ones left out).
    pub fn of(state: &State) -> Result<MigrationState, dmf_db::Error> {
        Ok(MigrationState {
            target: {
                let endpoints: TargetEndpoints = state.get()?;
                TargetDsns {
                    target_dsn: state.get::<TargetDsn>()?.target_dsn,
                    target_route_dsn: endpoints.target_route_dsn,
                    target_read_dsn: endpoints.target_read_dsn,
                }
            },
            target_password: state.get::<TargetPassword>()?.target_password,
            target_created: state.get::<TargetCreated>()?.target_created,
            local_dir: state.get::<LocalDir>()?.target_dir,
            local_port: state.get::<LocalPort>()?.target_port,
            preflight: state.get()?,
            slot_lsn: state.get::<SlotStart>()?.slot_lsn,
            slot_inactive_since: state.get::<SlotWatch>()?.slot_inactive_since,
            slots: state.get::<Slots>()?.slots,
            slots_dropped: state.get::<SlotsDropped>()?.slots_dropped,
            copy_started_at: state.get::<CopyClock>()?.copy_started_at,
            audit: state.get()?,
            shadow_reads: state.get()?,
            flip: state.get::<Flip>()?.0,
            rollback: state.get::<Rollback>()?.0,
            reverse: state.get()?,
            aws_source: state.get::<AwsSource>()?.aws_source,
            aws_target_plan: state.get()?,
            aws_target: state.get::<AwsTarget>()?.aws_target,
            aws_teardown_since: state.get::<AwsTeardown>()?.aws_teardown_since,
            dms_spec: state.get::<DmsSpec>()?.dms_spec,
            dms: state.get()?,
            dms_removed: state.get::<DmsRemoved>()?.dms_removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state as the untyped code wrote it (flipped, then rolled back after a retried flip),
    /// every key where that code put it.
    const STORED_BEFORE_TYPES: &str = r#"{
        "preflight": { "findings": [ { "severity": "warning", "check": "replica_identity_full",
                       "subject": "\"public\".\"wide\"", "message": "REPLICA IDENTITY FULL" } ],
                       "source_bytes": 8192, "tables": 3 },
        "target_port": 54321, "target_dir": "/tmp/dmf-clusters/app-0123456789ab", "target_created": true,
        "target_dsn": "postgres://dmf@127.0.0.1:54321/app",
        "slot_lsn": "0/1A2B3C4", "copy_started_at": "2026-12-01T10:00:00.123456Z", "slot_inactive_since": null,
        "audit": { "sampling_since": "2026-12-01T10:01:00Z", "gate": "open", "full_run": 7 },
        "shadow_reads": { "since": "2026-12-01T10:02:00Z", "epoch": 4 },
        "flip": { "attempts": 2, "in_progress": false, "steps": ["held", "fenced", "caught_up", "sequences", "routed"],
                  "started_at": "2026-12-01T10:03:00Z",
                  "undone": [ { "reason": "a previous flip attempt stopped after step \"held\" (its worker was lost)", "at": "2026-12-01T10:02:59Z" } ],
                  "before": { "setting": null, "connect": ["PUBLIC"], "granted_self": true }, "fencing": true,
                  "timings_ms": { "held": 5.4, "fenced": 5.0, "backends_opened_ahead": 49.7 },
                  "hold_epoch": 6, "held_at": "2026-12-01T10:03:01Z", "proxies": 2, "sessions_ended": 1,
                  "final_lsn": "0/1B00000", "reverse_start_lsn": "0/3000000", "routed_epoch": 7, "held_ms": 22.9 },
        "rollback": { "attempts": 1, "in_progress": false, "steps": [], "started_at": "2026-12-02T09:00:00Z", "undone": null,
                      "before": { "setting": "off", "connect": [], "granted_self": false }, "fencing": true,
                      "to_unfenced": true, "last_reason": "lag" },
        "reverse": { "subscribed": true, "kept": true, "soaked_s": 3600 }
    }"#;

    #[test]
    fn a_state_stored_before_the_types_loads() {
        let state = State::from_json(serde_json::from_str(STORED_BEFORE_TYPES).unwrap());
        let m = MigrationState::of(&state).unwrap();
        assert_eq!(m.target.target_dsn.as_deref(), Some("postgres://dmf@127.0.0.1:54321/app"));
        assert_eq!(m.target.target_route_dsn, None);
        assert!(m.target_created);
        assert_eq!(m.local_port, Some(54321));
        assert_eq!(m.local_dir.as_deref(), Some("/tmp/dmf-clusters/app-0123456789ab"));
        assert_eq!(m.preflight.findings[0].severity, preflight::Severity::Warning);
        assert_eq!(m.preflight.tables, 3);
        assert_eq!(m.slot_lsn.as_deref(), Some("0/1A2B3C4"));
        assert!(m.copy_started_at.is_some() && m.slot_inactive_since.is_none());
        assert_eq!(m.audit.gate, Gate::Open);
        assert_eq!(m.audit.full_run, Some(7));
        assert_eq!(m.shadow_reads.epoch, Some(4));
        let flip = &m.flip;
        assert_eq!((flip.attempts, flip.in_progress, flip.fencing), (2, false, true));
        assert_eq!(flip.steps.len(), 5);
        assert_eq!(flip.timings_ms.get("backends_opened_ahead"), Some(&49.7));
        assert_eq!(flip.before, Some(fence::Before { setting: None, connect: vec!["PUBLIC".into()], granted_self: true }));
        assert!(flip.undone[0].reason.contains("worker was lost") && flip.undone[0].at.is_some());
        assert_eq!((flip.proxies, flip.sessions_ended, flip.routed_epoch, flip.held_ms), (Some(2), Some(1), Some(7), Some(22.9)));
        assert_eq!(flip.reverse_start_lsn.as_deref(), Some("0/3000000"));
        assert!(m.rollback.to_unfenced && m.rollback.last_reason.as_deref() == Some("lag"));
        assert!(m.rollback.undone.is_empty(), "the old code stored \"undone\": null on a first attempt");
        assert_eq!(m.reverse, Reverse { subscribed: Some(true), kept: true, soaked_s: Some(3600) });
        assert_eq!(m.aws_source, None);
        assert!(!m.dms_removed);
    }

    #[test]
    fn records_written_together_keep_what_other_steps_wrote() {
        let state = State::from_json(serde_json::from_str(STORED_BEFORE_TYPES).unwrap());
        let state = state.merged(&Patch::of(&SlotWatch { slot_inactive_since: Some(Utc::now()) }).and(&TargetCreated { target_created: false }));
        let m = MigrationState::of(&state).unwrap();
        assert!(m.slot_inactive_since.is_some() && !m.target_created);
        assert_eq!(m.slot_lsn.as_deref(), Some("0/1A2B3C4"), "another record's keys stay");
        assert_eq!(m.flip.attempts, 2);
    }

    #[test]
    fn the_master_password_is_not_in_the_status_view_nor_its_debug() {
        let p = AwsPassword { aws_master_password: Some("s3cret-pw".into()) };
        let state = State::default().merged(&Patch::of(&p));
        let shown = serde_json::to_string(&MigrationState::of(&state).unwrap()).unwrap();
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(!format!("{p:?}").contains("s3cret-pw"));
        assert_eq!(state.get::<AwsPassword>().unwrap().aws_master_password.as_deref(), Some("s3cret-pw"));
    }
}
