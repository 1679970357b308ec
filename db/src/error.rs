//! Errors of the control-plane layer.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("control plane: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("control plane migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("bad control-plane URL: {0}")]
    BadUrl(String),
    /// The control plane would get dmf's password in clear text without TLS (`tls`).
    #[error("control plane {0}")]
    Cleartext(String),
    /// The control plane refused the TLS probe's login attempt (a pg_hba entry missing, ...).
    #[error("control plane {0}")]
    Refused(String),
    /// The control plane did not answer the TLS probe (`tls`): down or unreachable.
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    #[error("queue: {0}")]
    Queue(String),
    #[error("no cluster named {0:?} in the control plane")]
    UnknownCluster(String),
    #[error("cluster {cluster:?} is in phase {phase}; {what}")]
    WrongPhase { cluster: String, phase: String, what: String },
    #[error("corrupt control-plane row: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
    /// A password reference this process cannot resolve (named, never a value).
    #[error("{0}")]
    Secret(String),
    /// The write was refused: its writer no longer holds the migration's lease for that epoch
    /// (it stalled past it, and another worker may have taken over).
    #[error("migration {migration}: {holder} no longer holds its lease for epoch {epoch}; the write was refused")]
    LeaseLost { migration: uuid::Uuid, holder: String, epoch: i64 },
}

impl Error {
    /// A connection-level failure: the control plane is down or unreachable; wait and retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Sql(e) => matches!(
                e,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)
            ) || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08"))),
            Error::Unreachable(_) => true,
            _ => false,
        }
    }
}
