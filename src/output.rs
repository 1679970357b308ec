//! The CLI's output layer: the only place that prints. Logs go to stderr through tracing.

use serde::Serialize;

pub fn init_tracing(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DMF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},sqlx=warn,tokio_postgres=warn,apalis=warn,apalis_postgres=warn,apalis_core=warn")));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_target(false).try_init();
}

/// Print one JSON document on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn line(text: &str) {
    println!("{text}");
}

pub fn error(json: bool, e: &anyhow::Error) {
    if json {
        let doc = serde_json::json!({ "error": format!("{e:#}") });
        println!("{doc}");
    }
    eprintln!("error: {e:#}");
}

pub fn bytes(n: i64) -> String {
    let n = n as f64;
    for (unit, size) in [("GiB", 1024.0 * 1024.0 * 1024.0), ("MiB", 1024.0 * 1024.0), ("KiB", 1024.0)] {
        if n >= size {
            return format!("{:.1} {unit}", n / size);
        }
    }
    format!("{n} B")
}

pub fn duration(secs: f64) -> String {
    let s = secs.round() as i64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
