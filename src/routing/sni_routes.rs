//! An SNI listener's part of the snapshot: the matcher built from its rules
//! off the hot path, and how many connections each rule (and the default
//! service) took, kept across reloads by the rule's label.

use super::counters::{Counter, PerWorker};
use super::sni::SniRules;
use crate::config::SniRouting;
use std::sync::Arc;

/// The label of connections sent to `default_service` (no host name holds
/// parentheses, so no rule's label can be the same).
pub const DEFAULT_LABEL: &str = "(default)";

/// Connections routed, one slot per worker.
pub type RouteCount = PerWorker<Counter>;

/// The matcher and the counts of one SNI listener.
#[derive(Debug)]
pub struct SniRoutes {
    /// Picks the rule for a hello.
    pub rules: SniRules,
    /// Connections each rule took, by rule index, with the rule's label.
    pub routed: Vec<(String, Arc<RouteCount>)>,
    /// Connections sent to `default_service`.
    pub defaulted: Arc<RouteCount>,
}

impl SniRoutes {
    /// Builds the matcher for `config`, reusing the counts of `previous`
    /// for rules with the same label.
    pub fn build(config: &SniRouting, previous: Option<&SniRoutes>, workers: usize) -> SniRoutes {
        let rules = SniRules::new(
            config
                .rules
                .iter()
                .map(|r| (r.names.as_slice(), r.alpn.as_slice())),
        );
        let routed = config
            .rules
            .iter()
            .map(|r| {
                let label = r.label();
                let count = previous
                    .and_then(|p| p.routed.iter().find(|(l, _)| *l == label))
                    .map_or_else(
                        || Arc::new(RouteCount::new(workers)),
                        |(_, c)| Arc::clone(c),
                    );
                (label, count)
            })
            .collect();
        let defaulted = previous.map_or_else(
            || Arc::new(RouteCount::new(workers)),
            |p| Arc::clone(&p.defaulted),
        );
        SniRoutes {
            rules,
            routed,
            defaulted,
        }
    }
}
