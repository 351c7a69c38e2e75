//! The admin HTTP listener: `GET /metrics` (Prometheus text), `GET /healthz`
//! (200 while serving, 503 while draining) and `GET /config` (the routing
//! table as JSON). It runs on its own thread, never on a worker, so a slow
//! or malicious admin client cannot stall the proxy; how it keeps serving
//! under silent and slow clients is the `http` module's business.

mod http;

use crate::config::ListenerRoute;
use crate::metrics::access_log::AccessLog;
use crate::metrics::exposition::{self, Sources};
use crate::metrics::{DiscoveryStats, ProcessStats, ReloadStats};
use crate::routing::Snapshot;
use crate::routing::health::monotonic_ms;
use crate::runtime::ProxyControl;
use http::{Limits, Response};
use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// What the admin endpoint reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The proxy: table, listeners, stop state.
    pub proxy: Arc<ProxyControl>,
    /// Reload outcomes.
    pub reloads: Arc<ReloadStats>,
    /// The access log, if on.
    pub access_log: Option<AccessLog>,
    /// The discovery sources' state.
    pub discovery: Arc<DiscoveryStats>,
}

/// The admin listener; it serves until the process exits.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
    /// A copy of the listening socket, to hand to a new process.
    socket: TcpListener,
    paused: tokio::sync::watch::Sender<bool>,
}

impl Admin {
    /// Binds `addr` and starts serving. A non-loopback address works but is
    /// logged as a warning: the endpoint has no authentication.
    pub fn start(addr: SocketAddr, state: AdminState) -> io::Result<Admin> {
        Admin::serve(bind(addr)?, state, false)
    }

    /// Serves `listener` (bound already, or taken over from another
    /// process), paused from the start if `paused`.
    pub fn serve(listener: TcpListener, state: AdminState, paused: bool) -> io::Result<Admin> {
        let addr = listener.local_addr()?;
        let socket = listener.try_clone()?;
        let (pause, paused) = tokio::sync::watch::channel(paused);
        if !addr.ip().is_loopback() {
            log::warn!(
                "admin listener on {addr}, which is not loopback: /metrics and /config are \
                 readable by anyone who can reach it"
            );
        }
        // Opened now, while descriptors are to be had: a scrape needs none.
        ProcessStats::open_sources();
        let answer = Arc::new(move |method: &str, path: &str| route(&state, method, path));
        http::spawn(listener, Limits::ADMIN, "l4mesh-admin", answer, paused)?;
        log::info!("admin listener on http://{addr} (/metrics, /healthz, /config)");
        Ok(Admin {
            addr,
            socket,
            paused: pause,
        })
    }

    /// Stops accepting (clients wait in the backlog) or starts again.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// The listening socket, for a new process to take over.
    pub fn socket(&self) -> &TcpListener {
        &self.socket
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Clients waiting to be accepted: std's 128 overflows when hundreds of
/// clients connect at once, and then the kernel drops their SYNs, leaving
/// each to retry a second later.
const BACKLOG: i32 = 1024;

/// Binds `addr` as `TcpListener::bind` does (with `SO_REUSEADDR`), with a
/// backlog of [`BACKLOG`].
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn route(state: &AdminState, method: &str, path: &str) -> Response {
    if !matches!(path, "/metrics" | "/healthz" | "/config") {
        return Response::text(404, "not found; try /metrics, /healthz or /config\n");
    }
    if method != "GET" {
        let mut response = Response::text(405, "only GET\n");
        response.headers.push(("Allow", "GET"));
        return response;
    }
    let table = state.proxy.table().load();
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: exposition::render(&Sources {
                snapshot: &table,
                reloads: &state.reloads,
                access_log: state.access_log.as_ref(),
                discovery: &state.discovery,
                accept_paused_seconds: crate::runtime::accept_paused_seconds(),
            }),
            headers: Vec::new(),
        },
        "/healthz" if state.proxy.stop_handle().is_stopping() => Response::text(503, "draining\n"),
        "/healthz" => Response::text(200, "ok\n"),
        _ => Response {
            status: 200,
            content_type: "application/json",
            body: config_json(&table, &state.proxy.listeners()).to_string(),
            headers: Vec::new(),
        },
    }
}

/// The routing table in use, as `/config` shows it.
fn config_json(table: &Snapshot, bound: &[(String, SocketAddr)]) -> Value {
    let now = monotonic_ms();
    let listeners: Vec<Value> = table
        .listeners
        .iter()
        .map(|l| {
            let addr = bound
                .iter()
                .find(|(n, _)| *n == l.config.name)
                .map(|(_, a)| a.to_string());
            json!({
                "name": l.config.name, "listen": l.config.listen.to_string(),
                "bound": addr, "route": route_json(&l.config.route),
                "accept_proxy": l.config.accept_proxy.is_some(),
                "max_connections": l.config.max_connections, "open": l.clients.open(),
            })
        })
        .collect();
    let services: Vec<Value> = table
        .services
        .values()
        .map(|s| {
            let endpoints: Vec<Value> = s
                .members
                .iter()
                .map(|m| {
                    let health = &m.endpoint.health;
                    json!({
                        "addr": m.endpoint.addr.to_string(), "weight": m.weight,
                        "source": m.source.name(), "state": m.state().label(),
                        "active": m.endpoint.active(),
                        "health": {
                            "checks": if s.health.is_some() { health.verdict().label() } else { "off" },
                            "last_failure": health.last_failure().as_deref(),
                            "ejected_remaining_ms": health
                                .ejected_for(now)
                                .map(|d| d.as_millis() as u64),
                        },
                    })
                })
                .collect();
            let health = s.health.as_ref().map(|h| {
                let text = |b: &Option<Vec<u8>>| {
                    b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
                };
                json!({
                    "interval_ms": h.interval.as_millis() as u64,
                    "timeout_ms": h.timeout.as_millis() as u64,
                    "healthy_threshold": h.healthy_threshold.get(),
                    "unhealthy_threshold": h.unhealthy_threshold.get(),
                    "send": text(&h.send), "expect": text(&h.expect),
                })
            });
            let outlier = s.outlier.as_ref().map(|o| {
                json!({
                    "consecutive_failures": o.consecutive_failures.get(),
                    "base_ejection_ms": o.base_ejection.as_millis() as u64,
                    "max_ejection_ms": o.max_ejection.as_millis() as u64,
                    "max_ejection_percent": o.max_ejection_percent,
                })
            });
            json!({
                "name": s.name, "connect_timeout_ms": s.connect_timeout.as_millis() as u64,
                "idle_timeout_ms": s.idle_timeout.as_millis() as u64,
                "connect_attempts": s.connect_attempts, "panic_threshold": s.panic_threshold,
                "max_connections_per_endpoint": s.max_connections_per_endpoint,
                "health": health, "outlier": outlier, "endpoints": endpoints,
            })
        })
        .collect();
    json!({"generation": table.generation, "listeners": listeners, "services": services})
}

/// A listener's route in `/config`: `{"service": NAME}`, or its SNI rules
/// and default service.
fn route_json(route: &ListenerRoute) -> Value {
    match route {
        ListenerRoute::Service(name) => json!({ "service": name }),
        ListenerRoute::Sni(sni) => json!({
            "sni": sni.rules.iter().map(|r| json!({
                "names": r.names, "service": r.service, "alpn": r.alpn,
            })).collect::<Vec<_>>(),
            "default_service": sni.default_service,
        }),
    }
}
