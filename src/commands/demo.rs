//! `dmf demo`: a throwaway local control plane and fleet, hydrated and replicating under a live
//! write workload, then a report. Everything it creates is removed at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dmf_activities::providers::local::{self, Guard, LocalCluster};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::output;

#[derive(clap::Args)]
pub struct Args {
    /// Source clusters in the demo fleet (split over two waves).
    #[arg(long, default_value_t = 3)]
    pub clusters: usize,
    /// pgbench scale of each source (1 = 100k accounts).
    #[arg(long, default_value_t = 2)]
    pub scale: u32,
    /// Give up if the fleet is not replicating after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ClusterReport {
    cluster: String,
    wave: i32,
    phase: String,
    rows_copied: i64,
    bytes_copied: i64,
    phase_seconds: Vec<(String, f64)>,
    lag_ms: Option<i64>,
    live_writes: i64,
    history_rows_source: i64,
    history_rows_target: i64,
    consistent: bool,
}

#[derive(Serialize)]
struct Report {
    clusters: Vec<ClusterReport>,
    all_replicating: bool,
    all_consistent: bool,
    seconds: f64,
}

fn pgbench_init(c: &LocalCluster, scale: u32) -> anyhow::Result<()> {
    let out = std::process::Command::new(local::program("pgbench")?)
        .args(["-i", "-q", "-s", &scale.to_string(), "-d"])
        .arg(c.dsn("app"))
        .output()
        .context("run pgbench -i")?;
    if !out.status.success() {
        anyhow::bail!("pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Inserts history rows on a source until stopped; returns how many it wrote.
async fn workload(dsn: String, stop: CancellationToken) -> anyhow::Result<i64> {
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut n = 0i64;
    while !stop.is_cancelled() {
        client
            .execute(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, $1, 1, now())",
                &[&((n % 1000) as i32 + 1)],
            )
            .await?;
        client.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = $1", &[&((n % 1000) as i32 + 1)]).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(n)
}

async fn count(dsn: &str, sql: &str) -> anyhow::Result<i64> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client.query_one(sql, &[]).await?.get(0))
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let base: PathBuf = std::env::temp_dir().join(format!("dmf-demo-{}", std::process::id()));
    local::prepare_dir(&base)?;
    let interrupted = super::shutdown_signal();
    let result = tokio::select! {
        r = demo(&a, &base, started) => r,
        // Dropping the demo drops its guards: the control plane and sources are removed.
        _ = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted; everything the demo created has been removed")),
    };
    // Targets the worker provisioned and the demo did not get to remove.
    local::stop_all_under(&base.join("targets"));
    let _ = std::fs::remove_dir_all(&base);
    result
}

async fn demo(a: &Args, base: &std::path::Path, started: Instant) -> anyhow::Result<()> {
    let say = |s: &str| {
        if !a.json {
            output::line(s)
        }
    };
    say(&format!("dmf demo: {} source clusters, pgbench scale {}, under {}", a.clusters, a.scale, base.display()));
    let cp = LocalCluster::ephemeral(base, "control-plane", "")?;
    let url = cp.dsn("postgres");
    let db = dmf_db::Db::connect(&url).await?;
    db.init().await?;
    let mut sources: Vec<Guard> = Vec::new();
    let mut manifest = String::from("[fleet]\nname = \"demo\"\nmax_concurrent = 4\nmax_per_source_host = 2\n");
    for i in 1..=a.clusters.max(1) {
        let g = LocalCluster::ephemeral(base, &format!("source-{i}"), "")?;
        g.psql("postgres", "CREATE DATABASE app")?;
        pgbench_init(&g, a.scale)?;
        // pgbench_history has no key; preflight would (rightly) refuse to publish it.
        g.psql("app", "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")?;
        let wave = if i <= a.clusters.div_ceil(2) { 1 } else { 2 };
        manifest.push_str(&format!("\n[[cluster]]\nname = \"demo-{i}\"\nsource = \"{}\"\nwave = {wave}\n", g.dsn("app")));
        sources.push(g);
    }
    say("sources ready; enqueueing the fleet");
    let m = dmf_scheduler::Manifest::parse("demo.toml", &manifest)?;
    dmf_scheduler::enqueue(&db, &m, "demo").await?;

    let stop = CancellationToken::new();
    let mut opts = dmf_worker::Options::new(url.clone());
    opts.activities.local_base_dir = base.join("targets");
    opts.activities.fast_local_targets = true;
    opts.activities.watch_interval = Duration::from_millis(500);
    opts.reconcile_interval = Duration::from_secs(5);
    let worker = tokio::spawn(dmf_worker::Worker::build(opts)?.run(stop.clone()));
    let scheduler = tokio::spawn(dmf_scheduler::Scheduler::new(db.clone(), "demo-scheduler".into(), Duration::from_millis(300)).run(stop.clone()));
    let load_stop = CancellationToken::new();
    let loads: Vec<_> = sources.iter().map(|s| tokio::spawn(workload(s.dsn("app"), load_stop.clone()))).collect();

    let bars = MultiProgress::new();
    if a.json {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    let mut bar_of = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let outcome = loop {
        let rows = db.status(None).await?;
        for r in &rows {
            let bar = bar_of.entry(r.cluster.clone()).or_insert_with(|| {
                let b = bars.add(ProgressBar::new(1000));
                b.set_style(style.clone());
                b.set_prefix(r.cluster.clone());
                b
            });
            let frac = match r.phase.as_str() {
                "replicating" | "validating" | "shadow_reads" => 1.0,
                "hydrating" if r.bytes_total > 0 => 0.4 + 0.6 * (r.bytes_copied as f64 / r.bytes_total as f64).min(1.0),
                p => dmf_workflows::Phase::ALL.iter().position(|x| x.as_str() == p).unwrap_or(0) as f64 * 0.08,
            };
            bar.set_position((frac * 1000.0) as u64);
            let lag = r.lag_ms.map(|l| format!(" lag {l} ms")).unwrap_or_default();
            bar.set_message(format!("{} {} copied{lag}", r.phase, output::bytes(r.bytes_copied)));
        }
        if rows.iter().all(|r| matches!(r.phase.as_str(), "replicating" | "validating" | "shadow_reads" | "aborted" | "failed")) {
            break Ok(());
        }
        let breaker_open = db.fleets().await?.iter().any(|f| f.breaker_open);
        if breaker_open && rows.iter().all(|r| matches!(r.phase.as_str(), "pending" | "replicating" | "validating" | "shadow_reads" | "aborted" | "failed")) {
            break Err(anyhow::anyhow!("the circuit breaker opened: see the report above and `dmf status`"));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("the fleet did not reach replicating within {}s", a.timeout));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Let replication run under the live workload for a moment, then stop writing.
    if outcome.is_ok() {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    load_stop.cancel();
    let mut writes = Vec::new();
    for l in loads {
        writes.push(l.await.ok().and_then(|r| r.ok()).unwrap_or(0));
    }
    for b in bar_of.values() {
        b.finish();
    }

    let mut clusters = Vec::new();
    for (i, s) in db.status(None).await?.into_iter().enumerate() {
        let m = db.migration_by_cluster(&s.cluster).await?;
        let entries = db.phase_entries(m.id).await?;
        let mut phase_seconds = Vec::new();
        for w in entries.windows(2) {
            phase_seconds.push((w[0].0.clone(), (w[1].1 - w[0].1).num_milliseconds() as f64 / 1000.0));
        }
        let src = &sources[i.min(sources.len() - 1)];
        let sql = "SELECT count(*) FROM pgbench_history";
        let source_rows = count(&src.dsn("app"), sql).await?;
        let mut target_rows = -1;
        if let Some(t) = m.state_str("target_dsn") {
            // The last writes need a moment to arrive.
            for _ in 0..100 {
                target_rows = count(t, sql).await.unwrap_or(-1);
                if target_rows == source_rows {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        clusters.push(ClusterReport {
            cluster: s.cluster.clone(),
            wave: s.wave,
            phase: s.phase.clone(),
            rows_copied: s.rows_copied,
            bytes_copied: s.bytes_copied,
            phase_seconds,
            lag_ms: s.lag_ms,
            live_writes: writes.get(i).copied().unwrap_or(0),
            history_rows_source: source_rows,
            history_rows_target: target_rows,
            consistent: source_rows == target_rows,
        });
    }
    stop.cancel();
    let _ = worker.await;
    let _ = scheduler.await;
    // The targets the worker provisioned live under base/targets: `run` stops and removes them.
    let report = Report {
        all_replicating: clusters.iter().all(|c| matches!(c.phase.as_str(), "replicating" | "validating" | "shadow_reads")),
        all_consistent: clusters.iter().all(|c| c.consistent),
        clusters,
        seconds: started.elapsed().as_secs_f64(),
    };
    drop(sources);
    drop(cp);
    outcome?;
    if a.json {
        output::json(&report)?;
    } else {
        output::line("");
        output::line(&format!("{:<10} {:<12} {:>10} {:>10} {:>8} {:>12}  {}", "CLUSTER", "PHASE", "ROWS", "BYTES", "LAG", "LIVE WRITES", "SOURCE = TARGET"));
        for c in &report.clusters {
            output::line(&format!(
                "{:<10} {:<12} {:>10} {:>10} {:>8} {:>12}  {} ({} = {})",
                c.cluster,
                c.phase,
                c.rows_copied,
                output::bytes(c.bytes_copied),
                c.lag_ms.map(|l| format!("{l} ms")).unwrap_or_default(),
                c.live_writes,
                if c.consistent { "yes" } else { "NO" },
                c.history_rows_source,
                c.history_rows_target
            ));
            let phases: Vec<String> = c.phase_seconds.iter().map(|(p, s)| format!("{p} {s:.1}s")).collect();
            output::line(&format!("           {}", phases.join(", ")));
        }
        output::line(&format!("demo finished in {:.1}s; everything it created has been removed", report.seconds));
    }
    if !report.all_replicating || !report.all_consistent {
        anyhow::bail!("the demo fleet did not end replicating and consistent");
    }
    Ok(())
}
