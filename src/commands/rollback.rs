//! `dmf rollback <cluster>`.

use super::ControlPlane;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// The cluster to move back to its source (flipped, or completed with reverse replication
    /// kept). A worker runs the flip in reverse: hold, fence the target, wait until the source has
    /// applied every write made on the target, copy sequences, route to the source, release.
    pub cluster: String,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = a.cp.connect().await?;
    let m = db.request_rollback(&a.cluster, &super::actor()).await?;
    super::report_request(&m, a.json, "a worker moves traffic back to the source; `dmf status` shows when it is there")
}
