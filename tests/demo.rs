//! `dmf demo` (what scripts/demo.sh runs) ends with every cluster replicating and consistent, and
//! removes everything it created.

mod common;

use std::process::Command;

#[test]
fn demo_reaches_replicating_and_reports_consistent_targets() {
    let out = Command::new(common::dmf_bin())
        .args(["demo", "--clusters", "2", "--scale", "1", "--json"])
        .env("DMF_LOG", "warn")
        .output()
        .expect("run dmf demo");
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document on stdout");
    assert_eq!(report["all_replicating"], true, "{report}");
    assert_eq!(report["all_consistent"], true, "{report}");
    let clusters = report["clusters"].as_array().expect("clusters");
    assert_eq!(clusters.len(), 2);
    for c in clusters {
        assert!(c["rows_copied"].as_i64().unwrap_or(0) >= 100_000, "{c}");
        assert!(c["live_writes"].as_i64().unwrap_or(0) > 0, "the demo writes while it migrates: {c}");
    }
}
