//! `dmf enqueue fleet.toml`.

use super::ControlPlane;

#[derive(clap::Args)]
#[command(after_help = "Manifest format (TOML):\n\n  [fleet]\n  name = \"payments\"\n  max_concurrent = 10        # clusters in flight at once\n  max_per_source_host = 2    # per source host\n  breaker_threshold = 0.2    # stop releasing waves above this failure rate\n\n  [[cluster]]\n  name = \"orders\"\n  source = \"postgres://user:pw@db1:5432/orders\"\n  wave = 1\n  # target = \"postgres://...\"   adopt an existing target instead of provisioning one\n  # provider = \"local\"\n  # pause_before = [\"hydrating\"]  wait for `dmf resume` before entering these phases\n")]
pub struct Args {
    #[command(flatten)]
    cp: ControlPlane,
    /// The fleet manifest.
    pub manifest: std::path::PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let file = a.manifest.display().to_string();
    let text = std::fs::read_to_string(&a.manifest).map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?;
    let manifest = dmf_scheduler::Manifest::parse(&file, &text)?;
    let db = a.cp.connect().await?;
    let ids = dmf_scheduler::enqueue(&db, &manifest, &super::actor()).await?;
    let clusters: Vec<_> = manifest
        .fleet
        .clusters
        .iter()
        .zip(&ids)
        .map(|(c, id)| serde_json::json!({ "cluster": c.name, "wave": c.wave, "migration": id }))
        .collect();
    if a.json {
        crate::output::json(&serde_json::json!({ "fleet": manifest.fleet.name, "clusters": clusters }))
    } else {
        crate::output::line(&format!("fleet {}: {} clusters enqueued", manifest.fleet.name, ids.len()));
        Ok(())
    }
}
