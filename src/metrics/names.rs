//! Every metric name, in one place (the dashboard test checks against them).

/// Connections accepted, per listener.
pub const DOWNSTREAM_CONNECTIONS_TOTAL: &str = "l4mesh_downstream_connections_total";
/// Connections open now, per listener.
pub const DOWNSTREAM_CONNECTIONS_ACTIVE: &str = "l4mesh_downstream_connections_active";
/// Bytes from (`rx`) and to (`tx`) clients, per listener.
pub const DOWNSTREAM_BYTES_TOTAL: &str = "l4mesh_downstream_bytes_total";
/// Upstream connections established, per endpoint.
pub const UPSTREAM_CONNECTIONS_TOTAL: &str = "l4mesh_upstream_connections_total";
/// Upstream connections open or connecting now, per endpoint.
pub const UPSTREAM_CONNECTIONS_ACTIVE: &str = "l4mesh_upstream_connections_active";
/// Failed connect attempts, per endpoint and reason.
pub const UPSTREAM_CONNECT_FAILURES_TOTAL: &str = "l4mesh_upstream_connect_failures_total";
/// Time to connect upstream, per service.
pub const UPSTREAM_CONNECT_DURATION_SECONDS: &str = "l4mesh_upstream_connect_duration_seconds";
/// How long connections last, per listener.
pub const CONNECTION_DURATION_SECONDS: &str = "l4mesh_connection_duration_seconds";
/// Clients closed because nothing usable was there, per service.
pub const NO_ENDPOINT_TOTAL: &str = "l4mesh_no_endpoint_total";
/// Config reloads, by result.
pub const CONFIG_RELOADS_TOTAL: &str = "l4mesh_config_reloads_total";
/// When the config was last loaded successfully.
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "l4mesh_config_last_reload_success_timestamp_seconds";
/// Whether a discovery source answered at its last attempt (1) or not (0).
pub const DISCOVERY_UP: &str = "l4mesh_discovery_up";
/// When a discovery source last delivered a complete, current view.
pub const DISCOVERY_LAST_SYNC: &str = "l4mesh_discovery_last_sync_timestamp_seconds";
/// A discovery source's failed attempts (unreachable, timeout, refused).
pub const DISCOVERY_ERRORS_TOTAL: &str = "l4mesh_discovery_errors_total";
/// The routing table's generation.
pub const CONFIG_GENERATION: &str = "l4mesh_config_generation";
/// Endpoints per service and state.
pub const ENDPOINTS: &str = "l4mesh_endpoints";
/// 1 if health lets the balancer use an endpoint, else 0.
pub const ENDPOINT_HEALTHY: &str = "l4mesh_endpoint_healthy";
/// Client connections closed at once, per listener and reason.
pub const CONNECTIONS_REJECTED_TOTAL: &str = "l4mesh_connections_rejected_total";
/// Clients admitted without a per-client entry (the table had no room).
pub const CLIENT_LIMIT_UNTRACKED_TOTAL: &str = "l4mesh_client_limit_untracked_total";
/// Clients reset for their PROXY protocol header, per listener and reason.
pub const PROXY_HEADER_ERRORS_TOTAL: &str = "l4mesh_proxy_header_errors_total";
/// Connections an SNI listener routed, per listener and rule.
pub const SNI_ROUTES_TOTAL: &str = "l4mesh_sni_routes_total";
/// ClientHellos an SNI listener could not route by, per listener and reason.
pub const CLIENT_HELLO_FAILURES_TOTAL: &str = "l4mesh_client_hello_failures_total";
/// Connections l4mesh ended with a reset, per listener and cause.
pub const CONNECTIONS_RESET_TOTAL: &str = "l4mesh_connections_reset_total";
/// Outlier ejections, per endpoint.
pub const OUTLIER_EJECTIONS_TOTAL: &str = "l4mesh_outlier_ejections_total";
/// Connections balanced in panic mode, per service.
pub const PANIC_TOTAL: &str = "l4mesh_panic_total";
/// Seconds accept loops waited because the process was at its connection
/// capacity (clients waited in the backlog meanwhile).
pub const ACCEPT_PAUSED_SECONDS_TOTAL: &str = "l4mesh_accept_paused_seconds_total";
/// Access-log lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "l4mesh_access_log_dropped_total";
/// CPU time used.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
/// Resident memory.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Virtual memory.
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
/// Open file descriptors.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The file descriptor limit.
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Process start time.
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
