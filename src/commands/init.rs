//! `dmf init`.

use super::ControlPlane;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let db = dmf_db::Db::connect(&a.cp.database_url).await.map_err(|e| anyhow::anyhow!("cannot reach the control plane: {e}"))?;
    db.init().await?;
    if a.json {
        crate::output::json(&serde_json::json!({ "initialized": true }))
    } else {
        crate::output::line("control plane ready");
        Ok(())
    }
}
