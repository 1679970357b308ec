//! Errors of the activities, classified by what the state machine should do next.

use dmf_workflows::{AbortReason, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Postgres { what: String, #[source] source: tokio_postgres::Error },
    #[error("control plane: {0}")]
    Db(#[from] dmf_db::Error),
    #[error("{what}: {source}")]
    Io { what: String, #[source] source: std::io::Error },
    #[error("{command} failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("replication connection: {0}")]
    Replication(String),
    #[error("cancelled")]
    Cancelled,
    /// Something the next step needs is not there yet (a proxy cannot log in to the target, a
    /// proxy did not drain): the step is undone and tried again later.
    #[error("{0}")]
    NotReady(String),
    /// A guard tripped: abort the migration with this reason.
    #[error("{reason}: {detail}")]
    Abort { reason: AbortReason, detail: String },
    /// Retrying will not help; an operator must look.
    #[error("{0}")]
    NeedsOperator(String),
    #[error("local provider: {0}")]
    Local(String),
    /// An AWS call failed; retried when AWS says trying again can help (throttling, transient).
    #[error("cluster {cluster}: AWS {source}")]
    Aws { cluster: String, #[source] source: dmf_aws::Error },
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    fn aws_retryable(&self) -> bool {
        matches!(self, Error::Aws { source, .. } if source.is_retryable())
    }

    /// What the worker should do with this error.
    pub fn into_outcome(self) -> Outcome {
        match self {
            Error::Abort { reason, detail } => Outcome::Abort { reason, detail },
            Error::NeedsOperator(error) => Outcome::Fail { error },
            e @ Error::Aws { .. } if !e.aws_retryable() => Outcome::Fail { error: e.to_string() },
            other => Outcome::Retry { error: other.to_string() },
        }
    }
}

/// Render a tokio-postgres error with the server's message, which its Display hides.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}
