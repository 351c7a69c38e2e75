//! Running the proxy: bind every listener once per worker, start one worker
//! thread per core, and stop them gracefully.

mod accept;
mod affinity;
mod budget;
mod epoll_loop;
mod listeners;
mod port_check;
mod ring_accept;
mod ring_loop;
mod serve;
mod worker;

pub use budget::accept_paused_seconds;
pub use listeners::{Inherited, ListenerChange, ListenerPlan, Listeners};

use crate::config::{Config, ListenerConfig};
use crate::health::Checker;
use crate::metrics::ProcessStats;
use crate::metrics::access_log::AccessLog;
use crate::routing::{ConfigOnly, Snapshot, Table};
use arc_swap::ArcSwap;
use budget::{Budget, Sizing};
use listeners::{BoundAddrs, HeldSockets};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, watch};
use worker::WorkerPlan;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener's address could not be bound.
    #[error(
        "listeners.{listener}.listen = \"{addr}\": cannot listen there: {source}; fix: free the \
         port (`ss -ltnp` shows who holds it) or choose another address"
    )]
    Bind {
        /// The listener's name.
        listener: String,
        /// Its address.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// Another process already listens on a listener's address.
    #[error(
        "listeners.{listener}.listen = \"{addr}\": another process already listens on {held} \
         ({process}); l4mesh does not share a port with another process, as the kernel would \
         split the clients between them; fix: stop that process (another l4mesh on the same \
         config?) or choose another address"
    )]
    Taken {
        /// The listener's name.
        listener: String,
        /// Its address.
        addr: SocketAddr,
        /// The address the other process listens on (the same, or a
        /// wildcard covering it, or one it covers).
        held: SocketAddr,
        /// Which process, as well as can be told.
        process: String,
    },
    /// The health-check thread could not be started.
    #[error("cannot start the health-check thread: {0}")]
    Health(io::Error),
    /// A worker thread or its event loop could not be created.
    #[error("worker {index}: cannot start: {source}")]
    Worker {
        /// The worker's index.
        index: usize,
        /// What the OS said.
        source: io::Error,
    },
}

/// Asks a running proxy to stop; cheap to clone and send to other threads.
#[derive(Debug, Clone)]
pub struct StopHandle {
    stop: Arc<watch::Sender<bool>>,
    held: HeldSockets,
}

impl StopHandle {
    /// Stops accepting, lets open connections finish up to `drain_timeout`,
    /// then closes the rest. Returns at once; [`Proxy::wait`] waits.
    pub fn stop(&self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.stop.send_replace(true);
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// The parts of a running proxy that the control side changes: the
/// published table and the listener set. Shared, and only touched off the
/// hot path.
#[derive(Debug)]
pub struct ProxyControl {
    table: Table,
    /// The generation last published, for the health thread to wait on.
    published: watch::Sender<u64>,
    stop: StopHandle,
    listeners: Mutex<Listeners>,
    bound: BoundAddrs,
}

impl ProxyControl {
    /// The published routing table, to read. Store into it only through
    /// [`ProxyControl::publish`], which also wakes the health thread.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Publishes `next` to the workers (connections already open keep the
    /// snapshot they started with) and wakes the health thread for it.
    pub fn publish(&self, next: Snapshot) -> u64 {
        let generation = next.generation;
        self.table.store(Arc::new(next));
        self.published.send_replace(generation);
        generation
    }

    /// Binds what `wanted` adds or moves; see [`Listeners::prepare`].
    pub fn prepare(&self, wanted: &[ListenerConfig]) -> Result<ListenerPlan, StartError> {
        self.lock().prepare(wanted, &mut Inherited::new())
    }

    /// Hands a prepared plan to the workers; see [`Listeners::commit`].
    pub fn commit(&self, plan: ListenerPlan) -> crossbeam_channel::Receiver<()> {
        self.lock().commit(plan)
    }

    /// The address listener `name` is bound to.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        let bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        bound.get(name).copied()
    }

    /// Every listener's name and bound address.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        bound.iter().map(|(n, a)| (n.clone(), *a)).collect()
    }

    /// A handle that stops the proxy from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// A copy of every listener's sockets with its address, for a new
    /// process taking over (see [`Listeners::handover`]).
    pub fn handover(&self) -> Vec<(SocketAddr, Vec<std::os::fd::OwnedFd>)> {
        self.lock().handover()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Listeners> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pipes each worker may hold open: a quarter of the descriptor limit
/// shared between the workers (two descriptors a pipe), leaving the rest
/// for sockets. Pipes are held only while a chunk is in flight, so this
/// bounds bursts, not connections; past it, chunks are copied instead.
fn pipe_budget(limit: u64, workers: usize) -> usize {
    let per_worker = limit / 4 / 2 / workers.max(1) as u64;
    usize::try_from(per_worker).unwrap_or(usize::MAX).max(1)
}

/// The connection budget for this descriptor limit (see [`budget`]),
/// logged with how it was worked out.
fn connection_budget(
    limit: u64,
    workers: usize,
    pipes_per_worker: Option<usize>,
    to_open: u64,
) -> Arc<Budget> {
    let pipe_fds = pipes_per_worker.map_or(0, |pipes| 2 * (pipes * workers) as u64);
    // Under a handful of descriptors open now (listeners, logs, the
    // registry socket), the guess for a process that cannot count them.
    // Counted by the process metrics' reader, whose /proc handles (opened
    // here if not yet) then count among the descriptors open; `to_open`
    // are the ones that will be (the listeners' copies kept for an upgrade).
    let open = ProcessStats::read().open_fds.unwrap_or(64) + to_open;
    let sizing = Sizing::new(limit, open, workers, pipe_fds);
    let pipes = if pipe_fds == 0 {
        String::new()
    } else {
        format!(", {pipe_fds} for splice pipes")
    };
    log::info!(
        "descriptor limit {limit}: at most {} clients open at once (two descriptors each; {} \
         reserved{pipes}); more wait in the listen backlog",
        sizing.capacity,
        sizing.reserved
    );
    if sizing.reserved + pipe_fds + 2 > limit {
        log::warn!(
            "the descriptor limit {limit} is too low for l4mesh's reserve ({} descriptors{pipes}); \
             clients are served one at a time; raise `ulimit -n`",
            sizing.reserved
        );
    }
    Budget::new(sizing)
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    control: Arc<ProxyControl>,
    workers: Vec<JoinHandle<()>>,
    health: Checker,
    /// The listeners bound (or taken over) but not accepted on yet.
    pending: Option<ListenerPlan>,
}

impl Proxy {
    /// Binds every listener on every worker, then starts the workers. Fails
    /// without serving anything if any address cannot be bound. Closed
    /// connections are recorded in `access_log`, if given.
    pub fn start(config: &Config, access_log: Option<AccessLog>) -> Result<Proxy, StartError> {
        let mut proxy = Proxy::start_idle(config, access_log, &mut Inherited::new())?;
        proxy.open_listeners();
        Ok(proxy)
    }

    /// Like [`Proxy::start`], taking the sockets of `inherited` that the
    /// config's listeners want instead of binding, but accepting nowhere
    /// until [`Proxy::open_listeners`].
    pub fn start_idle(
        config: &Config,
        access_log: Option<AccessLog>,
        inherited: &mut Inherited,
    ) -> Result<Proxy, StartError> {
        let workers = config.runtime.workers;
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        // Copies of the listening sockets are kept only to hand them over.
        let upgrades = config.runtime.upgrade_socket.is_some();
        let listeners = Listeners::new(senders, config.runtime.backlog, upgrades);
        let plan = listeners.prepare(&config.listeners, inherited)?;
        let snapshot = Snapshot::build(config, &ConfigOnly, None);
        let (published, published_rx) = watch::channel(snapshot.generation);
        let table: Table = Arc::new(ArcSwap::from_pointee(snapshot));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = StopHandle {
            stop: Arc::new(stop_tx),
            held: listeners.held_sockets(),
        };
        let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        let max_pipes = pipe_budget(limit, workers);
        let copies = if upgrades {
            (config.listeners.len() * workers) as u64
        } else {
            0
        };
        let budget = connection_budget(
            limit,
            workers,
            config.runtime.forward.splices().then_some(max_pipes),
            copies,
        );
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(workers);
        let cpus = affinity::worker_cpus(&config.runtime.cpu_affinity, workers);
        let mut handles = Vec::new();
        for ((index, changes), cpu) in receivers.into_iter().enumerate().zip(cpus) {
            let plan = WorkerPlan {
                index,
                cpu,
                changes,
                table: Arc::clone(&table),
                buffer_size: config.runtime.buffer_size,
                drain_timeout: config.runtime.drain_timeout,
                stop: stop_rx.clone(),
                access_log: access_log.clone(),
                forward: config.runtime.forward,
                event_loop: config.runtime.event_loop,
                max_pipes,
                pipe_size: config.runtime.pipe_size,
                budget: Arc::clone(&budget),
            };
            let ready = ready_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("l4mesh-w{index}"))
                .spawn(move || worker::run(plan, ready));
            let failed = match spawned {
                Ok(handle) => {
                    handles.push(handle);
                    ready_rx.recv().ok().and_then(Result::err)
                }
                Err(e) => Some(e),
            };
            if let Some(source) = failed {
                stop.stop();
                handles.into_iter().for_each(|h| drop(h.join()));
                return Err(StartError::Worker { index, source });
            }
        }
        let health = match Checker::start(Arc::clone(&table), published_rx, stop_rx) {
            Ok(health) => health,
            Err(e) => {
                stop.stop();
                handles.into_iter().for_each(|h| drop(h.join()));
                return Err(StartError::Health(e));
            }
        };
        let bound = listeners.bound();
        Ok(Proxy {
            control: Arc::new(ProxyControl {
                table,
                published,
                stop,
                listeners: Mutex::new(listeners),
                bound,
            }),
            workers: handles,
            health,
            pending: Some(plan),
        })
    }

    /// Starts accepting on the listeners [`Proxy::start_idle`] prepared.
    pub fn open_listeners(&mut self) {
        if let Some(plan) = self.pending.take() {
            self.control.commit(plan);
        }
    }

    /// The control-side handle: table, listeners, stop.
    pub fn control(&self) -> Arc<ProxyControl> {
        Arc::clone(&self.control)
    }

    /// The address listener `name` is bound to (with the real port when the
    /// config asked for port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.control.local_addr(name)
    }

    /// Every listener's name and bound address.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.control.listeners()
    }

    /// The published routing table.
    pub fn table(&self) -> &Table {
        &self.control.table
    }

    /// A handle that stops the proxy from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.control.stop_handle()
    }

    /// Waits until every worker has stopped and drained, and the health
    /// thread has stopped.
    pub fn wait(self) {
        for handle in self.workers {
            if handle.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
        self.health.wait();
    }
}
