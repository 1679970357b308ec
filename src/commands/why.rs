//! Why a cluster is where it is, in words an operator acts on: why its last flip went back to
//! shadow reads, which guard tripped, what failed, and what to do. `dmf status`, the dashboard
//! and `dmf report` say the same thing.

use serde::Serialize;

use super::status::View;

/// What an operator should know about one cluster now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Why {
    /// What happened, in a few words.
    pub what: String,
    /// Why, as the engine recorded it.
    pub because: String,
    /// What an operator can do about it.
    pub action: String,
    /// Whether it needs an operator (failed, aborted, paused) or only explains a wait.
    pub needs_operator: bool,
}

pub fn explain(v: &View) -> Option<Why> {
    let r = &v.status;
    let cluster = &r.cluster;
    let last_error = r.last_error.clone().unwrap_or_default();
    if let Some(e) = &v.state_error {
        return Some(Why { what: "state unreadable".into(), because: e.clone(), action: format!("look at dmf.migrations.state of {cluster}; dmf abort {cluster} removes what it made"), needs_operator: true });
    }
    match r.phase.as_str() {
        "failed" => {
            return Some(Why {
                what: "failed: waits for an operator".into(),
                because: last_error.clone(),
                action: format!("{}; then dmf resume {cluster}, or dmf abort {cluster}", failed_action(&last_error)),
                needs_operator: true,
            })
        }
        "aborted" | "aborting" => {
            let reason = r.abort_reason.clone().unwrap_or_else(|| "operator".into());
            return Some(Why {
                what: format!("{} ({reason})", r.phase),
                because: last_error.clone(),
                action: abort_action(&reason, cluster),
                needs_operator: r.phase == "aborted",
            });
        }
        _ => {}
    }
    if r.paused {
        let mut because = String::from("the manifest's pause_before, or an operator");
        if r.phase == "flipping" {
            if let Some(reason) = v.state.flip.undone.last().map(|u| u.reason.as_str()) {
                because.push_str(&format!("; the last flip attempt went back to shadow_reads: {reason}"));
            }
        }
        return Some(Why { what: format!("paused before {}", r.phase), because, action: format!("dmf resume {cluster}"), needs_operator: true });
    }
    // a flip (or rollback) that went back, and has not moved traffic since
    let flip = &v.state.flip;
    if matches!(r.phase.as_str(), "shadow_reads" | "flipping") {
        if let Some(reason) = flip.last_reason.as_deref() {
            let undone = flip.undone.len();
            return Some(Why {
                what: if undone > 0 { format!("flip went back to shadow_reads ({undone} attempt{} undone)", if undone == 1 { "" } else { "s" }) } else { "flip not started yet".into() },
                because: reason.to_string(),
                action: flip_action(reason, cluster),
                needs_operator: false,
            });
        }
    }
    if r.phase == "flipped" {
        if let Some(reason) = v.state.rollback.last_reason.as_deref() {
            return Some(Why { what: "rollback went back to flipped (traffic stays on the target)".into(), because: reason.to_string(), action: flip_action(reason, cluster), needs_operator: false });
        }
    }
    if let Some(since) = r.lag_over_since {
        return Some(Why {
            what: "lag guard tripping".into(),
            because: format!("replication lag {} ms over the limit since {}", r.lag_ms.unwrap_or(0), since.format("%H:%M:%S")),
            action: "the migration aborts if lag stays over the limit for the lag window: lower the source's write load, or raise --lag-limit-ms / --lag-window-s".into(),
            needs_operator: false,
        });
    }
    if !last_error.is_empty() {
        return Some(Why { what: format!("retrying {}", r.phase), because: last_error.clone(), action: format!("{}; it retries on its own up to the attempt limit", failed_action(&last_error)), needs_operator: false });
    }
    None
}

fn flip_action(reason: &str, cluster: &str) -> String {
    let r = reason.to_ascii_lowercase();
    if r.contains("lag") {
        "none needed: the flip tries again when replication is quiet; if it never is, lower the write load or raise --flip-max-lag-ms".into()
    } else if r.contains("audit gate") || r.contains("validation is not clean") {
        format!("wait for the audit (dmf audit {cluster})")
    } else if r.contains("difference") {
        format!("dmf audit {cluster} shows the keys that differ; fix the data, then dmf audit {cluster} --full")
    } else if r.contains("cannot log in") {
        "give the named role a login on the target (password, pg_hba); the flip tries again".into()
    } else if r.contains("transaction still open") || r.contains("in flight") {
        "a client keeps a transaction open across the hold: the flip tries again; shorten that transaction".into()
    } else if r.contains("proxy") || r.contains("acknowledge") {
        format!("a proxy did not answer: dmf route show {cluster} lists each proxy and its last heartbeat")
    } else if r.contains("prepared") {
        "COMMIT PREPARED or ROLLBACK PREPARED the named prepared transactions on the source".into()
    } else if r.contains("worker was lost") {
        "none needed: the next run undid it and tries again".into()
    } else {
        "the flip tries again on its own; after --flip-max-attempts undone attempts the cluster fails for an operator".into()
    }
}

fn failed_action(error: &str) -> String {
    let e = error.to_ascii_lowercase();
    if e.contains("password") || e.contains("authentication") || e.contains("no pg_hba") {
        "fix the credentials or pg_hba.conf named".into()
    } else if e.contains("flip attempts failed") {
        "read why each flip was undone (dmf report <cluster>)".into()
    } else if e.contains("permission denied") || e.contains("must be") {
        "grant the privilege named".into()
    } else {
        "fix the cause named".into()
    }
}

fn abort_action(reason: &str, cluster: &str) -> String {
    match reason {
        "schema_drift" => format!("apply the DDL to the target schema (or undo it on the source), then dmf resume {cluster} to migrate again"),
        "audit_mismatch" => format!("dmf audit {cluster} names the keys; find what wrote to the target, then migrate again"),
        "replication_lag" => "lower the source's write load or raise --lag-limit-ms / --lag-window-s, then migrate again".into(),
        "slot_lost" | "slot_inactive" | "slot_retained_wal" => "the source dropped or stopped the slot (max_slot_wal_keep_size, a failover, an operator): migrate again".into(),
        "replication_stopped" => "re-enable or recreate what stopped replication (the subscription, the DMS task), then migrate again".into(),
        "phase_timeout" => "a phase took longer than allowed: raise its timeout or find what slows it, then migrate again".into(),
        "preflight_failed" => "fix each preflight error named, then migrate again".into(),
        _ => "an operator aborted it; dmf resume migrates again".into(),
    }
}
