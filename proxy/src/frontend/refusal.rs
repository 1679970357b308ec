//! Every error the proxy itself sends a client, with its SQLSTATE and its words, in one place.
//! Errors from a server pass through untouched; these are the proxy's own.

use std::fmt::Display;
use std::time::Duration;

use crate::protocol::build;
use crate::Error;

/// SQLSTATEs the proxy uses (PostgreSQL's errcodes).
mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const OUT_OF_MEMORY: &str = "53200";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
}

/// A FATAL ErrorResponse from the proxy: the client's connection ends after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    code: String,
    message: String,
}

impl Refusal {
    fn new(code: &str, message: impl Display) -> Refusal {
        Refusal { code: code.to_string(), message: format!("dmf proxy: {message}") }
    }

    /// The client broke the protocol.
    pub fn protocol(e: impl Display) -> Refusal {
        Refusal::new(sqlstate::PROTOCOL_VIOLATION, e)
    }

    /// A connection could not be opened for the client: the code says why (authentication,
    /// a hold or lost lease, the server's own refusal, or no server). What the server itself
    /// would have said (its refusal, a wrong password, a database it lacks) goes to the client in
    /// the server's words, as a direct connection gets them; the proxy's own reasons say so.
    pub fn connection(e: &Error) -> Refusal {
        let code = match e {
            Error::BackendRefused { code, message, .. } => return Refusal { code: code.clone(), message: message.clone() },
            Error::AuthFailed(user) => return Refusal { code: sqlstate::INVALID_PASSWORD.into(), message: format!("password authentication failed for user \"{user}\"") },
            Error::NoSuchDatabase(_) => return Refusal { code: sqlstate::INVALID_CATALOG_NAME.into(), message: e.to_string() },
            Error::TrustRefused { .. } | Error::AuthNotMirrored { .. } => sqlstate::INVALID_AUTHORIZATION,
            Error::LeaseLost | Error::HeldTooLong(_) => sqlstate::CANNOT_CONNECT_NOW,
            Error::Protocol(_) => sqlstate::PROTOCOL_VIOLATION,
            _ => sqlstate::CONNECTION_FAILURE,
        };
        Refusal::new(code, e)
    }

    /// A client without TLS where `--client-tls required`.
    pub fn tls_required() -> Refusal {
        Refusal::new(sqlstate::INVALID_AUTHORIZATION, "TLS is required (--client-tls required): connect with sslmode=require or stronger")
    }

    /// A large message stopped arriving while it held part of `--max-buffer-bytes`.
    pub fn message_stalled(bytes: usize, after: Duration) -> Refusal {
        Refusal::new(sqlstate::PROTOCOL_VIOLATION, format_args!("a {bytes}-byte message stopped arriving for {after:?}; the session is closed"))
    }

    /// More clients than `--max-client-conn`.
    pub fn too_many_clients(max: usize) -> Refusal {
        Refusal::new(sqlstate::TOO_MANY_CONNECTIONS, format_args!("too many clients already ({max}, --max-client-conn)"))
    }

    /// A message that would take the proxy's buffers past `--max-buffer-bytes`.
    pub fn buffer_full(message: usize, in_use: usize, cap: usize) -> Refusal {
        Refusal::new(
            sqlstate::OUT_OF_MEMORY,
            format_args!(
                "a {message}-byte message does not fit in the proxy's buffers ({in_use} of {cap} bytes in use, --max-buffer-bytes); the session is closed"
            ),
        )
    }

    /// The server the session was using sent bytes that are not the protocol.
    pub fn server_malformed(server: &str, e: impl Display) -> Refusal {
        Refusal::new(sqlstate::CONNECTION_FAILURE, format_args!("the server {server} sent a malformed message ({e}); the session is closed"))
    }

    /// The proxy ended the session: a hold deadline passed, or shutdown found it in a transaction.
    pub fn killed() -> Refusal {
        Refusal::new(sqlstate::ADMIN_SHUTDOWN, "session ended (a hold deadline passed or the proxy is shutting down)")
    }

    /// The proxy is shutting down and the session is at a transaction boundary.
    pub fn shutting_down() -> Refusal {
        Refusal::new(sqlstate::ADMIN_SHUTDOWN, "shutting down; reconnect")
    }

    /// The lease ran out inside a transaction: nothing more of it is sent anywhere.
    pub fn lease_lost() -> Refusal {
        Refusal::new(
            sqlstate::CANNOT_CONNECT_NOW,
            "the control plane has been unreachable for longer than the lease; the transaction was ended and nothing more is sent",
        )
    }

    /// A transaction waited at a hold (or without the lease) for longer than `timeout`.
    pub fn held_too_long(lease_ok: bool, timeout: Duration) -> Refusal {
        let why = if lease_ok { "traffic is held" } else { "the control plane is unreachable" };
        Refusal::new(sqlstate::CANNOT_CONNECT_NOW, format_args!("{why} for longer than {timeout:?}; reconnect later"))
    }

    /// The session holds state that cannot follow the database to `to`.
    pub fn cannot_move(to: &str, what: &str) -> Refusal {
        Refusal::new(
            sqlstate::ADMIN_SHUTDOWN,
            format_args!("the database moved to {to}; this session held state that cannot move ({what}) and was closed; reconnect"),
        )
    }

    /// The new primary did not take the session's login.
    pub fn new_primary_unreachable(to: &str, e: &Error) -> Refusal {
        Refusal::new(sqlstate::CONNECTION_FAILURE, format_args!("cannot reach the new primary {to}: {e}"))
    }

    /// The session's settings could not be restored on the new primary.
    pub fn not_restored(to: &str, e: &Error) -> Refusal {
        Refusal::new(sqlstate::CONNECTION_FAILURE, format_args!("could not restore this session on {to}: {e}"))
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    /// The ErrorResponse on the wire.
    pub fn message(&self) -> Vec<u8> {
        build::error("FATAL", &self.code, &self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_server_would_say_is_said_in_its_words_and_the_proxys_own_reasons_say_so() {
        let r = Refusal::connection(&Error::BackendRefused { endpoint: "db:5432/x".into(), code: "28000".into(), message: "role \"app\" does not exist".into() });
        assert_eq!(r.code(), "28000");
        let text = String::from_utf8_lossy(&r.message()).to_string();
        assert!(text.contains("Mrole \"app\" does not exist\0") && !text.contains("dmf proxy"), "the server's words: {text}");
        let r = Refusal::connection(&Error::NoSuchDatabase("nosuchdb".into()));
        assert_eq!((r.code(), String::from_utf8_lossy(&r.message()).contains("Mdatabase \"nosuchdb\" does not exist\0")), ("3D000", true));
        let r = Refusal::connection(&Error::AuthFailed("app".into()));
        assert_eq!((r.code(), String::from_utf8_lossy(&r.message()).contains("Mpassword authentication failed for user \"app\"\0")), ("28P01", true));
        assert_eq!(Refusal::connection(&Error::LeaseLost).code(), "57P03");
        assert!(String::from_utf8_lossy(&Refusal::connection(&Error::LeaseLost).message()).contains("dmf proxy: "));
        assert_eq!(Refusal::held_too_long(false, Duration::from_secs(30)).code(), "57P03");
    }
}
