//! Fleet manifests, waves, throttles and the circuit breaker.
//!
//! `manifest` turns a TOML fleet file into validated clusters (errors name the line and field);
//! `enqueue` checks every source answers and registers the fleet in one transaction; `Scheduler`
//! releases waves in order under a global and a per-source-host concurrency limit, and opens the
//! fleet's breaker when a wave's failure-or-abort rate passes the threshold.

pub mod error;
pub mod manifest;
mod run;

pub use error::Error;
pub use manifest::Manifest;
pub use run::{enqueue, Scheduler, DEFAULT_INTERVAL};
