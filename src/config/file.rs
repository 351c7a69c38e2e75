//! The TOML file's shape, read by serde with `deny_unknown_fields` so a
//! misspelt key is an error that names it. Values stay close to what the user
//! wrote (strings, signed integers); [`super::validate`] turns them into
//! runtime types and explains what is wrong with the key path.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[runtime]`: workers, buffers, shutdown.
    #[serde(default)]
    pub runtime: FileRuntime,
    /// `[listeners.NAME]`: where clients connect.
    #[serde(default)]
    pub listeners: BTreeMap<String, FileListener>,
    /// `[services.NAME]`: where connections go.
    #[serde(default)]
    pub services: BTreeMap<String, FileService>,
    /// `[registry]`: the run-time registration socket, if any.
    pub registry: Option<FileRegistry>,
    /// `[admin]`: the admin HTTP listener, if any.
    pub admin: Option<FileAdmin>,
    /// `[access_log]`: one line per closed connection.
    #[serde(default)]
    pub access_log: FileAccessLog,
    /// `[discovery]`: etcd and DNS settings.
    #[serde(default)]
    pub discovery: FileDiscovery,
}

/// `[discovery]`: the fleet-wide sources a service may opt in to.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    /// `[discovery.etcd]`.
    pub etcd: Option<FileEtcd>,
    /// `[discovery.dns]`.
    pub dns: Option<FileDns>,
}

/// `[discovery.etcd]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEtcd {
    /// Member client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// Auth user.
    pub username: Option<String>,
    /// Auth password.
    pub password: Option<String>,
    /// CA file (PEM).
    pub ca: Option<String>,
    /// Client certificate file (PEM).
    pub cert: Option<String>,
    /// Client key file (PEM).
    pub key: Option<String>,
    /// Connect timeout.
    #[serde(default = "default_dial_timeout")]
    pub dial_timeout: String,
}

/// `[discovery.dns]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    /// Name servers, IP:port.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Query timeout.
    #[serde(default = "default_dns_timeout")]
    pub timeout: String,
}

/// A service's `discovery` key: `"etcd"`, or `{ srv = "...", refresh = "10s" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileServiceDiscovery {
    /// A source by name: `"etcd"`.
    Named(String),
    /// DNS SRV records.
    Srv(FileSrv),
}

/// `{ srv, refresh }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSrv {
    /// The SRV name.
    pub srv: String,
    /// The longest time between two queries.
    #[serde(default = "default_srv_refresh")]
    pub refresh: String,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    /// `IP:port` of the admin HTTP listener.
    pub listen: String,
}

/// `[access_log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    /// `"off"`, `"stderr"` or a file path.
    #[serde(default = "default_access_log_path")]
    pub path: String,
    /// `"logfmt"` or `"json"`.
    #[serde(default = "default_access_log_format")]
    pub format: String,
}

impl Default for FileAccessLog {
    fn default() -> Self {
        FileAccessLog {
            path: default_access_log_path(),
            format: default_access_log_format(),
        }
    }
}

/// `[registry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRegistry {
    /// Path of the Unix stream socket.
    pub socket: String,
    /// Octal file mode of the socket, as a string such as `"0600"`.
    #[serde(default = "default_registry_mode")]
    pub mode: String,
}

/// `[runtime]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRuntime {
    /// Worker threads; 0 means one per available core.
    #[serde(default)]
    pub workers: i64,
    /// Bytes per pooled buffer (a chunk the peer cannot take at once), and
    /// per read with `forward = "copy"`.
    #[serde(default = "default_buffer_size")]
    pub buffer_size: i64,
    /// How long open connections may finish after SIGTERM/SIGINT.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: String,
    /// The listen(2) backlog of every listener socket.
    #[serde(default = "default_backlog")]
    pub backlog: i64,
    /// How bytes are moved: `"auto"`, `"splice"` or `"copy"`.
    #[serde(default = "default_forward")]
    pub forward: String,
    /// Bytes per splice pipe.
    #[serde(default = "default_pipe_size")]
    pub pipe_size: i64,
    /// The workers' event loop: `"auto"`, `"io_uring"` or `"epoll"`.
    #[serde(default = "default_event_loop")]
    pub event_loop: String,
    /// `"auto"`, `"off"` or a CPU list such as `"0-3,8"`.
    #[serde(default = "default_cpu_affinity")]
    pub cpu_affinity: String,
    /// The Unix socket a new l4mesh takes this one's sockets over from;
    /// absent = no hitless upgrade.
    #[serde(default)]
    pub upgrade_socket: Option<String>,
}

impl Default for FileRuntime {
    fn default() -> Self {
        FileRuntime {
            workers: 0,
            buffer_size: default_buffer_size(),
            drain_timeout: default_drain_timeout(),
            backlog: default_backlog(),
            forward: default_forward(),
            pipe_size: default_pipe_size(),
            event_loop: default_event_loop(),
            cpu_affinity: default_cpu_affinity(),
            upgrade_socket: None,
        }
    }
}

/// `[listeners.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    /// `IP:port` to listen on.
    pub listen: String,
    /// The name of the service that gets this listener's connections (not
    /// with `sni`, which names a service per rule).
    pub service: Option<String>,
    /// Open client connections allowed at once, across all workers; none
    /// means no limit.
    pub max_connections: Option<i64>,
    /// `"v1"`, `"v2"` or `"any"`: trusted clients start with a PROXY
    /// protocol header of that version.
    pub accept_proxy: Option<String>,
    /// Prefixes whose clients must send the header (required with
    /// `accept_proxy`).
    pub trusted_sources: Option<Vec<String>>,
    /// `"reject"` (the default) or `"plain"`: what becomes of a client from
    /// an untrusted address.
    pub untrusted_sources: Option<String>,
    /// How long a trusted client may take to send its whole header.
    pub proxy_header_timeout: Option<String>,
    /// Route by the TLS ClientHello's server name: rules in order.
    pub sni: Option<Vec<FileSniRule>>,
    /// Where an SNI listener sends what no rule takes.
    pub default_service: Option<String>,
    /// How long an SNI listener waits for the whole ClientHello.
    pub client_hello_timeout: Option<String>,
    /// The largest ClientHello an SNI listener reads, in bytes.
    pub client_hello_max_size: Option<i64>,
    /// Open connections allowed at once from one client (or prefix).
    pub max_connections_per_client: Option<i64>,
    /// New connections allowed from one client: `"N/s"`, `"N/m"`, `"N/h"`.
    pub connection_rate_per_client: Option<String>,
    /// Connections one client may open at once in a burst (default: N of
    /// the rate).
    pub connection_burst_per_client: Option<i64>,
    /// The IPv4 prefix length that makes one client for the per-client
    /// limits (default 32).
    pub client_prefix_v4: Option<i64>,
    /// The IPv6 prefix length that makes one client (default 128).
    pub client_prefix_v6: Option<i64>,
}

/// One rule of a listener's `sni` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSniRule {
    /// Server names (`api.example.com`) or one-label wildcards
    /// (`*.example.com`).
    pub names: Vec<String>,
    /// The service that gets the matching connections.
    pub service: String,
    /// ALPN protocols, one of which the client must offer; empty for any.
    #[serde(default)]
    pub alpn: Vec<String>,
}

/// `[services.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileService {
    /// The balancing policy's name.
    #[serde(default = "default_balance")]
    pub balance: String,
    /// How long one connect attempt may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Close a connection that moved no bytes either way for this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
    /// Distinct endpoints tried before the client is closed.
    #[serde(default = "default_connect_attempts")]
    pub connect_attempts: i64,
    /// The service's endpoints; may be empty (the registry may fill it later).
    #[serde(default)]
    pub endpoints: Vec<FileEndpoint>,
    /// Below this percentage of usable endpoints, balance over all of them.
    #[serde(default)]
    pub panic_threshold: i64,
    /// Open connections allowed to each endpoint at once; none means no limit.
    pub max_connections_per_endpoint: Option<i64>,
    /// `[services.NAME.health]`: active health checks, if any.
    pub health: Option<FileHealth>,
    /// `[services.NAME.outlier]`: passive outlier ejection, if any.
    pub outlier: Option<FileOutlier>,
    /// `"etcd"` or `{ srv, refresh }`: where more endpoints come from.
    pub discovery: Option<FileServiceDiscovery>,
    /// `"v1"` or `"v2"`: a PROXY protocol header on every upstream
    /// connection.
    pub send_proxy: Option<String>,
}

/// `[services.NAME.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    /// Time between two probes of one endpoint (jittered by ±10%).
    #[serde(default = "default_health_interval")]
    pub interval: String,
    /// How long one probe may take, connect and reply included.
    #[serde(default = "default_health_timeout")]
    pub timeout: String,
    /// Consecutive passed probes that mark a down endpoint up.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: i64,
    /// Consecutive failed probes that mark an up endpoint down.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: i64,
    /// Bytes to send once connected.
    pub send: Option<String>,
    /// What the reply must start with.
    pub expect: Option<String>,
}

/// `[services.NAME.outlier]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutlier {
    /// Connect failures in a row that eject an endpoint.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: i64,
    /// The first ejection's length; repeated ejections last a multiple.
    #[serde(default = "default_base_ejection")]
    pub base_ejection: String,
    /// The longest ejection (default: the longer of 5m and `base_ejection`).
    pub max_ejection: Option<String>,
    /// The largest share of a service's endpoints ejected at once.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: i64,
}

/// One entry of `endpoints = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEndpoint {
    /// `IP:port` of the upstream.
    pub addr: String,
    /// Relative share of new connections.
    #[serde(default = "default_weight")]
    pub weight: i64,
}

fn default_buffer_size() -> i64 {
    65536
}
fn default_drain_timeout() -> String {
    "30s".to_string()
}
fn default_backlog() -> i64 {
    1024
}
fn default_pipe_size() -> i64 {
    1 << 20
}
fn default_cpu_affinity() -> String {
    "auto".into()
}
fn default_event_loop() -> String {
    "auto".to_string()
}
fn default_forward() -> String {
    "auto".to_string()
}
fn default_balance() -> String {
    "round_robin".to_string()
}
fn default_connect_timeout() -> String {
    "1s".to_string()
}
fn default_idle_timeout() -> String {
    "1h".to_string()
}
fn default_connect_attempts() -> i64 {
    3
}
fn default_access_log_path() -> String {
    "off".to_string()
}
fn default_access_log_format() -> String {
    "logfmt".to_string()
}
fn default_registry_mode() -> String {
    "0600".to_string()
}
fn default_etcd_prefix() -> String {
    "/l4mesh/".to_string()
}
fn default_dial_timeout() -> String {
    "2s".to_string()
}
fn default_dns_timeout() -> String {
    "2s".to_string()
}
fn default_srv_refresh() -> String {
    "10s".to_string()
}
fn default_weight() -> i64 {
    1
}
fn default_health_interval() -> String {
    "2s".to_string()
}
fn default_health_timeout() -> String {
    "1s".to_string()
}
fn default_healthy_threshold() -> i64 {
    2
}
fn default_unhealthy_threshold() -> i64 {
    3
}
fn default_consecutive_failures() -> i64 {
    5
}
fn default_base_ejection() -> String {
    "30s".to_string()
}
fn default_max_ejection_percent() -> i64 {
    50
}
