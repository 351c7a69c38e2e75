//! The controller thread: the one place where the routing table changes.
//! File reloads, registry requests and TTL expiries arrive as [`Command`]s
//! and are applied one at a time, so there are no races between them. Each
//! change builds the next snapshot completely, then publishes it with one
//! atomic store; connections already open keep the snapshot they started
//! with. Registrations queued together are applied together and published
//! as one snapshot, so a burst waits for one build, not one build each.
//! Bad input never replaces good state.

use super::protocol::{HELP, Request};
use super::registrations::{EndpointKey, Registered, Registrations};
use super::snapshot::{Service, Snapshot};
use crate::config::Config;
use crate::routing::Source;
use crate::runtime::ProxyControl;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a caller waits for the controller to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a reload waits for the workers to stop removed listeners.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Registry changes applied together, then published as one snapshot.
const MAX_BATCH: usize = 1024;

/// The reply when the controller has stopped.
const SHUTTING_DOWN: &str = "l4mesh is shutting down; try again later";

/// A change for the controller to apply.
#[derive(Debug)]
pub enum Command {
    /// Re-read the config file. Without `force`, a file whose content did not
    /// change is left alone (the watcher sees unrelated events too).
    Reload {
        /// Reload even if the content is unchanged (SIGHUP, `reload`).
        force: bool,
        /// Where to send the outcome, if anyone waits for it.
        reply: Option<Sender<Result<String, String>>>,
    },
    /// A registry request; the reply is the JSON object to send back.
    Registry {
        /// The parsed request.
        request: Request,
        /// Where the reply goes.
        reply: Sender<Value>,
    },
    /// Stop the controller thread.
    Stop,
}

/// Sends commands to the controller; cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlHandle(Sender<Command>);

impl ControlHandle {
    /// A handle and the receiving end for [`Controller::spawn`].
    pub fn channel() -> (ControlHandle, Receiver<Command>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (ControlHandle(tx), rx)
    }

    /// Re-reads the config file now and waits for the outcome: a summary,
    /// or the error (the previous configuration keeps serving).
    pub fn reload(&self) -> Result<String, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Reload {
            force: true,
            reply: Some(tx),
        });
        rx.recv_timeout(ANSWER_TIMEOUT)
            .unwrap_or_else(|_| Err("the controller did not answer".to_string()))
    }

    /// Asks for a reload without waiting (SIGHUP); `force` as in [`Command::Reload`].
    pub fn request_reload(&self, force: bool) {
        self.send(Command::Reload { force, reply: None });
    }

    /// Applies a registry request and returns its JSON reply.
    pub fn registry(&self, request: Request) -> Value {
        self.registry_within(request, ANSWER_TIMEOUT)
    }

    /// [`ControlHandle::registry`], waiting at most `timeout` for the
    /// answer. The error reply says why there is none: the controller has
    /// stopped (l4mesh is shutting down), or it is busy with earlier work
    /// (the request is still queued and may yet be applied).
    fn registry_within(&self, request: Request, timeout: Duration) -> Value {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self
            .0
            .send(Command::Registry { request, reply: tx })
            .is_err()
        {
            return error(SHUTTING_DOWN.to_string());
        }
        match rx.recv_timeout(timeout) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Disconnected) => error(SHUTTING_DOWN.to_string()),
            Err(RecvTimeoutError::Timeout) => error(format!(
                "the controller did not answer within {} s: it is busy with earlier \
                 requests or reloads; the request stays queued and may still be applied \
                 (`list` shows whether it was)",
                timeout.as_secs_f64()
            )),
        }
    }

    /// Stops the controller.
    pub fn stop(&self) {
        self.send(Command::Stop);
    }

    fn send(&self, command: Command) {
        // Fails only once the controller has stopped: then nobody is left to care.
        let _ = self.0.send(command);
    }
}

/// Reload outcomes, for monitoring.
#[derive(Debug, Default)]
pub struct ReloadStats {
    successes: AtomicU64,
    failures: AtomicU64,
    last_success_unix: AtomicU64,
}

impl ReloadStats {
    /// Reloads applied.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Reloads rejected.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Unix time in seconds of the last applied reload (or the start).
    pub fn last_success_unix(&self) -> u64 {
        self.last_success_unix.load(Ordering::Relaxed)
    }

    fn record_success(&self) {
        self.successes.fetch_add(1, Ordering::Relaxed);
        self.mark_success_time();
    }

    fn mark_success_time(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_success_unix.store(now, Ordering::Relaxed);
    }
}

/// Whether the controller goes on after a batch.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Registry replies waiting for the batch's snapshot to be published.
#[derive(Default)]
struct Pending {
    /// Some change in the batch changes the table.
    publish: bool,
    /// Each caller and its reply, without the generation yet.
    replies: Vec<(Sender<Value>, Value)>,
}

/// A registry request's reply: now, or once its batch is published.
enum Answer {
    Now(Value),
    AfterPublish {
        /// The reply; `generation` is added at publication.
        value: Value,
        /// The change alters the table (a heartbeat does not).
        publish: bool,
    },
}

/// The controller's state; lives on its own thread.
pub struct Controller {
    path: PathBuf,
    config: Config,
    /// The file content last read, to skip events that changed nothing.
    last_text: Option<String>,
    registrations: Registrations,
    proxy: Arc<ProxyControl>,
    stats: Arc<ReloadStats>,
}

impl Controller {
    /// A controller for a proxy started from `config`, read as `text`.
    pub fn new(
        config: Config,
        text: String,
        proxy: Arc<ProxyControl>,
        stats: Arc<ReloadStats>,
    ) -> Controller {
        stats.mark_success_time();
        Controller {
            path: config.path.clone(),
            config,
            last_text: Some(text),
            registrations: Registrations::default(),
            proxy,
            stats,
        }
    }

    /// Runs the controller on its own thread until [`Command::Stop`].
    pub fn spawn(self, commands: Receiver<Command>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("l4mesh-control".into())
            .spawn(move || self.run(commands))
    }

    fn run(mut self, commands: Receiver<Command>) {
        loop {
            let wait = self
                .registrations
                .next_expiry()
                .map_or(Duration::from_secs(3600), |at| {
                    at.saturating_duration_since(Instant::now())
                });
            match commands.recv_timeout(wait) {
                Ok(command) => {
                    if self.serve_batch(command, &commands) == Flow::Stop {
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.expire();
        }
    }

    /// Applies `first` and whatever else is queued already (up to
    /// [`MAX_BATCH`]). Consecutive registers and deregisters change the
    /// registrations one by one but publish one snapshot for all of them,
    /// so a burst of registrations costs one build, not one each, and
    /// requests queued behind a build wait for one build at most. Any
    /// other command first publishes (and answers) the changes before it,
    /// so it sees them.
    fn serve_batch(&mut self, first: Command, commands: &Receiver<Command>) -> Flow {
        let mut pending = Pending::default();
        let mut next = Some(first);
        let mut taken = 1;
        while let Some(command) = next.take() {
            match command {
                Command::Stop => {
                    self.flush(&mut pending);
                    return Flow::Stop;
                }
                Command::Registry { request, reply } => {
                    if !matches!(
                        request,
                        Request::Register { .. } | Request::Deregister { .. }
                    ) {
                        self.flush(&mut pending);
                    }
                    match self.registry(request) {
                        Answer::Now(value) => {
                            let _ = reply.send(value);
                        }
                        Answer::AfterPublish { value, publish } => {
                            pending.publish |= publish;
                            pending.replies.push((reply, value));
                        }
                    }
                }
                Command::Reload { force, reply } => {
                    self.flush(&mut pending);
                    let outcome = self.reload(force);
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
            }
            if taken < MAX_BATCH {
                next = commands.try_recv().ok();
                taken += 1;
            }
        }
        self.flush(&mut pending);
        Flow::Continue
    }

    /// Publishes the batch's changes, if any changed the table, and sends
    /// each reply with the generation that holds it.
    fn flush(&self, pending: &mut Pending) {
        let generation = if std::mem::take(&mut pending.publish) {
            self.publish()
        } else {
            self.proxy.table().load().generation
        };
        for (reply, mut value) in pending.replies.drain(..) {
            value["generation"] = json!(generation);
            let _ = reply.send(value);
        }
    }

    fn expire(&mut self) {
        let lapsed = self.registrations.expire(Instant::now());
        for (service, addr) in &lapsed {
            log::info!("registry: {service} {addr} lapsed (no heartbeat within its ttl); removed");
        }
        if !lapsed.is_empty() {
            self.publish();
        }
    }

    /// Builds the next snapshot from the config and registrations, and
    /// publishes it.
    fn publish(&self) -> u64 {
        self.publish_config(&self.config)
    }

    /// Builds the next snapshot from `config` and the registrations, and
    /// publishes it.
    fn publish_config(&self, config: &Config) -> u64 {
        let previous = self.proxy.table().load();
        let next = Snapshot::build(config, &self.registrations, Some(&previous));
        self.proxy.publish(next)
    }

    fn reload(&mut self, force: bool) -> Result<String, String> {
        let path = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                self.last_text = None;
                return Err(self.reject(format!("{path}: cannot read the config file: {e}")));
            }
        };
        if !force && self.last_text.as_ref() == Some(&text) {
            return Ok(format!("{path}: unchanged"));
        }
        self.last_text = Some(text.clone());
        if text.trim().is_empty() {
            // An empty file is a valid config with nothing in it, and what a
            // reader sees between an editor's truncate and its write.
            return Err(self.reject(format!(
                "{path}: the file is empty (a write may be in progress)"
            )));
        }
        let config = Config::parse(&text, &self.path).map_err(|e| self.reject(e.to_string()))?;
        let plan = self
            .proxy
            .prepare(&config.listeners)
            .map_err(|e| self.reject(format!("{path}: {e}")))?;
        self.warn_about_restart_only_changes(&config);
        let mut config = config;
        // What runs stays as it started until a restart: above all the
        // worker count, which sizes every per-worker counter array. Taking
        // the file's count would give some workers a shared slot.
        config.runtime = self.config.runtime.clone();
        config.registry = self.config.registry.clone();
        let previous = std::mem::replace(&mut self.config, config);
        let config = &self.config;
        let dropped = self.registrations.retain(|(service, addr), registered| {
            config
                .service(service)
                .is_some_and(|s| registered || s.endpoints.iter().any(|e| e.addr == *addr))
        });
        for (service, addr) in dropped {
            log::warn!(
                "registry: {service} {addr} dropped: service {service} left the config file"
            );
        }
        let changes = if plan.is_empty() {
            "no listener changes".to_string()
        } else {
            format!("listeners {}", plan.summary())
        };
        let generation = if plan.removed().is_empty() {
            // Added listeners are in the table before they accept.
            let generation = self.publish();
            // Nothing is removed, so nothing to wait for.
            drop(self.proxy.commit(plan));
            generation
        } else {
            // Removed listeners leave the table only once no worker
            // accepts on them any more: until then a client one of them
            // accepted still finds its route.
            let bridge = bridge_config(&self.config, &previous, plan.removed());
            self.publish_config(&bridge);
            let stopped = self.proxy.commit(plan);
            if stopped.recv_timeout(RETIRE_TIMEOUT) == Err(RecvTimeoutError::Timeout) {
                log::warn!(
                    "{path}: the workers did not stop the removed listeners within {} s; \
                     dropping them from the routing table anyway",
                    RETIRE_TIMEOUT.as_secs()
                );
            }
            self.publish()
        };
        self.stats.record_success();
        let message =
            format!("{path}: configuration reloaded (generation {generation}, {changes})");
        log::info!("{message}");
        Ok(message)
    }

    fn reject(&self, why: String) -> String {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let message = format!("{why}; keeping the previous configuration");
        log::error!("reload rejected: {message}");
        message
    }

    fn warn_about_restart_only_changes(&self, next: &Config) {
        let running = self.config.runtime.workers;
        if next.runtime.workers != running {
            log::warn!(
                "{}: runtime.workers = {} in the file, but {running} worker(s) are running; \
                 the change takes effect at the next restart",
                self.path.display(),
                next.runtime.workers
            );
        }
        if next.runtime != self.config.runtime {
            log::warn!(
                "{}: [runtime] changes take effect at the next restart",
                self.path.display()
            );
        }
        if next.registry != self.config.registry {
            log::warn!(
                "{}: [registry] changes take effect at the next restart",
                self.path.display()
            );
        }
    }

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

    /// Whether the config file declares `addr` for `service`: the
    /// published service's member at `addr` comes from the file (O(1); the
    /// file's endpoints change only by a reload, which publishes at once).
    fn declared_in_file(service: &Service, addr: SocketAddr) -> bool {
        service
            .member(addr)
            .is_some_and(|m| m.source == Source::File)
    }

    fn registry(&mut self, request: Request) -> Answer {
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
        if Self::declared_in_file(&current, addr) {
            return Err(error(format!(
                "{addr} is declared for service {service} in {}; edit the file to change it",
                self.path.display()
            )));
        }
        // The same rules as the file's endpoints.
        if let Some(why) = crate::config::unusable_endpoint(addr) {
            return Err(error(format!(
                "{addr} cannot be an endpoint: {why}; register the address the instance listens on"
            )));
        }
        if let Some(listener) = crate::config::looping_listener(addr, &self.config.listeners) {
            return Err(error(format!(
                "{addr} is l4mesh's own listener {} ({}): traffic would loop back into l4mesh; \
                 register the instance's own address",
                listener.name, listener.listen
            )));
        }
        let key: EndpointKey = (service.clone(), addr);
        let registered = self
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
        if Self::declared_in_file(&current, addr) {
            return Err(error(format!(
                "{addr} is declared for service {service} in {}; edit the file to remove it",
                self.path.display()
            )));
        }
        if !self.registrations.deregister(&(service.clone(), addr)) {
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
        self.registrations.drain((service.clone(), addr));
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
        if !self.registrations.undrain(&(service.clone(), addr)) {
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

/// `next` plus the listeners of `previous` named in `retiring`, and the
/// services they route to that `next` no longer has: the table to serve
/// while the workers stop those listeners.
fn bridge_config(next: &Config, previous: &Config, retiring: &[String]) -> Config {
    let mut bridge = next.clone();
    for listener in &previous.listeners {
        if !retiring.contains(&listener.name) {
            continue;
        }
        if bridge.service(&listener.service).is_none()
            && let Some(service) = previous.service(&listener.service)
        {
            bridge.services.push(service.clone());
        }
        bridge.listeners.push(listener.clone());
    }
    bridge
}

fn error(message: String) -> Value {
    json!({"ok": false, "error": message})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_say_busy_rather_than_shutting_down_when_the_answer_is_late() {
        let (handle, commands) = ControlHandle::channel();
        // Nobody reads the commands: the controller is busy.
        let late = handle.registry_within(Request::Help, Duration::from_millis(50));
        let text = late["error"].as_str().unwrap();
        assert!(text.contains("did not answer within 0.05 s"), "{text}");
        assert!(text.contains("busy"), "{text}");
        assert!(!text.contains("shutting down"), "{text}");
        drop(commands);
        let gone = handle.registry_within(Request::Help, Duration::from_millis(50));
        assert_eq!(gone["error"], SHUTTING_DOWN, "{gone}");
    }
}
