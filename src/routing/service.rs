//! A service ready for the hot path: its members, its balancer, and the
//! pick that honours draining, limits, health, panic mode and failover
//! tiers; and the build that carries an unchanged service over whole.

use super::Source;
use super::endpoint::{Endpoint, Member};
use super::health::{self, Ejection, ServiceHealth, Verdict};
use super::snapshot::Inputs;
use super::stats::ServiceStats;
use crate::balance::{self, Pick, Policy};
use crate::config::{EndpointConfig, HealthConfig, OutlierConfig, ServiceConfig, ServiceDiscovery};
use crate::preamble::proxy_header::Version;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A service ready for the hot path: its members and a built balancer.
#[derive(Debug)]
pub struct Service {
    /// The service's name.
    pub name: String,
    /// How long one connect attempt may take.
    pub connect_timeout: Duration,
    /// Close a connection with no bytes either way for this long.
    pub idle_timeout: Duration,
    /// Distinct endpoints tried for one client.
    pub connect_attempts: u32,
    /// Below this percentage of usable endpoints, ignore health.
    pub panic_threshold: u8,
    /// Open connections allowed to each endpoint.
    pub max_connections_per_endpoint: Option<u64>,
    /// Active health checks, if on.
    pub health: Option<HealthConfig>,
    /// Passive outlier ejection, if on.
    pub outlier: Option<OutlierConfig>,
    /// The PROXY protocol header written on every upstream connection (and,
    /// as LOCAL, on every health probe), if any.
    pub send_proxy: Option<Version>,
    /// The endpoints: the file's in file order, then registered ones.
    pub members: Vec<Member>,
    /// Per-worker counters, kept across rebuilds of the service.
    pub stats: Arc<ServiceStats>,
    /// Ejection guard and log limits, kept across rebuilds of the service.
    pub shared: Arc<ServiceHealth>,
    /// Members that are not draining: the whole for panic and ejection shares.
    eligible: usize,
    /// Failover tiers in use (1 + the highest member tier).
    tiers: u16,
    /// Member index by address, so that rebuilding a service of n members
    /// from the previous one costs O(n), not O(n²).
    by_addr: HashMap<SocketAddr, usize>,
    policy: Box<dyn Policy>,
    /// The file's settings this was built from, to reuse it when unchanged.
    config: ServiceConfig,
}

/// A member picked for one connect attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Its index in [`Service::members`].
    pub index: usize,
    /// Picked in panic mode: health was ignored.
    pub panic: bool,
}

/// Why one connect failure was not followed by an ejection even though the
/// streak reached `consecutive_failures`, or the ejection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outlier {
    /// Ejected now.
    Ejected(Ejection),
    /// Too many of the service's endpoints are ejected already: `ejected`
    /// of `total` at `max_ejection_percent`.
    CannotSpare {
        /// Ejected now.
        ejected: usize,
        /// Members that are not draining.
        total: usize,
    },
}

impl Service {
    /// Picks a member for a connection from `client`, never one for which
    /// `tried(index)` is true, a draining one or a full one
    /// (`max_connections_per_endpoint`). Unless the service is in panic mode
    /// ([`health::panic::engaged`]), never an unhealthy or ejected one
    /// either; in panic mode health (and tiers) are ignored and
    /// `Choice::panic` is set. Members of tier n are picked only when no
    /// member of a lower tier is usable.
    /// `retry` marks a failover pick for a client whose last endpoint failed.
    pub fn choose(
        &self,
        client: IpAddr,
        retry: bool,
        tried: &dyn Fn(usize) -> bool,
    ) -> Option<Choice> {
        let full = |i: usize| {
            self.max_connections_per_endpoint
                .is_some_and(|max| self.members[i].endpoint.active() >= max)
        };
        let open = |i: usize| self.members[i].draining || full(i) || tried(i);
        let pick = |retry: bool, skip: &dyn Fn(usize) -> bool| {
            self.policy.pick(&Pick {
                client,
                retry,
                skip,
                active: &|i| self.members[i].endpoint.active(),
            })
        };
        let usual = |i: usize| !open(i) && self.members[i].endpoint.health.is_usable();
        // Tier by tier: a higher tier serves only while no lower one can.
        let usual_pick = |retry: bool| {
            if self.tiers <= 1 {
                return pick(retry, &|i| !usual(i));
            }
            (0..self.tiers).find_map(|t| pick(retry, &|i| self.members[i].tier != t || !usual(i)))
        };
        let mut retry = retry;
        if self.panic_threshold == 0 {
            // Panic only when nothing is usable: try the usual pick first,
            // so the common case never counts the members.
            if let Some(index) = usual_pick(retry) {
                return Some(Choice {
                    index,
                    panic: false,
                });
            }
            if !health::panic::engaged(self.usable(), self.eligible, 0) {
                return None;
            }
            // The pick above took this client's turn already.
            retry = true;
        } else if !health::panic::engaged(self.usable(), self.eligible, self.panic_threshold) {
            return usual_pick(retry).map(|index| Choice {
                index,
                panic: false,
            });
        }
        if let Some(held_back) = self.shared.panic_log.allow() {
            let since = if held_back > 0 {
                format!(" ({held_back} more panic pick(s) since the last line)")
            } else {
                String::new()
            };
            log::warn!(
                "service {}: panic mode: {} of {} endpoint(s) usable (panic_threshold {}%); \
                 balancing over all of them, ignoring health{since}",
                self.name,
                self.usable(),
                self.eligible,
                self.panic_threshold
            );
        }
        pick(retry, &open).map(|index| Choice { index, panic: true })
    }

    /// Members usable as far as health goes (not draining, checks up, not
    /// ejected).
    pub fn usable(&self) -> usize {
        self.members
            .iter()
            .filter(|m| !m.draining && m.endpoint.health.is_usable())
            .count()
    }

    /// Counts a successful connect to member `index` for outlier detection.
    #[inline]
    pub fn connect_succeeded(&self, index: usize) {
        self.members[index].endpoint.health.connect_succeeded();
    }

    /// Counts a failed connect to member `index` at `now_ms` and ejects it
    /// when its streak reaches `consecutive_failures` and the service can
    /// spare it. `None`: nothing to report (no outlier detection, a short
    /// streak, already ejected, or another worker deciding an ejection right
    /// now, in which case the next failure tries again).
    pub fn connect_failed(&self, index: usize, now_ms: u64) -> Option<Outlier> {
        let outlier = self.outlier.as_ref()?;
        let health = &self.members[index].endpoint.health;
        let streak = health.connect_failed();
        if !health::outlier::reached(streak, outlier.consecutive_failures.get())
            || health.is_ejected()
        {
            return None;
        }
        let _deciding = self.shared.try_eject()?;
        let ejected = self
            .members
            .iter()
            .filter(|m| !m.draining && m.endpoint.health.is_ejected())
            .count();
        if !health::outlier::may_eject(ejected, self.eligible, outlier.max_ejection_percent) {
            return Some(Outlier::CannotSpare {
                ejected,
                total: self.eligible,
            });
        }
        Some(Outlier::Ejected(health.eject(
            now_ms,
            outlier.base_ejection,
            outlier.max_ejection,
        )))
    }

    /// Where the service takes endpoints from besides the file and the
    /// registry.
    pub fn discovery(&self) -> Option<&ServiceDiscovery> {
        self.config.discovery.as_ref()
    }

    /// The member at `addr`.
    pub fn member(&self, addr: SocketAddr) -> Option<&Member> {
        self.by_addr.get(&addr).map(|&i| &self.members[i])
    }

    /// Builds the service, or reuses `previous` whole (balancer position
    /// included) when nothing about it changed.
    pub(super) fn build(
        config: &ServiceConfig,
        inputs: &dyn Inputs,
        previous: Option<&Arc<Service>>,
        workers: usize,
    ) -> Arc<Service> {
        // An endpoint that joins a service already serving waits for its
        // first passed check; a new service's endpoints (at start, or a
        // service a reload adds) start up, or nothing could serve until the
        // first round of probes.
        let verdict = if previous.is_some() && config.health.is_some() {
            Verdict::Pending
        } else {
            Verdict::Up
        };
        let endpoint = |addr: SocketAddr| {
            previous
                .and_then(|p| p.member(addr))
                .map(|m| Arc::clone(&m.endpoint))
                .unwrap_or_else(|| Arc::new(Endpoint::new(addr, workers, verdict)))
        };
        let draining = |addr| inputs.is_drained(&config.name, addr);
        let mut members: Vec<Member> = config
            .endpoints
            .iter()
            .map(|e| Member {
                endpoint: endpoint(e.addr),
                weight: e.weight,
                source: Source::File,
                draining: draining(e.addr),
                tier: 0,
            })
            .collect();
        // An address two sources report is the first one's (file, registry,
        // etcd, DNS): one member per address.
        let mut seen: HashSet<SocketAddr> = config.endpoints.iter().map(|e| e.addr).collect();
        for source in [Source::Registry, Source::Etcd, Source::Dns] {
            let wanted = match source {
                Source::Etcd => matches!(config.discovery, Some(ServiceDiscovery::Etcd)),
                Source::Dns => matches!(config.discovery, Some(ServiceDiscovery::Srv { .. })),
                Source::File | Source::Registry => true,
            };
            if !wanted {
                continue;
            }
            for found in inputs.endpoints(&config.name, source) {
                if seen.insert(found.addr) {
                    members.push(Member {
                        endpoint: endpoint(found.addr),
                        weight: found.weight,
                        source,
                        draining: draining(found.addr),
                        tier: found.tier,
                    });
                }
            }
        }
        if let Some(previous) = previous {
            let same = previous.config == *config
                && previous.members.len() == members.len()
                && previous
                    .members
                    .iter()
                    .zip(&members)
                    .all(|(a, b)| a.identity() == b.identity());
            if same {
                return Arc::clone(previous);
            }
        }
        let endpoints: Vec<EndpointConfig> = members
            .iter()
            .map(|m| EndpointConfig {
                addr: m.endpoint.addr,
                weight: m.weight,
            })
            .collect();
        Arc::new(Service {
            name: config.name.clone(),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            connect_attempts: config.connect_attempts.get(),
            panic_threshold: config.panic_threshold,
            max_connections_per_endpoint: config.max_connections_per_endpoint,
            health: config.health.clone(),
            outlier: config.outlier.clone(),
            send_proxy: config.send_proxy,
            policy: balance::build(config.balance, &endpoints),
            eligible: members.iter().filter(|m| !m.draining).count(),
            tiers: members.iter().map(|m| m.tier + 1).max().unwrap_or(1),
            by_addr: members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.endpoint.addr, i))
                .collect(),
            members,
            stats: previous.map_or_else(
                || Arc::new(ServiceStats::new(workers)),
                |p| Arc::clone(&p.stats),
            ),
            shared: previous.map_or_else(Arc::default, |p| Arc::clone(&p.shared)),
            config: config.clone(),
        })
    }
}
