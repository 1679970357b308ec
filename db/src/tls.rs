//! TLS of the control-plane connection: never a clear-text password over a connection without it.
//!
//! sqlx under `sslmode=prefer` (the default) answers a server's request for a clear-text password
//! even when the server offered no TLS. dmf's rule for every connection is that such a password
//! goes only over TLS, or where the URL says `sslmode=disable`. So a control-plane URL that
//! prefers TLS and reaches the server over TCP starts its pool requiring TLS (nothing can leak),
//! and the first time the server answers, a probe that sends no password settles it
//! (`dmf_pgconn::tls::mode_for_libpq`): TLS offered, the pool keeps requiring it; not offered and
//! the server asks for SCRAM, MD5 or nothing, the pool goes on without TLS, as `prefer` means;
//! a clear-text request is an error that says so. The decision is made once per process: a server
//! whose authentication changes later is met by the next process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::Error;

/// How long the probe may take to connect and read the server's answers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool's pending decision between `require` and `prefer`.
pub(crate) struct Probe {
    /// Where the probe connects, as whom.
    server: tokio_postgres::Config,
    /// The pool's options without TLS required, for a server that offers none.
    prefer: PgConnectOptions,
    settled: AtomicBool,
}

/// The options a pool starts with for `opts`, and the probe that settles them when `prefer` must
/// be decided.
pub(crate) fn plan(opts: PgConnectOptions) -> (PgConnectOptions, Option<Probe>) {
    let host = opts.get_host().to_string();
    // (sqlx's `allow` goes without TLS at all: decided like `prefer`; a Unix socket is local)
    let undecided = matches!(opts.get_ssl_mode(), PgSslMode::Prefer | PgSslMode::Allow);
    if !undecided || host.starts_with('/') || opts.get_socket().is_some() {
        return (opts, None);
    }
    let mut server = tokio_postgres::Config::new();
    server.host(&host).port(opts.get_port()).user(opts.get_username());
    if let Some(db) = opts.get_database() {
        server.dbname(db);
    }
    let probe = Probe { server, prefer: opts.clone().ssl_mode(PgSslMode::Prefer), settled: AtomicBool::new(false) };
    (opts.ssl_mode(PgSslMode::Require), Some(probe))
}

/// SQLSTATEs of a server that cannot take a connection now (starting, shutting down, full).
fn unavailable(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || code == "53300"
}

impl std::fmt::Debug for Probe {
    // (the options hold the password)
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("server", &format_args!("{}:{}", self.prefer.get_host(), self.prefer.get_port())).field("settled", &self.settled).finish()
    }
}

impl Probe {
    /// Decide, once: `Some(options)` when the pool must go on without TLS from now on.
    pub(crate) async fn settle(&self) -> Result<Option<PgConnectOptions>, Error> {
        if self.settled.load(Ordering::Acquire) {
            return Ok(None);
        }
        let label = format!("{}:{}", self.prefer.get_host(), self.prefer.get_port());
        let next = match dmf_pgconn::tls::mode_for_libpq(&self.server, PROBE_TIMEOUT).await {
            Ok(dmf_pgconn::tls::SslMode::Require) => None,
            Ok(_) => Some(self.prefer.clone()),
            Err(dmf_pgconn::Error::CleartextRefused) => return Err(Error::Cleartext(format!("{label}: {}", dmf_pgconn::tls::CLEARTEXT_REFUSED))),
            // the server answered, and refused: no waiting makes that go away
            Err(dmf_pgconn::Error::Server(e)) if !unavailable(&e.code) => return Err(Error::Refused(format!("{label}: {e}"))),
            Err(e) => return Err(Error::Unreachable(format!("{label}: {e}"))),
        };
        self.settled.store(true, Ordering::Release);
        Ok(next)
    }
}
