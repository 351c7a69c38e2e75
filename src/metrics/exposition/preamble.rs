//! The families of what happens before a connection is routed: PROXY
//! protocol headers refused, SNI routes taken and hellos that could not
//! route, and clients admitted past a full per-client table. Each family
//! lists only the listeners configured for it, so a plain listener's
//! scrape stays as it was.

use super::Writer;
use crate::metrics::names::{
    CLIENT_HELLO_FAILURES_TOTAL, CLIENT_LIMIT_UNTRACKED_TOTAL, PROXY_HEADER_ERRORS_TOTAL,
    SNI_ROUTES_TOTAL,
};
use crate::routing::sni_routes::DEFAULT_LABEL;
use crate::routing::{HeaderFailure, HelloFailure, Snapshot};

/// Writes the families for every listener of `snapshot` that has the
/// feature.
pub(super) fn listeners(w: &mut Writer, snapshot: &Snapshot) {
    w.family(
        PROXY_HEADER_ERRORS_TOTAL,
        "counter",
        "Clients reset for their PROXY protocol header: none whole within \
         proxy_header_timeout, malformed, closed before it was whole, or from an address \
         not in trusted_sources.",
    );
    for l in snapshot
        .listeners
        .iter()
        .filter(|l| l.config.accept_proxy.is_some())
    {
        for reason in HeaderFailure::ALL {
            let n = l.stats.sum(|s| s.header_failures[reason as usize].get());
            w.sample(
                PROXY_HEADER_ERRORS_TOTAL,
                &[("listener", &l.config.name), ("reason", reason.label())],
                n,
            );
        }
    }
    w.family(
        SNI_ROUTES_TOTAL,
        "counter",
        "Connections an SNI listener routed, by rule (its first name, and its ALPN \
         protocols if any), or (default) for default_service.",
    );
    for l in &snapshot.listeners {
        let Some(sni) = &l.sni else { continue };
        for (label, count) in &sni.routed {
            w.sample(
                SNI_ROUTES_TOTAL,
                &[("listener", &l.config.name), ("rule", label)],
                count.sum(|c| c.get()),
            );
        }
        w.sample(
            SNI_ROUTES_TOTAL,
            &[("listener", &l.config.name), ("rule", DEFAULT_LABEL)],
            sni.defaulted.sum(|c| c.get()),
        );
    }
    w.family(
        CLIENT_HELLO_FAILURES_TOTAL,
        "counter",
        "ClientHellos an SNI listener could not route by, by reason; the client went to \
         default_service, or was reset without one.",
    );
    for l in snapshot.listeners.iter().filter(|l| l.sni.is_some()) {
        for reason in HelloFailure::ALL {
            let n = l.stats.sum(|s| s.hello_failures[reason as usize].get());
            w.sample(
                CLIENT_HELLO_FAILURES_TOTAL,
                &[("listener", &l.config.name), ("reason", reason.label())],
                n,
            );
        }
    }
    w.family(
        CLIENT_LIMIT_UNTRACKED_TOTAL,
        "counter",
        "Clients admitted without per-client limits because the per-client table had no \
         room for them (best effort under a flood of distinct addresses).",
    );
    for l in snapshot
        .listeners
        .iter()
        .filter(|l| l.client_table.is_some())
    {
        w.sample(
            CLIENT_LIMIT_UNTRACKED_TOTAL,
            &[("listener", &l.config.name)],
            l.stats.sum(|s| s.client_untracked.get()),
        );
    }
}
