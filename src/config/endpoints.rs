//! Endpoint addresses that can never be a useful upstream: ones no TCP
//! connection can go to, and l4mesh's own listeners (a forwarding loop in
//! which each client's connection comes back as a new client, until every
//! descriptor is taken).

use super::ListenerConfig;
use std::net::{IpAddr, SocketAddr};

/// Why no TCP connection can usefully go to `addr`'s IP, if so. An
/// IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
pub fn unusable_endpoint(addr: SocketAddr) -> Option<&'static str> {
    match addr.ip().to_canonical() {
        ip if ip.is_unspecified() => Some(
            "it is the wildcard address, which means \"any address\" to listen on and is no \
             upstream to connect to (Linux would connect to this host itself)",
        ),
        ip if ip.is_multicast() => Some("it is a multicast address, which TCP cannot connect to"),
        IpAddr::V4(ip) if ip.is_broadcast() => {
            Some("it is the broadcast address, which TCP cannot connect to")
        }
        _ => None,
    }
}

/// The listener a connection to `addr` would reach, if any: one listening
/// on this very address, or a wildcard listener of the same family on the
/// same port when `addr` is a loopback address. (The host's other addresses
/// also reach a wildcard listener, but which those are is the network's
/// business, not the file's.) Listeners on port 0 get a fresh port and
/// never match.
pub fn looping_listener(addr: SocketAddr, listeners: &[ListenerConfig]) -> Option<&ListenerConfig> {
    let ip = addr.ip().to_canonical();
    listeners.iter().find(|listener| {
        let listen = listener.listen;
        listen.port() != 0
            && listen.port() == addr.port()
            && listen.is_ipv4() == ip.is_ipv4()
            && (listen.ip() == ip || (listen.ip().is_unspecified() && ip.is_loopback()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(listen: &str) -> ListenerConfig {
        ListenerConfig {
            name: "web".into(),
            listen: listen.parse().unwrap(),
            route: crate::config::ListenerRoute::Service("web".into()),
            max_connections: None,
            accept_proxy: None,
            per_client: None,
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn it_should_refuse_wildcard_multicast_and_broadcast_endpoints() {
        for bad in [
            "0.0.0.0:80",
            "[::]:80",
            "[::ffff:0.0.0.0]:80",
            "224.0.0.1:80",
            "239.1.2.3:80",
            "[ff02::1]:80",
            "255.255.255.255:80",
        ] {
            assert!(unusable_endpoint(addr(bad)).is_some(), "{bad}");
        }
        for good in [
            "127.0.0.1:80",
            "10.0.0.255:80",
            "[::1]:80",
            "[2001:db8::1]:80",
        ] {
            assert_eq!(unusable_endpoint(addr(good)), None, "{good}");
        }
    }

    #[test]
    fn it_should_find_the_listener_an_endpoint_would_loop_back_to() {
        let specific = [listener("127.0.0.1:8080")];
        assert!(looping_listener(addr("127.0.0.1:8080"), &specific).is_some());
        assert!(looping_listener(addr("[::ffff:127.0.0.1]:8080"), &specific).is_some());
        assert!(looping_listener(addr("127.0.0.1:8081"), &specific).is_none());
        assert!(looping_listener(addr("127.0.0.2:8080"), &specific).is_none());

        // A wildcard listener takes every loopback address of its family.
        let wildcard = [listener("0.0.0.0:8080")];
        assert!(looping_listener(addr("127.0.0.1:8080"), &wildcard).is_some());
        assert!(looping_listener(addr("127.9.9.9:8080"), &wildcard).is_some());
        assert!(looping_listener(addr("[::1]:8080"), &wildcard).is_none());
        assert!(looping_listener(addr("10.1.2.3:8080"), &wildcard).is_none());
        let wildcard6 = [listener("[::]:8080")];
        assert!(looping_listener(addr("[::1]:8080"), &wildcard6).is_some());
        // IPv6 listeners are v6-only: IPv4 clients never reach them.
        assert!(looping_listener(addr("127.0.0.1:8080"), &wildcard6).is_none());

        assert!(looping_listener(addr("127.0.0.1:0"), &[listener("127.0.0.1:0")]).is_none());
    }
}
