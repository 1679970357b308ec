//! `dmf`: the command line. Parses arguments and calls the library crates; no business logic.

mod commands;
mod output;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dmf", version, about = "Data Migration Factory: move fleets of PostgreSQL clusters with zero downtime")]
#[command(long_about = "Data Migration Factory: move fleets of PostgreSQL clusters with zero downtime.\n\n\
Typical flow: `dmf init` once, `dmf enqueue fleet.toml`, then run `dmf scheduler` and any number of \
`dmf worker` processes, and watch with `dmf status --watch`. Every command reads the control plane \
from --database-url or DMF_DATABASE_URL. Try `dmf demo` for a throwaway end-to-end run.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs are written to standard error: `text` for people, `json` for log pipelines (one
    /// object per line; cluster, migration, phase and epoch as fields of the activity's span).
    #[arg(long, global = true, value_enum, default_value_t = output::LogFormat::Text, env = "DMF_LOG_FORMAT")]
    log_format: output::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the control-plane schema and the job queue (safe to repeat).
    Init(commands::init::Args),
    /// Register a fleet manifest: clusters and waves. Checks every source answers first.
    Enqueue(commands::enqueue::Args),
    /// Release waves under the fleet's concurrency limits and circuit breaker.
    Scheduler(commands::scheduler::Args),
    /// Run activities: claim jobs, run them, advance each migration's state machine.
    Worker(commands::worker::Args),
    /// The fleet at a glance (per wave and phase, aborted by reason, failed), then each cluster's
    /// phase, lag, hydration progress and last error; --problems, --wave, --phase filter.
    Status(commands::status::Args),
    /// Resume a failed or paused cluster, or close a fleet's circuit breaker.
    Resume(commands::resume::Args),
    /// Abort a cluster's migration and remove everything it created on both sides.
    Abort(commands::abort::Args),
    /// Move a flipped cluster's traffic back to its source, losing no write made on the target.
    Rollback(commands::rollback::Args),
    /// The data auditor's findings for a cluster; --full compares every row now.
    Audit(commands::audit::Args),
    /// The DAL sidecar: a PostgreSQL proxy that follows the cluster's route in the control plane.
    Proxy(commands::proxy::Args),
    /// Show or change the routes the proxies follow (hold, move, split reads, shadow traffic).
    Route(commands::route::Args),
    /// Throwaway local control plane and fleet: hydrate, replicate, report.
    Demo(commands::demo::Args),
    /// The fleet live in a browser: problems first, each cluster's timeline, lag, audit and
    /// cutover records; fleet gauges on /metrics; actions for named operators.
    Dashboard(commands::dashboard::Args),
    /// The evidence of each flip and rollback of a cluster, or of a fleet per wave.
    Report(commands::report::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json = cli.command.json();
    // The demo draws progress bars; its logs would tear them.
    output::init_tracing(json || matches!(cli.command, Command::Demo(_)), cli.log_format);
    // The proxy's own thread is its first relay thread, a single-threaded event loop like each
    // of the others it starts (`dmf_proxy::relay`).
    let mut builder = match &cli.command {
        Command::Proxy(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Init(a) => commands::init::run(a).await,
            Command::Enqueue(a) => commands::enqueue::run(a).await,
            Command::Scheduler(a) => commands::scheduler::run(a).await,
            Command::Worker(a) => commands::worker::run(a).await,
            Command::Status(a) => commands::status::run(a).await,
            Command::Resume(a) => commands::resume::run(a).await,
            Command::Abort(a) => commands::abort::run(a).await,
            Command::Rollback(a) => commands::rollback::run(a).await,
            Command::Audit(a) => commands::audit::run(a).await,
            Command::Demo(a) => commands::demo::run(a).await,
            Command::Proxy(a) => commands::proxy::run(a).await,
            Command::Route(a) => commands::route::run(a).await,
            Command::Dashboard(a) => commands::dashboard::run(a).await,
            Command::Report(a) => commands::report::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            output::error(json, &e);
            std::process::ExitCode::FAILURE
        }
    }
}

impl Command {
    fn json(&self) -> bool {
        match self {
            Command::Init(a) => a.json,
            Command::Enqueue(a) => a.json,
            Command::Status(a) => a.json,
            Command::Resume(a) => a.json,
            Command::Abort(a) => a.json,
            Command::Rollback(a) => a.json,
            Command::Audit(a) => a.json,
            Command::Demo(a) => a.json,
            Command::Route(a) => a.json(),
            Command::Report(a) => a.json,
            Command::Scheduler(_) | Command::Worker(_) | Command::Proxy(_) | Command::Dashboard(_) => false,
        }
    }
}
