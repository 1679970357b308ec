//! What the operator sees, end to end: `dmf dashboard` on a running migration, driven by headless
//! Chromium through the DevTools protocol (the page updates itself as the migration moves, the
//! cluster page charts lag and shows the cutover record), an operator's action behind a token,
//! the Prometheus metrics of a worker, the scheduler and the dashboard moving with the migration,
//! every metric the shipped Grafana dashboard queries being exported, `dmf report`, and
//! `--log-format json`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Headless Chromium driven over `--remote-debugging-pipe`: the DevTools protocol's JSON
/// messages, each ended by a NUL byte, on file descriptors 3 (to the browser) and 4 (from it).
struct Chrome {
    child: Child,
    to: std::process::ChildStdin,
    from: mpsc::Receiver<serde_json::Value>,
    next: u64,
    session: String,
}

impl Chrome {
    fn start(dir: &std::path::Path) -> Chrome {
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).expect("profile dir");
        let log = std::fs::File::create(dir.join("chromium.log")).expect("chromium log");
        // the shell hands its stdin and stdout to the browser as fds 3 and 4
        let script = format!(
            "exec 3<&0 4>&1 </dev/null >/dev/null; exec chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
             --no-first-run --remote-debugging-pipe --user-data-dir='{}' --window-size=1400,1000 about:blank",
            profile.display()
        );
        let mut child = Command::new("bash").args(["-c", &script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log).spawn().expect("start chromium (scripts/test.sh installs it)");
        let to = child.stdin.take().expect("pipe to chromium");
        let out = child.stdout.take().expect("pipe from chromium");
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut chrome = Chrome { child, to, from, next: 0, session: String::new() };
        let target = chrome.call("Target.createTarget", serde_json::json!({ "url": "about:blank" }), false);
        let id = target["targetId"].as_str().expect("target id").to_string();
        let attached = chrome.call("Target.attachToTarget", serde_json::json!({ "targetId": id, "flatten": true }), false);
        chrome.session = attached["sessionId"].as_str().expect("session id").to_string();
        chrome.call("Page.enable", serde_json::json!({}), true);
        chrome.call("Runtime.enable", serde_json::json!({}), true);
        chrome
    }

    fn call(&mut self, method: &str, params: serde_json::Value, in_page: bool) -> serde_json::Value {
        self.next += 1;
        let id = self.next;
        let mut msg = serde_json::json!({ "id": id, "method": method, "params": params });
        if in_page {
            msg["sessionId"] = serde_json::Value::String(self.session.clone());
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        self.to.flush().expect("flush to chromium");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.from.recv_timeout(left).unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({ "url": url }), true);
    }

    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self.call("Runtime.evaluate", serde_json::json!({ "expression": expression, "returnByValue": true }), true);
        r["result"]["value"].clone()
    }

    fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''").as_str().unwrap_or_default().to_string()
    }

    /// Wait until the page's text satisfies `ok`; returns it.
    fn wait_text(&mut self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if ok(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "the page never showed {what}:\n{text}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        let r = self.call("Page.captureScreenshot", serde_json::json!({ "format": "png", "captureBeyondViewport": true }), true);
        let png = base64_decode(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        // (DMF_SCREENSHOTS_DIR keeps a copy past the test's directory, to look at)
        if let (Ok(dir), Some(name)) = (std::env::var("DMF_SCREENSHOTS_DIR"), path.file_name()) {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(std::path::Path::new(&dir).join(name), &png);
        }
        std::fs::write(path, png).expect("save screenshot");
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// An HTTP request on loopback; (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).expect("request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("response");
    let status = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Sum of every series of `name` in a Prometheus text page, with `labels` among their labels.
fn sum_of(page: &str, name: &str, labels: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

fn wait_listening(port: u16, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(proc.is_alive() && Instant::now() < deadline, "not listening on {port}:\n{}", proc.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_dashboard_follows_a_migration_live_and_shows_its_cutover_record() {
    let env = Env::new("dashboard");
    let src = env.source("src");
    src.psql("postgres", "CREATE DATABASE app").expect("create app");
    run_ok(Command::new(pgbench_bin()).args(["-i", "-s", "1", "-q", "-d"]).arg(src.dsn("app")));
    let source = src.dsn("app");
    psql(&source, "ALTER TABLE pgbench_history REPLICA IDENTITY FULL; CREATE SEQUENCE ticket_seq; SELECT setval('ticket_seq', 4242)");
    psql(&source, APP_CLIENT_GRANTS);
    let out = env.enqueue("fleet.toml", &format!("[fleet]\nname = \"f\"\n\n[[cluster]]\nname = \"app\"\nsource = \"{source}\"\npause_before = [\"flipping\"]\n"));
    assert!(out.status.success(), "enqueue: {}", String::from_utf8_lossy(&out.stderr));

    let port = |_: &str| dmf_activities::providers::local::free_port().expect("port");
    let (worker_metrics, scheduler_metrics, dash) = (port("w"), port("s"), port("d"));
    let p1 = env.proxy("proxy-1", "app", &[]);
    let mut scheduler = env.spawn_dmf("scheduler", &["scheduler", "--metrics", &format!("127.0.0.1:{scheduler_metrics}")]);
    let mut worker = env.worker(
        "w1",
        &["--log-format", "json", "--metrics", &format!("127.0.0.1:{worker_metrics}"), "--audit-window-s", "2", "--shadow-reads-s", "2", "--soak-s", "600", "--flip-max-lag-ms", "50"],
    );
    let operators = env.path().join("operators");
    std::fs::write(&operators, "alice 0123456789abcdef0123456789\n").expect("operators file");
    let mut dashboard = env.spawn_dmf(
        "dashboard",
        &["dashboard", "--listen", &format!("127.0.0.1:{dash}"), "--allow-actions", "--operators", operators.to_str().expect("path"), "--refresh-ms", "300"],
    );
    wait_listening(dash, &mut dashboard);
    wait_listening(worker_metrics, &mut worker);
    wait_listening(scheduler_metrics, &mut scheduler);
    // the application's paced load, as its own role, through the proxy, across the flip
    let load = Bench::start(env.path(), "load", &p1.dsn("app"), &["-c", "2", "-j", "1", "-T", "150", "-R", "40"]);

    let mut chrome = Chrome::start(env.path());
    chrome.navigate(&format!("http://127.0.0.1:{dash}/"));
    chrome.wait_text("the fleet page", Duration::from_secs(30), |t| t.contains("Fleet") && t.contains("app"));
    let mut jobs_before = 0.0;
    env.wait_for("paused before the flip", Duration::from_secs(240), |cs| cs.first().is_some_and(|c| c["paused"] == true || matches!(c["phase"].as_str(), Some("failed" | "aborted"))));
    assert_eq!(env.clusters()[0]["paused"], true, "{}", worker.log_tail());
    let page = chrome.wait_text("the cluster paused before flipping", Duration::from_secs(30), |t| t.contains("paused before flipping"));
    assert!(page.contains("dmf resume app"), "the page says what to do: {page}");
    // nothing reloads the page from here: this survives only if it stays the same document
    chrome.eval("window.__sameDocument = 'yes'");
    chrome.screenshot(&env.path().join("fleet-paused.png"));

    // the metrics while paused
    let dash_metrics = http_get(dash, "/metrics");
    assert!(dash_metrics.contains("dmf_migrations{fleet=\"f\",wave=\"1\",phase=\"flipping\"} 1"), "{dash_metrics}");
    assert!(sum_of(&dash_metrics, "dmf_replication_lag_seconds", "cluster=\"app\"") >= 0.0 && dash_metrics.contains("dmf_replication_lag_seconds{fleet=\"f\",cluster=\"app\"}"), "{dash_metrics}");
    assert!(dash_metrics.contains("dmf_hydration_size_bytes{fleet=\"f\",cluster=\"app\"}"), "{dash_metrics}");
    let w = http_get(worker_metrics, "/metrics");
    jobs_before += sum_of(&w, "dmf_worker_jobs_total", "");
    assert!(sum_of(&w, "dmf_worker_jobs_total", "phase=\"hydrating\",outcome=\"done\"") >= 1.0, "{w}");
    assert!(sum_of(&w, "dmf_worker_activity_duration_seconds_count", "phase=\"replicating\"") >= 1.0, "{w}");
    assert!(sum_of(&http_get(scheduler_metrics, "/metrics"), "dmf_scheduler_migrations_started_total", "fleet=\"f\"") == 1.0);

    // an operator resumes it from the dashboard: a token and the cluster's name typed again
    let (status, body) = http(dash, "POST", "/cluster/app/action", "action=resume&token=wrong-token-wrong-token&confirm=app");
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("wrong-token"), "the token is not echoed: {body}");
    let (status, body) = http(dash, "POST", "/cluster/app/action", "action=resume&token=0123456789abcdef0123456789&confirm=ap");
    assert_eq!(status, 400, "{body}");
    assert_eq!(env.clusters()[0]["paused"], true, "refused actions changed nothing");
    let (status, body) = http(dash, "POST", "/cluster/app/action", "action=resume&token=0123456789abcdef0123456789&confirm=app");
    assert_eq!(status, 303, "{body}");
    assert!(!env.cp_query("SELECT string_agg(actor, ',') FROM dmf.events WHERE actor = 'dashboard:alice'").is_empty(), "the action is in the event log with the operator's name");

    // the same page, never reloaded, shows the next phase
    let page = chrome.wait_text("the cluster flipped, without a reload", Duration::from_secs(180), |t| t.contains("flipped"));
    assert_eq!(chrome.eval("window.__sameDocument"), "yes", "the page was reloaded: {page}");
    chrome.screenshot(&env.path().join("fleet-flipped.png"));
    assert_eq!(env.phase_of("app"), "flipped", "{}", worker.log_tail());

    // the metrics moved with the migration
    let dash_metrics = http_get(dash, "/metrics");
    assert!(dash_metrics.contains("dmf_migrations{fleet=\"f\",wave=\"1\",phase=\"flipped\"} 1"), "{dash_metrics}");
    assert!(dash_metrics.contains("dmf_flip_held_seconds{fleet=\"f\",cluster=\"app\"}"), "{dash_metrics}");
    let w = http_get(worker_metrics, "/metrics");
    assert!(sum_of(&w, "dmf_worker_jobs_total", "") > jobs_before, "{w}");
    assert!(sum_of(&w, "dmf_worker_jobs_total", "phase=\"flipping\",outcome=\"done\"") >= 1.0, "{w}");

    // the cluster page: lag chart, timeline, cutover record, the operator in the event log
    chrome.navigate(&format!("http://127.0.0.1:{dash}/cluster/app"));
    let page = chrome.wait_text("the cutover record", Duration::from_secs(30), |t| t.contains("flip MOVED"));
    let points = chrome.eval("(document.querySelector('#lag-chart path.line') || {getAttribute: () => ''}).getAttribute('d').split('L').length");
    assert!(points.as_u64().unwrap_or(0) >= 2, "the lag chart has a line: {points}\n{page}");
    assert!(chrome.eval("document.querySelectorAll('#timeline-chart rect.bar').length").as_u64().unwrap_or(0) >= 5, "the phase timeline");
    for want in ["Replication lag", "Phase timeline", "public.ticket_seq=4242", "proxies acknowledged (1)", "final LSN on the old primary", "replication back starts at", "audit at the gate", "longest client stall", "dashboard:alice"] {
        assert!(page.contains(want), "the cluster page shows {want:?}:\n{page}");
    }
    chrome.screenshot(&env.path().join("cluster.png"));

    // the same record for machines, and the fleet's roll-up
    let report = env.dmf_json(&["report", "app", "--json"]);
    let flip = &report["cutovers"][0];
    assert_eq!(flip["way"], "flip", "{report}");
    assert_eq!(flip["outcome"], "moved", "{report}");
    assert_eq!(flip["sequences"]["public.ticket_seq"], 4242, "{report}");
    assert_eq!(flip["proxies_acknowledged"].as_array().map(Vec::len), Some(1), "{report}");
    assert!(flip["worker"].as_str().is_some_and(|w| w.starts_with("w1")), "{report}");
    assert!(flip["final_lsn"].is_string() && flip["applied_lsn"].is_string() && flip["reverse_start_lsn"].is_string(), "{report}");
    assert!(flip["pause_ms"].as_f64().is_some_and(|p| p > 0.0) && flip["longest_stall_ms"].is_number(), "{report}");
    assert!(flip["audit_at_gate"]["rows_compared"].as_i64().unwrap_or(0) > 100_000, "pgbench scale 1 compared: {report}");
    assert!(flip["audit_at_gate"]["samples"].as_i64().unwrap_or(0) > 0, "{report}");
    let fleet = env.dmf_json(&["report", "--fleet", "f", "--json"]);
    assert_eq!(fleet["waves"][0]["flips_moved"], 1, "{fleet}");

    // every metric the shipped Grafana dashboard queries is exported by one of the processes
    let grafana: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/dmf-fleet.json")).expect("grafana json")).expect("grafana json parses");
    let exported = [http_get(dash, "/metrics"), http_get(worker_metrics, "/metrics"), http_get(scheduler_metrics, "/metrics"), http_get(p1.metrics_port, "/metrics")].join("\n");
    let mut queried = std::collections::BTreeSet::new();
    for panel in grafana["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for (i, _) in expr.match_indices("dmf_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                queried.insert(name.trim_end_matches("_bucket").to_string());
            }
        }
    }
    assert!(queried.len() >= 20, "{queried:?}");
    let missing: Vec<&String> = queried.iter().filter(|m| !exported.contains(&format!("# TYPE {m} "))).collect();
    assert!(missing.is_empty(), "the Grafana dashboard queries metrics nothing exports: {missing:?}");

    // the worker's JSON logs carry the activity's cluster, migration, phase and epoch
    let log = std::fs::read_to_string(env.path().join("w1.log")).expect("worker log");
    let with_span = log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find(|v| v["span"]["phase"] == "flipping" && v["span"]["cluster"] == "app");
    let line = with_span.unwrap_or_else(|| panic!("no JSON log line of the flip's activity:\n{}", worker.log_tail()));
    assert!(line["span"]["migration"].is_string() && line["span"]["epoch"].is_number() && line["timestamp"].is_string(), "{line}");

    let r = load.wait();
    assert!(r.ok && r.failed == 0 && r.processed > 0, "the application's load: {}", r.report);
}
