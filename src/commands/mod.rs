//! One module per command.

pub mod abort;
pub mod audit;
pub mod dashboard;
pub mod demo;
pub mod enqueue;
pub mod init;
pub mod report;
pub mod proxy;
pub mod resume;
pub mod rollback;
pub mod route;
pub mod scheduler;
pub mod status;
pub mod why;
pub mod worker;

/// The control-plane URL every command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlPlane {
    /// Control-plane PostgreSQL URL.
    #[arg(long = "database-url", env = "DMF_DATABASE_URL")]
    pub database_url: String,
}

impl ControlPlane {
    pub async fn connect(&self) -> anyhow::Result<dmf_db::Db> {
        let db = dmf_db::Db::connect(&self.database_url).await.map_err(|e| anyhow::anyhow!("cannot reach the control plane: {e}"))?;
        if !db.is_initialized().await? {
            anyhow::bail!("the control plane is not initialized: run `dmf init` first");
        }
        Ok(db)
    }
}

/// Who did it, for the event log.
pub fn actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// What an operator's request (abort, rollback) left the migration in, and what happens next.
pub fn report_request(m: &dmf_db::MigrationRow, json: bool, next: &str) -> anyhow::Result<()> {
    if json {
        crate::output::json(&serde_json::json!({ "cluster": m.cluster, "phase": m.phase, "epoch": m.epoch }))
    } else {
        crate::output::line(&format!("{}: {} ({next})", m.cluster, m.phase));
        Ok(())
    }
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}
