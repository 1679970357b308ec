//! Provisioning: create the target (provider `local`: a cluster made with initdb, or a database on
//! a pool instance, `providers::pool`; `aws`: an Aurora cluster, `providers::aws`) or check the adopted one; either way the target's connection string
//! ends up in the migration's durable state.


use crate::error::Error;
use crate::providers::local::{self, LocalCluster, Options};
use crate::state::{LocalDir, LocalPort, Patch, TargetCreated, TargetDsn, TargetPassword};
use dmf_db::secret::PasswordRef;
use crate::{pg, Context, Provider};
use dmf_workflows::Outcome;

pub async fn run(ctx: &Context) -> Result<Outcome, Error> {
    let cluster = ctx.cluster().to_string();
    if let Some(dsn) = ctx.migration.target_dsn.as_deref() {
        // Adopted target: it must answer; nothing is created.
        pg::connect(dsn, &format!("target of {cluster}")).await?;
        return Ok(Outcome::Done);
    }
    match ctx.provider {
        Provider::Local => match crate::providers::pool::instance(ctx) {
            Some(instance) => crate::providers::pool::provision(ctx, instance).await,
            None => provision_local(ctx).await,
        },
        Provider::Aws => crate::providers::aws::provision(ctx).await,
    }
}

async fn provision_local(ctx: &Context) -> Result<Outcome, Error> {
    let m = &ctx.migration;
    // The port is chosen once and made durable before anything is created, so that a re-run finds
    // the same cluster.
    let port = match ctx.record::<LocalPort>()?.target_port {
        Some(p) => p,
        None => {
            let p = local::free_port()?;
            ctx.save(Patch::of(&LocalPort { target_port: Some(p) })).await?;
            p
        }
    };
    let dir = ctx.config.local_base_dir.join(format!("{}-{}", m.cluster, &m.id.simple().to_string()[..12]));
    // Outside --fast-local-targets dmf's role gets a generated password; the control plane keeps
    // where it is (a file in the target's directory), never the password.
    let passwords = !ctx.config.fast_local_targets;
    let opts = Options { dir: dir.clone(), port, fast: ctx.config.fast_local_targets, extra_conf: String::new(), passwords };
    let password = passwords.then(|| PasswordRef::File(LocalCluster { dir: dir.clone(), port }.password_file()));
    ctx.save(
        Patch::of(&LocalDir { target_dir: Some(dir.display().to_string()) })
            .and(&TargetCreated { target_created: true })
            .and(&TargetPassword { target_password: password.clone() }),
    )
    .await?;
    let c = tokio::task::spawn_blocking(move || -> Result<LocalCluster, Error> {
        let c = LocalCluster::create(&opts)?;
        c.start()?;
        Ok(c)
    })
    .await
    .map_err(|e| Error::Local(format!("provisioning task: {e}")))??;
    let dbname = pg::dbname(ctx.source_dsn())?;
    let admin_dsn = dmf_db::secret::login(&c.dsn("postgres"), password.as_ref(), "worker")
        .map_err(|why| Error::Local(format!("cluster {}: the target's password: {why}", m.cluster)))?;
    let admin = pg::connect(&admin_dsn, &format!("target of {}", m.cluster)).await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])
        .await
        .map_err(pg::err("look up target database"))?
        .is_some();
    if !exists {
        pg::exec(&admin, "create target database", &format!("CREATE DATABASE {}", pg::ident(&dbname))).await?;
    }
    let dsn = c.dsn(&dbname);
    ctx.save(Patch::of(&TargetDsn { target_dsn: Some(dsn) })).await?;
    tracing::info!(cluster = %m.cluster, migration = %m.id, dir = %dir.display(), port, "local target ready");
    Ok(Outcome::Done)
}
