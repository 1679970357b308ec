//! `dmf demo`: a throwaway local control plane and fleet, migrated end to end while a live TPC-B
//! workload reaches each cluster only through its proxy: hydration, audit, shadow reads, the flip,
//! then a report. Everything it creates is removed at the end.

mod report;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dmf_activities::providers::local::{self, Guard, LocalCluster};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::output;

/// Phases where the demo's story ends for a cluster.
const FINAL: &[&str] = &["flipped", "completed", "rolled_back", "aborted", "failed"];

#[derive(clap::Args)]
pub struct Args {
    /// Source clusters in the demo fleet (split over two waves).
    #[arg(long, default_value_t = 3)]
    pub clusters: usize,
    /// pgbench scale of each source (1 = 100k accounts).
    #[arg(long, default_value_t = 2)]
    pub scale: u32,
    /// Application clients per cluster, each connected through the cluster's proxy.
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// Pause between one client's transactions, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub pace_ms: u64,
    /// Reads go to the target for this long, with every guard quiet, before the flip.
    #[arg(long, default_value_t = 2.0)]
    pub shadow_reads_s: f64,
    /// Give up if the fleet has not flipped after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Serve the live dashboard here while the demo runs (open http://ADDR/ in a browser).
    #[arg(long, value_name = "ADDR")]
    pub dashboard: Option<std::net::SocketAddr>,
    /// With --dashboard: keep the flipped fleet (and its traffic) up this many seconds before
    /// the demo cleans up, so that the dashboard shows the end.
    #[arg(long, default_value_t = 20)]
    pub dashboard_linger_s: u64,
    #[arg(long)]
    pub json: bool,
}

/// The role the demo's application logs in as (not a superuser).
const APP_ROLE: &str = "bank";

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

/// One demo cluster: its source, its proxy and the application clients behind it.
struct Member {
    name: String,
    source: Guard,
    proxy: dmf_proxy::Handle,
    proxy_task: tokio::task::JoinHandle<()>,
    clients: Vec<tokio::task::JoinHandle<workload::Stats>>,
}

async fn demo(a: &Args, base: &std::path::Path, started: Instant) -> anyhow::Result<()> {
    let say = |s: &str| {
        if !a.json {
            output::line(s)
        }
    };
    say(&format!(
        "dmf demo: {} source clusters, pgbench scale {}, {} clients each through a proxy, under {}",
        a.clusters,
        a.scale,
        a.clients,
        base.display()
    ));
    let cp = LocalCluster::ephemeral(base, "control-plane", "")?;
    let url = cp.dsn("postgres");
    let db = dmf_db::Db::connect(&url).await?;
    db.init().await?;
    let dashboard_stop = CancellationToken::new();
    let _stop_dashboard = dashboard_stop.clone().drop_guard();
    if let Some(listen) = a.dashboard {
        let args = crate::commands::dashboard::Args {
            cp: crate::commands::ControlPlane { database_url: url.clone() },
            listen,
            allow_actions: false,
            operators: None,
            refresh_ms: 500,
        };
        let bound = crate::commands::dashboard::start(db.clone(), &args, dashboard_stop.clone()).await?;
        say(&format!("dashboard: http://{bound}/ (live while the demo runs)"));
    }
    let mut sources = Vec::new();
    // a fresh password per demo: the proxies hold it (their users file) to log the clients in
    let app_password = uuid::Uuid::new_v4().simple().to_string();
    let mut manifest = String::from("[fleet]\nname = \"demo\"\nmax_concurrent = 4\nmax_per_source_host = 2\n");
    for i in 1..=a.clusters.max(1) {
        let g = LocalCluster::ephemeral(base, &format!("source-{i}"), "")?;
        g.psql("postgres", "CREATE DATABASE app")?;
        pgbench_init(&g, a.scale)?;
        // pgbench_history has no key; preflight would (rightly) refuse to publish it. A serial key
        // also shows the flip copying sequences: after it, the target hands out the next values.
        g.psql("app", "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")?;
        // the application logs in as its own role, with only the grants it needs, as in
        // production: dmf makes it on the target with its password and privileges
        g.psql(
            "app",
            &format!(
                "CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{app_password}'; \
                 GRANT SELECT, UPDATE ON pgbench_accounts, pgbench_tellers, pgbench_branches TO {APP_ROLE}; \
                 GRANT INSERT ON pgbench_history TO {APP_ROLE}; GRANT USAGE ON SEQUENCE pgbench_history_hid_seq TO {APP_ROLE}"
            ),
        )?;
        let wave = if i <= a.clusters.div_ceil(2) { 1 } else { 2 };
        manifest.push_str(&format!("\n[[cluster]]\nname = \"demo-{i}\"\nsource = \"{}\"\nwave = {wave}\n", g.dsn("app")));
        sources.push(g);
    }
    let m = dmf_scheduler::Manifest::parse("demo.toml", &manifest)?;
    dmf_scheduler::enqueue(&db, &m, "demo", &dmf_aws::Clients::default()).await?;

    // The application side: a proxy per cluster (the sidecar) and clients that only know the proxy.
    let load_stop = CancellationToken::new();
    let mut members = Vec::new();
    for (i, source) in sources.into_iter().enumerate() {
        let name = format!("demo-{}", i + 1);
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let mut options = dmf_proxy::Options::new(&name, listen, &url);
        options.users.insert(APP_ROLE, &app_password);
        let proxy = dmf_proxy::Proxy::build(options).await.with_context(|| format!("start the proxy of {name}"))?;
        let addr = proxy.local_addr()?;
        let handle = proxy.handle();
        let span = tracing::info_span!("task", name = %format!("demo-proxy-{name}"));
        let task_name = name.clone();
        let proxy_task = tokio::spawn(
            async move {
                if let Err(e) = proxy.run().await {
                    tracing::error!(cluster = %task_name, error = %e, "the demo's proxy stopped");
                }
            }
            .instrument(span),
        );
        // the application logs in with its password, as it would to the server itself
        let mut login = tokio_postgres::Config::new();
        login.host(addr.ip().to_string()).port(addr.port()).dbname("app").user(APP_ROLE).password(app_password.as_str());
        let clients = (0..a.clients.max(1))
            .map(|c| {
                let seed = (i * 1000 + c + 1) as u64;
                let span = tracing::info_span!("task", name = %format!("demo-client-{name}-{c}"));
                tokio::spawn(workload::client(login.clone(), a.scale, seed, Duration::from_millis(a.pace_ms), load_stop.clone()).instrument(span))
            })
            .collect();
        members.push(Member { name, source, proxy: handle, proxy_task, clients });
    }
    say(&format!("sources ready, application traffic flowing through {} proxies; migrating the fleet", members.len()));

    let stop = CancellationToken::new();
    let mut opts = dmf_worker::Options::new(url.clone());
    opts.activities.local_base_dir = base.join("targets");
    opts.activities.fast_local_targets = true;
    opts.activities.watch_interval = Duration::from_millis(500);
    opts.activities.audit.window = Duration::from_secs(2);
    opts.activities.shadow_reads_for = Duration::from_secs_f64(a.shadow_reads_s.max(0.0));
    // the demo ends at flipped: the soak (and the cleanup after it) is for real fleets
    opts.activities.soak = Duration::from_secs(24 * 3600);
    opts.reconcile_interval = Duration::from_secs(5);
    let worker = tokio::spawn(dmf_worker::Worker::build(opts)?.run(stop.clone()));
    let scheduler = tokio::spawn(dmf_scheduler::Scheduler::new(db.clone(), "demo-scheduler".into(), Duration::from_millis(300)).run(stop.clone()));

    let outcome = watch(a, &db).await;
    if outcome.is_ok() {
        // a moment of traffic on the new primary before the books are closed
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if a.dashboard.is_some() {
        say(&format!("the fleet stays up {} s more for the dashboard", a.dashboard_linger_s));
        tokio::time::sleep(Duration::from_secs(a.dashboard_linger_s)).await;
    }
    load_stop.cancel();
    let gathered = gather(&db, &mut members).await;
    stop.cancel();
    let _ = worker.await;
    let _ = scheduler.await;
    for m in members {
        m.proxy.shutdown();
        let _ = m.proxy_task.await;
        drop(m.source);
    }
    // The targets the worker provisioned live under base/targets: `run` stops and removes them.
    drop(cp);
    let report = report::Report::new(gathered?, started.elapsed().as_secs_f64());
    if a.json {
        output::json(&report)?;
    } else {
        report.print();
    }
    outcome?;
    if !report.all_flipped || !report.all_consistent || report.client_errors > 0 {
        anyhow::bail!("the demo fleet did not end flipped and consistent with no client error: see the report above");
    }
    Ok(())
}

/// Each cluster's report, once its clients have stopped.
async fn gather(db: &dmf_db::Db, members: &mut [Member]) -> anyhow::Result<Vec<report::ClusterReport>> {
    let mut clusters = Vec::new();
    for m in members {
        let mut stats = workload::Stats::default();
        for c in m.clients.drain(..) {
            stats.merge(c.await.with_context(|| format!("a demo client of {} panicked", m.name))?);
        }
        let moved = m.proxy.metrics()["sessions_moved"].as_u64().unwrap_or(0);
        clusters.push(report::cluster(db, &m.name, stats, moved).await.with_context(|| format!("report on {}", m.name))?);
    }
    Ok(clusters)
}

/// Progress bars until every cluster has reached the end of the demo's story.
async fn watch(a: &Args, db: &dmf_db::Db) -> anyhow::Result<()> {
    let bars = MultiProgress::new();
    if a.json {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    let mut bar_of = std::collections::HashMap::new();
    let position = |p: &str| dmf_workflows::Phase::ALL.iter().position(|x| x.as_str() == p).unwrap_or(0) as f64;
    let end = position("flipped");
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
            let mut at = position(&r.phase).min(end);
            if r.phase == "hydrating" && r.bytes_total > 0 {
                at += (r.bytes_copied as f64 / r.bytes_total as f64).min(1.0);
            }
            if FINAL.contains(&r.phase.as_str()) {
                at = end;
            }
            bar.set_position((at / end * 1000.0) as u64);
            let lag = r.lag_ms.map(|l| format!(" lag {l} ms")).unwrap_or_default();
            bar.set_message(format!("{} {} copied{lag}", r.phase, output::bytes(r.bytes_copied)));
        }
        if !rows.is_empty() && rows.iter().all(|r| FINAL.contains(&r.phase.as_str())) {
            break Ok(());
        }
        if db.fleets().await?.iter().any(|f| f.breaker_open) && rows.iter().all(|r| r.phase == "pending" || FINAL.contains(&r.phase.as_str())) {
            break Err(anyhow::anyhow!("the circuit breaker opened: see the report below and `dmf status`"));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("the fleet did not flip within {}s", a.timeout));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for b in bar_of.values() {
        b.finish();
    }
    outcome
}
