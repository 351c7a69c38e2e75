//! Running the proxy: bind every listener once per worker, start one worker
//! thread per core, and stop them gracefully.

mod accept;
mod log_limit;
mod worker;

pub use log_limit::LogLimit;

use crate::config::Config;
use crate::control::{Snapshot, Table};
use crate::proxy::listener::bind_group;
use arc_swap::ArcSwap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::watch;
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
    /// A worker thread or its io_uring could not be created.
    #[error("worker {index}: cannot start: {source} (is io_uring allowed here?)")]
    Worker {
        /// The worker's index.
        index: usize,
        /// What the OS said.
        source: io::Error,
    },
}

/// Asks a running proxy to stop; cheap to clone and send to other threads.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<watch::Sender<bool>>);

impl StopHandle {
    /// Stops accepting, lets open connections finish up to `drain_timeout`,
    /// then closes the rest. Returns at once; [`Proxy::wait`] waits.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    table: Table,
    stop: StopHandle,
    bound: Vec<(String, SocketAddr)>,
    workers: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Binds every listener on every worker, then starts the workers. Fails
    /// without serving anything if any address cannot be bound.
    pub fn start(config: &Config) -> Result<Proxy, StartError> {
        let workers = config.runtime.workers;
        let mut bound = Vec::new();
        let mut per_worker: Vec<Vec<_>> = (0..workers).map(|_| Vec::new()).collect();
        for listener in &config.listeners {
            let bind_error = |source| StartError::Bind {
                listener: listener.name.clone(),
                addr: listener.listen,
                source,
            };
            let group =
                bind_group(listener.listen, workers, config.runtime.backlog).map_err(bind_error)?;
            let addr = group[0].local_addr().map_err(bind_error)?;
            bound.push((listener.name.clone(), addr));
            for (sockets, socket) in per_worker.iter_mut().zip(group) {
                sockets.push((listener.name.clone(), socket));
            }
        }
        let table: Table = Arc::new(ArcSwap::from_pointee(Snapshot::build(config, None)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = StopHandle(Arc::new(stop_tx));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(workers);
        let mut handles = Vec::new();
        for (index, sockets) in per_worker.into_iter().enumerate() {
            let plan = WorkerPlan {
                index,
                sockets,
                table: Arc::clone(&table),
                buffer_size: config.runtime.buffer_size,
                drain_timeout: config.runtime.drain_timeout,
                stop: stop_rx.clone(),
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
        Ok(Proxy {
            table,
            stop,
            bound,
            workers: handles,
        })
    }

    /// The address listener `name` is bound to (with the real port when the
    /// config asked for port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Every listener's name and bound address.
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.bound
    }

    /// The published routing table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// A handle that stops the proxy from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Waits until every worker has stopped and drained.
    pub fn wait(self) {
        for handle in self.workers {
            if handle.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
    }
}
