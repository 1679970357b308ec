//! `dmf status` at fleet size (issue 20 item 6): 400 clusters in 8 waves, with the hydration
//! progress, audit runs and consistency samples a fleet in flight has; the answer leads with a
//! summary per wave and phase, names the aborted clusters by reason and the failed ones with their
//! errors, and filters by wave, phase and problems.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// 400 clusters written straight into the control plane, in mid-migration: 8 waves of 50, wave 1
/// completed but for 3 aborted (2 schema drift, 1 slot lost) and 1 failed, wave 2 replicating with
/// one paused, the rest pending; each with 40 copy chunks, an audit run of 20 chunks and 1,000
/// consistency samples.
const FLEET: &str = r#"
INSERT INTO dmf.fleets (name, max_concurrent, max_per_source_host, breaker_threshold, manifest)
VALUES ('big', 50, 10, 0.5, '');
INSERT INTO dmf.waves (fleet, wave) SELECT 'big', w FROM generate_series(1, 8) w;
INSERT INTO dmf.clusters (name, fleet, wave, source_dsn, source_host, provider)
SELECT format('c%s', lpad(i::text, 3, '0')), 'big', (i - 1) / 50 + 1,
       format('postgres://migrator@10.0.%s.%s:5432/app', i / 200, i % 200), format('10.0.%s.%s', i / 200, i % 200), 'local'
FROM generate_series(1, 400) i;
INSERT INTO dmf.migrations (id, cluster, phase, lag_ms, lag_bytes)
SELECT md5(name)::uuid, name, CASE WHEN wave = 1 THEN 'completed' WHEN wave = 2 THEN 'replicating' ELSE 'pending' END,
       CASE WHEN wave = 2 THEN 40 END, CASE WHEN wave = 2 THEN 8192 END
FROM dmf.clusters;
UPDATE dmf.migrations SET phase = 'aborted', abort_reason = 'schema_drift',
       last_error = 'table public.orders on the source has a column the target lacks: note text'
WHERE cluster IN ('c003', 'c017');
UPDATE dmf.migrations SET phase = 'aborted', abort_reason = 'slot_lost', last_error = 'replication slot dmf_slot_x is gone from the source'
WHERE cluster = 'c020';
UPDATE dmf.migrations SET phase = 'failed', failed_phase = 'flipping', last_error = E'cannot fence the source: permission denied\nmore detail'
WHERE cluster = 'c042';
UPDATE dmf.migrations SET paused = true WHERE cluster = 'c077';
INSERT INTO dmf.copy_progress (migration, table_name, chunk, rows_copied, bytes_copied, bytes_total, done)
SELECT m.id, format('public.t%s', t), ch, 1000, 65536, 65536, true
FROM dmf.migrations m, generate_series(1, 10) t, generate_series(1, 4) ch
WHERE m.phase <> 'pending';
INSERT INTO dmf.audit_runs (migration, status, chunks_total, requested_by)
SELECT id, 'clean', 20, 'worker' FROM dmf.migrations WHERE phase <> 'pending';
INSERT INTO dmf.audit_chunks (run, table_name, chunk, status)
SELECT r.id, 'public.t1', ch, 'clean' FROM dmf.audit_runs r, generate_series(1, 20) ch;
INSERT INTO dmf.audit_samples (migration, window_ms, rows_checked, status, commit_lsn)
SELECT m.id, random() * 50, 3, 'matched', '0/1'
FROM dmf.migrations m, generate_series(1, 1000) s
WHERE m.phase <> 'pending';
ANALYZE;
"#;

#[test]
fn status_of_400_clusters_leads_with_a_summary_and_filters() {
    let env = Env::new("status-400");
    env.cp_query(FLEET);

    // the whole fleet, timed (the goal is under a second; the bound only catches a regression)
    let start = Instant::now();
    let out = env.dmf(&["status"]);
    let took = start.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("dmf status of 400 clusters: {took:?}");
    assert!(took < Duration::from_secs(10), "dmf status took {took:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let first = text.lines().next().unwrap_or_default();
    assert_eq!(first, "400 clusters: pending 300, replicating 50, completed 46, aborted 3, failed 1", "{text}");
    assert!(text.contains("big wave 1     50: completed 46, aborted 3, failed 1"), "{text}");
    assert!(text.contains("big wave 2     50: replicating 50"), "{text}");
    assert!(text.contains("aborted [schema_drift] 2: c003, c017"), "{text}");
    assert!(text.contains("aborted [slot_lost] 1: c020"), "{text}");
    assert!(text.contains("c042 (wave 1): cannot fence the source: permission denied"), "{text}");
    assert!(!text.contains("more detail"), "one line per failed cluster: {text}");
    assert!(text.contains("paused 1: c077"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with('c')).count(), 400, "every cluster listed without a filter");

    // filters choose the list; the summary still counts the fleet
    let listed = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["status"];
        all.extend_from_slice(args);
        let out = env.dmf(&all);
        assert!(out.status.success(), "dmf {all:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.starts_with("400 clusters:"), "{text}");
        text.lines().skip_while(|l| !l.starts_with("CLUSTER")).skip(1).map(|l| l.split_whitespace().next().unwrap_or_default().to_string()).collect()
    };
    assert_eq!(listed(&["--problems"]), ["c003", "c017", "c020", "c042", "c077"]);
    assert_eq!(listed(&["--phase", "aborted"]), ["c003", "c017", "c020"]);
    assert_eq!(listed(&["--wave", "2"]).len(), 50);
    assert_eq!(listed(&["--wave", "2", "--problems"]), ["c077"]);
    assert!(listed(&["--wave", "9"]).is_empty());

    let out = env.dmf(&["status", "--phase", "replicatin"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of"), "{}", String::from_utf8_lossy(&out.stderr));

    // for machines: the same summary, and the clusters the filters chose
    let doc = env.dmf_json(&["status", "--problems", "--json"]);
    assert_eq!(doc["summary"]["clusters"], 400);
    assert_eq!(doc["summary"]["aborted"][0]["reason"], "schema_drift");
    assert_eq!(doc["summary"]["aborted"][0]["clusters"], serde_json::json!(["c003", "c017"]));
    assert_eq!(doc["summary"]["failed"][0]["cluster"], "c042");
    assert_eq!(doc["summary"]["waves"].as_array().map(Vec::len), Some(8));
    assert_eq!(doc["clusters"].as_array().map(Vec::len), Some(5));

    // the same fleet in the dashboard: the whole fleet page, problems first, and its gauges
    let port = dmf_activities::providers::local::free_port().expect("port");
    let mut dashboard = env.spawn_dmf("dashboard", &["dashboard", "--listen", &format!("127.0.0.1:{port}")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(dashboard.is_alive() && Instant::now() < deadline, "{}", dashboard.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    let page = http_get(port, "/");
    let took = start.elapsed();
    eprintln!("dashboard fleet page of 400 clusters: {took:?}, {} bytes", page.len());
    assert!(took < Duration::from_secs(10), "the fleet page took {took:?}");
    assert!(page.starts_with("HTTP/1.1 200"), "{}", &page[..page.len().min(500)]);
    assert!(page.contains("400 clusters"), "{}", &page[..page.len().min(2000)]);
    let problems = &page[page.find(r#"id="problems""#).expect("a problems section")..page.find(r#"id="waves""#).expect("a waves section")];
    for c in ["c042", "c003", "c017", "c020", "c077"] {
        assert!(problems.contains(&format!(">{c}<")), "{c} among the problems, before the waves: {problems}");
    }
    assert!(problems.contains("cannot fence the source: permission denied") && problems.contains("dmf resume c042"), "why and what to do: {problems}");
    assert_eq!(page.matches(r#"<tr data-phase="#).count(), 400, "every cluster in the table");
    assert!(!page.contains("10.0.0.1:5432") && !page.contains("migrator@"), "no connection string on the page");
    let metrics = http_get(port, "/metrics");
    assert!(metrics.contains(r#"dmf_migrations{fleet="big",wave="2",phase="replicating"} 50"#), "{metrics}");
    assert!(metrics.contains(r#"dmf_migrations_aborted{fleet="big",reason="schema_drift"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"dmf_replication_lag_seconds{fleet="big",cluster="c051"} 0.04"#), "{metrics}");
    let cluster = http_get(port, "/cluster/c042");
    assert!(cluster.contains("failed: waits for an operator") && cluster.contains("Event log"), "{cluster}");
    assert!(http_get(port, "/cluster/nope%3Cscript%3E").starts_with("HTTP/1.1 404"), "an unknown cluster");

    // hostile requests: another Host (DNS rebinding), a malformed action path, a forged notice,
    // actions while they are off, a header flood; the dashboard answers each and stays up
    let raw = |request: &[u8]| -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _ = s.write_all(request);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(raw(b"GET / HTTP/1.1\r\nhost: evil.example\r\n\r\n").starts_with("HTTP/1.1 421"));
    let host = format!("host: 127.0.0.1:{port}\r\n");
    assert!(raw(format!("POST /cluster/action HTTP/1.1\r\n{host}content-length: 0\r\n\r\n").as_bytes()).starts_with("HTTP/1.1 404"));
    let forged = http_get(port, "/cluster/c042?done=%3Cscript%3Ealert(1)%3C/script%3E");
    assert!(!forged.contains("<script>alert") && !forged.contains("Done:"), "{forged}");
    let body = "action=abort&token=x&confirm=c042";
    let off = raw(format!("POST /cluster/c042/action HTTP/1.1\r\n{host}content-length: {}\r\n\r\n{body}", body.len()).as_bytes());
    assert!(off.starts_with("HTTP/1.1 403"), "{off}");
    let mut flood = format!("GET / HTTP/1.1\r\n{host}x: ").into_bytes();
    flood.extend(std::iter::repeat_n(b'a', 32 * 1024));
    assert!(raw(&flood).starts_with("HTTP/1.1 431"));
    assert!(http_get(port, "/").contains("400 clusters"), "still serving");
    assert!(http_get(port, "/").contains("Content-Security-Policy: default-src 'self'"), "the page allows only its own scripts");
    assert_eq!(env.phase_of("c042"), "failed", "nothing acted");
}

/// Lag history ages: raw samples older than 15 minutes fold into one a minute (weighted
/// averages, the count kept), older than a day into one every ten minutes, and go after the
/// retention; recent ones stay raw.
#[test]
fn lag_history_is_downsampled_as_it_ages() {
    let env = Env::new("lag-history");
    env.cp_query(
        "INSERT INTO dmf.fleets (name, max_concurrent, max_per_source_host, breaker_threshold, manifest) VALUES ('f', 1, 1, 0.5, ''); \
         INSERT INTO dmf.waves (fleet, wave) VALUES ('f', 1); \
         INSERT INTO dmf.clusters (name, fleet, wave, source_dsn, source_host, provider) VALUES ('a', 'f', 1, 'postgres://x@h/d', 'h', 'local'); \
         INSERT INTO dmf.migrations (id, cluster, phase) VALUES ('00000000-0000-0000-0000-000000000001', 'a', 'replicating'); \
         INSERT INTO dmf.lag_samples (migration, at, lag_ms, lag_bytes, retained_bytes) \
         SELECT '00000000-0000-0000-0000-000000000001', date_trunc('minute', now() - interval '2 hours') + s * interval '10 seconds' + interval '1 ms', 10 * (s + 1), 100, 1000 * s \
         FROM generate_series(0, 5) s; \
         INSERT INTO dmf.lag_samples (migration, at, lag_ms) \
         SELECT '00000000-0000-0000-0000-000000000001', date_trunc('minute', now() - interval '3 days') + s * interval '1 minute' + interval '1 ms', 50 \
         FROM generate_series(0, 11) s; \
         INSERT INTO dmf.lag_samples (migration, at, lag_ms) VALUES ('00000000-0000-0000-0000-000000000001', now() - interval '30 days', 1), ('00000000-0000-0000-0000-000000000001', now() - interval '1 minute', 7)",
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = rt.block_on(dmf_db::Db::connect(&env.url)).expect("control plane");
    let folded = rt.block_on(db.downsample_lag(dmf_db::history::LagRetention::default())).expect("downsample");
    assert!(folded > 0);
    let rows = env.cp_query("SELECT string_agg(lag_ms || '/' || samples || '/' || coalesce(retained_bytes, -1), ' ' ORDER BY at) FROM dmf.lag_samples");
    // three days ago: 12 one-minute samples in two or three ten-minute buckets; two hours ago: six
    // samples in one minute (average 35 ms, most WAL 5000); a minute ago: raw; 30 days ago: gone
    let parts: Vec<&str> = rows.split(' ').collect();
    assert_eq!(parts.last(), Some(&"7/1/-1"), "{rows}");
    assert_eq!(parts[parts.len() - 2], "35/6/5000", "{rows}");
    let old: Vec<&&str> = parts[..parts.len() - 2].iter().collect();
    assert!((2..=3).contains(&old.len()) && old.iter().all(|p| p.starts_with("50/")), "{rows}");
    let counted: i64 = old.iter().map(|p| p.split('/').nth(1).and_then(|n| n.parse::<i64>().ok()).unwrap_or(0)).sum();
    assert_eq!(counted, 12, "every raw sample counted once: {rows}");
    // folding again changes nothing
    rt.block_on(db.downsample_lag(dmf_db::history::LagRetention::default())).expect("downsample");
    assert_eq!(env.cp_query("SELECT string_agg(lag_ms || '/' || samples || '/' || coalesce(retained_bytes, -1), ' ' ORDER BY at) FROM dmf.lag_samples"), rows);
}
