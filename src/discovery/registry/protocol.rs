//! The registry socket's request language: one request per line, at most
//! [`MAX_LINE`] bytes, words separated by spaces.
//!
//! ```text
//! register SERVICE ADDR [weight=N] [ttl=DURATION]
//! deregister SERVICE ADDR
//! drain SERVICE ADDR
//! undrain SERVICE ADDR
//! list [SERVICE]
//! reload
//! help
//! ```
//!
//! Parsing is pure and total: any input gives a request or a message a
//! human can act on. `Display` writes a request back in canonical form, so
//! parse(display(r)) == r (checked by the fuzz target).

use crate::config::{MAX_DURATION, MAX_WEIGHT, parse_duration};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The longest request line, in bytes, without its newline.
pub const MAX_LINE: usize = 4096;

/// What each verb does, for `help` and error messages.
pub const HELP: &str = "register SERVICE ADDR [weight=N] [ttl=DURATION]: add or update an endpoint \
(with ttl, it lapses unless registered again in time); deregister SERVICE ADDR: remove a \
registered endpoint; drain SERVICE ADDR: no new connections, open ones continue; undrain SERVICE \
ADDR: end a drain, new connections come again; list [SERVICE]: \
endpoints with weight, source, state and active connections; reload: re-read the config file \
now; help: this text";

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Add or refresh an endpoint.
    Register {
        /// The service.
        service: String,
        /// The endpoint.
        addr: SocketAddr,
        /// Its weight (1 when not given).
        weight: u32,
        /// Lapse unless registered again within this.
        ttl: Option<Duration>,
    },
    /// Remove a registered endpoint.
    Deregister {
        /// The service.
        service: String,
        /// The endpoint.
        addr: SocketAddr,
    },
    /// Stop sending new connections to an endpoint.
    Drain {
        /// The service.
        service: String,
        /// The endpoint.
        addr: SocketAddr,
    },
    /// End a drain: new connections reach the endpoint again.
    Undrain {
        /// The service.
        service: String,
        /// The endpoint.
        addr: SocketAddr,
    },
    /// List endpoints, of one service or all.
    List {
        /// Only this service.
        service: Option<String>,
    },
    /// Re-read the config file.
    Reload,
    /// Describe the verbs.
    Help,
}

/// Parses one request line (without its newline).
pub fn parse(line: &str) -> Result<Request, String> {
    let mut words = line.split_whitespace();
    let Some(verb) = words.next() else {
        return Err(format!("empty request; {HELP}"));
    };
    let args: Vec<&str> = words.collect();
    match verb {
        "register" => {
            let (service, addr, options) =
                service_and_addr(verb, &args, "[weight=N] [ttl=DURATION]")?;
            let (mut weight, mut ttl) = (1, None);
            for option in options {
                match option.split_once('=') {
                    Some(("weight", value)) => weight = parse_weight(value)?,
                    Some(("ttl", value)) => ttl = Some(parse_ttl(value)?),
                    _ => {
                        return Err(format!(
                            "unknown option `{option}`; register takes weight=N and ttl=DURATION"
                        ));
                    }
                }
            }
            Ok(Request::Register {
                service,
                addr,
                weight,
                ttl,
            })
        }
        "deregister" | "drain" | "undrain" => {
            let (service, addr, extra) = service_and_addr(verb, &args, "")?;
            if let Some(word) = extra.first() {
                return Err(format!("unexpected `{word}`; usage: {verb} SERVICE ADDR"));
            }
            Ok(match verb {
                "drain" => Request::Drain { service, addr },
                "undrain" => Request::Undrain { service, addr },
                _ => Request::Deregister { service, addr },
            })
        }
        "list" => match args.as_slice() {
            [] => Ok(Request::List { service: None }),
            [service] => Ok(Request::List {
                service: Some(service.to_string()),
            }),
            _ => Err("usage: list [SERVICE]".to_string()),
        },
        "reload" | "help" if !args.is_empty() => Err(format!("`{verb}` takes no arguments")),
        "reload" => Ok(Request::Reload),
        "help" => Ok(Request::Help),
        other => Err(format!(
            "unknown verb `{}`; verbs: register, deregister, drain, undrain, list, reload, help",
            other.escape_debug()
        )),
    }
}

fn service_and_addr<'a>(
    verb: &str,
    args: &'a [&'a str],
    more: &str,
) -> Result<(String, SocketAddr, &'a [&'a str]), String> {
    let usage = format!("usage: {verb} SERVICE ADDR {more}");
    let [service, addr, rest @ ..] = args else {
        return Err(usage.trim_end().to_string());
    };
    let addr = addr.parse::<SocketAddr>().map_err(|_| {
        format!(
            "`{}` is not an IP:port address; write it like 127.0.0.1:9001 or [::1]:9001",
            addr.escape_debug()
        )
    })?;
    if addr.port() == 0 {
        return Err(format!("{addr}: port 0 cannot be connected to"));
    }
    Ok((service.to_string(), addr, rest))
}

fn parse_weight(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|w| (1..=MAX_WEIGHT).contains(w))
        .ok_or_else(|| format!("weight `{value}` must be a whole number from 1 to {MAX_WEIGHT}"))
}

fn parse_ttl(value: &str) -> Result<Duration, String> {
    match parse_duration(value) {
        Ok(ttl) if ttl > MAX_DURATION => Err(format!(
            "ttl `{value}` is over 30 days; leave ttl out for a registration that lasts until deregistered"
        )),
        Ok(ttl) if ttl >= Duration::from_millis(100) => Ok(ttl),
        Ok(_) => Err(format!(
            "ttl `{value}` is under 100ms; heartbeats could not keep up"
        )),
        Err(why) => Err(format!(
            "ttl `{value}` is not a duration ({why}); write e.g. ttl=10s"
        )),
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Register {
                service,
                addr,
                weight,
                ttl,
            } => {
                write!(f, "register {service} {addr} weight={weight}")?;
                match ttl {
                    Some(ttl) => write!(f, " ttl={}ms", ttl.as_millis()),
                    None => Ok(()),
                }
            }
            Request::Deregister { service, addr } => write!(f, "deregister {service} {addr}"),
            Request::Drain { service, addr } => write!(f, "drain {service} {addr}"),
            Request::Undrain { service, addr } => write!(f, "undrain {service} {addr}"),
            Request::List { service: None } => write!(f, "list"),
            Request::List {
                service: Some(service),
            } => write!(f, "list {service}"),
            Request::Reload => write!(f, "reload"),
            Request::Help => write!(f, "help"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_parse_every_verb() {
        let addr: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        assert_eq!(
            parse("register web 127.0.0.1:9001 weight=3 ttl=10s"),
            Ok(Request::Register {
                service: "web".into(),
                addr,
                weight: 3,
                ttl: Some(Duration::from_secs(10)),
            })
        );
        assert_eq!(
            parse("  deregister web 127.0.0.1:9001 "),
            Ok(Request::Deregister {
                service: "web".into(),
                addr
            })
        );
        assert_eq!(
            parse("drain web 127.0.0.1:9001"),
            Ok(Request::Drain {
                service: "web".into(),
                addr
            })
        );
        assert_eq!(
            parse("undrain web 127.0.0.1:9001"),
            Ok(Request::Undrain {
                service: "web".into(),
                addr
            })
        );
        assert_eq!(parse("list"), Ok(Request::List { service: None }));
        assert_eq!(
            parse("list web"),
            Ok(Request::List {
                service: Some("web".into())
            })
        );
        assert_eq!(parse("reload"), Ok(Request::Reload));
        assert_eq!(parse("help"), Ok(Request::Help));
    }

    #[test]
    fn it_should_explain_bad_requests() {
        let cases = [
            ("", "empty request"),
            ("fly away", "unknown verb `fly`"),
            ("register web", "usage: register SERVICE ADDR"),
            (
                "register web nowhere:1",
                "`nowhere:1` is not an IP:port address",
            ),
            ("register web 127.0.0.1:0", "port 0"),
            ("register web 127.0.0.1:1 weight=0", "weight `0` must be"),
            ("register web 127.0.0.1:1 weight=999", "from 1 to 256"),
            (
                "register web 127.0.0.1:1 ttl=soon",
                "ttl `soon` is not a duration",
            ),
            ("register web 127.0.0.1:1 ttl=1ms", "under 100ms"),
            ("register web 127.0.0.1:1 ttl=999999999999h", "over 30 days"),
            (
                "register web 127.0.0.1:1 color=red",
                "unknown option `color=red`",
            ),
            ("drain web 127.0.0.1:1 now", "unexpected `now`"),
            ("undrain web", "usage: undrain SERVICE ADDR"),
            ("list a b", "usage: list [SERVICE]"),
            ("reload now", "takes no arguments"),
        ];
        for (line, expected) in cases {
            let error = parse(line).unwrap_err();
            assert!(error.contains(expected), "{line:?}: {error}");
        }
    }

    #[test]
    fn it_should_write_requests_back_in_a_form_that_parses_to_the_same() {
        for line in [
            "register web [::1]:80 weight=7 ttl=1500ms",
            "register web 127.0.0.1:80",
            "deregister a 127.0.0.1:1",
            "drain a 127.0.0.1:1",
            "undrain a 127.0.0.1:1",
            "list",
            "list a",
            "reload",
            "help",
        ] {
            let request = parse(line).unwrap();
            assert_eq!(parse(&request.to_string()), Ok(request));
        }
    }
}
