//! The migration state machine: phases, transitions, guards and what runs next. Pure logic, no I/O.
//!
//! The worker asks this crate two questions: "which activity runs in this phase?" and "given what the
//! activity reported, where does the migration go now?". Everything durable (the compare-and-set on
//! phase and epoch, the job that runs next) happens in `dmf-db`; this crate only decides.

pub mod guard;
pub mod phase;

pub use guard::{AbortReason, LagGuard, LagVerdict};
pub use phase::{Decision, Outcome, Phase, Policy};
