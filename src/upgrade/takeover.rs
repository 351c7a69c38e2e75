//! The new process's side of an upgrade (the steps are in
//! [`super::handover`]): receive the running process's sockets, say
//! `ready` once everything else is bound, receive the registry's state when
//! the old process lets go, and say `serving` once accepting.

use super::wire::{Channel, Message};
use crate::discovery::registry::protocol::{self, Request};
use crate::runtime::Inherited;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Why a takeover failed; the running process serves on.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// The upgrade socket does not answer.
    #[error(
        "--takeover {path:?}: cannot reach the running l4mesh: {source}; fix: give the path of \
         its runtime.upgrade_socket (it must have been started with one)"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The running process refused, or the exchange broke off.
    #[error("--takeover {path:?}: {why}; the running l4mesh serves on")]
    Exchange {
        /// The socket path.
        path: PathBuf,
        /// What happened.
        why: String,
    },
}

/// What the running process handed over.
#[derive(Debug, Default)]
pub struct Received {
    /// Its pid.
    pub old_pid: u32,
    /// Every listening socket, by address.
    pub listeners: Inherited,
    /// The registry socket, by path.
    pub registry: Option<(PathBuf, OwnedFd)>,
    /// The admin listener, by address.
    pub admin: Option<(SocketAddr, TcpListener)>,
    /// The upgrade socket, by path.
    pub upgrade: Option<(PathBuf, OwnedFd)>,
    /// Its stderr, where this process logs once serving.
    pub stderr: Option<OwnedFd>,
}

/// A takeover under way.
#[derive(Debug)]
pub struct Takeover {
    path: PathBuf,
    channel: Channel,
}

impl Takeover {
    /// Asks the l4mesh at `path` for its sockets (step 1).
    pub fn begin(path: &Path) -> Result<(Takeover, Received), TakeoverError> {
        let channel = Channel::connect(path).map_err(|source| TakeoverError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let takeover = Takeover {
            path: path.to_path_buf(),
            channel,
        };
        let pid = std::process::id().to_string();
        takeover.send(&["takeover", &pid])?;
        let mut received = Received::default();
        loop {
            let message = takeover.recv()?;
            let one = |message: Message| message.fds.into_iter().next();
            match message.verb() {
                "listener" => {
                    let addr = takeover.addr(&message)?;
                    let sockets = message.fds.into_iter().map(TcpListener::from);
                    received.listeners.entry(addr).or_default().extend(sockets);
                }
                "registry" => {
                    let path = PathBuf::from(message.word(1));
                    received.registry = one(message).map(|fd| (path, fd));
                }
                "admin" => {
                    let addr = takeover.addr(&message)?;
                    received.admin = one(message).map(|fd| (addr, TcpListener::from(fd)));
                }
                "upgrade" => {
                    let path = PathBuf::from(message.word(1));
                    received.upgrade = one(message).map(|fd| (path, fd));
                }
                "stderr" => received.stderr = one(message),
                "sent" => {
                    received.old_pid = message.word(1).parse().unwrap_or(0);
                    break;
                }
                _ => return Err(takeover.unexpected(&message)),
            }
        }
        let sockets: usize = received.listeners.values().map(Vec::len).sum();
        log::info!(
            "took over {sockets} listening socket(s) on {} address(es) from pid {}",
            received.listeners.len(),
            received.old_pid
        );
        Ok((takeover, received))
    }

    /// Says `ready` (step 2) and waits until the old process lets go of the
    /// registry socket and the admin listener; returns the registry's state
    /// as requests to apply before serving.
    pub fn ready(&self) -> Result<Vec<Request>, TakeoverError> {
        self.send(&["ready"])?;
        let mut requests = Vec::new();
        loop {
            let message = self.recv()?;
            match message.verb() {
                "endpoint" => match protocol::parse(message.word(1)) {
                    Ok(request) => requests.push(request),
                    Err(why) => log::warn!(
                        "takeover: skipped the registration `{}`: {why}",
                        message.word(1)
                    ),
                },
                "released" => return Ok(requests),
                _ => return Err(self.unexpected(&message)),
            }
        }
    }

    /// Says `serving` (step 4) and waits until the old process has told
    /// systemd the new main PID; it then stops accepting and drains.
    pub fn serving(self) -> Result<(), TakeoverError> {
        self.send(&["serving"])?;
        match self.channel.recv() {
            Ok(Some(message)) if message.verb() == "done" => {}
            // The old process is gone or did not answer: it serves no more
            // either way, and the sockets are this process's.
            other => log::warn!("takeover: no `done` from the old process: {other:?}"),
        }
        Ok(())
    }

    fn send(&self, words: &[&str]) -> Result<(), TakeoverError> {
        self.channel
            .send(words)
            .map_err(|e| self.broken(format!("the connection failed: {e}")))
    }

    fn recv(&self) -> Result<Message, TakeoverError> {
        match self.channel.recv() {
            Ok(Some(message)) if message.verb() == "error" => {
                Err(self.broken(format!("the running l4mesh refused: {}", message.word(1))))
            }
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(self.broken("the running l4mesh closed the connection".into())),
            Err(e) => Err(self.broken(format!("the connection failed: {e}"))),
        }
    }

    fn addr(&self, message: &Message) -> Result<SocketAddr, TakeoverError> {
        message
            .word(1)
            .parse()
            .map_err(|_| self.unexpected(message))
    }

    fn unexpected(&self, message: &Message) -> TakeoverError {
        self.broken(format!(
            "unexpected message `{}` from the running l4mesh (a different version?)",
            message.words.join(" ")
        ))
    }

    fn broken(&self, why: String) -> TakeoverError {
        TakeoverError::Exchange {
            path: self.path.clone(),
            why,
        }
    }
}
