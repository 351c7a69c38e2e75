//! Run-time endpoint state that the config file does not hold: endpoints
//! registered through the registry socket (with optional TTLs) and endpoints
//! put into drain. Pure: time is passed in, so it tests without a clock.

use super::protocol::Request;
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

/// What registering an endpoint changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// It was not registered before.
    New,
    /// It was, with another weight, or it was draining: the table changes.
    Changed,
    /// A heartbeat: only its expiry moved, which the table does not hold.
    Refreshed,
}

/// Registered and drained endpoints.
#[derive(Debug, Default, Clone)]
pub struct Registrations {
    entries: BTreeMap<EndpointKey, Registration>,
    drained: BTreeSet<EndpointKey>,
    /// The entries that have an expiry, soonest first: finding the next
    /// expiry and the lapsed ones costs O(log n), not a scan of every
    /// registration after every request.
    expiries: BTreeSet<(Instant, EndpointKey)>,
}

impl Registrations {
    /// Adds or refreshes an endpoint and says what that changed. Registering
    /// again ends a drain: the instance says it is ready.
    pub fn register(
        &mut self,
        key: EndpointKey,
        weight: u32,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Registered {
        let was_drained = self.drained.remove(&key);
        let registration = Registration {
            weight,
            expires: ttl.map(|ttl| now + ttl),
        };
        let previous = self.entries.insert(key.clone(), registration.clone());
        // The old expiry goes first: the new one may be the same instant.
        if let Some(at) = previous.as_ref().and_then(|old| old.expires) {
            self.expiries.remove(&(at, key.clone()));
        }
        if let Some(at) = registration.expires {
            self.expiries.insert((at, key));
        }
        match previous {
            None => Registered::New,
            Some(old) if old.weight != weight || was_drained => Registered::Changed,
            Some(_) => Registered::Refreshed,
        }
    }

    /// Removes a registered endpoint; returns false if it was not registered.
    pub fn deregister(&mut self, key: &EndpointKey) -> bool {
        self.drained.remove(key);
        let Some(old) = self.entries.remove(key) else {
            return false;
        };
        if let Some(at) = old.expires {
            self.expiries.remove(&(at, key.clone()));
        }
        true
    }

    /// Puts an endpoint (registered or from the file) into drain.
    pub fn drain(&mut self, key: EndpointKey) {
        self.drained.insert(key);
    }

    /// Ends an endpoint's drain; returns false if it was not draining.
    pub fn undrain(&mut self, key: &EndpointKey) -> bool {
        self.drained.remove(key)
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
            .expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, k)| k.clone())
            .collect();
        for key in &lapsed {
            self.deregister(key);
        }
        lapsed
    }

    /// When the next registration lapses.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// The requests that rebuild this state in another process, as of
    /// `now`: a register for each endpoint (with the time it has left), then
    /// a drain for each drained one. Lapsed registrations are left out.
    pub fn replay(&self, now: Instant) -> Vec<Request> {
        let registers = self.entries.iter().filter_map(|((service, addr), r)| {
            let ttl = match r.expires {
                Some(at) if at <= now => return None,
                Some(at) => Some(at.duration_since(now).max(Duration::from_millis(1))),
                None => None,
            };
            Some(Request::Register {
                service: service.clone(),
                addr: *addr,
                weight: r.weight,
                ttl,
            })
        });
        let drains = self.drained.iter().map(|(service, addr)| Request::Drain {
            service: service.clone(),
            addr: *addr,
        });
        registers.chain(drains).collect()
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
        self.expiries.retain(|(_, k)| keep(k, true));
        let entries = &self.entries;
        self.drained
            .retain(|k| entries.contains_key(k) || keep(k, false));
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_replay_registrations_with_the_time_left_then_drains() {
        let mut r = Registrations::default();
        let now = Instant::now();
        r.register(key(1), 2, Some(Duration::from_secs(10)), now);
        r.register(key(2), 1, None, now);
        r.register(key(3), 1, Some(Duration::from_secs(1)), now);
        r.drain(key(2));
        let later = now + Duration::from_secs(4);
        let lines: Vec<String> = r.replay(later).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "register web 127.0.0.1:1 weight=2 ttl=6000ms",
                "register web 127.0.0.1:2 weight=1",
                "drain web 127.0.0.1:2",
            ]
        );
    }

    fn key(port: u16) -> EndpointKey {
        ("web".to_string(), SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn it_should_expire_registrations_whose_ttl_lapsed_unless_refreshed() {
        let t0 = Instant::now();
        let mut regs = Registrations::default();
        let ttl = Some(Duration::from_secs(2));
        assert_eq!(regs.register(key(1), 1, ttl, t0), Registered::New);
        assert_eq!(regs.register(key(2), 1, ttl, t0), Registered::New);
        assert_eq!(regs.register(key(3), 1, None, t0), Registered::New);
        assert_eq!(regs.next_expiry(), Some(t0 + Duration::from_secs(2)));
        // A heartbeat for key 2 moves its expiry and changes nothing else.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(regs.register(key(2), 1, ttl, later), Registered::Refreshed);
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
        assert_eq!(regs.register(key(1), 1, None, now), Registered::Changed);
        assert!(!regs.is_drained(&key(1)));
        assert_eq!(regs.register(key(1), 2, None, now), Registered::Changed);
        assert_eq!(regs.register(key(1), 2, None, now), Registered::Refreshed);
        // The same expiry twice, then none: the index keeps up.
        let ttl = Some(Duration::from_secs(1));
        regs.register(key(1), 2, ttl, now);
        regs.register(key(1), 2, ttl, now);
        assert_eq!(regs.next_expiry(), Some(now + Duration::from_secs(1)));
        regs.register(key(1), 2, None, now);
        assert_eq!(regs.next_expiry(), None);
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
