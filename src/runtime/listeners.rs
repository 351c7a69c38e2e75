//! The set of bound listeners and how it changes: a reload binds every new
//! or moved listener on every worker first (so an unbindable address rejects
//! the whole reload before anything changes), and only then tells the
//! workers to start and stop accept loops. An address another process
//! listens on is refused before binding (see [`super::port_check`]).
//!
//! At a hitless upgrade the new process adopts the old one's sockets
//! instead of binding: every socket of an address, however many workers
//! each process runs, so that no client queued on any of them is lost.
//! With fewer workers than sockets, a worker accepts on several; with more,
//! the extra workers' sockets join the address's `SO_REUSEPORT` group, but
//! listen only when the plan is committed (once the old process has let
//! go), so that no client queues on a socket of a process that may yet
//! fail to start.

use super::StartError;
use super::port_check;
use crate::config::ListenerConfig;
use crate::proxy::listener::{bind_group, bind_unlistened};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc::UnboundedSender;

/// A change a worker applies to its accept loops.
#[derive(Debug)]
pub enum ListenerChange {
    /// Start accepting on these sockets as listener `name` (replacing the
    /// loops of the same name).
    Add {
        /// The listener's name.
        name: String,
        /// This worker's sockets: one, or several after an upgrade that
        /// handed over more sockets than there are workers.
        sockets: Vec<TcpListener>,
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

/// A copy of each current listener's sockets, to hand to a new process at
/// an upgrade; emptied by a stop, so that the sockets close (and the kernel
/// refuses clients) once the workers' accept loops let go of theirs.
pub type HeldSockets = Arc<Mutex<BTreeMap<String, Vec<TcpListener>>>>;

/// Listening sockets a new process took over from the old one, by address.
pub type Inherited = HashMap<SocketAddr, Vec<TcpListener>>;

/// One listener's sockets, waiting to be handed to the workers.
#[derive(Debug)]
struct Added {
    listener: ListenerConfig,
    addr: SocketAddr,
    /// Each worker's listening sockets.
    sockets: Vec<Vec<TcpListener>>,
    /// Sockets bound into the group for these workers, to listen at commit.
    unlistened: Vec<(usize, socket2::Socket)>,
    inodes: Vec<u64>,
}

/// Bound sockets waiting to be handed to the workers.
#[derive(Debug, Default)]
pub struct ListenerPlan {
    add: Vec<Added>,
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
        let added = self.add.iter().map(|added| {
            let name = &added.listener.name;
            let sign = if self.rebound.contains(name) {
                '~'
            } else {
                '+'
            };
            format!("{sign}{name}")
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
    held: HeldSockets,
    /// Whether to keep `held` (only with an upgrade socket to hand it over).
    keep_copies: bool,
    bound: BoundAddrs,
}

impl Listeners {
    /// No listeners yet; changes go to these workers. With `keep_copies`,
    /// a copy of each listener's sockets is kept for [`Listeners::handover`]
    /// (a descriptor each).
    pub fn new(
        workers: Vec<UnboundedSender<ListenerChange>>,
        backlog: u32,
        keep_copies: bool,
    ) -> Listeners {
        Listeners {
            workers,
            backlog,
            current: BTreeMap::new(),
            inodes: BTreeMap::new(),
            held: HeldSockets::default(),
            keep_copies,
            bound: BoundAddrs::default(),
        }
    }

    /// The shared map of bound addresses.
    pub fn bound(&self) -> BoundAddrs {
        Arc::clone(&self.bound)
    }

    /// The shared copies of the listeners' sockets (see [`HeldSockets`]).
    pub fn held_sockets(&self) -> HeldSockets {
        Arc::clone(&self.held)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<TcpListener>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Binds every listener of `wanted` that is new or whose address
    /// changed, once per worker; nothing changes for the workers yet. Other
    /// settings (its service, `max_connections`) are read from the routing
    /// table per connection, so changing them keeps the socket (and a port
    /// the kernel chose). An explicit address that another process listens
    /// on (or a wildcard that covers it) is refused. A listener whose
    /// address is in `inherited` takes those sockets instead of binding
    /// (see the module docs).
    pub fn prepare(
        &self,
        wanted: &[ListenerConfig],
        inherited: &mut Inherited,
    ) -> Result<ListenerPlan, StartError> {
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
            if let Some(sockets) = inherited.remove(&listener.listen) {
                let added = self.adopt(listener, sockets).map_err(bind_error)?;
                plan.add.push(added);
                continue;
            }
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
            let inodes = inodes_of(group.iter()).map_err(bind_error)?;
            if self.current.contains_key(&listener.name) {
                plan.rebound.push(listener.name.clone());
            }
            plan.add.push(Added {
                listener: listener.clone(),
                addr,
                sockets: group.into_iter().map(|socket| vec![socket]).collect(),
                unlistened: Vec::new(),
                inodes,
            });
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
            self.held().remove(&name);
            bound.remove(&name);
        }
        for Added {
            listener,
            addr,
            mut sockets,
            unlistened,
            inodes,
        } in plan.add
        {
            for (worker, socket) in unlistened {
                match socket.listen(i32::try_from(self.backlog).unwrap_or(i32::MAX)) {
                    Ok(()) => sockets[worker].push(socket.into()),
                    Err(e) => log::warn!(
                        "listener {}: worker {worker} cannot listen on {addr}: {e}; the other \
                         workers serve it",
                        listener.name
                    ),
                }
            }
            if self.keep_copies {
                let held = sockets.iter().flatten().filter_map(|s| s.try_clone().ok());
                self.held().insert(listener.name.clone(), held.collect());
            }
            for (worker, sockets) in self.workers.iter().zip(sockets) {
                let name = listener.name.clone();
                let _ = worker.send(ListenerChange::Add { name, sockets });
            }
            bound.insert(listener.name.clone(), addr);
            self.inodes.insert(listener.name.clone(), inodes);
            self.current.insert(listener.name.clone(), listener);
        }
        removed
    }

    /// A copy of every listener's sockets with its address, for a new
    /// process taking over.
    pub fn handover(&self) -> Vec<(SocketAddr, Vec<OwnedFd>)> {
        let bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        self.held()
            .iter()
            .filter_map(|(name, sockets)| {
                let addr = *bound.get(name)?;
                let fds = sockets.iter().filter_map(|s| s.try_clone().ok());
                Some((addr, fds.map(OwnedFd::from).collect()))
            })
            .collect()
    }

    /// Spreads the sockets another process handed over for `listener` over
    /// this process's workers (see the module docs).
    fn adopt(
        &self,
        listener: &ListenerConfig,
        inherited: Vec<TcpListener>,
    ) -> std::io::Result<Added> {
        let workers = self.workers.len();
        let addr = listener.listen;
        let mut inodes = inodes_of(inherited.iter())?;
        let mut sockets: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
        let count = inherited.len();
        for (i, socket) in inherited.into_iter().enumerate() {
            sockets[i % workers].push(socket);
        }
        let mut unlistened = Vec::new();
        for worker in count..workers {
            let socket = bind_unlistened(addr)?;
            inodes.push(rustix::fs::fstat(socket.as_fd())?.st_ino);
            unlistened.push((worker, socket));
        }
        log::info!(
            "listener {}: took over {count} socket(s) on {addr} for {workers} worker(s)",
            listener.name
        );
        Ok(Added {
            listener: listener.clone(),
            addr,
            sockets,
            unlistened,
            inodes,
        })
    }
}

/// The socket inodes of `sockets`.
fn inodes_of<'a>(sockets: impl Iterator<Item = &'a TcpListener>) -> std::io::Result<Vec<u64>> {
    sockets
        .map(|socket| Ok(rustix::fs::fstat(socket.as_fd())?.st_ino))
        .collect()
}
