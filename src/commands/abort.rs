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
    super::report_request(&m, a.json, "a worker removes slot, publication and subscription")
}
