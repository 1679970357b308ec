//! `dmf abort <cluster>`.

use super::ControlPlane;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// The cluster to abort.
    pub cluster: String,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    let m = db.request_abort(&a.cluster, &super::actor()).await?;
    if a.json {
        crate::output::json(&serde_json::json!({ "cluster": m.cluster, "phase": m.phase, "epoch": m.epoch }))
    } else {
        crate::output::line(&format!("{}: {} (a worker removes slot, publication and subscription)", m.cluster, m.phase));
        Ok(())
    }
}
