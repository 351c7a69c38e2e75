//! The admin HTTP listener: `GET /metrics` (Prometheus text), `GET /healthz`
//! (200 while serving, 503 while draining) and `GET /config` (the routing
//! table as JSON). It runs on its own threads, never on a worker, so a slow
//! or malicious admin client cannot stall the proxy: each client has a
//! thread with 5 s read and write timeouts, at most 16 are served at once,
//! and requests are parsed with `httparse` within 8 KiB.

use super::access_log::AccessLog;
use super::exposition::{self, Sources};
use crate::control::{ReloadStats, Snapshot};
use crate::health::monotonic_ms;
use crate::runtime::ProxyControl;
use serde_json::{Value, json};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CLIENTS: usize = 16;
const MAX_REQUEST: usize = 8192;

/// What the admin endpoint reads.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The proxy: table, listeners, stop state.
    pub proxy: Arc<ProxyControl>,
    /// Reload outcomes.
    pub reloads: Arc<ReloadStats>,
    /// The access log, if on.
    pub access_log: Option<AccessLog>,
}

/// The admin listener; it serves until the process exits.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
}

impl Admin {
    /// Binds `addr` and starts serving. A non-loopback address works but is
    /// logged as a warning: the endpoint has no authentication.
    pub fn start(addr: SocketAddr, state: AdminState) -> io::Result<Admin> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            log::warn!(
                "admin listener on {addr}, which is not loopback: /metrics and /config are \
                 readable by anyone who can reach it"
            );
        }
        std::thread::Builder::new()
            .name("l4mesh-admin".into())
            .spawn(move || accept(listener, state))?;
        log::info!("admin listener on http://{addr} (/metrics, /healthz, /config)");
        Ok(Admin { addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn accept(listener: TcpListener, state: AdminState) {
    let busy = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if busy.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
            busy.fetch_sub(1, Ordering::Relaxed);
            let _ = respond(
                &mut stream,
                503,
                "text/plain",
                "too many admin clients\n",
                &[],
            );
            continue;
        }
        let (state, busy) = (state.clone(), Arc::clone(&busy));
        let spawned = std::thread::Builder::new()
            .name("l4mesh-admin-client".into())
            .spawn(move || {
                if let Err(e) = serve(stream, &state) {
                    log::debug!("admin client: {e}");
                }
                busy.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            log::warn!("admin: cannot start a client thread: {e}");
        }
    }
}

/// Reads one request (until the end of its headers) and answers it.
fn serve(mut stream: TcpStream, state: &AdminState) -> io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut buffer = vec![0u8; MAX_REQUEST];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buffer[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buffer[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("");
                let path = request.path.unwrap_or("").split('?').next().unwrap_or("");
                return route(&mut stream, state, method, path);
            }
            Ok(httparse::Status::Partial) if filled < buffer.len() => continue,
            Ok(httparse::Status::Partial) => {
                return respond(&mut stream, 431, "text/plain", "request too large\n", &[]);
            }
            Err(e) => {
                let body = format!("bad request: {e}\n");
                return respond(&mut stream, 400, "text/plain", &body, &[]);
            }
        }
    }
}

fn route(stream: &mut TcpStream, state: &AdminState, method: &str, path: &str) -> io::Result<()> {
    if !matches!(path, "/metrics" | "/healthz" | "/config") {
        let body = "not found; try /metrics, /healthz or /config\n";
        return respond(stream, 404, "text/plain", body, &[]);
    }
    if method != "GET" {
        return respond(stream, 405, "text/plain", "only GET\n", &[("Allow", "GET")]);
    }
    let table = state.proxy.table().load();
    match path {
        "/metrics" => {
            let body = exposition::render(&Sources {
                snapshot: &table,
                reloads: &state.reloads,
                access_log: state.access_log.as_ref(),
            });
            respond(
                stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
                &[],
            )
        }
        "/healthz" if state.proxy.stop_handle().is_stopping() => {
            respond(stream, 503, "text/plain", "draining\n", &[])
        }
        "/healthz" => respond(stream, 200, "text/plain", "ok\n", &[]),
        _ => {
            let body = config_json(&table, &state.proxy.listeners()).to_string();
            respond(stream, 200, "application/json", &body, &[])
        }
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
                "bound": addr, "service": l.config.service,
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

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
