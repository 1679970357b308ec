//! `dmf route show | set`: the routes the DAL proxies follow, and the proxies following them.

use std::time::Duration;

use dmf_db::secret::redact;

use super::ControlPlane;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Routes and their proxies: applied epoch, heartbeat, held, shadow divergences.
    Show(ShowArgs),
    /// Change a cluster's route and bump its epoch; --wait-ms waits until every live proxy applied it.
    #[command(long_about = "Change a cluster's route and bump its epoch. Live proxies apply it at each \
session's next transaction boundary. --hold makes them hold new transactions (after in-flight ones \
finish) until a later change with --release; a move is usually --hold, then --primary NEW --release.\n\n\
Example: dmf route set orders --hold --wait-ms 2000 && dmf route set orders --primary postgres://app@new:5432/orders --release")]
    Set(SetArgs),
}

#[derive(clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    cp: ControlPlane,
    /// One cluster (all by default).
    cluster: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SetArgs {
    #[command(flatten)]
    cp: ControlPlane,
    cluster: String,
    /// Where writes (and, in mode primary, everything) go.
    #[arg(long)]
    primary: Option<String>,
    /// Where read-only statements go in mode split_reads.
    #[arg(long)]
    read: Option<String>,
    /// primary | split_reads
    #[arg(long)]
    mode: Option<String>,
    /// Hold new transactions at their boundary.
    #[arg(long, conflicts_with = "release")]
    hold: bool,
    /// Lift a hold.
    #[arg(long)]
    release: bool,
    /// How long a hold lets in-flight transactions finish before ending them.
    #[arg(long)]
    hold_deadline_ms: Option<i32>,
    /// Mirror statements to this endpoint (always rolled back).
    #[arg(long, conflicts_with = "no_shadow")]
    shadow: Option<String>,
    /// Stop mirroring.
    #[arg(long)]
    no_shadow: bool,
    /// Fraction (0..1) of autocommit statements to mirror.
    #[arg(long)]
    shadow_fraction: Option<f64>,
    /// Wait until every live proxy of the cluster has applied the new epoch.
    #[arg(long)]
    wait_ms: Option<u64>,
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn json(&self) -> bool {
        match &self.verb {
            Verb::Show(a) => a.json,
            Verb::Set(a) => a.json,
        }
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.verb {
        Verb::Show(s) => show(s).await,
        Verb::Set(s) => set(s).await,
    }
}

async fn show(a: ShowArgs) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    let routes = match &a.cluster {
        Some(c) => vec![db.route(c).await?.ok_or_else(|| anyhow::anyhow!("no route for cluster {c:?}"))?],
        None => db.routes().await?,
    };
    let proxies = db.proxies(a.cluster.as_deref()).await?;
    if a.json {
        return crate::output::json(&serde_json::json!({ "routes": routes, "proxies": proxies }));
    }
    for r in &routes {
        crate::output::line(&format!(
            "{}  epoch {}  mode {}{}  primary {}  read {}{}",
            r.cluster,
            r.route_epoch,
            r.mode,
            if r.hold { "  HOLD" } else { "" },
            redact(&r.primary_endpoint),
            redact(&r.read_endpoint),
            r.shadow_endpoint.as_ref().map(|s| format!("  shadow {} ({:.1}%)", redact(s), r.shadow_fraction * 100.0)).unwrap_or_default()
        ));
        for p in proxies.iter().filter(|p| p.cluster == r.cluster && p.state != "stopped") {
            let shadow = &p.stats["shadow"];
            crate::output::line(&format!(
                "  proxy {} on {} pid {}: {} applied {}{}{}  sessions {}  tx {}  shadow mirrored {} divergences {} latency ratio {}",
                p.listen,
                p.host,
                p.pid,
                if p.alive { p.state.as_str() } else { "LEASE EXPIRED" },
                p.applied_epoch,
                if p.applied_epoch < r.route_epoch { " (behind)" } else { "" },
                if p.held { " held" } else { "" },
                p.stats["connections_active"],
                p.stats["transactions_total"],
                shadow["mirrored"],
                shadow["divergences"],
                shadow["latency_ratio"].as_f64().map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into()),
            ));
        }
    }
    Ok(())
}

/// How long a hold waits for every proxy to read the epoch that wakes it (a quiet proxy reads its
/// route every 4 s).
const WAKE_WAIT: Duration = Duration::from_secs(8);

async fn set(a: SetArgs) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    if let Some(f) = a.shadow_fraction {
        anyhow::ensure!((0.0..=1.0).contains(&f), "--shadow-fraction must be between 0 and 1, got {f}");
    }
    for dsn in [&a.primary, &a.read, &a.shadow].into_iter().flatten() {
        dmf_proxy::backend::Endpoint::parse(dsn)?;
    }
    let change = dmf_db::route::RouteChange {
        primary: a.primary,
        read: a.read,
        mode: a.mode,
        hold: if a.hold { Some(true) } else if a.release { Some(false) } else { None },
        hold_deadline_ms: a.hold_deadline_ms,
        shadow_endpoint: if a.no_shadow { Some(None) } else { a.shadow.map(Some) },
        shadow_fraction: a.shadow_fraction,
        ..Default::default()
    };
    if change.hold == Some(true) {
        // A proxy whose route was quiet polls it every few seconds instead of listening (see
        // dmf-proxy's router::control). A new epoch first gets every proxy listening, so that the
        // hold reaches them all at once; one that does not answer is named by the hold's wait.
        if let Err(e) = db.wake_proxies(&a.cluster, &super::actor(), WAKE_WAIT).await {
            tracing::warn!(cluster = %a.cluster, error = %e, "not every proxy answered before the hold");
        }
    }
    let row = db.change_route(&a.cluster, &change, &super::actor()).await?;
    let applied = match a.wait_ms {
        Some(ms) => Some(db.wait_route_applied(&a.cluster, row.route_epoch, Duration::from_millis(ms)).await?),
        None => None,
    };
    if a.json {
        return crate::output::json(&serde_json::json!({ "route": row, "applied_by": applied.as_ref().map(|p| p.len()) }));
    }
    let applied = applied.map(|p| format!("; applied by {} live prox{}", p.len(), if p.len() == 1 { "y" } else { "ies" })).unwrap_or_default();
    crate::output::line(&format!("{}: route epoch {}{}{}", row.cluster, row.route_epoch, if row.hold { " (holding)" } else { "" }, applied));
    Ok(())
}
