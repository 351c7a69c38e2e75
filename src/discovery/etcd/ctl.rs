//! `l4mesh ctl --etcd URL[,URL...]`: the requests `register`, `deregister`
//! and `list` against etcd instead of a registry socket.

use super::register::{self, Registration};
use crate::config::{EtcdConfig, MAX_WEIGHT, is_valid_name, parse_duration, unusable_endpoint};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::net::SocketAddr;
use std::time::Duration;

/// Runs one request (`words`) against the etcd members `endpoints` under
/// `prefix`; `ttl` is `--ttl` for `register`. Returns what to print, or
/// why it failed. `register` runs until SIGTERM or SIGINT.
pub fn run(
    endpoints: Vec<String>,
    prefix: &str,
    ttl: Option<Duration>,
    words: &[String],
) -> Result<String, String> {
    let mut prefix = prefix.to_string();
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let config = EtcdConfig {
        endpoints,
        prefix,
        auth: None,
        tls: None,
        dial_timeout: Duration::from_secs(5),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["register", service, addr, options @ ..] => {
            let reg = registration(service, addr, options, ttl)?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let mut signals = Signals::new([SIGTERM, SIGINT])
                .map_err(|e| format!("cannot install the signal handlers: {e}"))?;
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    let _ = tx.send(());
                }
            });
            runtime.block_on(register::register(&config, &reg, async {
                let _ = rx.await;
            }))?;
            Ok(format!("deregistered {} {}", reg.service, reg.addr))
        }
        ["deregister", service, addr] => {
            let addr = endpoint(addr)?;
            let found = runtime.block_on(register::deregister(&config, service, addr))?;
            Ok(if found {
                format!("deregistered {service} {addr}")
            } else {
                format!("{service} {addr} was not registered in etcd")
            })
        }
        ["list"] => runtime
            .block_on(register::list(&config, None))
            .map(|l| l.join("\n")),
        ["list", service] => runtime
            .block_on(register::list(&config, Some(service)))
            .map(|l| l.join("\n")),
        _ => Err(format!(
            "unknown etcd request {:?}; use register SERVICE ADDR [weight=N] [zone=Z] --ttl 10s \
             | deregister SERVICE ADDR | list [SERVICE]",
            words.join(" ")
        )),
    }
}

fn endpoint(addr: &str) -> Result<SocketAddr, String> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP:PORT address"))?;
    match unusable_endpoint(parsed) {
        Some(why) => Err(format!("{addr} cannot be an endpoint: {why}")),
        None => Ok(parsed),
    }
}

fn registration(
    service: &str,
    addr: &str,
    options: &[&str],
    ttl: Option<Duration>,
) -> Result<Registration, String> {
    let mut reg = Registration {
        service: service.to_string(),
        addr: endpoint(addr)?,
        weight: 1,
        zone: None,
        ttl: ttl.unwrap_or(Duration::from_secs(10)),
    };
    if !is_valid_name(service) {
        return Err(format!(
            "{service:?} is not a service name (letters, digits, `_`, `.` and `-`)"
        ));
    }
    for option in options {
        match option.split_once('=') {
            Some(("weight", n)) => {
                reg.weight = n
                    .parse()
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(|| {
                        format!("weight={n}: use a whole number from 1 to {MAX_WEIGHT}")
                    })?;
            }
            Some(("zone", z)) => reg.zone = Some(z.to_string()),
            Some(("ttl", t)) => reg.ttl = parse_duration(t)?,
            _ => {
                return Err(format!(
                    "unknown option {option:?}; use weight=N, zone=Z, ttl=D"
                ));
            }
        }
    }
    if reg.ttl < Duration::from_secs(1) {
        return Err(format!(
            "ttl {:?} is too short: etcd leases count whole seconds (at least 1s)",
            reg.ttl
        ));
    }
    Ok(reg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_words() {
        let r = registration("web", "127.0.0.1:80", &["weight=3", "zone=a"], None).unwrap();
        assert_eq!((r.weight, r.zone.as_deref()), (3, Some("a")));
        assert_eq!(r.ttl, Duration::from_secs(10));
        let r = registration("web", "[::1]:80", &["ttl=2s"], Some(Duration::from_secs(5)));
        assert_eq!(r.unwrap().ttl, Duration::from_secs(2));
        assert!(registration("web", "127.0.0.1:80", &["weight=0"], None).is_err());
        assert!(registration("web", "127.0.0.1:80", &["weight=257"], None).is_err());
        assert!(registration("web", "127.0.0.1:80", &["color=red"], None).is_err());
        assert!(registration("web", "0.0.0.0:80", &[], None).is_err());
        assert!(registration("web", "nohost:80", &[], None).is_err());
        assert!(registration("a/b", "127.0.0.1:80", &[], None).is_err());
        let short = Some(Duration::from_millis(500));
        assert!(registration("web", "127.0.0.1:80", &[], short).is_err());
    }
}
