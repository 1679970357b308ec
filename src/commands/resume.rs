//! `dmf resume <cluster>` and `dmf resume --fleet <name>`.

use super::ControlPlane;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// The failed or paused cluster to resume.
    #[arg(required_unless_present = "fleet")]
    pub cluster: Option<String>,
    /// Close this fleet's circuit breaker so waves are released again.
    #[arg(long, conflicts_with = "cluster")]
    pub fleet: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    if let Some(fleet) = &a.fleet {
        db.close_breaker(fleet, &super::actor()).await?;
        return if a.json {
            crate::output::json(&serde_json::json!({ "fleet": fleet, "breaker_open": false }))
        } else {
            crate::output::line(&format!("fleet {fleet}: breaker closed"));
            Ok(())
        };
    }
    let cluster = a.cluster.unwrap_or_default();
    let m = db.resume(&cluster, &super::actor()).await?;
    if a.json {
        crate::output::json(&serde_json::json!({ "cluster": m.cluster, "phase": m.phase, "epoch": m.epoch }))
    } else {
        crate::output::line(&format!("{}: resumed in {}", m.cluster, m.phase));
        Ok(())
    }
}
