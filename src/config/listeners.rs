//! Validates `[listeners.*]`: the address, the route (one `service`, or
//! `sni` rules with a `default_service`), `accept_proxy` and its keys, and
//! the limits, each problem with its key path and fix.

use super::Cidr;
use super::file::{FileConfig, FileListener};
use super::listener::{
    ClientLimits, ListenerConfig, ListenerRoute, ProxyAccept, Rate, SniRouting, Untrusted,
};
use super::names::table_key;
use super::sni;
use super::validate::{MAX_CONNECTIONS, Problems, check_name, flip, quoted};
use crate::preamble::proxy_header::Accept;
use std::net::SocketAddr;
use std::time::Duration;

/// `proxy_header_timeout` and `client_hello_timeout` when absent (HAProxy's
/// `timeout client` for a header is usually about this).
pub const DEFAULT_PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);

/// `client_hello_max_size` when absent: 16 KiB, room for post-quantum key
/// shares in one hello.
pub const DEFAULT_CLIENT_HELLO_MAX: usize = 16 * 1024;

/// Validates every listener; a listener with a problem is left out (and
/// the problem reported).
pub(super) fn listeners(file: &FileConfig, problems: &mut Problems) -> Vec<ListenerConfig> {
    let mut out: Vec<ListenerConfig> = Vec::new();
    for (name, listener) in &file.listeners {
        check_name("listeners", name, "", problems);
        let key = table_key("listeners", name);
        let Some(config) = one(file, name, &key, listener, problems) else {
            continue;
        };
        if let Some(other) = out
            .iter()
            .find(|l| same_listen_address(l.listen, config.listen))
        {
            problems.push(
                &format!("{key}.listen"),
                quoted(&listener.listen),
                &format!(
                    "listeners.{} already listens on {}",
                    other.name, other.listen
                ),
                "give each listener its own address or port",
            );
            continue;
        }
        out.push(config);
    }
    out
}

fn one(
    file: &FileConfig,
    name: &str,
    key: &str,
    listener: &FileListener,
    problems: &mut Problems,
) -> Option<ListenerConfig> {
    let listen = problems.address(&format!("{key}.listen"), &listener.listen, true);
    let limit = listener.max_connections.map(|n| {
        problems.integer(
            &format!("{key}.max_connections"),
            n,
            1,
            MAX_CONNECTIONS,
            "use the most clients this listener may hold open at once, or remove the key \
             for no limit",
        )
    });
    let route = route(file, key, listener, problems);
    let accept_proxy = accept_proxy(key, listener, problems);
    let per_client = per_client(key, listener, problems);
    Some(ListenerConfig {
        name: name.to_string(),
        listen: listen?,
        route: route?,
        max_connections: flip(limit)?.map(|n| n as u64),
        accept_proxy: accept_proxy?,
        per_client: per_client?,
    })
}

/// Reports `service` (at `key`) when no `[services.*]` table has that name.
pub(super) fn known_service(file: &FileConfig, key: &str, service: &str, problems: &mut Problems) {
    if file.services.contains_key(service) {
        return;
    }
    let known: Vec<_> = file.services.keys().map(String::as_str).collect();
    let fix = if known.is_empty() {
        format!("add a [services.{service}] table")
    } else {
        format!(
            "use one of: {}, or add a [services.{service}] table",
            known.join(", ")
        )
    };
    problems.push(key, quoted(service), "no service has this name", &fix);
}

fn route(
    file: &FileConfig,
    key: &str,
    listener: &FileListener,
    problems: &mut Problems,
) -> Option<ListenerRoute> {
    let sni_only = [
        ("default_service", listener.default_service.is_some()),
        (
            "client_hello_timeout",
            listener.client_hello_timeout.is_some(),
        ),
        (
            "client_hello_max_size",
            listener.client_hello_max_size.is_some(),
        ),
    ];
    match (&listener.service, &listener.sni) {
        (Some(service), None) => {
            for (extra, _) in sni_only.iter().filter(|(_, set)| *set) {
                problems.push(
                    &format!("{key}.{extra}"),
                    "(set)",
                    "it applies only to a listener that routes by `sni`",
                    "remove it, or replace `service` with `sni` rules",
                );
            }
            known_service(file, &format!("{key}.service"), service, problems);
            Some(ListenerRoute::Service(service.clone()))
        }
        (Some(service), Some(_)) => {
            problems.push(
                &format!("{key}.service"),
                quoted(service),
                "a listener routes either to one `service` or by `sni` rules, not both",
                "remove `service`; name the service for unmatched clients in `default_service`",
            );
            None
        }
        (None, None) => {
            problems.push(
                key,
                "(no service)",
                "a listener needs a `service`, or `sni` rules",
                "add service = \"NAME\" naming a [services.NAME] table",
            );
            None
        }
        (None, Some(rules)) => {
            let rules = sni::rules(file, key, rules, problems);
            let default_service = listener.default_service.as_ref().map(|s| {
                known_service(file, &format!("{key}.default_service"), s, problems);
                s.clone()
            });
            let timeout = preamble_timeout(
                &format!("{key}.client_hello_timeout"),
                listener.client_hello_timeout.as_deref(),
                problems,
            );
            let max_size = match listener.client_hello_max_size {
                None => Some(DEFAULT_CLIENT_HELLO_MAX),
                Some(n) => problems
                    .integer(
                        &format!("{key}.client_hello_max_size"),
                        n,
                        512,
                        256 * 1024,
                        "use 16384 (the default), or up to 262144 for very large hellos",
                    )
                    .map(|n| n as usize),
            };
            Some(ListenerRoute::Sni(SniRouting {
                rules: rules?,
                default_service,
                timeout: timeout?,
                max_size: max_size?,
            }))
        }
    }
}

fn preamble_timeout(key: &str, text: Option<&str>, problems: &mut Problems) -> Option<Duration> {
    match text {
        None => Some(DEFAULT_PREAMBLE_TIMEOUT),
        Some(text) => problems.duration(key, text, Duration::from_millis(1)),
    }
}

fn accept_proxy(
    key: &str,
    listener: &FileListener,
    problems: &mut Problems,
) -> Option<Option<ProxyAccept>> {
    let Some(versions) = &listener.accept_proxy else {
        let extras = [
            ("trusted_sources", listener.trusted_sources.is_some()),
            ("untrusted_sources", listener.untrusted_sources.is_some()),
            (
                "proxy_header_timeout",
                listener.proxy_header_timeout.is_some(),
            ),
        ];
        let mut fine = true;
        for (extra, _) in extras.iter().filter(|(_, set)| *set) {
            fine = false;
            problems.push(
                &format!("{key}.{extra}"),
                "(set)",
                "it applies only with `accept_proxy`",
                "add accept_proxy = \"v1\", \"v2\" or \"any\", or remove it",
            );
        }
        return fine.then_some(None);
    };
    let versions = match versions.as_str() {
        "v1" => Some(Accept::V1),
        "v2" => Some(Accept::V2),
        "any" => Some(Accept::Any),
        _ => {
            problems.push(
                &format!("{key}.accept_proxy"),
                quoted(versions),
                "not a PROXY protocol version",
                "use \"v1\", \"v2\" or \"any\"",
            );
            None
        }
    };
    let trusted = match &listener.trusted_sources {
        None => {
            problems.push(
                &format!("{key}.trusted_sources"),
                "(missing)",
                "`accept_proxy` needs the addresses allowed to send a header: a header from \
                 anyone else would let any client claim any address",
                "add trusted_sources = [\"10.0.0.0/8\"] listing your load balancers",
            );
            None
        }
        Some(list) => {
            let mut out = Vec::new();
            let mut fine = true;
            for (i, text) in list.iter().enumerate() {
                match Cidr::parse(text) {
                    Ok(cidr) => out.push(cidr),
                    Err(why) => {
                        fine = false;
                        problems.push(
                            &format!("{key}.trusted_sources[{i}]"),
                            quoted(text),
                            &why,
                            "write an address or a prefix, like \"10.0.0.0/8\" or \"::1\"",
                        );
                    }
                }
            }
            if list.is_empty() {
                fine = false;
                problems.push(
                    &format!("{key}.trusted_sources"),
                    "[]",
                    "no client could send a header",
                    "list your load balancers' addresses, or remove `accept_proxy`",
                );
            }
            fine.then_some(out)
        }
    };
    let untrusted = match listener.untrusted_sources.as_deref() {
        None | Some("reject") => Some(Untrusted::Reject),
        Some("plain") => Some(Untrusted::Plain),
        Some(other) => {
            problems.push(
                &format!("{key}.untrusted_sources"),
                quoted(other),
                "not a way to treat untrusted clients",
                "use \"reject\" (reset them) or \"plain\" (serve them under their own address)",
            );
            None
        }
    };
    let timeout = preamble_timeout(
        &format!("{key}.proxy_header_timeout"),
        listener.proxy_header_timeout.as_deref(),
        problems,
    );
    Some(Some(ProxyAccept {
        versions: versions?,
        trusted: trusted?,
        untrusted: untrusted?,
        timeout: timeout?,
    }))
}

fn per_client(
    key: &str,
    listener: &FileListener,
    problems: &mut Problems,
) -> Option<Option<ClientLimits>> {
    let max_connections = listener.max_connections_per_client.map(|n| {
        problems.integer(
            &format!("{key}.max_connections_per_client"),
            n,
            1,
            MAX_CONNECTIONS,
            "use the most connections one client may hold open at once",
        )
    });
    let rate = listener.connection_rate_per_client.as_ref().map(|text| {
        Rate::parse(text)
            .map_err(|why| {
                problems.push(
                    &format!("{key}.connection_rate_per_client"),
                    quoted(text),
                    &why,
                    "write connections per second, minute or hour, like \"50/s\"",
                );
            })
            .ok()
    });
    let burst = listener.connection_burst_per_client.map(|n| {
        problems.integer(
            &format!("{key}.connection_burst_per_client"),
            n,
            1,
            1_000_000,
            "use the most connections one client may open back to back",
        )
    });
    let prefix_v4 = listener.client_prefix_v4.map(|n| {
        problems.integer(
            &format!("{key}.client_prefix_v4"),
            n,
            0,
            32,
            "use 32 (each address is a client) or a shorter prefix such as 24",
        )
    });
    let prefix_v6 = listener.client_prefix_v6.map(|n| {
        problems.integer(
            &format!("{key}.client_prefix_v6"),
            n,
            0,
            128,
            "use 128 (each address is a client) or a shorter prefix such as 64",
        )
    });
    let (max_connections, rate, burst) = (flip(max_connections)?, flip(rate)?, flip(burst)?);
    let (prefix_v4, prefix_v6) = (flip(prefix_v4)?, flip(prefix_v6)?);
    if rate.is_none() && burst.is_some() {
        problems.push(
            &format!("{key}.connection_burst_per_client"),
            burst.unwrap_or_default(),
            "a burst applies only with `connection_rate_per_client`",
            "add connection_rate_per_client = \"N/s\", or remove it",
        );
        return None;
    }
    if max_connections.is_none() && rate.is_none() {
        if prefix_v4.is_some() || prefix_v6.is_some() {
            problems.push(
                &format!("{key}.client_prefix_v4"),
                "(set)",
                "a client prefix applies only with a per-client limit",
                "add max_connections_per_client or connection_rate_per_client, or remove it",
            );
            return None;
        }
        return Some(None);
    }
    Some(Some(ClientLimits {
        max_connections: max_connections.map(|n| n as u32),
        rate: rate.map(|r| Rate {
            burst: burst.map_or(r.burst, |b| b as u32),
            ..r
        }),
        prefix_v4: prefix_v4.map_or(32, |n| n as u8),
        prefix_v6: prefix_v6.map_or(128, |n| n as u8),
    }))
}

/// Two listen addresses collide when their ports match (port 0 asks the
/// kernel for a fresh one, so it never collides) and their IPs match or
/// either is the wildcard of the same family.
fn same_listen_address(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, ListenerRoute, Rate, Untrusted};
    use crate::preamble::proxy_header::Accept;
    use std::path::Path;
    use std::time::Duration;

    const SERVICES: &str = "[services.api]\n[services.web]\n";

    fn parse(listener: &str) -> Result<Config, Vec<String>> {
        let text = format!("[listeners.edge]\nlisten = \"127.0.0.1:0\"\n{listener}\n{SERVICES}");
        match Config::parse(&text, Path::new("t.toml")) {
            Ok(config) => Ok(config),
            Err(ConfigError::Invalid { problems, .. }) => {
                Err(problems.iter().map(|p| p.to_string()).collect())
            }
            Err(other) => panic!("not a validation error: {other}"),
        }
    }

    fn problems(listener: &str) -> Vec<String> {
        parse(listener).expect_err("the listener should be refused")
    }

    #[test]
    fn it_should_take_sni_rules_lower_cased_with_their_defaults() {
        let config = parse(
            r#"sni = [
                { names = ["API.example.com"], service = "api", alpn = ["h2"] },
                { names = ["*.example.com", "example.com"], service = "web" },
            ]
            default_service = "web""#,
        )
        .unwrap();
        let ListenerRoute::Sni(sni) = &config.listeners[0].route else {
            panic!("an SNI route");
        };
        assert_eq!(sni.rules[0].names, ["api.example.com"]);
        assert_eq!(sni.rules[0].label(), "api.example.com;alpn=h2");
        assert_eq!(sni.rules[1].label(), "*.example.com");
        assert_eq!(sni.default_service.as_deref(), Some("web"));
        assert_eq!(sni.timeout, Duration::from_secs(5));
        assert_eq!(sni.max_size, 16384);
        assert_eq!(config.listeners[0].services(), ["api", "web", "web"]);
    }

    #[test]
    fn it_should_refuse_bad_sni_rules_naming_the_key_path() {
        let found = problems(
            r#"sni = [
                { names = ["api.example.com"], service = "api" },
                { names = ["a.*.com", "API.example.com"], service = "nope" },
            ]
            default_service = "gone""#,
        );
        let joined = found.join("\n");
        assert!(
            joined.contains("listeners.edge.sni[1].names[0] = \"a.*.com\""),
            "{joined}"
        );
        assert!(
            joined.contains(
                "listeners.edge.sni[1].names[1] = \"API.example.com\": sni[0] already takes"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("listeners.edge.sni[1].service = \"nope\": no service"),
            "{joined}"
        );
        assert!(
            joined.contains("listeners.edge.default_service = \"gone\""),
            "{joined}"
        );
    }

    #[test]
    fn it_should_refuse_sni_with_service_and_a_listener_with_neither() {
        let both = problems("service = \"web\"\nsni = [{ names = [\"a.io\"], service = \"api\" }]");
        assert!(both[0].starts_with("listeners.edge.service = \"web\": a listener routes either"));
        let neither = problems("");
        assert!(neither[0].contains("a listener needs a `service`, or `sni` rules"));
        let stray = problems("service = \"web\"\ndefault_service = \"api\"");
        assert!(stray[0].starts_with("listeners.edge.default_service = (set): it applies only"));
    }

    #[test]
    fn it_should_take_accept_proxy_with_trusted_sources() {
        let config = parse(
            "service = \"web\"\naccept_proxy = \"any\"\ntrusted_sources = [\"10.0.0.0/8\", \"::1\"]\n\
             untrusted_sources = \"plain\"\nproxy_header_timeout = \"300ms\"",
        )
        .unwrap();
        let accept = config.listeners[0].accept_proxy.as_ref().unwrap();
        assert_eq!(accept.versions, Accept::Any);
        assert_eq!(accept.untrusted, Untrusted::Plain);
        assert_eq!(accept.timeout, Duration::from_millis(300));
        assert!(accept.trusts("10.1.2.3".parse().unwrap()));
        assert!(accept.trusts("::1".parse().unwrap()));
        assert!(!accept.trusts("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn it_should_refuse_accept_proxy_without_trusted_sources_or_with_bad_ones() {
        let missing = problems("service = \"web\"\naccept_proxy = \"v2\"");
        assert!(missing[0].starts_with("listeners.edge.trusted_sources = (missing)"));
        let bad = problems(
            "service = \"web\"\naccept_proxy = \"v3\"\ntrusted_sources = [\"10.0.0.1/8\"]\n\
             untrusted_sources = \"drop\"",
        );
        let joined = bad.join("\n");
        assert!(
            joined.contains("listeners.edge.accept_proxy = \"v3\""),
            "{joined}"
        );
        assert!(
            joined.contains("listeners.edge.trusted_sources[0] = \"10.0.0.1/8\": host bits"),
            "{joined}"
        );
        assert!(
            joined.contains("listeners.edge.untrusted_sources = \"drop\""),
            "{joined}"
        );
        let stray = problems("service = \"web\"\ntrusted_sources = [\"10.0.0.0/8\"]");
        assert!(stray[0].starts_with(
            "listeners.edge.trusted_sources = (set): it applies only with `accept_proxy`"
        ));
    }

    #[test]
    fn it_should_take_per_client_limits_with_a_burst_and_prefixes() {
        let config = parse(
            "service = \"web\"\nmax_connections_per_client = 4\nconnection_rate_per_client = \"50/s\"\n\
             connection_burst_per_client = 80\nclient_prefix_v4 = 24",
        )
        .unwrap();
        let limits = config.listeners[0].per_client.as_ref().unwrap();
        assert_eq!(limits.max_connections, Some(4));
        assert_eq!(
            limits.rate,
            Some(Rate {
                count: 50,
                per: Duration::from_secs(1),
                burst: 80
            })
        );
        assert_eq!((limits.prefix_v4, limits.prefix_v6), (24, 128));
    }

    #[test]
    fn it_should_refuse_per_client_settings_that_do_nothing_or_are_out_of_range() {
        let found = problems(
            "service = \"web\"\nconnection_rate_per_client = \"5/d\"\nclient_prefix_v6 = 129",
        );
        let joined = found.join("\n");
        assert!(
            joined.contains("listeners.edge.connection_rate_per_client = \"5/d\""),
            "{joined}"
        );
        assert!(
            joined.contains("listeners.edge.client_prefix_v6 = 129"),
            "{joined}"
        );
        let lonely = problems("service = \"web\"\nconnection_burst_per_client = 5");
        assert!(lonely[0].contains("a burst applies only with `connection_rate_per_client`"));
    }
}
