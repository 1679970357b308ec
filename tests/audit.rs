//! The data auditor: every corruption written on the target is found and its key named (and the
//! migration aborts with `audit_mismatch`); pgbench writes and a replication stall during the whole
//! audit raise no false alarm, and the gate opens once the full compare is clean.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{leftovers, psql, Env, OutputWithin, CLEAN, COMMAND_LIMIT};

/// Every type the auditor must compare exactly, under quoted and non-ASCII names, with a composite
/// key, plus a table large enough to be split into many chunks.
const TYPED_SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE "Mixed Case ünïcode" (
    "Région" text,
    num int,
    n numeric(20,6),
    f4 float4,
    f8 float8,
    ts timestamptz,
    iv interval,
    doc jsonb,
    tags text[],
    blob bytea,
    m mood,
    note text,
    PRIMARY KEY ("Région", num)
);
INSERT INTO "Mixed Case ünïcode"
SELECT CASE WHEN g % 2 = 0 THEN 'Île-de-France' ELSE 'Zürich' END, g,
       g * 1.000001, g / 3.0, g / 7.0 + 0.1,
       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour 0.000001 second',
       make_interval(days => g, secs => g / 1000.0),
       jsonb_build_object('g', g, 'sq', g * g, 'tags', jsonb_build_array('a', g)),
       ARRAY['t' || g, NULL, 'x'],
       decode(md5(g::text), 'hex'),
       (ARRAY['sad', 'ok', 'happy']::mood[])[1 + g % 3],
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || g END
FROM generate_series(1, 400) g;
CREATE TABLE big (id int PRIMARY KEY, v text);
INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
"#;

#[test]
fn every_injected_corruption_is_found_by_key_and_aborts_the_migration() {
    let env = Env::new("audit-corrupt");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE app").expect("db");
    let dsn = src.dsn("app");
    psql(&dsn, TYPED_SCHEMA);
    let out = env.enqueue(
        "fleet.toml",
        &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{dsn}\"\npause_before = [\"validating\"]\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let worker = env.worker("w1", &[]);
    env.wait_for("validating (paused)", Duration::from_secs(180), |cs| {
        cs.first().is_some_and(|c| c["phase"] == "validating" && c["paused"] == true)
    });

    // A clean pair first: no difference at all.
    let clean = env.dmf_json(&["audit", "app", "--full", "--chunk-rows", "1000", "--json"]);
    assert_eq!(clean["full_compare"]["status"], "clean", "{clean}");
    assert!(clean["full_compare"]["chunks_total"].as_i64().unwrap_or(0) >= 10, "big should be split: {clean}");
    assert_eq!(clean["full_compare"]["rows_compared"], 20400, "{clean}");

    let target = env.target_dsn("app");
    let t = r#""Mixed Case ünïcode""#;
    psql(
        &target,
        &format!(
            "DELETE FROM big WHERE id = 7000;
             INSERT INTO big VALUES (20001, 'extra');
             UPDATE big SET v = 'changed' WHERE id = 15000;
             UPDATE {t} SET note = NULL WHERE num = 11;
             UPDATE {t} SET ts = ts + interval '1 microsecond' WHERE num = 13;
             UPDATE {t} SET doc = doc || '{{\"g\": 0}}' WHERE num = 14;
             UPDATE {t} SET blob = blob || '\\x00'::bytea WHERE num = 15;
             UPDATE {t} SET f4 = f4 * 1.0000001 WHERE num = 16;"
        ),
    );
    // A float changed in its last digit only (shortest exact text, as extra_float_digits = 3 prints it).
    let f8 = psql(&target, &format!("SET extra_float_digits = 3; SELECT f8::text FROM {t} WHERE num = 12"));
    let last = f8.chars().last().and_then(|c| c.to_digit(10)).expect("a digit");
    let changed = format!("{}{}", &f8[..f8.len() - 1], if last == 9 { 8 } else { last + 1 });
    psql(&target, &format!("UPDATE {t} SET f8 = '{changed}' WHERE num = 12"));
    assert_ne!(psql(&target, &format!("SET extra_float_digits = 3; SELECT f8::text FROM {t} WHERE num = 12")), f8);

    let report = env.dmf_json(&["audit", "app", "--full", "--chunk-rows", "1000", "--json"]);
    assert_eq!(report["full_compare"]["status"], "mismatch", "{report}");
    let diffs = report["differences"].as_array().cloned().unwrap_or_default();
    let find = |table: &str, key: serde_json::Value| diffs.iter().find(|d| d["table_name"] == table && d["key"] == key).cloned();
    let big = r#""public"."big""#;
    let mixed = r#""public"."Mixed Case ünïcode""#;
    let missing = find(big, serde_json::json!({"id": "7000"})).expect("missing row found");
    assert_eq!(missing["kind"], "missing_on_target");
    let extra = find(big, serde_json::json!({"id": "20001"})).expect("extra row found");
    assert_eq!(extra["kind"], "missing_on_source");
    let changed = find(big, serde_json::json!({"id": "15000"})).expect("changed value found");
    assert_eq!(changed["columns"], serde_json::json!(["v"]));
    for (num, region, column) in [(11, "Zürich", "note"), (12, "Île-de-France", "f8"), (13, "Zürich", "ts"), (14, "Île-de-France", "doc"), (15, "Zürich", "blob"), (16, "Île-de-France", "f4")] {
        let d = find(mixed, serde_json::json!({"Région": region, "num": num.to_string()})).unwrap_or_else(|| panic!("{column} change not found: {report}"));
        assert_eq!(d["kind"], "value", "{d}");
        assert_eq!(d["columns"], serde_json::json!([column]), "{d}");
        assert!(d["lsn"].as_str().is_some_and(|l| l.contains('/')), "{d}");
    }
    assert_eq!(diffs.len(), 9, "exactly the injected differences: {report}");

    // The gate: resumed, validating sees the confirmed differences and aborts before traffic moves.
    let out = env.dmf(&["resume", "app"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env.wait_for("aborted for audit_mismatch", Duration::from_secs(120), |cs| cs.first().is_some_and(|c| c["phase"] == "aborted"));
    let c = &env.clusters()[0];
    assert_eq!(c["abort_reason"], "audit_mismatch", "{c}\n{}", worker.log_tail());
    assert_eq!(leftovers(&dsn), CLEAN, "the audit slot and the rest are gone from the source");
}

#[test]
fn pgbench_writes_and_a_replication_stall_raise_no_false_alarm() {
    let env = Env::new("audit-load");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE app").expect("db");
    let dsn = src.dsn("app");
    let pgbench = dmf_activities::providers::local::program("pgbench").expect("pgbench");
    let init = Command::new(&pgbench).args(["-i", "-q", "-s", "2", &dsn]).output_within(COMMAND_LIMIT);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    psql(&dsn, "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY");
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{dsn}\"\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _scheduler = env.scheduler();
    let worker = env.worker(
        "w1",
        &["--audit-sample-rate", "0.2", "--audit-window-s", "25", "--audit-chunk-rows", "20000", "--lag-limit-ms", "60000"],
    );
    env.wait_for("replicating", Duration::from_secs(180), |cs| cs.first().is_some_and(common::in_sync));

    // TPC-B on the source for the whole audit.
    let mut load = Command::new(&pgbench)
        .args(["-c", "4", "-j", "2", "-T", "40", "-n", &dsn])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench");
    env.wait_for("validating", Duration::from_secs(60), |cs| cs.first().is_some_and(|c| c["phase"] == "validating"));
    // A replication stall of a few seconds: the apply worker waits on a lock on the target.
    std::thread::sleep(Duration::from_secs(6));
    let target = env.target_dsn("app");
    psql(&target, "BEGIN; LOCK TABLE pgbench_accounts IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT;");
    let status = load.wait().expect("pgbench ends");
    assert!(status.success(), "pgbench failed");

    env.wait_for("the audit gate to open", Duration::from_secs(240), |cs| {
        cs.first().is_some_and(|c| c["audit_gate"] == "open" || c["phase"] == "aborted" || c["phase"] == "aborting")
    });
    let report = env.dmf_json(&["audit", "app", "--json"]);
    let c = &env.clusters()[0];
    // no abort: still validating, or the open gate already let it move on to shadow reads
    assert!(matches!(c["phase"].as_str(), Some("validating" | "shadow_reads")), "no abort: {c}\n{report}\n{}", worker.log_tail());
    assert_eq!(report["differences"], serde_json::json!([]), "{report}");
    assert_eq!(report["full_compare"]["status"], "clean", "{report}");
    assert_eq!(report["samples"]["mismatched"], 0, "{report}");
    assert!(report["samples"]["samples"].as_i64().unwrap_or(0) > 10, "the sampler checked transactions: {report}");
    assert!(report["samples"]["window_p99_ms"].as_f64().is_some(), "{report}");
    assert!(c["window_p50_ms"].as_f64().is_some(), "status shows the consistency window: {c}");
    eprintln!("samples {} p50 {} ms p99 {} ms", report["samples"]["samples"], report["samples"]["window_p50_ms"], report["samples"]["window_p99_ms"]);
}
