//! Active health checks: the I/O that feeds the routing model's endpoint
//! health ([`crate::routing::health`]). [`schedule`] decides when probes
//! run; [`probe`] and [`checker`] are the I/O: one `l4mesh-health` thread
//! with its own small tokio runtime runs every probe, off the workers'
//! forwarding path, and ends ejections when due.

pub mod checker;
pub mod probe;
pub mod schedule;

pub use checker::Checker;
