//! The CLI's output layer: the only place that prints. Logs go to stderr through tracing. Every
//! line printed and every log line goes through `dmf_db::secret::redact` first.

use std::io::Write;

use dmf_db::secret::redact;
use serde::Serialize;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_tracing(quiet: bool, format: LogFormat) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DMF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},sqlx=warn,tokio_postgres=warn,apalis=warn,apalis_postgres=warn,apalis_core=warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_writer(|| RedactedStderr { json: false }).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        // one object per line: the event's fields at the top level, the span's (an activity's
        // cluster, migration, phase and epoch) under "span"
        LogFormat::Json => builder.with_writer(|| RedactedStderr { json: true }).json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
}

/// Standard error with passwords taken out of what is written (tracing writes a whole event per
/// write, so a connection string is never split between two). A JSON line is redacted value by
/// value, before its escapes could cut a password in two.
struct RedactedStderr {
    json: bool,
}

impl Write for RedactedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let out = match serde_json::from_str::<serde_json::Value>(text.trim_end()) {
            Ok(mut v) if self.json => {
                redact_values(&mut v);
                format!("{v}\n")
            }
            _ => redact(&text),
        };
        std::io::stderr().lock().write_all(out.as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Every string in `v`, redacted.
fn redact_values(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => *s = redact(s),
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_values),
        serde_json::Value::Object(o) => o.values_mut().for_each(redact_values),
        _ => {}
    }
}

/// Print one JSON document on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", redact(&serde_json::to_string_pretty(value)?));
    Ok(())
}

pub fn line(text: &str) {
    println!("{}", redact(text));
}

pub fn error(json: bool, e: &anyhow::Error) {
    let text = redact(&format!("{e:#}"));
    if json {
        let doc = serde_json::json!({ "error": text });
        println!("{doc}");
    }
    eprintln!("error: {text}");
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
