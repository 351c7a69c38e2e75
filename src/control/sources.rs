//! What the controller merges with the config file: the registry's
//! registrations (with their TTLs and the operator's drains) and the last
//! endpoint sets etcd and DNS reported, per service. It is the builder's
//! [`Inputs`].

use crate::discovery::registry::Registrations;
use crate::discovery::{Scope, Update};
use crate::routing::{Discovered, Inputs, Source};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

/// Every run-time source's endpoints.
#[derive(Debug, Default)]
pub(super) struct Sources {
    /// The registry socket's registrations and drains.
    pub registrations: Registrations,
    /// etcd's and DNS's last reported endpoints, by source and service.
    discovered: HashMap<Source, BTreeMap<String, Vec<Discovered>>>,
}

impl Sources {
    /// Applies one source's update; returns whether any service's endpoint
    /// set changed (an update that repeats what is known changes nothing).
    pub fn apply(&mut self, update: Update) -> bool {
        let known = self.discovered.entry(update.source).or_default();
        let mut changed = false;
        if update.scope == Scope::All {
            known.retain(|service, list| {
                let keep = update.services.contains_key(service);
                changed |= !keep && !list.is_empty();
                keep
            });
        }
        for (service, mut list) in update.services {
            list.sort_by_key(|d| (d.tier, d.addr));
            list.dedup_by_key(|d| d.addr);
            let entry = known.entry(service).or_default();
            if *entry != list {
                *entry = list;
                changed = true;
            }
        }
        known.retain(|_, list| !list.is_empty());
        changed
    }

    /// How many endpoints `source` reports in all, for the log.
    pub fn count(&self, source: Source) -> usize {
        self.discovered
            .get(&source)
            .map_or(0, |m| m.values().map(Vec::len).sum())
    }
}

impl Inputs for Sources {
    fn endpoints(&self, service: &str, source: Source) -> Vec<Discovered> {
        match source {
            Source::File => Vec::new(),
            Source::Registry => self
                .registrations
                .of_service(service)
                .map(|(addr, r)| Discovered {
                    addr,
                    weight: r.weight,
                    tier: 0,
                })
                .collect(),
            Source::Etcd | Source::Dns => self
                .discovered
                .get(&source)
                .and_then(|m| m.get(service))
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn is_drained(&self, service: &str, addr: SocketAddr) -> bool {
        self.registrations.is_drained(&(service.to_string(), addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(port: u16, weight: u32, tier: u16) -> Discovered {
        Discovered {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            tier,
        }
    }

    fn update(scope: Scope, services: &[(&str, Vec<Discovered>)]) -> Update {
        Update {
            source: Source::Etcd,
            scope,
            services: services
                .iter()
                .map(|(s, l)| (s.to_string(), l.clone()))
                .collect(),
        }
    }

    #[test]
    fn it_should_replace_listed_services_and_say_whether_anything_changed() {
        let mut sources = Sources::default();
        let a = vec![found(2, 1, 0), found(1, 1, 0)];
        assert!(sources.apply(update(Scope::Services, &[("a", a.clone())])));
        // The same set in another order changes nothing.
        let reordered = vec![found(1, 1, 0), found(2, 1, 0)];
        assert!(!sources.apply(update(Scope::Services, &[("a", reordered)])));
        assert!(sources.apply(update(Scope::Services, &[("b", vec![found(3, 2, 0)])])));
        assert_eq!(sources.endpoints("a", Source::Etcd).len(), 2);
        assert_eq!(sources.endpoints("a", Source::Dns), vec![]);
        assert!(sources.apply(update(Scope::Services, &[("a", vec![])])));
        assert_eq!(sources.endpoints("a", Source::Etcd), vec![]);
        assert_eq!(sources.count(Source::Etcd), 1);
    }

    #[test]
    fn it_should_drop_services_a_full_resync_does_not_list() {
        let mut sources = Sources::default();
        sources.apply(update(
            Scope::Services,
            &[("a", vec![found(1, 1, 0)]), ("b", vec![found(2, 1, 0)])],
        ));
        assert!(sources.apply(update(Scope::All, &[("b", vec![found(2, 1, 0)])])));
        assert_eq!(sources.endpoints("a", Source::Etcd), vec![]);
        assert_eq!(sources.endpoints("b", Source::Etcd), vec![found(2, 1, 0)]);
        // A resync that repeats what is known changes nothing.
        assert!(!sources.apply(update(Scope::All, &[("b", vec![found(2, 1, 0)])])));
    }
}
