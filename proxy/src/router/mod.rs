//! Where traffic goes: the route the control plane sets (primary, read endpoint, mode, hold,
//! shadow), how a statement is classified for read routing, and how far the read endpoint has
//! applied the primary's WAL.

pub mod classify;
pub mod control;
pub mod gate;
pub mod lsn;

use std::sync::Arc;
use std::time::Duration;

use dmf_db::route::RouteRow;

use crate::backend::Endpoint;
use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every statement to the primary.
    Primary,
    /// Read-only statements outside transactions to the read endpoint (read-your-writes kept).
    SplitReads,
}

/// One applied route epoch, shared by every session (`Arc`, replaced whole on change).
#[derive(Clone, Debug)]
pub struct Route {
    pub epoch: u64,
    pub primary: Arc<Endpoint>,
    pub read: Arc<Endpoint>,
    pub mode: Mode,
    pub hold: bool,
    pub hold_deadline: Duration,
    pub shadow: Option<Arc<Endpoint>>,
    pub shadow_fraction: f64,
    /// During a flip's hold: where the primary is about to move (backends are opened there early).
    pub next_primary: Option<Arc<Endpoint>>,
}

impl Route {
    /// Build from the control-plane row; endpoints that did not change keep their `Arc`, so a
    /// session compares endpoints by pointer as well as by value.
    pub fn from_row(row: &RouteRow, previous: Option<&Route>) -> Result<Route, Error> {
        let keep = |dsn: &str, old: Option<&Arc<Endpoint>>| -> Result<Arc<Endpoint>, Error> {
            match old {
                Some(e) if e.dsn == dsn => Ok(e.clone()),
                _ => Ok(Arc::new(Endpoint::parse(dsn)?)),
            }
        };
        let mode = match row.mode.as_str() {
            "primary" => Mode::Primary,
            "split_reads" => Mode::SplitReads,
            other => return Err(Error::Config(format!("route of {}: unknown mode {other:?}", row.cluster))),
        };
        let shadow = match &row.shadow_endpoint {
            Some(dsn) => Some(keep(dsn, previous.and_then(|p| p.shadow.as_ref()))?),
            None => None,
        };
        Ok(Route {
            epoch: row.route_epoch.max(0) as u64,
            primary: keep(&row.primary_endpoint, previous.map(|p| &p.primary))?,
            read: keep(&row.read_endpoint, previous.map(|p| &p.read))?,
            mode,
            hold: row.hold,
            hold_deadline: Duration::from_millis(row.hold_deadline_ms.max(1) as u64),
            shadow,
            shadow_fraction: row.shadow_fraction.clamp(0.0, 1.0),
            next_primary: match &row.next_primary {
                Some(dsn) => Some(keep(dsn, previous.and_then(|p| p.next_primary.as_ref()))?),
                None => None,
            },
        })
    }
}
