//! Errors of AWS calls, classified by what the caller should do: retry later (throttling, a
//! transient service error, no answer) or stop and show the AWS error code to an operator.

use aws_sdk_rds::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service answered with an error. `code` is AWS's error code (`ThrottlingException`,
    /// `InvalidParameterCombination`, ...) or `HTTP <status>` when the answer carried none.
    #[error("{operation}: {code}: {message}")]
    Service { operation: &'static str, code: String, message: String, retryable: bool },
    /// No usable answer: connection refused, timed out, or a response that could not be read.
    #[error("{operation}: {message}")]
    Transport { operation: &'static str, message: String },
    /// The request could not be built or the configuration is unusable (no region, a bad value).
    #[error("{0}")]
    Config(String),
    /// What exists under dmf's identifier is not something dmf can adopt, or what the manifest
    /// names does not exist.
    #[error("{0}")]
    Conflict(String),
}

/// Error codes the SDK's standard retry strategy treats as throttling.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Error codes of a passing fault on AWS's side.
const TRANSIENT: &[&str] = &["RequestTimeout", "RequestTimeoutException", "InternalFailure", "InternalError", "ServiceUnavailable"];

impl Error {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Service { retryable, .. } => *retryable,
            Error::Transport { .. } => true,
            Error::Config(_) | Error::Conflict(_) => false,
        }
    }

    /// AWS's error code, when the service gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The resource asked for does not exist (`DBClusterNotFoundFault`, `ResourceNotFoundFault`...).
    pub fn is_not_found(&self) -> bool {
        self.code().is_some_and(|c| c.contains("NotFound"))
    }

    /// A create found the identifier taken (`DBClusterAlreadyExistsFault`, `ResourceAlreadyExistsFault`...).
    pub fn is_already_exists(&self) -> bool {
        self.code().is_some_and(|c| c.contains("AlreadyExists"))
    }

    /// The resource is busy changing state (`InvalidDBClusterStateFault`, `InvalidResourceStateFault`):
    /// the same call can succeed once it settles.
    pub fn is_invalid_state(&self) -> bool {
        self.code().is_some_and(|c| c.starts_with("Invalid") && c.contains("State"))
    }

    /// What a create returned, or, when its identifier was taken (an earlier attempt made it),
    /// what `find` finds under it: creating twice converges on the same resource.
    pub(crate) async fn or_adopt<T, F>(created: Result<Option<T>, Error>, what: impl std::fmt::Display, find: impl FnOnce() -> F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<Option<T>, Error>>,
    {
        match created {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(Error::Conflict(format!("{what} returned nothing"))),
            Err(e) if e.is_already_exists() => find().await?.ok_or(e),
            Err(e) => Err(e),
        }
    }

    /// Classify what an SDK call returned.
    pub(crate) fn from_sdk<E>(operation: &'static str, err: SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let code = ctx.err().code().map(str::to_string).unwrap_or_else(|| format!("HTTP {status}"));
                let message = ctx.err().message().map(str::to_string).unwrap_or_else(|| format!("the response (HTTP {status}) carried no AWS error"));
                let retryable = THROTTLING.contains(&code.as_str()) || TRANSIENT.contains(&code.as_str()) || matches!(status, 500 | 502 | 503 | 504);
                Error::Service { operation, code, message, retryable }
            }
            SdkError::ConstructionFailure(_) => Error::Config(format!("{operation}: {}", DisplayErrorContext(&err))),
            _ => Error::Transport { operation, message: DisplayErrorContext(&err).to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str) -> Error {
        let retryable = THROTTLING.contains(&code) || TRANSIENT.contains(&code);
        Error::Service { operation: "CreateDBCluster", code: code.into(), message: "m".into(), retryable }
    }

    #[test]
    fn throttling_is_retried_and_a_bad_request_is_not() {
        assert!(service("ThrottlingException").is_retryable());
        assert!(service("Throttling").is_retryable());
        assert!(!service("InvalidParameterCombination").is_retryable());
        assert!(service("DBClusterNotFoundFault").is_not_found());
        assert!(service("ResourceNotFoundFault").is_not_found());
        assert!(service("DBInstanceAlreadyExists").is_already_exists());
        assert!(service("InvalidDBClusterStateFault").is_invalid_state());
        assert_eq!(service("InvalidParameterCombination").to_string(), "CreateDBCluster: InvalidParameterCombination: m");
    }
}
