//! Endpoint health: active probes, passive outlier ejection and the panic
//! decision.
//!
//! The decisions are pure and clock-free, one file each, tested without a
//! runtime: [`threshold`] (probe results → up/down), [`outlier`] (failure
//! streaks → ejections and their length, `max_ejection_percent`),
//! [`panic`] (when to ignore health) and [`schedule`] (when probes run).

pub mod outlier;
pub mod panic;
pub mod schedule;
pub mod threshold;

pub use threshold::{Tally, Thresholds, Verdict};
