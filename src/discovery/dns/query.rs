//! One SRV query and the address lookups of its targets, through
//! `hickory-resolver`: what a refresh of one service asks the name servers.

use super::endpoints::{Target, endpoints};
use crate::config::{DnsConfig, unusable_endpoint};
use crate::routing::Discovered;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Why a refresh has no new answer. Every one keeps the service's last
/// endpoints.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The system resolver's settings could not be read.
    #[error(
        "cannot read the system resolver's settings ({0}); fix /etc/resolv.conf \
         or list name servers in [discovery.dns] servers"
    )]
    NoResolver(String),
    /// The SRV name does not exist.
    #[error("the name does not exist (NXDOMAIN)")]
    NxDomain,
    /// The name exists but has no SRV record.
    #[error(
        "the name has no SRV record (an empty NOERROR answer); to empty the \
         service on purpose publish one SRV record with target \".\""
    )]
    NoRecords,
    /// The SRV query failed: a timeout, SERVFAIL, REFUSED, a socket error.
    #[error("{0}")]
    Failed(NetError),
    /// A target's address lookup failed (not "no such address": a failure).
    #[error("looking up the addresses of target {target} failed: {error}")]
    Target {
        /// The SRV target.
        target: String,
        /// What failed.
        error: NetError,
    },
    /// Records came back, but no target has an address (or a port).
    #[error("no SRV target has an address: {0}")]
    Unusable(String),
}

/// The result of a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The endpoints, as [`endpoints`] sorts them.
    pub endpoints: Vec<Discovered>,
    /// The shortest TTL among the SRV records and the address records used.
    pub ttl: Duration,
    /// Targets left out, with why ("db1.example.internal.:5432: no address").
    pub skipped: Vec<String>,
}

/// The resolver every SRV service of one `[discovery.dns]` shares, built on
/// first use (and again after a failure to read the system's settings).
#[derive(Debug)]
pub struct Resolver {
    config: DnsConfig,
    built: Mutex<Option<TokioResolver>>,
}

impl Resolver {
    /// A resolver for `config`, built when first asked.
    pub fn new(config: DnsConfig) -> Resolver {
        Resolver {
            config,
            built: Mutex::new(None),
        }
    }

    /// Whom it asks, for log lines.
    pub fn servers(&self) -> String {
        if self.config.servers.is_empty() {
            return "the system resolver (/etc/resolv.conf)".to_string();
        }
        let list: Vec<String> = self.config.servers.iter().map(|s| s.to_string()).collect();
        list.join(", ")
    }

    fn get(&self) -> Result<TokioResolver, QueryError> {
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(resolver) = built.as_ref() {
            return Ok(resolver.clone());
        }
        let resolver = build(&self.config)?;
        *built = Some(resolver.clone());
        Ok(resolver)
    }

    /// Asks for the SRV records of `name` (fully qualified) and the
    /// addresses of their targets, from the name servers, never from a
    /// cache.
    ///
    /// Addresses come from the answer's additional section when it has
    /// any for a target, else from A and AAAA queries. A target with no
    /// address, or port 0, is skipped, and so is an address no connection
    /// can go to (the wildcard, multicast, broadcast); a single record
    /// with target "." (RFC 2782: the service is decidedly not available)
    /// is an empty answer.
    pub async fn query(&self, name: &Name) -> Result<Answer, QueryError> {
        let resolver = self.get()?;
        let srv = fresh_lookup(&resolver, name, RecordType::SRV)
            .await
            .map_err(|e| match no_records(&e) {
                Some(ResponseCode::NXDomain) => QueryError::NxDomain,
                Some(_) => QueryError::NoRecords,
                None => QueryError::Failed(e),
            })?;
        let records: Vec<(&Record, _)> = srv
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((r, s)),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Err(QueryError::NoRecords);
        }
        let mut ttl = records.iter().map(|(r, _)| r.ttl).min().unwrap_or(0);
        if records.len() == 1 && records[0].1.target.is_root() {
            return Ok(Answer {
                endpoints: Vec::new(),
                ttl: seconds(ttl),
                skipped: Vec::new(),
            });
        }
        let mut addresses: BTreeMap<Name, Vec<IpAddr>> = BTreeMap::new();
        let mut targets = Vec::new();
        let mut skipped = Vec::new();
        for (_, s) in records.iter().filter(|(_, s)| !s.target.is_root()) {
            let where_ = format!("{}:{}", s.target, s.port);
            if s.port == 0 {
                skipped.push(format!("{where_}: port 0"));
                continue;
            }
            if !addresses.contains_key(&s.target) {
                let (addrs, addr_ttl) = match glue(&srv.additionals, &s.target) {
                    Some(found) => found,
                    None => resolve(&resolver, &s.target).await?,
                };
                if !addrs.is_empty() {
                    ttl = ttl.min(addr_ttl);
                }
                addresses.insert(s.target.clone(), addrs);
            }
            let found = addresses.get(&s.target).map_or(&[][..], Vec::as_slice);
            if found.is_empty() {
                skipped.push(format!("{where_}: no address (A or AAAA)"));
                continue;
            }
            let mut addrs = Vec::new();
            for ip in found {
                match unusable_endpoint(SocketAddr::new(*ip, s.port)) {
                    Some(why) => skipped.push(format!("{where_} at {ip}: {why}")),
                    None => addrs.push(*ip),
                }
            }
            if addrs.is_empty() {
                continue;
            }
            targets.push(Target {
                priority: s.priority,
                weight: s.weight,
                port: s.port,
                addrs,
            });
        }
        if targets.is_empty() {
            return Err(QueryError::Unusable(skipped.join(", ")));
        }
        Ok(Answer {
            endpoints: endpoints(&targets),
            ttl: seconds(ttl),
            skipped,
        })
    }
}

fn build(config: &DnsConfig) -> Result<TokioResolver, QueryError> {
    let mut builder = if config.servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| QueryError::NoResolver(e.to_string()))?
    } else {
        let servers = config
            .servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                // TCP for answers truncated over UDP.
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        // Only the listed servers decide, not /etc/hosts.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = config.timeout;
    // One retry of a lost datagram; the source's own backoff does the rest.
    options.attempts = 1;
    builder
        .build()
        .map_err(|e| QueryError::NoResolver(e.to_string()))
}

/// A lookup that really asks: the resolver's cached answer for the query,
/// if any, is dropped first, so the TTLs are the server's own.
async fn fresh_lookup(
    resolver: &TokioResolver,
    name: &Name,
    kind: RecordType,
) -> Result<hickory_resolver::proto::op::Message, NetError> {
    resolver.clear_lookup_cache(name.clone(), kind);
    let lookup = resolver.lookup(name.clone(), kind).await?;
    Ok(lookup.message().clone())
}

/// The response code of a "no records" answer (NXDOMAIN, or NOERROR with
/// nothing), or None for a real failure.
fn no_records(error: &NetError) -> Option<ResponseCode> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(n)) => Some(n.response_code),
        _ => None,
    }
}

/// The addresses of `target` in an additional section, with their shortest
/// TTL; None when it has none.
fn glue(additionals: &[Record], target: &Name) -> Option<(Vec<IpAddr>, u32)> {
    let found: Vec<(IpAddr, u32)> = additionals
        .iter()
        .filter(|r| &r.name == target)
        .filter_map(|r| address(r).map(|ip| (ip, r.ttl)))
        .collect();
    let ttl = found.iter().map(|(_, t)| *t).min()?;
    Some((found.into_iter().map(|(ip, _)| ip).collect(), ttl))
}

/// `target`'s A and AAAA addresses, with their shortest TTL. "No such
/// name" and "no such record" are no addresses; anything else fails.
async fn resolve(
    resolver: &TokioResolver,
    target: &Name,
) -> Result<(Vec<IpAddr>, u32), QueryError> {
    let (v4, v6) = tokio::join!(
        fresh_lookup(resolver, target, RecordType::A),
        fresh_lookup(resolver, target, RecordType::AAAA)
    );
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for result in [v4, v6] {
        match result {
            Ok(message) => {
                for record in &message.answers {
                    if let Some(ip) = address(record) {
                        addrs.push(ip);
                        ttl = ttl.min(record.ttl);
                    }
                }
            }
            Err(e) if no_records(&e).is_some() => {}
            Err(error) => {
                return Err(QueryError::Target {
                    target: target.to_string(),
                    error,
                });
            }
        }
    }
    Ok((addrs, ttl))
}

fn address(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

fn seconds(ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::{A, AAAA};

    fn record(name: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, data)
    }

    #[test]
    fn glue_takes_every_address_of_the_target_and_the_shortest_ttl() {
        let additionals = vec![
            record("a.example.", 30, RData::A(A::new(10, 0, 0, 1))),
            record("b.example.", 5, RData::A(A::new(10, 0, 0, 2))),
            record(
                "A.Example.",
                20,
                RData::AAAA(AAAA::new(0, 0, 0, 0, 0, 0, 0, 1)),
            ),
        ];
        let target = Name::from_ascii("a.example.").unwrap();
        let (addrs, ttl) = glue(&additionals, &target).unwrap();
        assert_eq!(
            addrs,
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(ttl, 20);
    }

    #[test]
    fn glue_is_none_when_the_target_has_no_address_there() {
        let additionals = vec![record("b.example.", 5, RData::A(A::new(10, 0, 0, 2)))];
        let target = Name::from_ascii("a.example.").unwrap();
        assert_eq!(glue(&additionals, &target), None);
        assert_eq!(glue(&[], &target), None);
    }
}
