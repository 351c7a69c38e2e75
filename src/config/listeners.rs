//! Validates `[listeners.*]`: the address, the route (one `service`, or
//! `sni` rules with a `default_service`), `accept_proxy` and its keys, and
//! the limits, each problem with its key path and fix.

use super::file::{FileConfig, FileListener};
use super::listener::{
    ClientLimits, ListenerConfig, ListenerRoute, ProxyAccept, Rate, SniRouting, Untrusted,
};
use super::names::table_key;
use super::sni;
use super::validate::{MAX_CONNECTIONS, Problems, check_name, flip, quoted};
use super::Cidr;
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
        ("client_hello_timeout", listener.client_hello_timeout.is_some()),
        ("client_hello_max_size", listener.client_hello_max_size.is_some()),
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
            ("proxy_header_timeout", listener.proxy_header_timeout.is_some()),
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
