//! `dmf scheduler`.

use std::time::Duration;

use super::ControlPlane;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// Seconds between passes.
    #[arg(long, default_value_t = dmf_scheduler::DEFAULT_INTERVAL.as_secs_f64())]
    pub interval: f64,
    /// Serve Prometheus metrics on this address (`GET /metrics`): passes, waves released,
    /// clusters started, breakers opened, control-plane errors.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    let name = format!("scheduler-{}", std::process::id());
    let s = dmf_scheduler::Scheduler::new(db, name, Duration::from_secs_f64(a.interval.max(0.05)));
    let shutdown = super::shutdown_signal();
    if let Some(addr) = a.metrics {
        let bound = dmf_telemetry::serve_metrics(addr, s.metrics(), shutdown.clone()).await?;
        tracing::info!(%bound, "serving metrics");
    }
    s.run(shutdown).await?;
    Ok(())
}
