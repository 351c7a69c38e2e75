//! A validated `[listeners.NAME]`: where it listens, how it picks the
//! service (one fixed service, or SNI rules), the PROXY protocol header it
//! expects, and its connection limits.

use super::cidr::Cidr;
use crate::preamble::proxy_header::Accept;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One `[listeners.NAME]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// The table name: `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// How a connection's service is picked (every service named is known
    /// to exist).
    pub route: ListenerRoute,
    /// Open client connections allowed at once across all workers; a client
    /// over the limit is accepted and closed at once.
    pub max_connections: Option<u64>,
    /// The PROXY protocol header trusted clients send, if any.
    pub accept_proxy: Option<ProxyAccept>,
    /// Limits per client address (after the PROXY header), if any.
    pub per_client: Option<ClientLimits>,
}

impl ListenerConfig {
    /// Every service this listener may send a connection to.
    pub fn services(&self) -> Vec<&str> {
        match &self.route {
            ListenerRoute::Service(name) => vec![name],
            ListenerRoute::Sni(sni) => sni
                .rules
                .iter()
                .map(|r| r.service.as_str())
                .chain(sni.default_service.as_deref())
                .collect(),
        }
    }
}

/// How a listener picks the service of a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenerRoute {
    /// Every connection goes to this service.
    Service(String),
    /// By the TLS ClientHello's server name.
    Sni(SniRouting),
}

/// `sni`, `default_service` and the ClientHello's bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct SniRouting {
    /// The rules in file order.
    pub rules: Vec<SniRule>,
    /// Where no SNI, no match, not TLS or a bad hello go; none: reset.
    pub default_service: Option<String>,
    /// How long the whole ClientHello may take to arrive.
    pub timeout: Duration,
    /// The most bytes read to find it.
    pub max_size: usize,
}

/// One SNI rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRule {
    /// Lower-case server names and `*.` wildcards.
    pub names: Vec<String>,
    /// The service it routes to.
    pub service: String,
    /// ALPN protocols one of which the client must offer; empty for any.
    pub alpn: Vec<String>,
}

impl SniRule {
    /// The rule's label in metrics: its first name, and its ALPN protocols
    /// when it has some (`api.example.com;alpn=h2`): unique among a
    /// listener's rules, and bounded by the config, never a client's raw
    /// name.
    pub fn label(&self) -> String {
        let first = self.names.first().map_or("", String::as_str);
        if self.alpn.is_empty() {
            first.to_string()
        } else {
            format!("{first};alpn={}", self.alpn.join(","))
        }
    }
}

/// `accept_proxy` and the keys that go with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyAccept {
    /// The header versions taken.
    pub versions: Accept,
    /// Clients that must send the header.
    pub trusted: Vec<Cidr>,
    /// What becomes of the others.
    pub untrusted: Untrusted,
    /// How long a trusted client may take to send its whole header.
    pub timeout: Duration,
}

impl ProxyAccept {
    /// Whether a client at `ip` must send the header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// `untrusted_sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untrusted {
    /// Reset at once and counted (the default).
    Reject,
    /// Served as a plain client, under its own address.
    Plain,
}

/// The per-client limits of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// Open connections at once per client.
    pub max_connections: Option<u32>,
    /// New connections per client over time.
    pub rate: Option<Rate>,
    /// IPv4 addresses sharing this many leading bits are one client.
    pub prefix_v4: u8,
    /// IPv6 addresses sharing this many leading bits are one client.
    pub prefix_v6: u8,
}

/// A token bucket: `count` connections per `per`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Connections per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
    /// Connections allowed back to back.
    pub burst: u32,
}

impl Rate {
    /// Parses `"N/s"`, `"N/m"` or `"N/h"` (N from 1 to 1,000,000), with a
    /// burst of N.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let (count, unit) = text
            .split_once('/')
            .ok_or("not a rate: write a count and a unit, like \"50/s\" or \"600/m\"")?;
        let per = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => {
                return Err(format!(
                    "unknown unit {unit:?}: use s, m or h, like \"50/s\""
                ));
            }
        };
        match count.parse::<u32>() {
            Ok(count) if (1..=1_000_000).contains(&count) => Ok(Rate {
                count,
                per,
                burst: count,
            }),
            _ => Err(format!(
                "{count:?} is not a count from 1 to 1000000, like \"50/s\""
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_parse_rates_per_second_minute_and_hour_with_a_burst_of_n() {
        let second = Duration::from_secs(1);
        assert_eq!(
            Rate::parse("50/s"),
            Ok(Rate {
                count: 50,
                per: second,
                burst: 50
            })
        );
        assert_eq!(Rate::parse("600/m").map(|r| r.per), Ok(second * 60));
        assert_eq!(Rate::parse("1/h").map(|r| r.per), Ok(second * 3600));
    }

    #[test]
    fn it_should_refuse_rates_without_a_count_or_unit() {
        for bad in ["50", "0/s", "50/d", "-1/s", "/s", "1000001/s", "x/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }
}
