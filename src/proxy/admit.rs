//! From an accepted client to the service it goes to: the listener's
//! `max_connections`, the PROXY protocol header of a trusted sender (whose
//! source becomes the client), the per-client limits, and the service: the
//! listener's own, or the one its SNI rules pick from the ClientHello.
//!
//! Each refusal is counted by reason and access-logged; all but
//! `max_connections` (which closes, as it always has) reset the client, so
//! it cannot mistake the refusal for a served connection that ended.

use super::io::EventLoop;
use super::preamble;
use super::session::WorkerState;
use crate::config::{ListenerRoute, SniRouting, Untrusted};
use crate::log_limit::ADMISSION_REFUSALS;
use crate::metrics::access_log::{Ending, Record};
use crate::preamble::client_hello::Hello;
use crate::routing::client_limits::{Admission, ClientPermit};
use crate::routing::sni_routes::SniRoutes;
use crate::routing::{
    ClientGuard, ClientLimitReason, HelloFailure, Listener, ListenerSlot, Service, Snapshot,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// A client let in and routed.
#[derive(Debug)]
pub struct Admitted {
    /// The service it goes to.
    pub service: Arc<Service>,
    /// The address it connected to, as a PROXY header gave it.
    pub destination: Option<SocketAddr>,
    /// The server name a PROXY v2 header's AUTHORITY gave, passed on when
    /// l4mesh read none from a ClientHello itself.
    pub authority: Option<String>,
    /// Bytes already read from the client (after any PROXY header): they go
    /// to the upstream first.
    pub pending: Vec<u8>,
    /// Holds its place under `max_connections` while it lives.
    pub _open: ClientGuard,
    /// Holds its place under `max_connections_per_client` while it lives.
    pub _permit: Option<ClientPermit>,
}

/// How a refused client is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Closed (`max_connections`, as it always was).
    Close,
    /// Reset.
    Reset,
}

/// Admits and routes `client` on listener `route` of `snapshot`, filling
/// in the record's client, peer, server name and (on refusal) ending.
pub async fn admit<L: EventLoop>(
    client: &L::Stream,
    route: &Listener,
    snapshot: &Snapshot,
    worker: &WorkerState<L>,
    counts: &ListenerSlot,
    record: &mut Record,
) -> Result<Admitted, Refusal> {
    let listener = &route.config.name;
    let peer = record.client;
    let Some(open) = route.clients.try_admit(route.config.max_connections) else {
        counts.rejected.add(1);
        record.end = Ending::Rejected;
        log::debug!(
            "conn {} from {peer} on {listener}: at max_connections; closing the client",
            record.id
        );
        if let Some(held_back) = route.clients.reject_log.allow() {
            log::warn!(
                "listener {listener}: {} client(s) open, its max_connections; closing new clients \
                 at once ({held_back} more since the last line)",
                route.clients.open()
            );
        }
        return Err(Refusal::Close);
    };
    let mut pending = Vec::new();
    let mut destination = None;
    let mut authority = None;
    if let Some(accept) = &route.config.accept_proxy {
        if accept.trusts(peer.ip()) {
            match preamble::proxy_header(client, &worker.io, accept, &mut pending).await {
                Ok(header) => {
                    authority = header.authority;
                    if let Some((source, dest)) = header.addresses {
                        record.client = source;
                        record.peer = Some(peer);
                        destination = Some(dest);
                    }
                }
                Err(failure) => {
                    counts.header_failures[failure as usize].add(1);
                    record.end = Ending::ProxyHeaderError;
                    refusal_line(
                        record,
                        listener,
                        &format!(
                            "no valid PROXY protocol header ({}); reset",
                            failure.label()
                        ),
                    );
                    return Err(Refusal::Reset);
                }
            }
        } else if accept.untrusted == Untrusted::Reject {
            counts.header_failures[crate::routing::HeaderFailure::Untrusted as usize].add(1);
            record.end = Ending::UntrustedSource;
            refusal_line(
                record,
                listener,
                "not in trusted_sources (untrusted_sources = \"reject\"); reset",
            );
            return Err(Refusal::Reset);
        }
    }
    let permit = match (&route.config.per_client, &route.client_table) {
        (Some(limits), Some(table)) => {
            match table.admit(record.client.ip(), limits, Instant::now()) {
                Admission::Admitted(permit) => Some(permit),
                Admission::Untracked => {
                    counts.client_untracked.add(1);
                    None
                }
                refused => {
                    let reason = if matches!(refused, Admission::OverRate) {
                        ClientLimitReason::Rate
                    } else {
                        ClientLimitReason::Connections
                    };
                    counts.client_limited[reason as usize].add(1);
                    record.end = Ending::ClientLimit;
                    refusal_line(record, listener, &format!("over {}; reset", reason.label()));
                    return Err(Refusal::Reset);
                }
            }
        }
        _ => None,
    };
    let service = match &route.config.route {
        ListenerRoute::Service(name) => snapshot.services.get(name).cloned(),
        ListenerRoute::Sni(sni) => {
            let Some(routes) = &route.sni else {
                return Err(Refusal::Reset);
            };
            let hello = preamble::client_hello(client, &worker.io, sni, &mut pending).await;
            let name = by_hello(hello, sni, routes, counts, worker.index, record);
            match name {
                Some(name) => snapshot.services.get(name).cloned(),
                None => {
                    record.end = Ending::NoRoute;
                    log::debug!(
                        "conn {} from {} on {listener}: no SNI rule and no default_service; reset",
                        record.id,
                        record.client
                    );
                    return Err(Refusal::Reset);
                }
            }
        }
    };
    let Some(service) = service else {
        log::warn!(
            "conn {} from {peer}: listener {listener} has no route; closing the client",
            record.id
        );
        return Err(Refusal::Close);
    };
    Ok(Admitted {
        service,
        destination,
        authority,
        pending,
        _open: open,
        _permit: permit,
    })
}

/// The service an SNI listener sends this hello to (counted by rule), if
/// any.
fn by_hello<'a>(
    hello: Result<Hello, HelloFailure>,
    sni: &'a SniRouting,
    routes: &SniRoutes,
    counts: &ListenerSlot,
    worker: usize,
    record: &mut Record,
) -> Option<&'a str> {
    let failure = match hello {
        Ok(hello) => {
            let rule = routes.rules.pick(hello.server_name.as_deref(), &hello.alpn);
            let failure = if hello.server_name.is_none() {
                HelloFailure::NoSni
            } else {
                HelloFailure::NoMatch
            };
            record.server_name = hello.server_name.map(String::into_boxed_str);
            if let Some(i) = rule {
                routes.routed[i].1.slot(worker).add(1);
                return Some(&sni.rules[i].service);
            }
            failure
        }
        Err(failure) => failure,
    };
    counts.hello_failures[failure as usize].add(1);
    let default = sni.default_service.as_deref()?;
    routes.defaulted.slot(worker).add(1);
    Some(default)
}

/// A sampled warn line (and a debug line for every one) about a client
/// turned away before it was routed.
fn refusal_line(record: &Record, listener: &str, why: &str) {
    let (id, client, peer) = (record.id, record.client, record.peer);
    let via = peer.map(|p| format!(" via {p}")).unwrap_or_default();
    log::debug!("conn {id} from {client}{via} on {listener}: {why}");
    if let Some(held_back) = ADMISSION_REFUSALS.allow() {
        log::warn!(
            "listener {listener}: client {client}{via} {why} ({held_back} more refusals of any \
             kind since the last line; see the l4mesh_proxy_header_errors_total and \
             l4mesh_connections_rejected_total metrics)"
        );
    }
}
