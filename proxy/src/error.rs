//! The proxy's error type: what went wrong with a client, a backend or the control plane.

use crate::protocol;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client broke the protocol; it gets an ErrorResponse and the connection is closed.
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A backend could not be reached or refused us; the client sees it as a connection failure.
    #[error("backend {endpoint}: {message}")]
    Backend { endpoint: String, message: String },
    /// The backend answered with an ErrorResponse during startup or a replay.
    #[error("backend {endpoint} refused: {message} (SQLSTATE {code})")]
    BackendRefused { endpoint: String, code: String, message: String },
    #[error("authentication failed for user \"{0}\"")]
    AuthFailed(String),
    /// The client asked for a database the route does not serve: through this proxy, it does
    /// not exist (as PostgreSQL says of a database it lacks).
    #[error("database \"{0}\" does not exist")]
    NoSuchDatabase(String),
    /// A client message would take the buffers of all sessions past `--max-buffer-bytes`.
    #[error("a {message}-byte message does not fit in the proxy's buffers ({in_use} of {cap} bytes in use)")]
    BufferFull { message: usize, in_use: usize, cap: usize },
    /// A large message stopped arriving (`limits::MESSAGE_STALL`) while holding this many bytes.
    #[error("a {0}-byte message stopped arriving; the session was closed")]
    MessageStalled(usize),
    /// The client did not finish logging in within `--auth-timeout-s`.
    #[error("authentication did not finish within {0:?} (--auth-timeout-s)")]
    AuthTimeout(std::time::Duration),
    /// `--client-auth trust` does not admit this client.
    #[error("trust does not admit user \"{user}\": {why}")]
    TrustRefused { user: String, why: &'static str },
    /// `--client-auth server`: the server asks this user for a method the proxy cannot ask of
    /// the client in its place (GSSAPI, SSPI, ...).
    #[error("the server asks user \"{user}\" for authentication of type {code}, which the proxy cannot ask of the client in its place; run the proxy with --client-auth scram")]
    AuthNotMirrored { user: String, code: i32 },
    #[error("tls: {0}")]
    Tls(String),
    #[error("bad endpoint {0:?}: {1}")]
    BadEndpoint(String, String),
    #[error("control plane: {0}")]
    ControlPlane(#[from] dmf_db::Error),
    #[error("control plane: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("no route for cluster {0:?}: enqueue it with `dmf enqueue` first")]
    NoRoute(String),
    #[error("users file {path}: line {line}: {message}")]
    UsersFile { path: String, line: usize, message: String },
    #[error("{0}")]
    Config(String),
    /// No heartbeat reached the control plane within the lease: nothing may be sent anywhere.
    #[error("the control plane has been unreachable for longer than the lease")]
    LeaseLost,
    /// A transaction waited at a hold (or without a lease) for longer than the hold timeout.
    #[error("held for longer than {0:?}")]
    HeldTooLong(std::time::Duration),
    /// The proxy ended the session on purpose (hold deadline, shutdown, state that cannot move).
    #[error("session closed by the proxy: {0}")]
    Closed(String),
}

impl Error {
    pub fn backend(endpoint: &str, message: impl std::fmt::Display) -> Error {
        Error::Backend { endpoint: endpoint.to_string(), message: message.to_string() }
    }
}
