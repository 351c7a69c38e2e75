//! Turns the file's shape into a [`Config`], collecting every problem with
//! the key path, the value, the reason and the fix.

use super::discovery;
use super::endpoints::{looping_listener, unusable_endpoint};
use super::file::{
    FileAccessLog, FileConfig, FileEndpoint, FileHealth, FileOutlier, FileRegistry, FileRuntime,
    FileService,
};
use super::listeners;
use super::names::{is_valid_name, suggested_name, table_key};
use super::{
    AccessLogConfig, AccessLogFormat, AccessLogTarget, BalancePolicy, Config, EndpointConfig,
    EventLoop, ForwardMode, HealthConfig, ListenerConfig, MAX_WEIGHT, OutlierConfig, Problem,
    RegistryConfig, RuntimeConfig, SCRATCH_BYTES, ServiceConfig, parse_cpu_affinity,
    parse_duration,
};
use crate::preamble::proxy_header::Version;
use rustix::thread::CpuSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Collects problems while values are converted.
#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, key: &str, value: impl ToString, reason: &str, fix: &str) {
        self.0.push(Problem {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
            fix: fix.to_string(),
        });
    }

    /// Checks an integer against an inclusive range.
    pub(super) fn integer(
        &mut self,
        key: &str,
        value: i64,
        min: i64,
        max: i64,
        fix: &str,
    ) -> Option<i64> {
        if (min..=max).contains(&value) {
            Some(value)
        } else {
            let reason = format!("it must be from {min} to {max}");
            self.push(key, value, &reason, fix);
            None
        }
    }

    /// Checks a duration against `min..=MAX_DURATION`.
    pub(super) fn duration(&mut self, key: &str, text: &str, min: Duration) -> Option<Duration> {
        match parse_duration(text) {
            Ok(d) if d > MAX_DURATION => {
                let reason = "it is longer than 30 days, which no timeout here needs";
                self.push(
                    key,
                    quoted(text),
                    reason,
                    "use a duration of 30 days or less",
                );
                None
            }
            Ok(d) if d >= min => Some(d),
            Ok(_) => {
                let reason = format!("it must be at least {}ms", min.as_millis());
                self.push(key, quoted(text), &reason, "use a longer duration");
                None
            }
            Err(why) => {
                let reason = format!("not a duration: {why}");
                let fix = "write a whole number and a unit: \"500ms\", \"2s\", \"5m\" or \"1h\"";
                self.push(key, quoted(text), &reason, fix);
                None
            }
        }
    }

    pub(super) fn address(
        &mut self,
        key: &str,
        text: &str,
        allow_port_zero: bool,
    ) -> Option<SocketAddr> {
        let fix = "write an IP address and a port, like \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved)";
        match text.trim().parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 && !allow_port_zero => {
                self.push(key, quoted(text), "port 0 cannot be connected to", fix);
                None
            }
            Ok(addr) => Some(addr),
            Err(_) => {
                self.push(key, quoted(text), "not an IP:port address", fix);
                None
            }
        }
    }
}

/// The most connections a limit may allow: each proxied connection holds
/// two descriptors, and Linux caps a process at about a million.
pub const MAX_CONNECTIONS: i64 = 1_000_000;

/// The longest `send` or `expect` of a health check, in bytes.
pub const MAX_PROBE_BYTES: usize = 1024;

/// The default cap on one ejection (Envoy's `max_ejection_time`), used when
/// `max_ejection` is not set and `base_ejection` is shorter.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);

/// The longest duration any setting accepts: long enough for any timeout,
/// short enough that deadlines computed from it never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

pub(super) fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// Validates the whole file; every problem is reported, not just the first.
pub fn validate(file: FileConfig, path: &Path) -> Result<Config, Vec<Problem>> {
    let mut problems = Problems::default();
    let runtime = runtime(&file.runtime, &mut problems);
    let listeners = listeners::listeners(&file, &mut problems);
    let services: Vec<_> = file
        .services
        .iter()
        .filter_map(|(name, s)| service(name, s, &listeners, &mut problems))
        .collect();
    // `registry` is None either when absent or after a problem was pushed.
    let registry = file
        .registry
        .as_ref()
        .and_then(|r| registry(r, &mut problems));
    let admin = file
        .admin
        .as_ref()
        .and_then(|a| problems.address("admin.listen", &a.listen, true));
    let access_log = access_log(&file.access_log, &mut problems);
    let discovery = discovery::discovery(&file.discovery, &mut problems);
    for (name, s) in &file.services {
        if let Some(d) = &s.discovery {
            discovery::check_service(name, d, &discovery, &mut problems);
        }
    }
    match (runtime, access_log) {
        (Some(runtime), Some(access_log)) if problems.0.is_empty() => Ok(Config {
            path: path.to_path_buf(),
            runtime,
            listeners,
            services,
            registry,
            admin,
            discovery,
            access_log,
        }),
        _ => Err(problems.0),
    }
}

fn runtime(file: &FileRuntime, problems: &mut Problems) -> Option<RuntimeConfig> {
    let workers = problems.integer(
        "runtime.workers",
        file.workers,
        0,
        1024,
        "use 0 for one worker per core, or the number of worker threads",
    );
    let buffer_size = problems.integer(
        "runtime.buffer_size",
        file.buffer_size,
        4096,
        16 << 20,
        "use 65536; smaller buffers cost throughput",
    );
    let drain_timeout =
        problems.duration("runtime.drain_timeout", &file.drain_timeout, Duration::ZERO);
    let backlog = problems.integer(
        "runtime.backlog",
        file.backlog,
        1,
        65535,
        "use 1024 or more; the kernel caps it at net.core.somaxconn",
    );
    let pipe_size = problems.integer(
        "runtime.pipe_size",
        file.pipe_size,
        4096,
        16 << 20,
        "use 1048576 (the default); the kernel caps it at /proc/sys/fs/pipe-max-size",
    );
    let forward = ForwardMode::ALL
        .iter()
        .find(|(name, _)| *name == file.forward)
        .map(|(_, mode)| *mode);
    if forward.is_none() {
        problems.push(
            "runtime.forward",
            quoted(&file.forward),
            "not a forwarding mode",
            "use \"auto\" (the default), \"splice\" or \"copy\"",
        );
    }
    let event_loop = EventLoop::ALL
        .iter()
        .find(|(name, _)| *name == file.event_loop)
        .map(|(_, choice)| *choice);
    if event_loop.is_none() {
        problems.push(
            "runtime.event_loop",
            quoted(&file.event_loop),
            "not an event loop",
            "use \"auto\" (the default: io_uring where the kernel allows it, epoll where it \
             does not), \"io_uring\" or \"epoll\"",
        );
    }
    let cpu_affinity = parse_cpu_affinity(&file.cpu_affinity, CpuSet::MAX_CPU)
        .map_err(|why| {
            problems.push(
                "runtime.cpu_affinity",
                quoted(&file.cpu_affinity),
                &why,
                "use \"auto\" (the default: one worker per CPU), \"off\", or CPU numbers \
                 and ranges such as \"0-3,8\"",
            )
        })
        .ok();
    if let (Some(size), Some(mode)) = (buffer_size, forward)
        && mode.splices()
        && size < SCRATCH_BYTES as i64
    {
        let mode_name = ForwardMode::ALL
            .iter()
            .find(|(_, m)| *m == mode)
            .map_or("auto", |(name, _)| *name);
        problems.push(
            "runtime.buffer_size",
            size,
            &format!(
                "with forward = \"{mode_name}\", a chunk read into the worker's {SCRATCH_BYTES}-byte \
                 scratch buffer that the peer cannot take at once waits in a buffer of this size, \
                 so a smaller one would be reallocated for every such chunk"
            ),
            &format!(
                "use {SCRATCH_BYTES} or more (65536, the default, is measured fastest), or \
                 forward = \"copy\" for smaller buffers"
            ),
        );
        return None;
    }
    let upgrade_socket = match file.upgrade_socket.as_deref() {
        None => Some(None),
        Some(path) => upgrade_socket(path, problems).map(Some),
    };
    let workers = match workers? {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    };
    Some(RuntimeConfig {
        workers,
        buffer_size: buffer_size? as usize,
        drain_timeout: drain_timeout?,
        backlog: backlog? as u32,
        forward: forward?,
        pipe_size: pipe_size? as usize,
        event_loop: event_loop?,
        cpu_affinity: cpu_affinity?,
        upgrade_socket: upgrade_socket?,
    })
}

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `runtime.upgrade_socket`: a path that fits in a Unix socket address.
fn upgrade_socket(path: &str, problems: &mut Problems) -> Option<PathBuf> {
    let why = if path.trim().is_empty() {
        "the socket path is empty"
    } else if path.len() > MAX_SOCKET_PATH {
        "longer than the 107 bytes a Unix socket address holds"
    } else {
        return Some(PathBuf::from(path));
    };
    problems.push(
        "runtime.upgrade_socket",
        quoted(path),
        why,
        "give a short path such as \"/run/l4mesh/upgrade.sock\", or remove the key (no hitless \
         upgrade)",
    );
    None
}

fn access_log(file: &FileAccessLog, problems: &mut Problems) -> Option<AccessLogConfig> {
    let target = match file.path.trim() {
        "" => {
            let fix = "use \"off\", \"stderr\" or a file path";
            problems.push("access_log.path", quoted(&file.path), "it is empty", fix);
            None
        }
        "off" => Some(AccessLogTarget::Off),
        "stderr" => Some(AccessLogTarget::Stderr),
        path => Some(AccessLogTarget::File(path.into())),
    };
    let format = match file.format.as_str() {
        "logfmt" => Some(AccessLogFormat::Logfmt),
        "json" => Some(AccessLogFormat::Json),
        _ => {
            let fix = "use \"logfmt\" or \"json\"";
            problems.push(
                "access_log.format",
                quoted(&file.format),
                "not a log format",
                fix,
            );
            None
        }
    };
    Some(AccessLogConfig {
        target: target?,
        format: format?,
    })
}

fn registry(file: &FileRegistry, problems: &mut Problems) -> Option<RegistryConfig> {
    if file.socket.trim().is_empty() {
        problems.push(
            "registry.socket",
            quoted(&file.socket),
            "the socket path is empty",
            "give a path such as \"/run/l4mesh/registry.sock\", or remove [registry]",
        );
    }
    let mode = registry_mode(&file.mode)
        .map_err(|reason| {
            problems.push(
                "registry.mode",
                quoted(&file.mode),
                reason,
                "use \"0600\" (owner only) or a wider mode such as \"0660\" (owner and group)",
            )
        })
        .ok();
    Some(RegistryConfig {
        socket: file.socket.clone().into(),
        mode: mode?,
    })
}

/// The socket's permission bits from octal text such as `"0600"` or
/// `"0o660"`: digits 0 to 7 only (no sign, space or other base), at most
/// 0777, and owner read and write kept, since l4mesh's own user and `ctl`
/// use the socket.
fn registry_mode(text: &str) -> Result<u32, &'static str> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("a file mode is octal digits (0 to 7) only, such as \"0600\"");
    }
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode > 0o777 => {
            Err("it has bits above 0777 (setuid, setgid, sticky), which a socket does not use")
        }
        Ok(mode) if mode & 0o600 != 0o600 => {
            Err("it must let l4mesh's own user read and write the socket (0600)")
        }
        Ok(mode) => Ok(mode),
        Err(_) => {
            Err("it has bits above 0777 (setuid, setgid, sticky), which a socket does not use")
        }
    }
}

/// Reports `name` (of a table in `section`) if it is not a valid name.
pub(super) fn check_name(section: &str, name: &str, referrers: &str, problems: &mut Problems) {
    if is_valid_name(name) {
        return;
    }
    problems.push(
        &table_key(section, name),
        quoted(name),
        "a name may hold only letters, digits, `_`, `.` and `-`: any other character \
         cannot be named in a registry request and breaks logfmt access-log lines",
        &format!(
            "rename the table, to [{}] for instance{referrers}",
            table_key(section, &suggested_name(name))
        ),
    );
}

fn service(
    name: &str,
    file: &FileService,
    listeners: &[ListenerConfig],
    problems: &mut Problems,
) -> Option<ServiceConfig> {
    check_name(
        "services",
        name,
        ", and the listeners' `service`, `default_service` and `sni` keys that name it",
        problems,
    );
    let key = table_key("services", name);
    let balance = BalancePolicy::ALL
        .iter()
        .find(|(n, _)| *n == file.balance)
        .map(|(_, p)| *p);
    if balance.is_none() {
        let names: Vec<_> = BalancePolicy::ALL.iter().map(|(n, _)| *n).collect();
        problems.push(
            &format!("{key}.balance"),
            quoted(&file.balance),
            "not a balancing policy",
            &format!("use one of: {}", names.join(", ")),
        );
    }
    let connect_timeout = problems.duration(
        &format!("{key}.connect_timeout"),
        &file.connect_timeout,
        Duration::from_millis(1),
    );
    let idle_timeout = problems.duration(
        &format!("{key}.idle_timeout"),
        &file.idle_timeout,
        Duration::from_millis(1),
    );
    let attempts = problems.integer(
        &format!("{key}.connect_attempts"),
        file.connect_attempts,
        1,
        100,
        "use 1 to try one endpoint only, or more to fail over to others",
    );
    // With each endpoint's index in the file, for the key paths.
    let endpoints: Vec<(usize, EndpointConfig)> = file
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i, endpoint(&format!("{key}.endpoints[{i}]"), e, problems)?)))
        .collect();
    for (n, (i, e)) in endpoints.iter().enumerate() {
        let addr_key = format!("{key}.endpoints[{i}].addr");
        let value = quoted(&file.endpoints[*i].addr);
        if endpoints[..n]
            .iter()
            .any(|(_, earlier)| earlier.addr == e.addr)
        {
            problems.push(
                &addr_key,
                &value,
                "this endpoint is listed twice",
                "list each address once and use weight to give it a larger share",
            );
        }
        if let Some(listener) = looping_listener(e.addr, listeners) {
            let listener_key = table_key("listeners", &listener.name);
            problems.push(
                &addr_key,
                &value,
                &format!(
                    "{listener_key} listens on {} and takes connections to this address, so \
                     every client would be forwarded back to l4mesh itself, again and again, \
                     until no descriptor is left",
                    listener.listen
                ),
                &format!(
                    "point the endpoint at the upstream server's own address, or move \
                     {listener_key}.listen to another port"
                ),
            );
        }
    }
    let endpoints: Vec<EndpointConfig> = endpoints.into_iter().map(|(_, e)| e).collect();
    let panic_threshold = problems.integer(
        &format!("{key}.panic_threshold"),
        file.panic_threshold,
        0,
        100,
        "use a percentage from 0 to 100; 0 ignores health only when no endpoint is usable",
    );
    let per_endpoint = file.max_connections_per_endpoint.map(|n| {
        problems.integer(
            &format!("{key}.max_connections_per_endpoint"),
            n,
            1,
            MAX_CONNECTIONS,
            "use the most connections one endpoint may take at once, or remove the key for no \
             limit",
        )
    });
    let health = file
        .health
        .as_ref()
        .map(|h| health(&format!("{key}.health"), h, problems));
    let outlier = file
        .outlier
        .as_ref()
        .map(|o| outlier(&format!("{key}.outlier"), o, problems));
    let send_proxy = file.send_proxy.as_ref().map(|v| match v.as_str() {
        "v1" => Some(Version::V1),
        "v2" => Some(Version::V2),
        _ => {
            problems.push(
                &format!("{key}.send_proxy"),
                quoted(v),
                "not a PROXY protocol version",
                "use \"v1\" or \"v2\" (what the endpoints accept), or remove the key",
            );
            None
        }
    });
    Some(ServiceConfig {
        name: name.to_string(),
        balance: balance?,
        connect_timeout: connect_timeout?,
        idle_timeout: idle_timeout?,
        connect_attempts: NonZeroU32::new(attempts? as u32)?,
        endpoints,
        panic_threshold: panic_threshold? as u8,
        max_connections_per_endpoint: flip(per_endpoint)?.map(|n| n as u64),
        health: flip(health)?,
        outlier: flip(outlier)?,
        discovery: match &file.discovery {
            None => None,
            Some(d) => Some(discovery::service_discovery(&key, d, problems)?),
        },
        send_proxy: flip(send_proxy)?,
    })
}

/// An optional setting that may have failed validation: `Some(None)` when it
/// is absent, `None` when it is present and wrong.
pub(super) fn flip<T>(value: Option<Option<T>>) -> Option<Option<T>> {
    match value {
        None => Some(None),
        Some(checked) => checked.map(Some),
    }
}

fn health(key: &str, file: &FileHealth, problems: &mut Problems) -> Option<HealthConfig> {
    let interval = problems.duration(
        &format!("{key}.interval"),
        &file.interval,
        Duration::from_millis(100),
    );
    let timeout = problems.duration(
        &format!("{key}.timeout"),
        &file.timeout,
        Duration::from_millis(1),
    );
    if let (Some(interval), Some(t)) = (interval, timeout)
        && t >= interval
    {
        problems.push(
            &format!("{key}.timeout"),
            quoted(&file.timeout),
            &format!(
                "it must be shorter than the interval ({})",
                file.interval.trim()
            ),
            "use a timeout below the interval, such as half of it, so probes never overlap",
        );
    }
    let threshold = |problems: &mut Problems, name: &str, value: i64| {
        problems.integer(
            &format!("{key}.{name}"),
            value,
            1,
            100,
            "use the number of probes in a row that must agree, from 1 to 100",
        )
    };
    let healthy = threshold(problems, "healthy_threshold", file.healthy_threshold);
    let unhealthy = threshold(problems, "unhealthy_threshold", file.unhealthy_threshold);
    let mut bytes = |name: &str, value: &Option<String>| -> Option<Option<Vec<u8>>> {
        let Some(text) = value else {
            return Some(None);
        };
        let reason = if text.is_empty() {
            "it is empty"
        } else if text.len() > MAX_PROBE_BYTES {
            "it is longer than 1024 bytes"
        } else {
            return Some(Some(text.as_bytes().to_vec()));
        };
        let fix = format!(
            "write the bytes as a TOML string (escapes such as \\r\\n work), at most 1024 \
             bytes, or remove `{name}`"
        );
        problems.push(&format!("{key}.{name}"), quoted(text), reason, &fix);
        None
    };
    let send = bytes("send", &file.send);
    let expect = bytes("expect", &file.expect);
    let (interval, timeout) = (interval?, timeout?);
    if timeout >= interval {
        return None;
    }
    Some(HealthConfig {
        interval,
        timeout,
        healthy_threshold: NonZeroU32::new(healthy? as u32)?,
        unhealthy_threshold: NonZeroU32::new(unhealthy? as u32)?,
        send: send?,
        expect: expect?,
    })
}

fn outlier(key: &str, file: &FileOutlier, problems: &mut Problems) -> Option<OutlierConfig> {
    let failures = problems.integer(
        &format!("{key}.consecutive_failures"),
        file.consecutive_failures,
        1,
        1000,
        "use the number of connect failures in a row that eject an endpoint, such as 5",
    );
    let base = problems.duration(
        &format!("{key}.base_ejection"),
        &file.base_ejection,
        Duration::from_millis(100),
    );
    let max = file.max_ejection.as_ref().map(|text| {
        problems.duration(
            &format!("{key}.max_ejection"),
            text,
            Duration::from_millis(100),
        )
    });
    let percent = problems.integer(
        &format!("{key}.max_ejection_percent"),
        file.max_ejection_percent,
        0,
        100,
        "use a percentage from 0 to 100 (0 never ejects)",
    );
    let base = base?;
    let max = match flip(max)? {
        Some(max) if max < base => {
            let text = file.max_ejection.as_deref().unwrap_or_default();
            problems.push(
                &format!("{key}.max_ejection"),
                quoted(text),
                &format!(
                    "it is shorter than base_ejection ({})",
                    file.base_ejection.trim()
                ),
                "use a max_ejection at least as long as base_ejection",
            );
            return None;
        }
        Some(max) => max,
        None => base.max(DEFAULT_MAX_EJECTION),
    };
    Some(OutlierConfig {
        consecutive_failures: NonZeroU32::new(failures? as u32)?,
        base_ejection: base,
        max_ejection: max,
        max_ejection_percent: percent? as u8,
    })
}

fn endpoint(key: &str, file: &FileEndpoint, problems: &mut Problems) -> Option<EndpointConfig> {
    let addr = problems
        .address(&format!("{key}.addr"), &file.addr, false)
        .filter(|addr| {
            let Some(reason) = unusable_endpoint(*addr) else {
                return true;
            };
            problems.push(
                &format!("{key}.addr"),
                quoted(&file.addr),
                reason,
                "use the upstream server's own IP address and port, like \"127.0.0.1:9001\"",
            );
            false
        });
    let weight = problems.integer(
        &format!("{key}.weight"),
        file.weight,
        1,
        i64::from(MAX_WEIGHT),
        "use a weight from 1 to 256; to stop sending traffic to it, remove the endpoint",
    );
    Some(EndpointConfig {
        addr: addr?,
        weight: weight? as u32,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use std::path::Path;
    use std::time::Duration;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("t.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn it_should_accept_the_documented_example_with_defaults() {
        let text = r#"
            [listeners.web]
            listen = "127.0.0.1:8080"
            service = "web"
            [services.web]
            endpoints = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002", weight = 3 }]
        "#;
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(config.runtime.buffer_size, 65536);
        assert_eq!(config.runtime.backlog, 1024);
        assert!(config.runtime.workers >= 1);
        let web = config.service("web").unwrap();
        assert_eq!(web.connect_attempts.get(), 3);
        assert_eq!(web.endpoints[1].weight, 3);
    }

    #[test]
    fn it_should_report_every_problem_at_once() {
        let text = r#"
            [runtime]
            workers = -1
            [listeners.a]
            listen = "nowhere"
            service = "missing"
            [services.web]
            connect_attempts = 0
            endpoints = [{ addr = "127.0.0.1:1", weight = 0 }]
        "#;
        let found = problems(text);
        assert_eq!(found.len(), 5, "{found:#?}");
    }

    #[test]
    fn it_should_treat_a_wildcard_and_a_specific_ip_on_one_port_as_a_clash() {
        let text = r#"
            [listeners.a]
            listen = "0.0.0.0:8080"
            service = "s"
            [listeners.b]
            listen = "127.0.0.1:8080"
            service = "s"
            [services.s]
        "#;
        let found = problems(text);
        assert!(found[0].contains("already listens"), "{found:?}");
    }

    #[test]
    fn it_should_let_many_listeners_ask_for_port_zero() {
        let text = r#"
            [listeners.a]
            listen = "127.0.0.1:0"
            service = "s"
            [listeners.b]
            listen = "127.0.0.1:0"
            service = "s"
            [services.s]
        "#;
        assert!(Config::parse(text, Path::new("t.toml")).is_ok());
    }

    #[test]
    fn it_should_read_the_issues_health_outlier_and_limit_example() {
        let text = r#"
            [listeners.web]
            listen = "127.0.0.1:8080"
            service = "web"
            max_connections = 1000
            [services.web]
            panic_threshold = 30
            max_connections_per_endpoint = 200
            endpoints = [{ addr = "127.0.0.1:9001" }]
            [services.web.health]
            interval = "2s"
            timeout = "1s"
            healthy_threshold = 2
            unhealthy_threshold = 3
            send = "PING\r\n"
            expect = "+PONG"
            [services.web.outlier]
            consecutive_failures = 5
            base_ejection = "30s"
            max_ejection_percent = 50
        "#;
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(config.listeners[0].max_connections, Some(1000));
        let web = config.service("web").unwrap();
        assert_eq!(web.panic_threshold, 30);
        assert_eq!(web.max_connections_per_endpoint, Some(200));
        let health = web.health.as_ref().unwrap();
        assert_eq!(health.interval, Duration::from_secs(2));
        assert_eq!(health.timeout, Duration::from_secs(1));
        assert_eq!(health.healthy_threshold.get(), 2);
        assert_eq!(health.unhealthy_threshold.get(), 3);
        // TOML's escapes reach the wire as bytes.
        assert_eq!(health.send.as_deref(), Some(&b"PING\r\n"[..]));
        assert_eq!(health.expect.as_deref(), Some(&b"+PONG"[..]));
        let outlier = web.outlier.as_ref().unwrap();
        assert_eq!(outlier.consecutive_failures.get(), 5);
        assert_eq!(outlier.base_ejection, Duration::from_secs(30));
        assert_eq!(outlier.max_ejection, Duration::from_secs(300));
        assert_eq!(outlier.max_ejection_percent, 50);
    }

    #[test]
    fn it_should_default_every_health_and_outlier_key_and_leave_both_off_without_a_table() {
        let text = r#"
            [services.a]
            [services.a.health]
            [services.a.outlier]
            base_ejection = "10m"
            [services.b]
        "#;
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let a = config.service("a").unwrap();
        let health = a.health.as_ref().unwrap();
        assert_eq!(
            (health.interval, health.timeout),
            (Duration::from_secs(2), Duration::from_secs(1))
        );
        assert_eq!(
            (
                health.healthy_threshold.get(),
                health.unhealthy_threshold.get()
            ),
            (2, 3)
        );
        assert_eq!((health.send.clone(), health.expect.clone()), (None, None));
        // The cap is never shorter than the base.
        let outlier = a.outlier.as_ref().unwrap();
        assert_eq!(outlier.max_ejection, Duration::from_secs(600));
        assert_eq!(outlier.consecutive_failures.get(), 5);
        let b = config.service("b").unwrap();
        assert_eq!((b.health.clone(), b.outlier.clone()), (None, None));
        assert_eq!(
            (b.panic_threshold, b.max_connections_per_endpoint),
            (0, None)
        );
    }

    #[test]
    fn it_should_report_a_timeout_of_the_interval_or_more_once() {
        let found = problems(
            "[services.s]\n[services.s.health]\ninterval = \"1s\"\ntimeout = \"1500ms\"\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("services.s.health.timeout = \"1500ms\""));
    }

    #[test]
    fn it_should_read_registry_modes_of_octal_digits_only() {
        use super::registry_mode;
        assert_eq!(registry_mode("0600"), Ok(0o600));
        assert_eq!(registry_mode("660"), Ok(0o660));
        assert_eq!(registry_mode("0o666"), Ok(0o666));
        for bad in [
            "+600", "-600", " 0600", "0600 ", "", "0o", "0x180", "0o+600", "6_00", "0800",
        ] {
            let why = registry_mode(bad).unwrap_err();
            assert!(why.contains("octal digits"), "{bad:?}: {why}");
        }
        assert!(registry_mode("1600").unwrap_err().contains("above 0777"));
        assert!(
            registry_mode("77777777777777")
                .unwrap_err()
                .contains("above 0777")
        );
        assert!(
            registry_mode("0400")
                .unwrap_err()
                .contains("read and write")
        );
    }

    #[test]
    fn it_should_name_an_endpoint_by_its_index_in_the_file_after_a_bad_one() {
        let found = problems(
            "[services.s]\nendpoints = [{ addr = \"nowhere\" }, { addr = \"127.0.0.1:1\" }, \
             { addr = \"127.0.0.1:1\" }]\n",
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("services.s.endpoints[0].addr = \"nowhere\""));
        assert!(
            found[1].starts_with(
                "services.s.endpoints[2].addr = \"127.0.0.1:1\": this endpoint is listed twice"
            ),
            "{found:?}"
        );
    }

    #[test]
    fn it_should_check_buffer_size_against_the_scratch_buffer_only_when_splicing() {
        for mode in ["auto", "splice"] {
            let found = problems(&format!(
                "[runtime]\nforward = \"{mode}\"\nbuffer_size = 16383\n"
            ));
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].starts_with("runtime.buffer_size = 16383: with forward"));
        }
        for text in [
            "[runtime]\nbuffer_size = 16384\n",
            "[runtime]\nforward = \"copy\"\nbuffer_size = 4096\n",
        ] {
            assert!(Config::parse(text, Path::new("t.toml")).is_ok(), "{text}");
        }
    }

    #[test]
    fn it_should_refuse_an_endpoint_that_is_a_listener_of_its_own_in_any_service() {
        // The loop goes through another service's listener just the same.
        let found = problems(
            "[listeners.a]\nlisten = \"[::]:7000\"\nservice = \"x\"\n\
             [services.x]\n[services.y]\nendpoints = [{ addr = \"[::1]:7000\" }]\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "services.y.endpoints[0].addr = \"[::1]:7000\": listeners.a listens on [::]:7000"
            ),
            "{found:?}"
        );
    }
}
