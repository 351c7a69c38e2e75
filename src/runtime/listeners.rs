//! The set of bound listeners and how it changes: a reload binds every new
//! or moved listener on every worker first (so an unbindable address rejects
//! the whole reload before anything changes), and only then tells the
//! workers to start and stop accept loops. An address another process
//! listens on is refused before binding (see [`super::port_check`]).

use super::StartError;
use super::port_check;
use crate::config::ListenerConfig;
use crate::proxy::listener::bind_group;
use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc::UnboundedSender;

/// A change a worker applies to its accept loops.
#[derive(Debug)]
pub enum ListenerChange {
    /// Start accepting on this socket as listener `name` (replacing a loop
    /// of the same name).
    Add {
        /// The listener's name.
        name: String,
        /// This worker's socket.
        socket: TcpListener,
    },
    /// Stop accepting as listener `name`; its open connections go on.
    Remove {
        /// The listener's name.
        name: String,
        /// Dropped once the accept loop has stopped and every client it
        /// accepted has looked up its route, so that the table may then
        /// drop the listener without a client finding no route.
        done: crossbeam_channel::Sender<()>,
    },
}

/// Listener addresses as bound (with real ports), readable from any thread.
pub type BoundAddrs = Arc<Mutex<BTreeMap<String, SocketAddr>>>;

/// Bound sockets waiting to be handed to the workers.
#[derive(Debug, Default)]
pub struct ListenerPlan {
    add: Vec<(ListenerConfig, SocketAddr, Vec<TcpListener>, Vec<u64>)>,
    rebound: Vec<String>,
    remove: Vec<String>,
}

impl ListenerPlan {
    /// The listeners it removes.
    pub fn removed(&self) -> &[String] {
        &self.remove
    }

    /// Whether applying it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// One line saying what it changes, like `+api ~web -old` (added,
    /// rebound to a new address, removed).
    pub fn summary(&self) -> String {
        let added = self.add.iter().map(|(l, _, _, _)| {
            let sign = if self.rebound.contains(&l.name) {
                '~'
            } else {
                '+'
            };
            format!("{sign}{}", l.name)
        });
        let removed = self.remove.iter().map(|n| format!("-{n}"));
        added.chain(removed).collect::<Vec<_>>().join(" ")
    }
}

/// The listeners the workers accept on, and the channels to change them.
#[derive(Debug)]
pub struct Listeners {
    workers: Vec<UnboundedSender<ListenerChange>>,
    backlog: u32,
    current: BTreeMap<String, ListenerConfig>,
    /// The socket inodes of each current listener's sockets, which the
    /// check for other processes' listeners leaves out.
    inodes: BTreeMap<String, Vec<u64>>,
    bound: BoundAddrs,
}

impl Listeners {
    /// No listeners yet; changes go to these workers.
    pub fn new(workers: Vec<UnboundedSender<ListenerChange>>, backlog: u32) -> Listeners {
        Listeners {
            workers,
            backlog,
            current: BTreeMap::new(),
            inodes: BTreeMap::new(),
            bound: BoundAddrs::default(),
        }
    }

    /// The shared map of bound addresses.
    pub fn bound(&self) -> BoundAddrs {
        Arc::clone(&self.bound)
    }

    /// Binds every listener of `wanted` that is new or whose address
    /// changed, once per worker; nothing changes for the workers yet. Other
    /// settings (its service, `max_connections`) are read from the routing
    /// table per connection, so changing them keeps the socket (and a port
    /// the kernel chose). An explicit address that another process listens
    /// on (or a wildcard that covers it) is refused.
    pub fn prepare(&self, wanted: &[ListenerConfig]) -> Result<ListenerPlan, StartError> {
        let mut plan = ListenerPlan::default();
        let own: HashSet<u64> = self.inodes.values().flatten().copied().collect();
        for listener in wanted {
            if self
                .current
                .get(&listener.name)
                .is_some_and(|current| current.listen == listener.listen)
            {
                continue;
            }
            let bind_error = |source| StartError::Bind {
                listener: listener.name.clone(),
                addr: listener.listen,
                source,
            };
            if listener.listen.port() != 0
                && let Some(holder) = port_check::holder(listener.listen, &own)
            {
                return Err(StartError::Taken {
                    listener: listener.name.clone(),
                    addr: listener.listen,
                    held: holder.addr,
                    process: holder.process.to_string(),
                });
            }
            let group = bind_group(listener.listen, self.workers.len(), self.backlog)
                .map_err(bind_error)?;
            let addr = group[0].local_addr().map_err(bind_error)?;
            let inodes = group
                .iter()
                .map(|socket| rustix::fs::fstat(socket.as_fd()).map(|stat| stat.st_ino))
                .collect::<Result<Vec<u64>, _>>()
                .map_err(|e| bind_error(e.into()))?;
            if self.current.contains_key(&listener.name) {
                plan.rebound.push(listener.name.clone());
            }
            plan.add.push((listener.clone(), addr, group, inodes));
        }
        plan.remove = self
            .current
            .keys()
            .filter(|name| !wanted.iter().any(|l| &l.name == *name))
            .cloned()
            .collect();
        Ok(plan)
    }

    /// Hands new sockets to the workers and stops removed listeners. The
    /// receiver disconnects once every worker has stopped accepting on
    /// every removed listener (see [`ListenerChange::Remove`]).
    pub fn commit(&mut self, plan: ListenerPlan) -> crossbeam_channel::Receiver<()> {
        let (done, removed) = crossbeam_channel::bounded(0);
        let mut bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        for name in plan.remove {
            for worker in &self.workers {
                // A worker that is gone is shutting down: nothing to stop.
                let done = done.clone();
                let _ = worker.send(ListenerChange::Remove {
                    name: name.clone(),
                    done,
                });
            }
            self.current.remove(&name);
            self.inodes.remove(&name);
            bound.remove(&name);
        }
        for (listener, addr, group, inodes) in plan.add {
            for (worker, socket) in self.workers.iter().zip(group) {
                let name = listener.name.clone();
                let _ = worker.send(ListenerChange::Add { name, socket });
            }
            bound.insert(listener.name.clone(), addr);
            self.inodes.insert(listener.name.clone(), inodes);
            self.current.insert(listener.name.clone(), listener);
        }
        removed
    }
}
