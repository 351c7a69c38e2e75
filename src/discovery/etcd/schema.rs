//! The etcd key schema: `PREFIX/services/SERVICE/endpoints/ADDR` with a JSON
//! value `{"weight": N, "zone": "..."}` (both optional; unknown fields are
//! ignored). Any etcd client can register by writing such a key.

use crate::config::{MAX_WEIGHT, unusable_endpoint};
use std::net::SocketAddr;

/// One endpoint as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its share of new connections, 1 to [`MAX_WEIGHT`].
    pub weight: u32,
    /// The zone it says it is in (for listing and logs only).
    pub zone: Option<String>,
}

/// The key of `service`'s endpoint `addr` under `prefix`.
pub fn key(prefix: &str, service: &str, addr: SocketAddr) -> String {
    format!("{prefix}services/{service}/endpoints/{addr}")
}

/// The prefix of every endpoint of `service` (or of every service).
pub fn services_prefix(prefix: &str, service: Option<&str>) -> String {
    match service {
        Some(s) => format!("{prefix}services/{s}/endpoints/"),
        None => format!("{prefix}services/"),
    }
}

/// The value to store for an endpoint.
pub fn value(weight: u32, zone: Option<&str>) -> String {
    let mut v = serde_json::json!({ "weight": weight });
    if let Some(zone) = zone {
        v["zone"] = serde_json::Value::from(zone);
    }
    v.to_string()
}

/// Splits a key into service and address, or says why it does not fit
/// the schema.
pub fn parse_key(prefix: &str, key: &[u8]) -> Result<(String, SocketAddr), String> {
    let key = std::str::from_utf8(key).map_err(|_| "the key is not UTF-8".to_string())?;
    let rest = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix("services/"))
        .ok_or_else(|| format!("the key is not under {prefix}services/"))?;
    let (service, addr) = rest
        .split_once("/endpoints/")
        .ok_or("the key is not of the form PREFIX/services/SERVICE/endpoints/ADDR")?;
    if service.is_empty() || service.contains('/') {
        return Err(format!("{service:?} is not a service name"));
    }
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP:PORT address"))?;
    if let Some(why) = unusable_endpoint(addr) {
        return Err(format!("{addr} is no endpoint: {why}"));
    }
    if addr.port() == 0 {
        return Err(format!("{addr} has port 0"));
    }
    Ok((service.to_string(), addr))
}

/// Parses a value, or says why it does not fit the schema.
pub fn parse_value(value: &[u8]) -> Result<Entry, String> {
    let json: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("the value is not JSON: {e}"))?;
    let object = json
        .as_object()
        .ok_or("the value is not a JSON object like {\"weight\": 1}")?;
    let weight = match object.get("weight") {
        None => 1,
        Some(w) => match w.as_u64() {
            Some(n) if (1..=u64::from(MAX_WEIGHT)).contains(&n) => n as u32,
            _ => {
                return Err(format!(
                    "weight {w} is not a whole number from 1 to {MAX_WEIGHT}"
                ));
            }
        },
    };
    let zone = match object.get("zone") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(z)) => Some(z.clone()),
        Some(z) => return Err(format!("zone {z} is not a string")),
    };
    Ok(Entry { weight, zone })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values() {
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let k = key("/l4mesh/", "web", addr);
        assert_eq!(k, "/l4mesh/services/web/endpoints/127.0.0.1:80");
        assert_eq!(
            parse_key("/l4mesh/", k.as_bytes()),
            Ok(("web".into(), addr))
        );
        assert!(parse_key("/l4mesh/", b"/l4mesh/services/web/endpoints/0.0.0.0:80").is_err());
        assert!(parse_key("/l4mesh/", b"/l4mesh/services/web/endpoints/nope").is_err());
        assert!(parse_key("/l4mesh/", b"/l4mesh/other/web").is_err());
        let v = value(3, Some("a"));
        assert_eq!(
            parse_value(v.as_bytes()),
            Ok(Entry {
                weight: 3,
                zone: Some("a".into())
            })
        );
        assert_eq!(parse_value(b"{}").map(|e| e.weight), Ok(1));
        assert_eq!(
            parse_value(b"{\"weight\":2,\"x\":1}").map(|e| e.weight),
            Ok(2)
        );
        assert!(parse_value(b"{\"weight\":0}").is_err());
        assert!(parse_value(b"{\"weight\":257}").is_err());
        assert!(parse_value(b"nope").is_err());
    }
}
