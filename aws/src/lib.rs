//! The AWS APIs dmf uses: RDS (where a source lives and whether it can replicate logically; Aurora
//! PostgreSQL targets) and DMS (replication through AWS Database Migration Service). Clients take
//! credentials and region from the standard AWS chain (environment, profile, container and instance
//! roles), with an endpoint override for a local emulator; every call's error is classified as
//! retryable (throttling, transient) or not, with AWS's error code ([`Error`]).
//!
//! Nothing here keeps state: callers pass identifiers and persist what they learn.

pub mod dms;
pub mod error;
pub mod rds;
pub mod secrets;
pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

pub use error::Error;

/// How dmf talks to AWS; the same for every cluster a worker runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Send every call here instead of AWS (a local emulator in tests). `DMF_AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// Attempts per call, the first included, when AWS throttles or fails transiently (the SDK's
    /// standard strategy: exponential backoff with jitter). What still fails is retried by the
    /// activity, with the worker's backoff.
    pub max_attempts: u32,
    /// First backoff of those retries.
    pub initial_backoff: Duration,
    /// Longest backoff of those retries.
    pub max_backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { endpoint_url: None, max_attempts: 4, initial_backoff: Duration::from_millis(500), max_backoff: Duration::from_secs(20) }
    }
}

/// The clients of one region.
#[derive(Clone, Debug)]
pub struct Aws {
    pub rds: aws_sdk_rds::Client,
    pub dms: aws_sdk_databasemigration::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub region: String,
}

impl Aws {
    /// Load credentials and region from the standard chain; `region` (from the manifest) wins.
    pub async fn connect(options: &Options, region: Option<&str>) -> Result<Aws, Error> {
        let https = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let retry = RetryConfig::standard()
            .with_max_attempts(options.max_attempts.max(1))
            .with_initial_backoff(options.initial_backoff)
            .with_max_backoff(options.max_backoff);
        let timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_secs(5)).operation_attempt_timeout(Duration::from_secs(60)).build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https).retry_config(retry).timeout_config(timeouts);
        if let Some(r) = region {
            loader = loader.region(Region::new(r.to_string()));
        }
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let conf = loader.load().await;
        let Some(region) = conf.region().map(|r| r.to_string()) else {
            return Err(Error::Config("no AWS region: set aws.region for the cluster in the manifest, or AWS_REGION / a profile for the worker".into()));
        };
        Ok(Aws {
            rds: aws_sdk_rds::Client::new(&conf),
            dms: aws_sdk_databasemigration::Client::new(&conf),
            secrets: aws_sdk_secretsmanager::Client::new(&conf),
            region,
        })
    }
}

/// Clients per region, made on first use and shared by every activity of a worker.
#[derive(Clone, Debug, Default)]
pub struct Clients {
    pub options: Options,
    by_region: Arc<tokio::sync::Mutex<HashMap<Option<String>, Aws>>>,
}

impl Clients {
    pub fn new(options: Options) -> Clients {
        Clients { options, by_region: Arc::default() }
    }

    /// The clients for `region` (None: the chain's region).
    pub async fn get(&self, region: Option<&str>) -> Result<Aws, Error> {
        let key = region.map(str::to_string);
        let mut cache = self.by_region.lock().await;
        if let Some(aws) = cache.get(&key) {
            return Ok(aws.clone());
        }
        let aws = Aws::connect(&self.options, region).await?;
        cache.insert(key, aws.clone());
        Ok(aws)
    }
}

/// An identifier AWS accepts for clusters, instances, parameter groups and DMS resources: ASCII
/// letters, digits and single hyphens, starting with a letter, at most 63 characters.
pub fn identifier(name: &str) -> String {
    let mut out = String::new();
    for ch in name.chars() {
        let ch = if ch.is_ascii_alphanumeric() { ch.to_ascii_lowercase() } else { '-' };
        if ch == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(ch);
    }
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert_str(0, "dmf-");
    }
    out.truncate(63);
    out.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_what_aws_accepts() {
        assert_eq!(identifier("dmf-orders_eu"), "dmf-orders-eu");
        assert_eq!(identifier("9lives"), "dmf-9lives");
        assert_eq!(identifier("a__b--c-"), "a-b-c");
        assert_eq!(identifier(&"x".repeat(80)).len(), 63);
    }
}
