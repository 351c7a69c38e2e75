//! The controller thread: the one place where the routing table changes.
//! File reloads, registry requests and TTL expiries arrive as [`Command`]s
//! and are applied one at a time, so there are no races between them. Each
//! change builds the next snapshot completely, then publishes it with one
//! atomic store; connections already open keep the snapshot they started
//! with. Registrations queued together are applied together and published
//! as one snapshot, so a burst waits for one build, not one build each.
//! Bad input never replaces good state.

use super::requests::error;
use super::sources::Sources;
use crate::config::{Config, ListenerConfig};
use crate::discovery::registry::protocol::Request;
use crate::discovery::{Discovery, Update};
use crate::metrics::ReloadStats;
use crate::notify;
use crate::routing::Snapshot;
use crate::runtime::ProxyControl;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    /// A discovery source's new endpoints (etcd, DNS SRV).
    Discovered(Update),
    /// The registry's state as requests that rebuild it elsewhere (see
    /// [`crate::discovery::registry::Registrations::replay`]), for a new
    /// process taking over.
    Export(Sender<Vec<Request>>),
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

    /// The registry's state as requests, once every request queued before
    /// has been applied; empty if the controller does not answer.
    pub fn export(&self) -> Vec<Request> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Export(tx));
        rx.recv_timeout(ANSWER_TIMEOUT).unwrap_or_default()
    }

    /// Hands a discovery source's update to the controller (no wait).
    pub fn discovered(&self, update: Update) {
        self.send(Command::Discovered(update));
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
pub(super) enum Answer {
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
    pub(super) path: PathBuf,
    pub(super) config: Config,
    /// The file content last read, to skip events that changed nothing.
    last_text: Option<String>,
    /// The registry's, etcd's and DNS's endpoints.
    pub(super) sources: Sources,
    /// The etcd and DNS sources, told about reloads; stopped with the
    /// controller.
    discovery: Option<Discovery>,
    pub(super) proxy: Arc<ProxyControl>,
    stats: Arc<ReloadStats>,
}

impl Controller {
    /// A controller for a proxy started from `config`, read as `text`;
    /// `discovery` runs the etcd and DNS sources that feed it.
    pub fn new(
        config: Config,
        text: String,
        proxy: Arc<ProxyControl>,
        stats: Arc<ReloadStats>,
        discovery: Option<Discovery>,
    ) -> Controller {
        stats.mark_success_time();
        Controller {
            path: config.path.clone(),
            config,
            last_text: Some(text),
            sources: Sources::default(),
            discovery,
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
                .sources
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
                Command::Discovered(update) => {
                    pending.publish |= self.discovered(update);
                }
                Command::Export(reply) => {
                    self.flush(&mut pending);
                    let _ = reply.send(self.sources.registrations.replay(Instant::now()));
                }
                Command::Reload { force, reply } => {
                    self.flush(&mut pending);
                    notify::reloading();
                    let outcome = self.reload(force);
                    notify::send("READY=1");
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

    /// Applies a discovery source's update; returns whether the table
    /// changes (the caller publishes once for the whole batch).
    fn discovered(&mut self, mut update: Update) -> bool {
        let source = update.source;
        // The same rules as the file's endpoints and the registry's.
        let own = self.own_listeners();
        for (service, list) in &mut update.services {
            list.retain(|found| {
                let why = endpoint_problem(found.addr, &own);
                if let Some(why) = &why {
                    log::warn!(
                        "{}: endpoint {} of service {service} skipped: {why}",
                        source.name(),
                        found.addr
                    );
                }
                why.is_none()
            });
        }
        let services = update.services.len();
        let changed = self.sources.apply(update);
        if changed {
            log::info!(
                "{}: {services} service(s) updated; {} endpoint(s) from {} in all",
                source.name(),
                self.sources.count(source),
                source.name()
            );
        }
        changed
    }

    /// The listeners as bound (a port-0 listener at the port it got), for
    /// the check that an endpoint is not l4mesh itself.
    pub(super) fn own_listeners(&self) -> Vec<ListenerConfig> {
        let bound = self.proxy.listeners();
        self.config
            .listeners
            .iter()
            .map(|l| {
                let listen = bound
                    .iter()
                    .find(|(name, _)| *name == l.name)
                    .map_or(l.listen, |(_, addr)| *addr);
                ListenerConfig {
                    listen,
                    ..l.clone()
                }
            })
            .collect()
    }

    fn expire(&mut self) {
        let lapsed = self.sources.registrations.expire(Instant::now());
        for (service, addr) in &lapsed {
            log::info!("registry: {service} {addr} lapsed (no heartbeat within its ttl); removed");
        }
        if !lapsed.is_empty() {
            self.publish();
        }
    }

    /// Builds the next snapshot from the config and registrations, and
    /// publishes it.
    pub(super) fn publish(&self) -> u64 {
        self.publish_config(&self.config)
    }

    /// Builds the next snapshot from `config` and the registrations, and
    /// publishes it.
    fn publish_config(&self, config: &Config) -> u64 {
        let previous = self.proxy.table().load();
        let next = Snapshot::build(config, &self.sources, Some(&previous));
        self.proxy.publish(next)
    }

    pub(super) fn reload(&mut self, force: bool) -> Result<String, String> {
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
        // Registrations and drains live as long as their service.
        let dropped = self
            .sources
            .registrations
            .retain(|(service, _), _| config.service(service).is_some());
        for (service, addr) in dropped {
            log::warn!(
                "registry: {service} {addr} dropped: service {service} left the config file"
            );
        }
        if let Some(discovery) = &self.discovery {
            discovery.reconfigure(config);
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
        self.stats.record_failure();
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
}

/// Why `addr` cannot be an endpoint, by the rules the file's endpoints
/// follow: no connection can go to it (wildcard, multicast, broadcast), or
/// it is one of l4mesh's own listeners in `own` (as bound), so traffic would
/// loop.
pub(super) fn endpoint_problem(addr: SocketAddr, own: &[ListenerConfig]) -> Option<String> {
    crate::config::unusable_endpoint(addr)
        .map(str::to_string)
        .or_else(|| {
            crate::config::looping_listener(addr, own).map(|l| {
                format!(
                    "it is l4mesh's own listener {} ({}): traffic would loop back into l4mesh",
                    l.name, l.listen
                )
            })
        })
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
        for name in listener.services() {
            if bridge.service(name).is_none()
                && let Some(service) = previous.service(name)
            {
                bridge.services.push(service.clone());
            }
        }
        bridge.listeners.push(listener.clone());
    }
    bridge
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
