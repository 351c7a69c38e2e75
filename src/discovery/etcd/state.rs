//! The etcd source's view: every service's endpoints as etcd holds them,
//! and the revision they are current to.

use super::schema::{self, Entry};
use crate::routing::Discovered;
use etcd_client::{Event, EventType};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Service → address → entry, at `revision`.
#[derive(Debug)]
pub struct State {
    prefix: String,
    services: BTreeMap<String, BTreeMap<SocketAddr, Entry>>,
    /// The last revision applied (0: never read).
    pub revision: i64,
}

impl State {
    /// An empty view under `prefix`.
    pub fn new(prefix: String) -> State {
        State {
            prefix,
            services: BTreeMap::new(),
            revision: 0,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many services have endpoints.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// How many endpoints in all.
    pub fn endpoint_count(&self) -> usize {
        self.services.values().map(BTreeMap::len).sum()
    }

    /// Replaces the view with a full read at `revision`; returns every
    /// service's endpoints.
    pub fn replace<'a>(
        &mut self,
        pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        revision: i64,
    ) -> BTreeMap<String, Vec<Discovered>> {
        self.services.clear();
        for (key, value) in pairs {
            if let Some((service, addr, entry)) = self.parse(key, value) {
                self.services
                    .entry(service)
                    .or_default()
                    .insert(addr, entry);
            }
        }
        self.revision = revision;
        self.services
            .keys()
            .map(|s| (s.clone(), self.endpoints(s)))
            .collect()
    }

    /// Applies one watch event; returns the service it changed, if any.
    pub fn event(&mut self, event: &Event) -> Option<String> {
        let kv = event.kv()?;
        self.revision = self.revision.max(kv.mod_revision());
        match event.event_type() {
            EventType::Put => {
                let Some((service, addr, entry)) = self.parse(kv.key(), kv.value()) else {
                    // A key that no longer parses drops what it held before.
                    let (service, addr) = schema::parse_key(&self.prefix, kv.key()).ok()?;
                    return self.remove(service, addr);
                };
                if let Some(zone) = &entry.zone {
                    log::debug!("etcd: {service} {addr} weight {} zone {zone}", entry.weight);
                }
                let endpoints = self.services.entry(service.clone()).or_default();
                (endpoints.insert(addr, entry.clone()) != Some(entry)).then_some(service)
            }
            EventType::Delete => {
                let (service, addr) = schema::parse_key(&self.prefix, kv.key()).ok()?;
                self.remove(service, addr)
            }
        }
    }

    fn remove(&mut self, service: String, addr: SocketAddr) -> Option<String> {
        let endpoints = self.services.get_mut(&service)?;
        endpoints.remove(&addr)?;
        if endpoints.is_empty() {
            self.services.remove(&service);
        }
        Some(service)
    }

    /// `service`'s complete endpoint list (empty: none).
    pub fn endpoints(&self, service: &str) -> Vec<Discovered> {
        self.services.get(service).map_or_else(Vec::new, |e| {
            e.iter()
                .map(|(addr, entry)| Discovered {
                    addr: *addr,
                    weight: entry.weight,
                    tier: 0,
                })
                .collect()
        })
    }

    fn parse(&self, key: &[u8], value: &[u8]) -> Option<(String, SocketAddr, Entry)> {
        let parsed = schema::parse_key(&self.prefix, key)
            .and_then(|(s, a)| schema::parse_value(value).map(|e| (s, a, e)));
        match parsed {
            Ok(p) => Some(p),
            Err(why) => {
                log::warn!(
                    "etcd: skipping key {:?} = {:?}: {why}; write \
                     {}services/SERVICE/endpoints/IP:PORT = {{\"weight\": N}} (N from 1 to 256)",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(value),
                    self.prefix
                );
                None
            }
        }
    }
}
