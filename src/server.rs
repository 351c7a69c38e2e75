//! A whole l4mesh server, as the binary runs it: the config file loaded and
//! watched, the registry socket, the controller thread, and the proxy.

use crate::admin::{Admin, AdminState};
use crate::config::{Config, ConfigError};
use crate::control::{ControlHandle, Controller};
use crate::discovery::file_watch::{ConfigWatcher, WatchError};
use crate::discovery::registry::protocol::Request;
use crate::discovery::registry::{RegistryError, RegistryServer};
use crate::discovery::{Discovery, Feed};
use crate::metrics::access_log::AccessLog;
use crate::metrics::{DiscoveryStats, ReloadStats};
use crate::routing::Table;
use crate::runtime::{Proxy, StartError, StopHandle};
use crate::upgrade::{Handing, Received, Takeover, TakeoverError, UpgradeServer};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The config file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener or worker could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The registry socket could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The config file cannot be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The controller or discovery thread could not start.
    #[error("cannot start the controller or discovery thread: {0}")]
    Thread(std::io::Error),
    /// The access log file cannot be opened.
    #[error("access_log.path: cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    /// Taking over from a running l4mesh failed.
    #[error(transparent)]
    Takeover(#[from] TakeoverError),
    /// The upgrade socket could not be opened.
    #[error("runtime.upgrade_socket = {path:?}: cannot serve it: {source}")]
    Upgrade {
        /// The configured path.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The admin listener cannot be bound.
    #[error("admin.listen = \"{addr}\": cannot listen there: {source}")]
    Admin {
        /// The configured address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    proxy: Proxy,
    control: ControlHandle,
    controller: JoinHandle<()>,
    stats: Arc<ReloadStats>,
    watcher: ConfigWatcher,
    registry: Option<Arc<RegistryServer>>,
    workers: usize,
    access_log: Option<AccessLog>,
    admin: Option<Arc<Admin>>,
    upgrade: Option<UpgradeServer>,
}

impl Server {
    /// Loads and validates `path`, opens the registry socket (refusing to
    /// start if another l4mesh answers there), binds every listener, starts
    /// the workers, the controller and the file watch.
    pub fn start(path: &Path) -> Result<Server, ServerError> {
        Server::start_with(path, None)
    }

    /// [`Server::start`], or with `takeover`, the path of a running
    /// l4mesh's upgrade socket, taking its sockets over instead (see
    /// [`crate::upgrade`]): this returns once serving, and the old process
    /// then drains and exits.
    pub fn start_with(path: &Path, takeover: Option<&Path>) -> Result<Server, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::parse(&text, path)?;
        let (takeover, mut received) = match takeover {
            Some(socket) => {
                let (takeover, received) = Takeover::begin(socket)?;
                (Some(takeover), received)
            }
            None => (None, Received::default()),
        };
        let (control, commands) = ControlHandle::channel();
        let gate = RegistryGate::default();
        let registry = match &config.registry {
            Some(registry) => {
                let control = control.clone();
                let gate = gate.clone();
                let handler = Arc::new(move |request| gate.pass(&control, request));
                match received.registry.take() {
                    Some((path, fd)) if path == registry.socket => {
                        let listener = std::os::unix::net::UnixListener::from(fd);
                        let served = RegistryServer::serve(path.clone(), listener, handler, true)
                            .map_err(|source| RegistryError::Create { path, source })?;
                        // The old process's file, until the takeover is done.
                        served.keep_file(true);
                        Some(served)
                    }
                    _ => Some(RegistryServer::start(registry, handler)?),
                }
            }
            None => None,
        };
        let access_log = AccessLog::start(&config.access_log).map_err(ServerError::AccessLog)?;
        let mut proxy = Proxy::start_idle(&config, access_log.clone(), &mut received.listeners)?;
        for addr in received.listeners.keys() {
            log::warn!(
                "the old process listens on {addr}, which this config does not: that address \
                 stops being served when the old process stops"
            );
        }
        let workers = config.runtime.workers;
        let stats = Arc::new(ReloadStats::default());
        let discovery_stats = Arc::new(DiscoveryStats::default());
        let admin = match config.admin {
            Some(addr) => {
                let state = AdminState {
                    proxy: proxy.control(),
                    reloads: Arc::clone(&stats),
                    access_log: access_log.clone(),
                    discovery: Arc::clone(&discovery_stats),
                };
                let admin = match received.admin.take() {
                    Some((old, listener)) if old == addr => Admin::serve(listener, state, true),
                    _ => Admin::start(addr, state),
                };
                Some(Arc::new(
                    admin.map_err(|source| ServerError::Admin { addr, source })?,
                ))
            }
            None => None,
        };
        let feed = {
            let control = control.clone();
            Feed::new(move |update| control.discovered(update))
        };
        let discovery =
            Discovery::start(&config, feed, discovery_stats).map_err(ServerError::Thread)?;
        let upgrade_socket = config.runtime.upgrade_socket.clone();
        let controller = Controller::new(
            config,
            text,
            proxy.control(),
            Arc::clone(&stats),
            Some(discovery),
        )
        .spawn(commands)
        .map_err(ServerError::Thread)?;
        let watcher = {
            let control = control.clone();
            ConfigWatcher::start(path, move || control.request_reload(false))?
        };
        let registry = registry.map(Arc::new);
        let upgrade = match upgrade_socket {
            Some(socket) => {
                let inherited = match received.upgrade.take() {
                    Some((old, fd)) if old == socket => Some(fd),
                    _ => None,
                };
                let handing = handing(&proxy, &control, &gate, registry.as_ref(), admin.as_ref())
                    .map_err(|source| ServerError::Upgrade {
                    path: socket.clone(),
                    source,
                })?;
                Some(
                    UpgradeServer::start(&socket, inherited, handing).map_err(|source| {
                        ServerError::Upgrade {
                            path: socket,
                            source,
                        }
                    })?,
                )
            }
            None => None,
        };
        if let Some(takeover) = takeover {
            let requests = takeover.ready()?;
            let count = requests.len();
            for request in requests {
                let line = request.to_string();
                let reply = control.registry(request);
                if reply["ok"] != serde_json::json!(true) {
                    log::warn!("takeover: `{line}` was not applied: {}", reply["error"]);
                }
            }
            log::info!(
                "took over {count} registry entr{} from pid {}",
                if count == 1 { "y" } else { "ies" },
                received.old_pid
            );
            proxy.open_listeners();
            if let Some(registry) = &registry {
                registry.pause(false);
            }
            if let Some(admin) = &admin {
                admin.pause(false);
            }
            takeover.serving()?;
            if let Some(registry) = &registry {
                registry.keep_file(false);
            }
            if let Some(upgrade) = &upgrade {
                upgrade.own_file();
            }
            if let Some(stderr) = received.stderr.take() {
                // From now on this process logs where the old one did (the
                // journal, say), not to whoever started it.
                if let Err(e) = rustix::stdio::dup2_stderr(&stderr) {
                    log::warn!("cannot log to the old process's stderr: {e}");
                }
            }
            log::info!(
                "serving in place of pid {}; its counters are not carried over",
                received.old_pid
            );
        } else {
            proxy.open_listeners();
        }
        Ok(Server {
            proxy,
            control,
            controller,
            stats,
            watcher,
            registry,
            workers,
            access_log,
            admin,
            upgrade,
        })
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// A handle on the access log, to reopen its file (SIGUSR1).
    pub fn access_log(&self) -> Option<AccessLog> {
        self.access_log.clone()
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The address listener `name` is bound to now.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.proxy.local_addr(name)
    }

    /// Every listener's name and bound address.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.proxy.listeners()
    }

    /// The published routing table.
    pub fn table(&self) -> &Table {
        self.proxy.table()
    }

    /// Sends commands to the controller (reload, registry requests).
    pub fn control(&self) -> &ControlHandle {
        &self.control
    }

    /// Reload outcomes so far.
    pub fn reload_stats(&self) -> &ReloadStats {
        &self.stats
    }

    /// The registry socket, if configured.
    pub fn registry(&self) -> Option<&RegistryServer> {
        self.registry.as_deref()
    }

    /// A handle that starts a graceful stop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.proxy.stop_handle()
    }

    /// Waits for the workers to stop and drain, then stops the controller,
    /// the watch and the registry socket (removing its file).
    pub fn wait(self) {
        let Server {
            proxy,
            control,
            controller,
            watcher,
            registry,
            access_log,
            upgrade,
            ..
        } = self;
        proxy.wait();
        // Every connection is closed and recorded: write the last lines.
        if let Some(log) = access_log {
            log.close();
        }
        drop(watcher);
        drop(registry);
        drop(upgrade);
        control.stop();
        if controller.join().is_err() {
            log::error!("the controller thread panicked");
        }
    }
}

/// What the upgrade socket hands over and how this process lets go.
fn handing(
    proxy: &Proxy,
    control: &ControlHandle,
    gate: &RegistryGate,
    registry: Option<&Arc<RegistryServer>>,
    admin: Option<&Arc<Admin>>,
) -> std::io::Result<Handing> {
    let registry_fd = match registry {
        Some(r) => Some((
            r.path().to_path_buf(),
            OwnedFd::from(r.socket().try_clone()?),
        )),
        None => None,
    };
    let admin_fd = match admin {
        Some(a) => Some((a.local_addr(), OwnedFd::from(a.socket().try_clone()?))),
        None => None,
    };
    // Weak: the upgrade socket's thread outlives the server's parts, and
    // the registry must still close (removing its file) when the server does.
    let (pause_registry, pause_admin, pause_gate) = (
        registry.map(Arc::downgrade),
        admin.map(Arc::downgrade),
        gate.clone(),
    );
    let export = control.clone();
    let kept = registry.map(Arc::downgrade);
    Ok(Handing {
        proxy: proxy.control(),
        stop: proxy.stop_handle(),
        registry: registry_fd,
        admin: admin_fd,
        pause: Box::new(move |paused| {
            pause_gate.close(paused);
            if let Some(r) = pause_registry.as_ref().and_then(Weak::upgrade) {
                r.pause(paused);
            }
            if let Some(a) = pause_admin.as_ref().and_then(Weak::upgrade) {
                a.pause(paused);
            }
        }),
        export: Box::new(move || export.export().iter().map(ToString::to_string).collect()),
        handed_over: Box::new(move || {
            if let Some(r) = kept.as_ref().and_then(Weak::upgrade) {
                r.keep_file(true);
            }
        }),
    })
}

/// Lets registry requests through to the controller unless closed for a
/// handover: then they are refused, so that none is applied here after the
/// registry's state went to the new process.
#[derive(Debug, Clone, Default)]
struct RegistryGate(Arc<RwLock<bool>>);

impl RegistryGate {
    /// Applies `request`, or refuses it while closed. The read lock is held
    /// until the controller has it queued, so a close waits for it.
    fn pass(&self, control: &ControlHandle, request: Request) -> serde_json::Value {
        let closed = self.0.read().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            return serde_json::json!({
                "ok": false,
                "error": format!(
                    "this l4mesh (pid {}) is handing over to a new process; connect again",
                    std::process::id()
                ),
            });
        }
        control.registry(request)
    }

    /// Closes (or opens) the gate once every request passing it is done.
    fn close(&self, closed: bool) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = closed;
    }
}
