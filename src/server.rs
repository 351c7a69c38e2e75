//! A whole l4mesh server, as the binary runs it: the config file loaded and
//! watched, the registry socket, the controller thread, and the proxy.

use crate::admin::{Admin, AdminState};
use crate::config::{Config, ConfigError};
use crate::control::{ControlHandle, Controller};
use crate::discovery::file_watch::{ConfigWatcher, WatchError};
use crate::discovery::registry::{RegistryError, RegistryServer};
use crate::discovery::{Discovery, Feed};
use crate::metrics::access_log::AccessLog;
use crate::metrics::{DiscoveryStats, ReloadStats};
use crate::routing::Table;
use crate::runtime::{Proxy, StartError, StopHandle};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
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
    registry: Option<RegistryServer>,
    workers: usize,
    access_log: Option<AccessLog>,
    admin: Option<Admin>,
}

impl Server {
    /// Loads and validates `path`, opens the registry socket (refusing to
    /// start if another l4mesh answers there), binds every listener, starts
    /// the workers, the controller and the file watch.
    pub fn start(path: &Path) -> Result<Server, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::parse(&text, path)?;
        let (control, commands) = ControlHandle::channel();
        let registry = match &config.registry {
            Some(registry) => {
                let control = control.clone();
                let handler = Arc::new(move |request| control.registry(request));
                Some(RegistryServer::start(registry, handler)?)
            }
            None => None,
        };
        let access_log = AccessLog::start(&config.access_log).map_err(ServerError::AccessLog)?;
        let proxy = Proxy::start(&config, access_log.clone())?;
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
                let admin = Admin::start(addr, state);
                Some(admin.map_err(|source| ServerError::Admin { addr, source })?)
            }
            None => None,
        };
        let feed = {
            let control = control.clone();
            Feed::new(move |update| control.discovered(update))
        };
        let discovery =
            Discovery::start(&config, feed, discovery_stats).map_err(ServerError::Thread)?;
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
        })
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::local_addr)
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
        self.registry.as_ref()
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
            ..
        } = self;
        proxy.wait();
        // Every connection is closed and recorded: write the last lines.
        if let Some(log) = access_log {
            log.close();
        }
        drop(watcher);
        drop(registry);
        control.stop();
        if controller.join().is_err() {
            log::error!("the controller thread panicked");
        }
    }
}
