//! `l4mesh ctl --etcd URL[,URL...]`: register an endpoint in etcd under a
//! lease and keep it alive ([`super::register`]), deregister one, or list
//! what etcd holds under the prefix. Requests are checked as the registry
//! socket checks them, and keys as the watcher reads them, so whatever
//! `ctl` writes, every l4mesh accepts.

use super::schema;
use crate::config::{is_valid_name, parse_duration};
use crate::discovery::registry::protocol::{parse_weight, service_and_addr};
use etcd_client::{Client, ConnectOptions, GetOptions};
use std::net::SocketAddr;
use std::time::Duration;

/// How long one connection attempt, or one request, may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The TTL of a registration when `--ttl` is not given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Why an etcd `ctl` request failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdCtlError {
    /// The request's words (or the flags) are wrong; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// etcd could not be reached, or refused the request.
    #[error("etcd ({endpoints}): {why}")]
    Etcd {
        /// The members asked.
        endpoints: String,
        /// What went wrong.
        why: String,
    },
    /// The key to delete was not there.
    #[error("no key {0}: nothing to deregister")]
    NotFound(String),
}

/// Where to talk to etcd: its members and the key prefix.
#[derive(Debug, Clone)]
pub struct Target {
    /// Member client URLs.
    pub endpoints: Vec<String>,
    /// The key prefix, starting and ending with `/`.
    pub prefix: String,
}

impl Target {
    /// Checks the prefix as `[discovery.etcd] prefix` is checked.
    pub fn new(endpoints: Vec<String>, prefix: String) -> Result<Target, EtcdCtlError> {
        if endpoints.is_empty() || endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(EtcdCtlError::Usage(
                "--etcd needs one or more client URLs, like http://127.0.0.1:2379".into(),
            ));
        }
        if !prefix.starts_with('/') || !prefix.ends_with('/') {
            return Err(EtcdCtlError::Usage(format!(
                "--prefix `{}`: the prefix must start and end with /, like /l4mesh/",
                prefix.escape_debug()
            )));
        }
        Ok(Target { endpoints, prefix })
    }

    /// An error from etcd, naming the members.
    pub fn error(&self, why: impl std::fmt::Display) -> EtcdCtlError {
        EtcdCtlError::Etcd {
            endpoints: self.endpoints.join(","),
            why: why.to_string(),
        }
    }

    /// A client for the members, within [`TIMEOUT`].
    pub async fn connect(&self) -> Result<Client, String> {
        let options = ConnectOptions::new()
            .with_connect_timeout(TIMEOUT)
            .with_timeout(TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        match tokio::time::timeout(TIMEOUT, Client::connect(&self.endpoints, Some(options))).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!("cannot connect: {e}")),
            Err(_) => Err(format!("no member answered within {} s", TIMEOUT.as_secs())),
        }
    }
}

/// One endpoint to register: its key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The service.
    pub service: String,
    /// The address.
    pub addr: SocketAddr,
    /// Its weight, 1 to 256.
    pub weight: u32,
    /// Its zone, when given.
    pub zone: Option<String>,
}

impl Endpoint {
    /// Parses `SERVICE ADDR [weight=N] [zone=Z]` and checks that the key it
    /// makes under `prefix` is one the watcher accepts.
    pub fn parse(prefix: &str, args: &[String]) -> Result<Endpoint, EtcdCtlError> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let (service, addr, options) = service_and_addr("register", &words, "[weight=N] [zone=Z]")
            .map_err(EtcdCtlError::Usage)?;
        let (mut weight, mut zone) = (1, None);
        for option in options {
            match option.split_once('=') {
                Some(("weight", value)) => {
                    weight = parse_weight(value).map_err(EtcdCtlError::Usage)?
                }
                Some(("zone", value)) if !value.is_empty() => zone = Some(value.to_string()),
                _ => {
                    return Err(EtcdCtlError::Usage(format!(
                        "unknown option `{}`; register takes weight=N and zone=Z (and --ttl)",
                        option.escape_debug()
                    )));
                }
            }
        }
        let endpoint = Endpoint {
            service,
            addr,
            weight,
            zone,
        };
        endpoint.check(prefix)?;
        Ok(endpoint)
    }

    /// Parses `SERVICE ADDR` (for `deregister`).
    pub fn parse_bare(prefix: &str, args: &[String]) -> Result<Endpoint, EtcdCtlError> {
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let (service, addr, extra) =
            service_and_addr("deregister", &words, "").map_err(EtcdCtlError::Usage)?;
        if let Some(word) = extra.first() {
            return Err(EtcdCtlError::Usage(format!(
                "unexpected `{}`; usage: deregister SERVICE ADDR",
                word.escape_debug()
            )));
        }
        let endpoint = Endpoint {
            service,
            addr,
            weight: 1,
            zone: None,
        };
        endpoint.check(prefix)?;
        Ok(endpoint)
    }

    fn check(&self, prefix: &str) -> Result<(), EtcdCtlError> {
        check_service(&self.service)?;
        schema::parse_key(prefix, self.key(prefix).as_bytes())
            .map(|_| ())
            .map_err(|why| EtcdCtlError::Usage(format!("{} {}: {why}", self.service, self.addr)))
    }

    /// Its key under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        schema::key(prefix, &self.service, self.addr)
    }

    /// Its value: `{"weight":N}`, with `"zone"` when given.
    pub fn value(&self) -> String {
        let mut value = serde_json::json!({ "weight": self.weight });
        if let Some(zone) = &self.zone {
            value["zone"] = zone.clone().into();
        }
        value.to_string()
    }
}

/// A service name as the config and the registry take it (a `/` would
/// make another key).
pub fn check_service(service: &str) -> Result<(), EtcdCtlError> {
    if is_valid_name(service) {
        Ok(())
    } else {
        Err(EtcdCtlError::Usage(format!(
            "service `{}` is not a name of letters, digits, `_`, `.` and `-`",
            service.escape_debug()
        )))
    }
}

/// Parses `--ttl`: whole seconds, at least 1, as etcd leases count.
pub fn parse_ttl(text: &str) -> Result<Duration, EtcdCtlError> {
    let ttl = parse_duration(text).map_err(|why| {
        EtcdCtlError::Usage(format!(
            "--ttl `{text}` is not a duration ({why}); write e.g. 10s"
        ))
    })?;
    if ttl < Duration::from_secs(1) {
        return Err(EtcdCtlError::Usage(format!(
            "--ttl `{text}` is under 1s: etcd leases count whole seconds, at least 1"
        )));
    }
    if ttl.subsec_nanos() != 0 {
        return Err(EtcdCtlError::Usage(format!(
            "--ttl `{text}` is not a whole number of seconds, which etcd leases count; \
             write e.g. {}s",
            ttl.as_secs() + 1
        )));
    }
    if ttl > Duration::from_secs(i64::MAX as u64 / 2) {
        return Err(EtcdCtlError::Usage(format!("--ttl `{text}` is too long")));
    }
    Ok(ttl)
}

/// Runs `future` on a current-thread runtime.
pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> std::io::Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future))
}

/// Deletes the endpoint's key; says so, or that it was not there.
pub async fn deregister(target: &Target, endpoint: &Endpoint) -> Result<String, EtcdCtlError> {
    let key = endpoint.key(&target.prefix);
    let mut client = target.connect().await.map_err(|e| target.error(e))?;
    let deleted = tokio::time::timeout(TIMEOUT, client.delete(key.as_str(), None))
        .await
        .map_err(|_| target.error(format!("deleting {key} took over {} s", TIMEOUT.as_secs())))?
        .map_err(|e| target.error(format!("cannot delete {key}: {e}")))?;
    if deleted.deleted() == 0 {
        return Err(EtcdCtlError::NotFound(key));
    }
    Ok(format!(
        "deregistered {} {} (deleted {key})",
        endpoint.service, endpoint.addr
    ))
}

/// What etcd holds under the prefix (of one service, or all): a table, one
/// line per endpoint, and a line per key the watcher would skip, saying why.
pub async fn list(target: &Target, service: Option<&str>) -> Result<String, EtcdCtlError> {
    let from = match service {
        Some(service) => check_service(service)
            .map(|()| format!("{}services/{service}/endpoints/", target.prefix)),
        None => Ok(format!("{}services/", target.prefix)),
    }?;
    let mut client = target.connect().await.map_err(|e| target.error(e))?;
    let response = tokio::time::timeout(
        TIMEOUT,
        client.get(from.as_str(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| target.error(format!("reading {from} took over {} s", TIMEOUT.as_secs())))?
    .map_err(|e| target.error(format!("cannot read {from}: {e}")))?;
    let mut rows = vec![["SERVICE", "ADDR", "WEIGHT", "ZONE", "LEASE"].map(String::from)];
    let mut skipped = Vec::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).escape_debug().to_string();
        let parsed = schema::parse_key(&target.prefix, kv.key()).and_then(|k| match k {
            Some(k) => schema::parse_value(k.addr, kv.value()).map(|v| (k, v)),
            None => Err("not an endpoint key".into()),
        });
        match parsed {
            Ok((k, (endpoint, zone))) => rows.push([
                k.service,
                k.addr.to_string(),
                endpoint.weight.to_string(),
                zone.unwrap_or_else(|| "-".into()),
                match kv.lease() {
                    0 => "-".into(),
                    lease => format!("{lease:x}"),
                },
            ]),
            Err(why) => skipped.push(format!("skipped {key}: {why}")),
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect();
    lines.extend(skipped);
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn it_should_parse_a_registration_into_the_key_and_value_the_watcher_reads() {
        let e =
            Endpoint::parse("/l4mesh/", &words("web 127.0.0.1:9001 weight=3 zone=eu-1")).unwrap();
        assert_eq!(
            e.key("/l4mesh/"),
            "/l4mesh/services/web/endpoints/127.0.0.1:9001"
        );
        assert_eq!(e.value(), r#"{"weight":3,"zone":"eu-1"}"#);
        let (d, zone) = schema::parse_value(e.addr, e.value().as_bytes()).unwrap();
        assert_eq!((d.weight, zone.as_deref()), (3, Some("eu-1")));
        let plain = Endpoint::parse("/p/", &words("web [::1]:80")).unwrap();
        assert_eq!(plain.value(), r#"{"weight":1}"#);
    }

    #[test]
    fn it_should_refuse_what_the_registry_or_the_watcher_would() {
        for (line, why) in [
            ("web", "usage: register SERVICE ADDR"),
            ("web nowhere:1", "is not an IP:port address"),
            ("web 127.0.0.1:0", "port 0"),
            ("web 127.0.0.1:1 weight=0", "from 1 to 256"),
            ("web 127.0.0.1:1 color=red", "unknown option `color=red`"),
            ("we/b 127.0.0.1:1", "is not a name"),
            ("web 0.0.0.0:80", "wildcard"),
        ] {
            let err = Endpoint::parse("/l4mesh/", &words(line))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{line}: {err}");
        }
        let err = Endpoint::parse_bare("/l4mesh/", &words("web 127.0.0.1:1 now")).unwrap_err();
        assert!(err.to_string().contains("unexpected `now`"));
    }

    #[test]
    fn it_should_take_only_whole_seconds_of_ttl() {
        assert_eq!(parse_ttl("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_ttl("2m").unwrap(), Duration::from_secs(120));
        for (text, why) in [
            ("500ms", "under 1s"),
            ("1500ms", "not a whole number of seconds"),
            ("soon", "not a duration"),
        ] {
            let err = parse_ttl(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn it_should_refuse_a_prefix_without_slashes() {
        assert!(Target::new(vec!["http://x:1".into()], "/l4mesh/".into()).is_ok());
        let err = Target::new(vec!["http://x:1".into()], "l4mesh".into()).unwrap_err();
        assert!(err.to_string().contains("start and end with /"));
    }
}
