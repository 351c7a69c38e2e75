//! Run-time endpoint state that the config file does not hold: endpoints
//! registered through the registry socket (with optional TTLs) and endpoints
//! put into drain. Pure: time is passed in, so it tests without a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An endpoint's key: (service, address).
pub type EndpointKey = (String, SocketAddr);

/// One registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Its weight.
    pub weight: u32,
    /// When it lapses unless registered again; `None` = until deregistered.
    pub expires: Option<Instant>,
}

/// Registered and drained endpoints.
#[derive(Debug, Default, Clone)]
pub struct Registrations {
    entries: BTreeMap<EndpointKey, Registration>,
    drained: BTreeSet<EndpointKey>,
}

impl Registrations {
    /// Adds or refreshes an endpoint; returns true if it is new. Registering
    /// again ends a drain: the instance says it is ready.
    pub fn register(
        &mut self,
        key: EndpointKey,
        weight: u32,
        ttl: Option<Duration>,
        now: Instant,
    ) -> bool {
        self.drained.remove(&key);
        let registration = Registration {
            weight,
            expires: ttl.map(|ttl| now + ttl),
        };
        self.entries.insert(key, registration).is_none()
    }

    /// Removes a registered endpoint; returns false if it was not registered.
    pub fn deregister(&mut self, key: &EndpointKey) -> bool {
        self.drained.remove(key);
        self.entries.remove(key).is_some()
    }

    /// Puts an endpoint (registered or from the file) into drain.
    pub fn drain(&mut self, key: EndpointKey) {
        self.drained.insert(key);
    }

    /// Whether an endpoint is draining.
    pub fn is_drained(&self, key: &EndpointKey) -> bool {
        self.drained.contains(key)
    }

    /// The registration of an endpoint, if registered.
    pub fn get(&self, key: &EndpointKey) -> Option<&Registration> {
        self.entries.get(key)
    }

    /// Registered endpoints of `service`, in address order.
    pub fn of_service<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Iterator<Item = (SocketAddr, &'a Registration)> + 'a {
        self.entries
            .iter()
            .filter(move |((s, _), _)| s == service)
            .map(|((_, addr), r)| (*addr, r))
    }

    /// Removes registrations whose TTL lapsed by `now`; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<EndpointKey> {
        let lapsed: Vec<EndpointKey> = self
            .entries
            .iter()
            .filter(|(_, r)| r.expires.is_some_and(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &lapsed {
            self.deregister(key);
        }
        lapsed
    }

    /// When the next registration lapses.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries.values().filter_map(|r| r.expires).min()
    }

    /// Forgets everything about endpoints for which `keep` is false (their
    /// service left the config, or a drained file endpoint was removed).
    pub fn retain(&mut self, keep: impl Fn(&EndpointKey, bool) -> bool) -> Vec<EndpointKey> {
        let dropped: Vec<EndpointKey> = self
            .entries
            .keys()
            .filter(|k| !keep(k, true))
            .cloned()
            .collect();
        self.entries.retain(|k, _| keep(k, true));
        let entries = &self.entries;
        self.drained
            .retain(|k| entries.contains_key(k) || keep(k, false));
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> EndpointKey {
        ("web".to_string(), SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn it_should_expire_registrations_whose_ttl_lapsed_unless_refreshed() {
        let t0 = Instant::now();
        let mut regs = Registrations::default();
        assert!(regs.register(key(1), 1, Some(Duration::from_secs(2)), t0));
        assert!(regs.register(key(2), 1, Some(Duration::from_secs(2)), t0));
        assert!(regs.register(key(3), 1, None, t0));
        assert_eq!(regs.next_expiry(), Some(t0 + Duration::from_secs(2)));
        // A heartbeat for key 2 moves its expiry.
        assert!(!regs.register(
            key(2),
            1,
            Some(Duration::from_secs(2)),
            t0 + Duration::from_secs(1)
        ));
        assert_eq!(regs.expire(t0 + Duration::from_secs(2)), vec![key(1)]);
        assert_eq!(regs.expire(t0 + Duration::from_secs(3)), vec![key(2)]);
        assert!(regs.get(&key(3)).is_some());
        assert_eq!(regs.next_expiry(), None);
    }

    #[test]
    fn it_should_end_a_drain_when_the_endpoint_registers_again() {
        let now = Instant::now();
        let mut regs = Registrations::default();
        regs.register(key(1), 1, None, now);
        regs.drain(key(1));
        assert!(regs.is_drained(&key(1)));
        regs.register(key(1), 1, None, now);
        assert!(!regs.is_drained(&key(1)));
    }

    #[test]
    fn it_should_forget_endpoints_of_services_that_are_gone() {
        let now = Instant::now();
        let mut regs = Registrations::default();
        regs.register(key(1), 1, None, now);
        regs.drain(("old".to_string(), SocketAddr::from(([127, 0, 0, 1], 9))));
        let dropped = regs.retain(|(service, _), _| service == "web");
        assert!(dropped.is_empty());
        assert!(regs.get(&key(1)).is_some());
        assert!(!regs.is_drained(&("old".to_string(), SocketAddr::from(([127, 0, 0, 1], 9)))));
    }
}
