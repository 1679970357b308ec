//! `dmf demo` (what scripts/demo.sh runs) migrates its fleet to flipped under a live workload that
//! goes through the proxies, with no client error and every committed transaction on the target,
//! reports the flip, and removes everything it created.

mod common;

use std::process::Command;

#[test]
fn demo_flips_its_fleet_under_load_and_reports_the_cutover() {
    let port = dmf_activities::providers::local::free_port().expect("port");
    let dashboard = format!("127.0.0.1:{port}");
    let child = Command::new(common::dmf_bin())
        .args(["demo", "--clusters", "2", "--scale", "1", "--json", "--dashboard", &dashboard, "--dashboard-linger-s", "2"])
        .env("DMF_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dmf demo");
    let base = std::env::temp_dir().join(format!("dmf-demo-{}", child.id()));
    // the dashboard serves the demo's fleet while it runs (the phases it saw, in order)
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let watching = watching.clone();
        std::thread::spawn(move || {
            let mut seen: Vec<String> = Vec::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                // (the demo may end in the middle of a request: a failed one is skipped)
                let page = (|| -> std::io::Result<String> {
                    use std::io::{Read, Write};
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
                    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
                    s.write_all(format!("GET / HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n").as_bytes())?;
                    let mut page = String::new();
                    s.read_to_string(&mut page)?;
                    Ok(page)
                })();
                if let Ok(page) = page {
                    for phase in ["hydrating", "validating", "shadow_reads", "flipped"] {
                        if page.contains(&format!(r#"<tr data-phase="{phase}"><td><a href="/cluster/demo-1">"#)) && !seen.iter().any(|s| s == phase) {
                            seen.push(phase.to_string());
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            seen
        })
    };
    let out = child.wait_with_output().expect("wait for dmf demo");
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().expect("dashboard watcher");
    assert!(seen.iter().any(|p| p == "flipped") && seen.len() >= 2, "the dashboard showed demo-1 moving through its phases: {seen:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document on stdout");
    assert_eq!(report["all_flipped"], true, "{report}");
    assert_eq!(report["all_consistent"], true, "{report}");
    assert_eq!(report["client_errors"], 0, "{report}");
    let clusters = report["clusters"].as_array().expect("clusters");
    assert_eq!(clusters.len(), 2);
    for c in clusters {
        assert_eq!(c["phase"], "flipped", "{c}");
        assert!(c["rows_copied"].as_i64().unwrap_or(0) >= 100_000, "{c}");
        let txns = c["workload"]["transactions"].as_i64().unwrap_or(0);
        assert!(txns > 0, "the demo's clients write while it migrates: {c}");
        assert_eq!(c["ledger"]["side"], "target", "{c}");
        assert_eq!(c["ledger"]["history_rows"].as_i64(), Some(txns), "every committed transaction is on the target: {c}");
        assert_eq!(c["ledger"]["balanced"], true, "{c}");
        assert_eq!(c["ledger"]["source_fenced"], true, "{c}");
        assert_eq!(c["audit"]["full_compare"], "clean", "{c}");
        assert_eq!(c["audit"]["differences"], 0, "{c}");
        let flip = &c["flip"];
        assert!(flip["held_ms"].as_f64().unwrap_or(0.0) > 0.0, "{c}");
        assert!(flip["longest_stall_ms"].as_f64().unwrap_or(0.0) > 0.0, "a transaction was running while traffic was held: {c}");
        assert!(flip["sessions_moved"].as_u64().unwrap_or(0) >= 2, "both clients' sessions moved to the target: {c}");
        let phases: Vec<&str> = c["phase_seconds"].as_array().expect("phases").iter().filter_map(|p| p[0].as_str()).collect();
        for p in ["hydrating", "validating", "shadow_reads", "flipping"] {
            assert!(phases.contains(&p), "{p} is in the report: {c}");
        }
    }
    assert!(!base.exists(), "the demo removed {}", base.display());
}
