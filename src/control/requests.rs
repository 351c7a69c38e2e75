//! The controller's answers to registry requests: register, deregister,
//! drain, undrain and list, checked against the published table.

use super::controller::{Answer, Controller, endpoint_problem};
use crate::discovery::registry::EndpointKey;
use crate::discovery::registry::Registered;
use crate::discovery::registry::protocol::{HELP, Request};
use crate::routing::{Service, Source};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Controller {
    /// The service named `name` in the published table, or an error reply
    /// that lists the known ones.
    fn service(&self, name: &str) -> Result<Arc<Service>, Value> {
        let table = self.proxy.table().load();
        table.services.get(name).cloned().ok_or_else(|| {
            let known: Vec<&String> = table.services.keys().collect();
            error(format!(
                "unknown service `{}`; known services: {}",
                name.escape_debug(),
                if known.is_empty() {
                    "none (add one to the config file)".to_string()
                } else {
                    known
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))
        })
    }

    /// Where the member of `service` at `addr` comes from, unless that is
    /// the registry (O(1); the other sources change only by a publication).
    fn owned_elsewhere(service: &Service, addr: SocketAddr) -> Option<Source> {
        service
            .member(addr)
            .map(|m| m.source)
            .filter(|&s| s != Source::Registry)
    }

    /// The reply for a register or deregister of an address another source
    /// owns.
    fn not_the_registrys(&self, service: &str, addr: SocketAddr, source: Source) -> Value {
        error(match source {
            Source::File => format!(
                "{addr} is declared for service {service} in {}; edit the file to change it",
                self.path.display()
            ),
            other => format!(
                "{addr} of service {service} comes from {}; change it there (the registry \
                 owns only what it registered)",
                other.name()
            ),
        })
    }

    pub(super) fn registry(&mut self, request: Request) -> Answer {
        let reply = match request {
            Request::Register {
                service,
                addr,
                weight,
                ttl,
            } => self.register(service, addr, weight, ttl),
            Request::Deregister { service, addr } => self.deregister(service, addr),
            Request::Drain { service, addr } => self.drain(service, addr).map(Answer::Now),
            Request::Undrain { service, addr } => self.undrain(service, addr).map(Answer::Now),
            Request::List { service } => self.list(service.as_deref()).map(Answer::Now),
            Request::Reload => Ok(Answer::Now(match self.reload(true) {
                Ok(message) => json!({"ok": true, "applied": true, "message": message}),
                Err(error) => json!({"ok": false, "applied": false, "error": error}),
            })),
            Request::Help => Ok(Answer::Now(json!({"ok": true, "help": HELP}))),
        };
        reply.unwrap_or_else(Answer::Now)
    }

    /// Records a registration; the reply goes out once the batch is
    /// published (a heartbeat that changes nothing publishes nothing).
    fn register(
        &mut self,
        service: String,
        addr: SocketAddr,
        weight: u32,
        ttl: Option<Duration>,
    ) -> Result<Answer, Value> {
        let current = self.service(&service)?;
        if let Some(source) = Self::owned_elsewhere(&current, addr) {
            return Err(self.not_the_registrys(&service, addr, source));
        }
        // The same rules as the file's endpoints.
        if let Some(why) = endpoint_problem(addr, &self.own_listeners()) {
            return Err(error(format!(
                "{addr} cannot be an endpoint: {why}; register the address the instance listens on"
            )));
        }
        let key: EndpointKey = (service.clone(), addr);
        let registered = self
            .sources
            .registrations
            .register(key, weight, ttl, Instant::now());
        let new = registered == Registered::New;
        if new {
            log::info!("registry: registered {service} {addr} weight={weight} ttl={ttl:?}");
        }
        Ok(Answer::AfterPublish {
            value: json!({
                "ok": true, "service": service, "addr": addr.to_string(), "weight": weight,
                "ttl_ms": ttl.map(|t| t.as_millis() as u64), "new": new,
            }),
            // A heartbeat moves only the expiry, which the table does not
            // hold: publishing would rebuild it and wake the health thread
            // for nothing.
            publish: registered != Registered::Refreshed,
        })
    }

    fn deregister(&mut self, service: String, addr: SocketAddr) -> Result<Answer, Value> {
        let current = self.service(&service)?;
        if let Some(source) = Self::owned_elsewhere(&current, addr) {
            return Err(self.not_the_registrys(&service, addr, source));
        }
        if !self
            .sources
            .registrations
            .deregister(&(service.clone(), addr))
        {
            return Err(error(format!(
                "{addr} is not registered for service {service}; `list {service}` shows its endpoints"
            )));
        }
        log::info!("registry: deregistered {service} {addr}");
        Ok(Answer::AfterPublish {
            value: json!({"ok": true, "service": service, "addr": addr.to_string()}),
            publish: true,
        })
    }

    fn drain(&mut self, service: String, addr: SocketAddr) -> Result<Value, Value> {
        let current = self.service(&service)?;
        let Some(member) = current.member(addr) else {
            return Err(error(format!(
                "{addr} is not an endpoint of service {service}; `list {service}` shows its endpoints"
            )));
        };
        let active = member.endpoint.active();
        self.sources.registrations.drain((service.clone(), addr));
        let generation = self.publish();
        log::info!("registry: draining {service} {addr} ({active} open connection(s) continue)");
        Ok(json!({
            "ok": true, "service": service, "addr": addr.to_string(),
            "active": active, "generation": generation,
        }))
    }

    fn undrain(&mut self, service: String, addr: SocketAddr) -> Result<Value, Value> {
        let current = self.service(&service)?;
        if current.member(addr).is_none() {
            return Err(error(format!(
                "{addr} is not an endpoint of service {service}; `list {service}` shows its endpoints"
            )));
        }
        if !self.sources.registrations.undrain(&(service.clone(), addr)) {
            return Err(error(format!(
                "{addr} of service {service} is not draining; nothing to undo"
            )));
        }
        let generation = self.publish();
        log::info!("registry: undrained {service} {addr}; new connections reach it again");
        Ok(json!({
            "ok": true, "service": service, "addr": addr.to_string(), "generation": generation,
        }))
    }

    fn list(&self, only: Option<&str>) -> Result<Value, Value> {
        if let Some(name) = only {
            self.service(name)?;
        }
        let table = self.proxy.table().load();
        let now = Instant::now();
        let mut endpoints = Vec::new();
        for (name, service) in &table.services {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            for member in &service.members {
                let addr = member.endpoint.addr;
                let ttl = self
                    .sources
                    .registrations
                    .get(&(name.clone(), addr))
                    .and_then(|r| r.expires)
                    .map(|at| at.saturating_duration_since(now).as_millis() as u64);
                endpoints.push(json!({
                    "service": name, "addr": addr.to_string(), "weight": member.weight,
                    "source": member.source.name(),
                    "state": member.state().label(),
                    "active": member.endpoint.active(), "ttl_remaining_ms": ttl,
                }));
            }
        }
        Ok(json!({"ok": true, "generation": table.generation, "endpoints": endpoints}))
    }
}

/// An error reply.
pub(super) fn error(message: String) -> Value {
    json!({"ok": false, "error": message})
}
