//! The DNS SRV source: every service with `discovery = { srv = NAME,
//! refresh = D }` gets one task that asks for NAME's SRV records and their
//! targets' addresses, and sends the service's endpoints when they change.
//!
//! - Name servers: `[discovery.dns] servers` (UDP, TCP when an answer is
//!   truncated), else the system's (`/etc/resolv.conf`); `timeout` per try,
//!   one retry. The resolver's cache is bypassed: each refresh asks.
//! - Endpoints: each SRV record's target addresses (from the additional
//!   section when the server sends them, else A and AAAA queries) on its
//!   port. The lowest priority value present is tier 0, the next tier 1,
//!   and so on; weights are kept when they fit 1..=256, else scaled per
//!   tier so the largest is 256, and weight 0 counts as 1
//!   ([`endpoints::endpoints`]).
//! - When: again after `refresh`, or the shortest TTL of the answer when
//!   that is shorter, but not sooner than 1 s (or `refresh` if shorter)
//!   ([`follow::after_answer`]).
//! - Failures keep the last endpoints: NXDOMAIN, SERVFAIL, a timeout, an
//!   empty NOERROR answer, or records whose targets have no address send
//!   nothing, mark the service's source `dns:SERVICE` down, log a `warn`
//!   (once a minute per service, and a line when it answers again) and
//!   retry after 0.5 s, doubling up to `refresh`. Only a deliberate answer
//!   empties a service: a single SRV record whose target is "." (RFC 2782,
//!   "decidedly not available").
//! - Reloads: new SRV services start, changed ones (name, refresh, or
//!   `[discovery.dns]`) restart and keep their endpoints until the new
//!   query answers, removed ones stop and their endpoints leave at once.

mod endpoints;
mod follow;
mod query;

use super::{Feed, Scope, Update};
use crate::config::{Config, DnsConfig, ServiceDiscovery};
use crate::metrics::DiscoveryStats;
use crate::routing::Source;
use follow::Srv;
use query::Resolver;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Follows the SRV records of every service that asks for them, as the
/// config (and its reloads) says, until aborted.
pub async fn run(
    mut configs: watch::Receiver<Arc<Config>>,
    feed: Feed,
    stats: Arc<DiscoveryStats>,
) {
    let mut resolver: Option<(DnsConfig, Arc<Resolver>)> = None;
    let mut running: BTreeMap<String, (Srv, Task)> = BTreeMap::new();
    loop {
        let config = Arc::clone(&configs.borrow_and_update());
        let wanted = srv_services(&config);
        let dns_changed = resolver.as_ref().map(|(c, _)| c) != Some(&config.discovery.dns);
        if dns_changed {
            resolver = Some((
                config.discovery.dns.clone(),
                Arc::new(Resolver::new(config.discovery.dns.clone())),
            ));
        }
        let gone: Vec<String> = running
            .keys()
            .filter(|s| !wanted.contains_key(*s))
            .cloned()
            .collect();
        if !gone.is_empty() {
            for service in &gone {
                // Dropping the task aborts it.
                running.remove(service);
                stats.remove(&status_name(service));
                log::info!("dns: service {service} no longer uses SRV; its DNS endpoints leave");
            }
            feed.send(Update {
                source: Source::Dns,
                scope: Scope::Services,
                services: gone.into_iter().map(|s| (s, Vec::new())).collect(),
            });
        }
        if let Some((_, resolver)) = &resolver {
            for (service, srv) in wanted {
                if !dns_changed && running.get(&service).is_some_and(|(r, _)| *r == srv) {
                    continue;
                }
                let status = stats.source(&status_name(&service));
                let task = tokio::spawn(follow::follow(
                    srv.clone(),
                    Arc::clone(resolver),
                    feed.clone(),
                    status,
                ));
                // Replacing the entry aborts the old task.
                running.insert(service, (srv, Task(task)));
            }
        }
        if configs.changed().await.is_err() {
            break;
        }
    }
}

/// The status name of a service's SRV source.
fn status_name(service: &str) -> String {
    format!("{}:{service}", Source::Dns.name())
}

/// Every service that asks for SRV discovery.
fn srv_services(config: &Config) -> BTreeMap<String, Srv> {
    config
        .services
        .iter()
        .filter_map(|c| match &c.discovery {
            Some(ServiceDiscovery::Srv { name, refresh }) => Some((
                c.name.clone(),
                Srv {
                    service: c.name.clone(),
                    name: name.clone(),
                    refresh: *refresh,
                },
            )),
            _ => None,
        })
        .collect()
}

/// A spawned task that is aborted when dropped, so that stopping (or
/// aborting) [`run`] stops every service's task with it.
#[derive(Debug)]
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}
