//! The etcd key schema: `PREFIX/services/SERVICE/endpoints/ADDR`, whose
//! value is JSON `{"weight": N, "zone": "..."}` (both optional: weight 1 by
//! default, 1 to 256; an empty value means the defaults; other fields are
//! ignored, so registrants may add their own).

use crate::config::{MAX_WEIGHT, is_valid_name, unusable_endpoint};
use crate::routing::Discovered;
use serde::Deserialize;
use std::net::SocketAddr;

/// One key that names an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The service.
    pub service: String,
    /// The endpoint.
    pub addr: SocketAddr,
}

/// The value's fields l4mesh reads.
#[derive(Debug, Deserialize)]
struct Value {
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    zone: Option<String>,
}

/// The key `prefix` + `services/SERVICE/endpoints/ADDR` for an endpoint.
pub fn key(prefix: &str, service: &str, addr: SocketAddr) -> String {
    format!("{prefix}services/{service}/endpoints/{addr}")
}

/// Parses a key under `prefix`; the error says why it is not an endpoint
/// key. Keys outside `PREFIX/services/` are not l4mesh's: `Ok(None)`.
pub fn parse_key(prefix: &str, key: &[u8]) -> Result<Option<Key>, String> {
    let Ok(key) = std::str::from_utf8(key) else {
        return Err("the key is not UTF-8".into());
    };
    let Some(rest) = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix("services/"))
    else {
        return Ok(None);
    };
    let mut parts = rest.splitn(3, '/');
    let (Some(service), Some("endpoints"), Some(addr)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "not {prefix}services/SERVICE/endpoints/ADDR (ADDR as IP:port, [v6]:port for IPv6)"
        ));
    };
    if !is_valid_name(service) {
        return Err(format!(
            "service `{}` is not a name of letters, digits, `_`, `.` and `-`",
            service.escape_debug()
        ));
    }
    let addr: SocketAddr = addr.parse().map_err(|_| {
        format!(
            "`{}` is not an IP:port address (host names are not resolved)",
            addr.escape_debug()
        )
    })?;
    if addr.port() == 0 {
        return Err("port 0 cannot be connected to".into());
    }
    if let Some(why) = unusable_endpoint(addr) {
        return Err(why.to_string());
    }
    Ok(Some(Key {
        service: service.to_string(),
        addr,
    }))
}

/// Parses an endpoint's value into what the routing table takes.
pub fn parse_value(addr: SocketAddr, value: &[u8]) -> Result<(Discovered, Option<String>), String> {
    let parsed = if value.iter().all(u8::is_ascii_whitespace) {
        Value {
            weight: None,
            zone: None,
        }
    } else {
        serde_json::from_slice::<Value>(value)
            .map_err(|e| format!("the value is not JSON like {{\"weight\": 2}}: {e}"))?
    };
    let weight = parsed.weight.unwrap_or(1);
    if !(1..=i64::from(MAX_WEIGHT)).contains(&weight) {
        return Err(format!("weight {weight} is not from 1 to {MAX_WEIGHT}"));
    }
    Ok((
        Discovered {
            addr,
            weight: weight as u32,
            tier: 0,
        },
        parsed.zone,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/l4mesh/";

    #[test]
    fn it_should_read_endpoint_keys_and_ignore_other_keys() {
        let k = parse_key(P, b"/l4mesh/services/web/endpoints/127.0.0.1:9001").unwrap();
        assert_eq!(
            k,
            Some(Key {
                service: "web".into(),
                addr: "127.0.0.1:9001".parse().unwrap()
            })
        );
        let v6 = parse_key(P, b"/l4mesh/services/web/endpoints/[::1]:80").unwrap();
        assert_eq!(v6.unwrap().addr, "[::1]:80".parse().unwrap());
        assert_eq!(parse_key(P, b"/l4mesh/locks/x").unwrap(), None);
        assert_eq!(
            key(P, "web", "[::1]:80".parse().unwrap()),
            "/l4mesh/services/web/endpoints/[::1]:80"
        );
    }

    #[test]
    fn it_should_say_why_a_key_is_not_an_endpoint() {
        for (key, why) in [
            (
                "/l4mesh/services/web",
                "not /l4mesh/services/SERVICE/endpoints/ADDR",
            ),
            (
                "/l4mesh/services/web/backends/1.2.3.4:1",
                "not /l4mesh/services",
            ),
            ("/l4mesh/services/we b/endpoints/1.2.3.4:1", "is not a name"),
            (
                "/l4mesh/services/web/endpoints/db.internal:5432",
                "not an IP:port",
            ),
            ("/l4mesh/services/web/endpoints/1.2.3.4:0", "port 0"),
            ("/l4mesh/services/web/endpoints/0.0.0.0:80", "wildcard"),
        ] {
            let err = parse_key(P, key.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{key}: {err}");
        }
        assert!(parse_key(P, b"/l4mesh/services/\xff/endpoints/1.2.3.4:1").is_err());
    }

    #[test]
    fn it_should_read_weight_and_zone_and_refuse_bad_values() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let (d, zone) = parse_value(addr, br#"{"weight": 7, "zone": "a", "extra": 1}"#).unwrap();
        assert_eq!((d.weight, d.tier, zone.as_deref()), (7, 0, Some("a")));
        assert_eq!(parse_value(addr, b"").unwrap().0.weight, 1);
        assert_eq!(parse_value(addr, b"{}").unwrap().0.weight, 1);
        for (value, why) in [
            (&br#"{"weight": 0}"#[..], "weight 0 is not from 1 to 256"),
            (br#"{"weight": 257}"#, "weight 257"),
            (br#"{"weight": "2"}"#, "not JSON like"),
            (b"weight=2", "not JSON like"),
        ] {
            let err = parse_value(addr, value).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
