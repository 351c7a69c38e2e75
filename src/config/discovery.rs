//! `[discovery]` and each service's `discovery` key, validated: where
//! endpoints come from besides the file and the registry socket.

use super::file::{FileDiscovery, FileDns, FileEtcd, FileServiceDiscovery};
use super::names::table_key;
use super::validate::{Problems, quoted};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[discovery]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// `[discovery.etcd]`, when set.
    pub etcd: Option<EtcdConfig>,
    /// `[discovery.dns]` (defaults when absent: the system resolver).
    pub dns: DnsConfig,
}

/// `[discovery.etcd]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Member URLs, such as `http://127.0.0.1:2379`; at least one.
    pub endpoints: Vec<String>,
    /// The key prefix, ending in `/`: keys are
    /// `PREFIX/services/SERVICE/endpoints/ADDR`.
    pub prefix: String,
    /// Username and password, when etcd has authentication on.
    pub auth: Option<(String, String)>,
    /// TLS to etcd, when any of `ca`, `cert`, `key` is set.
    pub tls: Option<EtcdTls>,
    /// How long one connection attempt to etcd may take.
    pub dial_timeout: Duration,
}

/// TLS settings for etcd: files in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's certificate (else the system's roots).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// `[discovery.dns]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers to ask; empty: the system resolver (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// How long one query may take.
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// A service's `discovery` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceDiscovery {
    /// `discovery = "etcd"`: endpoints under `PREFIX/services/NAME/endpoints/`.
    Etcd,
    /// `discovery = { srv = NAME, refresh = D }`: the SRV records of `name`,
    /// asked again every `refresh` (sooner when their TTL is shorter).
    Srv {
        /// The SRV name, such as `_redis._tcp.example.internal`.
        name: String,
        /// The longest time between two queries.
        refresh: Duration,
    },
}

/// Validates `[discovery]`.
pub(super) fn discovery(file: &FileDiscovery, problems: &mut Problems) -> DiscoveryConfig {
    DiscoveryConfig {
        etcd: file.etcd.as_ref().and_then(|e| etcd(e, problems)),
        dns: file
            .dns
            .as_ref()
            .and_then(|d| dns(d, problems))
            .unwrap_or_default(),
    }
}

fn etcd(file: &FileEtcd, problems: &mut Problems) -> Option<EtcdConfig> {
    let mut ok = true;
    if file.endpoints.is_empty() {
        problems.push(
            "discovery.etcd.endpoints",
            "[]",
            "no etcd member to connect to",
            "list the client URLs of one or more etcd members, like [\"http://127.0.0.1:2379\"]",
        );
        ok = false;
    }
    for (i, url) in file.endpoints.iter().enumerate() {
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        let rest = url.split_once("://").map_or("", |(_, r)| r);
        if !scheme_ok || rest.is_empty() || rest.contains('/') {
            problems.push(
                &format!("discovery.etcd.endpoints[{i}]"),
                quoted(url),
                "not an etcd client URL",
                "write http://HOST:PORT (or https:// with TLS), like \"http://127.0.0.1:2379\"",
            );
            ok = false;
        }
    }
    if !file.prefix.starts_with('/') || !file.prefix.ends_with('/') {
        problems.push(
            "discovery.etcd.prefix",
            quoted(&file.prefix),
            "the prefix must start and end with /",
            "use a key prefix like \"/l4mesh/\"",
        );
        ok = false;
    }
    let auth = match (&file.username, &file.password) {
        (None, None) => None,
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (Some(_), None) | (None, Some(_)) => {
            problems.push(
                "discovery.etcd.username",
                "(one of username, password)",
                "a username needs a password and a password a username",
                "set both, or neither when etcd has authentication off",
            );
            ok = false;
            None
        }
    };
    let identity = match (&file.cert, &file.key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        _ => {
            problems.push(
                "discovery.etcd.cert",
                "(one of cert, key)",
                "a client certificate needs its key and a key its certificate",
                "set both cert and key for mutual TLS, or neither",
            );
            ok = false;
            None
        }
    };
    let tls = (file.ca.is_some() || identity.is_some()).then(|| EtcdTls {
        ca: file.ca.as_ref().map(PathBuf::from),
        identity,
    });
    let dial_timeout = problems.duration(
        "discovery.etcd.dial_timeout",
        &file.dial_timeout,
        Duration::from_millis(1),
    );
    Some(EtcdConfig {
        endpoints: file.endpoints.clone(),
        prefix: file.prefix.clone(),
        auth,
        tls,
        dial_timeout: dial_timeout?,
    })
    .filter(|_| ok)
}

fn dns(file: &FileDns, problems: &mut Problems) -> Option<DnsConfig> {
    let servers: Vec<Option<SocketAddr>> = file
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| problems.address(&format!("discovery.dns.servers[{i}]"), s, false))
        .collect();
    let timeout = problems.duration(
        "discovery.dns.timeout",
        &file.timeout,
        Duration::from_millis(1),
    );
    Some(DnsConfig {
        servers: servers.into_iter().collect::<Option<_>>()?,
        timeout: timeout?,
    })
}

/// Validates a service's `discovery` key (`key` is `services.NAME`).
pub(super) fn service_discovery(
    key: &str,
    file: &FileServiceDiscovery,
    problems: &mut Problems,
) -> Option<ServiceDiscovery> {
    let key = format!("{key}.discovery");
    match file {
        FileServiceDiscovery::Named(name) if name == "etcd" => Some(ServiceDiscovery::Etcd),
        FileServiceDiscovery::Named(name) => {
            problems.push(
                &key,
                quoted(name),
                "not a discovery source",
                "use \"etcd\", or { srv = \"_service._tcp.example.internal\", refresh = \"10s\" }",
            );
            None
        }
        FileServiceDiscovery::Srv(srv) => {
            let name = srv.srv.trim_end_matches('.');
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !valid {
                problems.push(
                    &format!("{key}.srv"),
                    quoted(&srv.srv),
                    "not a DNS name",
                    "write the SRV name, like \"_redis._tcp.example.internal\"",
                );
            }
            let refresh = problems.duration(
                &format!("{key}.refresh"),
                &srv.refresh,
                Duration::from_millis(100),
            );
            Some(ServiceDiscovery::Srv {
                name: srv.srv.clone(),
                refresh: refresh?,
            })
            .filter(|_| valid)
        }
    }
}

/// Checks that the source a service opts in to is configured.
pub(super) fn check_service(
    name: &str,
    file: &FileServiceDiscovery,
    discovery: &DiscoveryConfig,
    problems: &mut Problems,
) {
    if matches!(file, FileServiceDiscovery::Named(n) if n == "etcd") && discovery.etcd.is_none() {
        problems.push(
            &format!("{}.discovery", table_key("services", name)),
            "\"etcd\"",
            "the service asks for etcd, but [discovery.etcd] is not set (or is wrong)",
            "add [discovery.etcd] with endpoints = [\"http://HOST:2379\"], or remove the key",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ServiceDiscovery};
    use std::path::Path;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(text, Path::new("t.toml")).map_err(|e| match e {
            crate::config::ConfigError::Invalid { problems, .. } => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            other => vec![other.to_string()],
        })
    }

    #[test]
    fn it_should_read_etcd_and_srv_services_with_defaults() {
        let config = parse(
            "[discovery.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\
             [discovery.dns]\nservers = [\"127.0.0.1:5353\"]\n\
             [services.a]\ndiscovery = \"etcd\"\n\
             [services.b]\ndiscovery = { srv = \"_redis._tcp.example.internal\" }\n",
        )
        .unwrap();
        let etcd = config.discovery.etcd.as_ref().unwrap();
        assert_eq!(etcd.prefix, "/l4mesh/");
        assert_eq!(etcd.dial_timeout, Duration::from_secs(2));
        assert_eq!(etcd.auth, None);
        assert_eq!(etcd.tls, None);
        assert_eq!(
            config.discovery.dns.servers,
            vec!["127.0.0.1:5353".parse().unwrap()]
        );
        assert_eq!(
            config.service("a").unwrap().discovery,
            Some(ServiceDiscovery::Etcd)
        );
        assert_eq!(
            config.service("b").unwrap().discovery,
            Some(ServiceDiscovery::Srv {
                name: "_redis._tcp.example.internal".into(),
                refresh: Duration::from_secs(10),
            })
        );
    }

    #[test]
    fn it_should_name_the_key_value_and_fix_of_each_bad_discovery_setting() {
        let problems = parse(
            "[discovery.etcd]\nendpoints = [\"127.0.0.1:2379\"]\nprefix = \"l4mesh\"\n\
             username = \"u\"\n\
             [discovery.dns]\nservers = [\"localhost\"]\n\
             [services.a]\ndiscovery = \"consul\"\n\
             [services.b]\ndiscovery = { srv = \"bad name!\", refresh = \"1ms\" }\n",
        )
        .unwrap_err();
        let expect = [
            "discovery.etcd.endpoints[0] = \"127.0.0.1:2379\": not an etcd client URL",
            "discovery.etcd.prefix = \"l4mesh\": the prefix must start and end with /",
            "discovery.etcd.username",
            "discovery.dns.servers[0] = \"localhost\": not an IP:port address",
            "services.a.discovery = \"consul\": not a discovery source",
            "services.b.discovery.srv = \"bad name!\": not a DNS name",
            "services.b.discovery.refresh = \"1ms\"",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "{e} missing from {problems:#?}"
            );
        }
    }

    #[test]
    fn it_should_refuse_an_etcd_service_without_discovery_etcd() {
        let problems = parse("[services.a]\ndiscovery = \"etcd\"\n").unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("services.a.discovery = \"etcd\": the service asks for etcd"),
            "{problems:?}"
        );
        assert!(problems[0].contains("add [discovery.etcd]"), "{problems:?}");
    }
}
