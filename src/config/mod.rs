//! Configuration: the TOML file's shape ([`file`]), its validation into the
//! runtime types below ([`validate`]), and errors that explain themselves.

mod affinity;
mod cidr;
mod discovery;
mod duration;
mod endpoints;
mod error;
pub mod file;
mod listener;
mod listeners;
mod names;
mod sni;
mod validate;

pub use affinity::{CpuAffinity, cpu_list, parse_cpu_affinity};
pub use cidr::{Cidr, masked};
pub use discovery::{DiscoveryConfig, DnsConfig, EtcdConfig, EtcdTls, ServiceDiscovery};
pub use duration::parse_duration;
pub use endpoints::{looping_listener, unusable_endpoint};
pub use error::{ConfigError, Problem};
pub use listener::{
    ClientLimits, ListenerConfig, ListenerRoute, ProxyAccept, Rate, SniRouting, SniRule, Untrusted,
};
pub use names::is_valid_name;
pub use sni::check_name as check_sni_name;
pub use validate::MAX_DURATION;

use crate::preamble::proxy_header::Version;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated configuration: every value has its runtime type and meets its
/// invariants, so nothing downstream re-checks it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (for messages).
    pub path: PathBuf,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[listeners.*]`, sorted by name.
    pub listeners: Vec<ListenerConfig>,
    /// `[services.*]`, sorted by name.
    pub services: Vec<ServiceConfig>,
    /// `[registry]`, if present.
    pub registry: Option<RegistryConfig>,
    /// `[admin]`: where the admin HTTP listener listens, if anywhere.
    pub admin: Option<SocketAddr>,
    /// `[discovery]`: the etcd and DNS settings services may opt in to.
    pub discovery: DiscoveryConfig,
    /// `[access_log]`.
    pub access_log: AccessLogConfig,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Nowhere.
    Off,
    /// Standard error.
    Stderr,
    /// Appended to this file (reopened on SIGUSR1, for logrotate).
    File(PathBuf),
}

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// `key=value` pairs.
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// `[access_log]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Where lines go.
    pub target: AccessLogTarget,
    /// How they are written.
    pub format: AccessLogFormat,
}

/// `[registry]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Path of the Unix stream socket.
    pub socket: PathBuf,
    /// Permission bits of the socket file.
    pub mode: u32,
}

/// `[runtime]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Worker threads (0 in the file is resolved to the core count).
    pub workers: usize,
    /// Bytes per pooled buffer (a chunk the peer cannot take at once), and
    /// per read with `forward = "copy"`.
    pub buffer_size: usize,
    /// How long open connections may finish after SIGTERM/SIGINT.
    pub drain_timeout: Duration,
    /// The listen(2) backlog.
    pub backlog: u32,
    /// How bytes are moved.
    pub forward: ForwardMode,
    /// Bytes per splice pipe.
    pub pipe_size: usize,
    /// The workers' event loop.
    pub event_loop: EventLoop,
    /// Which CPU each worker runs on.
    pub cpu_affinity: CpuAffinity,
    /// Where a new l4mesh asks this one for its sockets (a hitless
    /// upgrade), if anywhere.
    pub upgrade_socket: Option<PathBuf>,
}

/// The event loop each worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLoop {
    /// io_uring where the kernel allows it, epoll where it does not
    /// (logged once at start).
    Auto,
    /// io_uring, or l4mesh does not start.
    IoUring,
    /// The epoll loop (tokio's reactor), never a ring.
    Epoll,
}

impl EventLoop {
    /// Every choice with its config name.
    pub const ALL: [(&'static str, EventLoop); 3] = [
        ("auto", EventLoop::Auto),
        ("io_uring", EventLoop::IoUring),
        ("epoll", EventLoop::Epoll),
    ];
}

/// How a connection's bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    /// The faster way for the case, as measured (see the README): splice.
    Auto,
    /// Zero-copy `splice(2)` through a pipe per direction, on readiness;
    /// a connection falls back to copying when no pipe can be had.
    Splice,
    /// recv and send through the worker's scratch buffer, on readiness,
    /// never splicing.
    Copy,
}

impl ForwardMode {
    /// Every mode with its config name.
    pub const ALL: [(&'static str, ForwardMode); 3] = [
        ("auto", ForwardMode::Auto),
        ("splice", ForwardMode::Splice),
        ("copy", ForwardMode::Copy),
    ];

    /// Whether connections are spliced (with copying as the fallback).
    pub fn splices(self) -> bool {
        self != ForwardMode::Copy
    }
}

/// The balancing policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancePolicy {
    /// Smooth weighted round robin (nginx's algorithm).
    RoundRobin,
    /// Weighted random.
    Random,
    /// Fewest active connections relative to weight; ties at random.
    LeastConn,
    /// Power of two random choices: the less loaded of two weighted draws.
    P2c,
    /// Consistent hashing on the client IP through a Maglev table.
    SourceHash,
}

impl BalancePolicy {
    /// Every policy with its config name.
    pub const ALL: [(&'static str, BalancePolicy); 5] = [
        ("round_robin", BalancePolicy::RoundRobin),
        ("random", BalancePolicy::Random),
        ("least_conn", BalancePolicy::LeastConn),
        ("p2c", BalancePolicy::P2c),
        ("source_hash", BalancePolicy::SourceHash),
    ];
}

/// One `[services.NAME]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// The table name: `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// How endpoints are picked.
    pub balance: BalancePolicy,
    /// How long one connect attempt may take.
    pub connect_timeout: Duration,
    /// Close a connection with no bytes either way for this long.
    pub idle_timeout: Duration,
    /// Distinct endpoints tried for one client.
    pub connect_attempts: NonZeroU32,
    /// The endpoints, in file order.
    pub endpoints: Vec<EndpointConfig>,
    /// Below this percentage (0 to 100) of usable endpoints, balance over
    /// all of them ignoring health; 0 means only when none is usable.
    pub panic_threshold: u8,
    /// Open connections allowed to each endpoint at once.
    pub max_connections_per_endpoint: Option<u64>,
    /// Active health checks, if configured.
    pub health: Option<HealthConfig>,
    /// Passive outlier ejection, if configured.
    pub outlier: Option<OutlierConfig>,
    /// Where more endpoints come from, besides the file and the registry.
    pub discovery: Option<ServiceDiscovery>,
    /// The PROXY protocol header written on every upstream connection, if
    /// any (and, as a LOCAL header, on every health probe).
    pub send_proxy: Option<Version>,
}

/// `[services.NAME.health]`, validated: `timeout < interval`, thresholds at
/// least 1, `send` and `expect` not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between two probes of one endpoint, before the ±10% jitter.
    pub interval: Duration,
    /// How long one probe may take, connect and reply included.
    pub timeout: Duration,
    /// Consecutive passed probes that mark a down endpoint up.
    pub healthy_threshold: NonZeroU32,
    /// Consecutive failed probes that mark an up endpoint down.
    pub unhealthy_threshold: NonZeroU32,
    /// Bytes sent once connected.
    pub send: Option<Vec<u8>>,
    /// Bytes the reply must start with.
    pub expect: Option<Vec<u8>>,
}

/// `[services.NAME.outlier]`, validated: `base_ejection <= max_ejection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Connect failures in a row that eject an endpoint.
    pub consecutive_failures: NonZeroU32,
    /// The first ejection's length; the n-th in a row lasts n times as long.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// The largest share (0 to 100) of a service's endpoints ejected at once.
    pub max_ejection_percent: u8,
}

/// One endpoint, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Upstream address: never a wildcard, multicast or broadcast address,
    /// nor one of the file's listeners.
    pub addr: SocketAddr,
    /// Relative share of new connections, 1 to [`MAX_WEIGHT`].
    pub weight: u32,
}

/// The size of the scratch buffer each worker copies small chunks through
/// when it splices (`forward = "auto"`, and `"splice"` when a splice moves
/// nothing or no pipe can be had); what the peer cannot take at once waits
/// in a pooled buffer of `runtime.buffer_size` bytes, which must hold it.
/// A read that fills it marks a bulk stream, which `auto` then splices
/// (see `proxy::pump::Pumps`).
pub const SCRATCH_BYTES: usize = 16 * 1024;

/// The largest endpoint weight (as HAProxy's 256): it keeps the round-robin
/// schedule, whose length is the sum of the weights, small.
pub const MAX_WEIGHT: u32 = 256;

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` only names it in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: file::FileConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: syntax_message(text, &e),
        })?;
        validate::validate(file, path).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// toml's error as one line: `line L, column C: what is wrong` (its own
/// Display spans several lines with a source excerpt, which log lines and
/// registry replies cannot carry).
fn syntax_message(text: &str, error: &toml::de::Error) -> String {
    let what = error.message().trim_end().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}
