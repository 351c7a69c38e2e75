//! Discovery sources, one module each: the config file's watch
//! ([`file_watch`]), the registry socket ([`registry`]), etcd ([`etcd`]) and
//! DNS SRV ([`dns`]). The fleet sources report "the endpoints of service S
//! from source X" as an [`Update`] through a [`Feed`]; the controller merges
//! every source into one snapshot (`crate::routing::Snapshot::build`).
//!
//! etcd and DNS run as tasks of one `l4mesh-discovery` thread with its own small
//! tokio runtime, never on a worker. A source that cannot be reached keeps
//! its last endpoints: it sends nothing until it has a new complete view.

pub mod dns;
pub mod etcd;
pub mod file_watch;
pub mod registry;

use crate::config::{Config, EtcdConfig};
use crate::metrics::DiscoveryStats;
use crate::routing::{Discovered, Source};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::{oneshot, watch};

/// Which services an [`Update`] speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every service: a service the update does not list has no endpoints
    /// from this source any more (a full resync).
    All,
    /// Only the services listed; the others keep what they had.
    Services,
}

/// The endpoints of some services from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The source.
    pub source: Source,
    /// What the update replaces.
    pub scope: Scope,
    /// Each listed service's complete endpoint set from this source (an
    /// empty list: none left).
    pub services: BTreeMap<String, Vec<Discovered>>,
}

/// Where sources send their updates: the controller, or a test's channel.
#[derive(Clone)]
pub struct Feed(Arc<dyn Fn(Update) + Send + Sync>);

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Feed")
    }
}

impl Feed {
    /// A feed that hands every update to `deliver`.
    pub fn new(deliver: impl Fn(Update) + Send + Sync + 'static) -> Feed {
        Feed(Arc::new(deliver))
    }

    /// Sends one update.
    pub fn send(&self, update: Update) {
        (self.0)(update);
    }
}

/// The running discovery thread; dropping it stops every source.
#[derive(Debug)]
pub struct Discovery {
    configs: watch::Sender<Arc<Config>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Discovery {
    /// Starts the sources `config` asks for, sending to `feed` and keeping
    /// their state in `stats`.
    pub fn start(config: &Config, feed: Feed, stats: Arc<DiscoveryStats>) -> io::Result<Discovery> {
        let (configs, configs_rx) = watch::channel(Arc::new(config.clone()));
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("l4mesh-discovery".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = supervise(configs_rx, feed, stats) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Discovery {
            configs,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Follows a reloaded config: starts, restarts or stops the etcd watch
    /// when `[discovery.etcd]` changed, and the SRV queries of services
    /// that were added, changed or removed.
    pub fn reconfigure(&self, config: &Config) {
        self.configs.send_replace(Arc::new(config.clone()));
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the DNS source for the life of the thread and the etcd source for
/// as long as its settings stay the same.
async fn supervise(
    mut configs: watch::Receiver<Arc<Config>>,
    feed: Feed,
    stats: Arc<DiscoveryStats>,
) {
    let dns = tokio::spawn(dns::run(configs.clone(), feed.clone(), Arc::clone(&stats)));
    let mut running: Option<(EtcdConfig, tokio::task::JoinHandle<()>)> = None;
    loop {
        let wanted = configs.borrow_and_update().discovery.etcd.clone();
        if running.as_ref().map(|(c, _)| c) != wanted.as_ref() {
            if let Some((_, task)) = running.take() {
                task.abort();
                stats.remove(Source::Etcd.name());
                // The old settings' endpoints leave with them.
                feed.send(Update {
                    source: Source::Etcd,
                    scope: Scope::All,
                    services: BTreeMap::new(),
                });
            }
            if let Some(config) = wanted {
                let status = stats.source(Source::Etcd.name());
                let task = tokio::spawn(etcd::run(config.clone(), feed.clone(), status));
                running = Some((config, task));
            }
        }
        if configs.changed().await.is_err() {
            break;
        }
    }
    if let Some((_, task)) = running {
        task.abort();
    }
    dns.abort();
}
