//! The running process's side of an upgrade: the upgrade socket, where a
//! new process takes this one's sockets over (`takeover`), `l4mesh upgrade`
//! asks for a new binary to be started (`spawn`), and both are told each
//! step.
//!
//! A takeover, in order (the new process's side is [`super::takeover`]):
//! 1. this process sends a copy of every listening socket (each worker's,
//!    with its address), the registry socket, the admin listener, the
//!    upgrade socket itself and its stderr, then `sent`; it keeps
//!    accepting on all of them;
//! 2. the new process binds what else it needs and says `ready`;
//! 3. this process stops accepting on the registry socket and the admin
//!    listener (their clients wait in the backlog), refuses registry
//!    requests still arriving on open connections, and sends the registry's
//!    state as requests, then `released`;
//! 4. the new process applies them, starts accepting everywhere and says
//!    `serving`;
//! 5. this process tells systemd the new main PID (then the new process
//!    `done`, so that its own notifications come after), stops accepting
//!    and drains its open connections as at SIGTERM, then exits 0, leaving
//!    the socket files to the new process.
//!
//! Nothing is closed that a client may be queued on: the new process holds
//! every socket before this one lets go of any. If the new process goes
//! away before step 2 nothing changed; before step 4, this process accepts
//! on the registry socket and the admin listener again.

use super::wire::{self, Channel, MAX_FDS, Message};
use crate::notify;
use crate::runtime::{ProxyControl, StopHandle};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a new process may take from receiving the sockets to `ready`,
/// and from `released` to `serving`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the accept loop waits before it looks whether it was handed over.
const ACCEPT_WAIT: Duration = Duration::from_millis(200);
/// How long telling an `l4mesh upgrade` client a step may take.
const WATCHER_TIMEOUT: Duration = Duration::from_secs(1);

/// What the running process hands over, and how it lets go of the parts
/// the proxy does not own.
pub struct Handing {
    /// The listeners' sockets.
    pub proxy: Arc<ProxyControl>,
    /// Stops the proxy (accepting, then draining) once handed over.
    pub stop: StopHandle,
    /// The registry socket's path and listening socket, if any.
    pub registry: Option<(PathBuf, OwnedFd)>,
    /// The admin listener's address and socket, if any.
    pub admin: Option<(SocketAddr, OwnedFd)>,
    /// Pauses (true) or resumes the registry socket and the admin listener.
    pub pause: Box<dyn Fn(bool) + Send + Sync>,
    /// The registry's state as request lines, once the pause holds.
    pub export: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Called once handed over: leave the socket files in place at exit.
    pub handed_over: Box<dyn Fn() + Send + Sync>,
}

/// The state the connections on the upgrade socket share.
struct Shared {
    path: PathBuf,
    listener: OwnedFd,
    handing: Handing,
    /// A takeover is under way or done: a second one is refused.
    busy: AtomicBool,
    /// Set once a new process serves: the socket file is its own.
    handed_over: AtomicBool,
    /// Set while the socket file is another process's: the one this
    /// process is taking over from, until it has.
    borrowed: AtomicBool,
    /// `l4mesh upgrade` clients, told each step until this process exits.
    watchers: Mutex<Vec<Channel>>,
}

impl Shared {
    /// Tells every watcher `words` (one that went away is dropped).
    fn tell(&self, words: &[&str]) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers.retain(|w| w.send(words).is_ok());
    }

    /// Logs and tells the watchers one step.
    fn step(&self, text: &str) {
        log::info!("upgrade: {text}");
        self.tell(&["step", text]);
    }

    /// Logs and tells the watchers that the upgrade failed.
    fn failed(&self, text: &str) {
        log::warn!("upgrade: {text}");
        self.tell(&["failed", text]);
    }
}

/// The running upgrade socket.
pub struct UpgradeServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for UpgradeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeServer")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl UpgradeServer {
    /// Serves the upgrade socket at `path`: `listener` if a previous
    /// process handed it over, else a new socket (mode 0600, replacing a
    /// stale file).
    pub fn start(
        path: &Path,
        listener: Option<OwnedFd>,
        handing: Handing,
    ) -> std::io::Result<UpgradeServer> {
        let borrowed = listener.is_some();
        let listener = match listener {
            Some(listener) => listener,
            None => {
                remove_stale(path)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                wire::listen(path)?
            }
        };
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            listener,
            handing,
            busy: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            borrowed: AtomicBool::new(borrowed),
            watchers: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("l4mesh-upgrade".into())
            .spawn(move || accept_loop(&accepting))?;
        log::info!(
            "upgrade socket on {} (mode 0600): `l4mesh upgrade -c FILE` replaces this process \
             without dropping a client",
            path.display()
        );
        Ok(UpgradeServer { shared })
    }

    /// The socket file is this process's now: it removes it at exit (once
    /// it has taken the socket over from the old process).
    pub fn own_file(&self) {
        self.shared.borrowed.store(false, Ordering::Relaxed);
    }
}

impl Drop for UpgradeServer {
    fn drop(&mut self) {
        let shared = &self.shared;
        if !shared.handed_over.load(Ordering::Relaxed) && !shared.borrowed.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&shared.path);
        }
    }
}

/// Removes a socket file nobody answers on; refuses a live one.
fn remove_stale(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if Channel::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another l4mesh answers there; stop it, upgrade it with `l4mesh upgrade`, or give \
             this one another runtime.upgrade_socket",
        ));
    }
    std::fs::remove_file(path)
}

fn accept_loop(shared: &Arc<Shared>) {
    // Once handed over, the new process answers on the socket.
    while !shared.handed_over.load(Ordering::Relaxed) {
        let channel = match wire::accept(&shared.listener, ACCEPT_WAIT) {
            Ok(Some(channel)) => channel,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("upgrade socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("l4mesh-upgrade-client".into())
            .spawn(move || serve(&shared, channel));
        if let Err(e) = spawned {
            log::warn!("upgrade socket: cannot start a thread for a client: {e}");
        }
    }
}

/// Serves one client of the upgrade socket.
fn serve(shared: &Arc<Shared>, channel: Channel) {
    let own = rustix::process::geteuid();
    match channel.peer() {
        Ok(peer) if peer.uid == own || peer.uid.is_root() => {}
        Ok(peer) => {
            log::warn!(
                "upgrade socket: refused pid {} (uid {}): only uid {} or root may upgrade",
                peer.pid.as_raw_nonzero(),
                peer.uid.as_raw(),
                own.as_raw()
            );
            let _ = channel.send(&["error", "only the same user or root may upgrade l4mesh"]);
            return;
        }
        Err(e) => {
            log::warn!("upgrade socket: cannot tell who connected: {e}");
            return;
        }
    }
    let _ = channel.set_timeout(Some(READY_TIMEOUT));
    let Ok(Some(request)) = channel.recv() else {
        return;
    };
    match request.verb() {
        "takeover" => takeover(shared, &channel, request.word(1)),
        "spawn" => spawn(shared, channel, &request),
        other => {
            let _ = channel.send(&["error", &format!("unknown request `{other}`")]);
        }
    }
}

/// Starts the binary `spawn` names as a new process taking this one over,
/// as this process's child (so that it runs as the same user, in the same
/// service, with the same environment), and keeps `channel` to tell it
/// each step until this process exits.
fn spawn(shared: &Arc<Shared>, channel: Channel, request: &Message) {
    let (binary, config) = (request.word(1), request.word(2));
    let _ = channel.send(&["old", &std::process::id().to_string()]);
    if shared.busy.load(Ordering::Relaxed) {
        let _ = channel.send(&["failed", "an upgrade is under way already"]);
        return;
    }
    let started = Command::new(binary)
        .arg("-c")
        .arg(config)
        .arg("--takeover")
        .arg(&shared.path)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        // The new process pings systemd's watchdog once it is the main one.
        .env_remove("WATCHDOG_PID")
        .spawn();
    let mut child = match started {
        Ok(child) => child,
        Err(e) => {
            let text = format!("cannot start {binary}: {e}");
            log::warn!("upgrade: {text}");
            let _ = channel.send(&["failed", &text]);
            return;
        }
    };
    let pid = child.id().to_string();
    log::info!("upgrade: started {binary} -c {config} as pid {pid}");
    let _ = channel.send(&["spawned", &pid, binary]);
    // A watcher that stops reading must not hold the handover up.
    let _ = channel.set_timeout(Some(WATCHER_TIMEOUT));
    shared
        .watchers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(channel);
    let forwarder = forward_stderr(shared, &mut child);
    let status = child.wait();
    if let Some(forwarder) = forwarder
        && !shared.handed_over.load(Ordering::Relaxed)
    {
        // Its last lines (why it failed) go out before the failure does.
        let _ = forwarder.join();
    }
    if !shared.handed_over.load(Ordering::Relaxed) {
        let how = match status {
            Ok(status) => status.to_string(),
            Err(e) => format!("an unknown status ({e})"),
        };
        shared.failed(&format!(
            "the new process (pid {pid}) ended with {how} before it took over; pid {} serves on",
            std::process::id()
        ));
    }
}

/// Copies the child's stderr to this process's and to the watchers, line
/// by line, until the child takes over this process's stderr (or ends).
fn forward_stderr(shared: &Arc<Shared>, child: &mut Child) -> Option<JoinHandle<()>> {
    let pipe = child.stderr.take()?;
    let shared = Arc::clone(shared);
    let forwarded = std::thread::Builder::new()
        .name("l4mesh-upgrade-log".into())
        .spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                shared.tell(&["log", &line]);
            }
        });
    match forwarded {
        Ok(thread) => Some(thread),
        Err(e) => {
            log::warn!("upgrade: cannot forward the new process's log: {e}");
            None
        }
    }
}

/// Hands this process's sockets to the new process at `channel` (see the
/// module docs).
fn takeover(shared: &Arc<Shared>, channel: &Channel, pid: &str) {
    if shared.busy.swap(true, Ordering::AcqRel) {
        let _ = channel.send(&["error", "another upgrade is under way"]);
        return;
    }
    let new = match pid.parse::<u32>() {
        Ok(new) => new,
        Err(_) => {
            let _ = channel.send(&["error", "takeover needs the new process's pid"]);
            shared.busy.store(false, Ordering::Release);
            return;
        }
    };
    match hand_over(shared, channel, new) {
        Ok(()) => {
            shared.handed_over.store(true, Ordering::Relaxed);
            (shared.handing.handed_over)();
            notify::send(&format!("MAINPID={new}"));
            // After MAINPID: the new process's READY=1 then follows it.
            let _ = channel.send(&["done"]);
            shared.step(&format!(
                "pid {new} serves now; pid {} stopped accepting and drains its open \
                 connections (up to runtime.drain_timeout), then exits",
                std::process::id()
            ));
            shared.tell(&["handed", &new.to_string()]);
            shared.handing.stop.stop();
        }
        Err(why) => {
            shared.failed(&format!(
                "pid {new} did not take over: {why}; pid {} serves on",
                std::process::id()
            ));
            shared.busy.store(false, Ordering::Release);
        }
    }
}

/// Steps 1 to 4 of the module docs; an error says which went wrong, with
/// everything as it was before (the registry and admin resumed).
fn hand_over(shared: &Arc<Shared>, channel: &Channel, new: u32) -> Result<(), String> {
    let handing = &shared.handing;
    let io = |e: std::io::Error| format!("the connection failed: {e}");
    let mut count = 0;
    for (addr, fds) in handing.proxy.handover() {
        let addr = addr.to_string();
        for chunk in fds.chunks(MAX_FDS) {
            let borrowed: Vec<BorrowedFd<'_>> = chunk.iter().map(AsFd::as_fd).collect();
            channel
                .send_fds(&["listener", &addr], &borrowed)
                .map_err(io)?;
            count += chunk.len();
        }
    }
    if let Some((path, fd)) = &handing.registry {
        let path = path.to_string_lossy();
        channel
            .send_fds(&["registry", &path], &[fd.as_fd()])
            .map_err(io)?;
    }
    if let Some((addr, fd)) = &handing.admin {
        let addr = addr.to_string();
        channel
            .send_fds(&["admin", &addr], &[fd.as_fd()])
            .map_err(io)?;
    }
    let path = shared.path.to_string_lossy();
    channel
        .send_fds(&["upgrade", &path], &[shared.listener.as_fd()])
        .map_err(io)?;
    channel
        .send_fds(&["stderr"], &[std::io::stderr().as_fd()])
        .map_err(io)?;
    channel
        .send(&["sent", &std::process::id().to_string()])
        .map_err(io)?;
    shared.step(&format!(
        "handed {count} listening socket(s) to pid {new}; waiting for it to be ready"
    ));
    expect(channel, "ready")?;
    (handing.pause)(true);
    let released = (|| {
        for line in (handing.export)() {
            channel.send(&["endpoint", &line]).map_err(io)?;
        }
        channel.send(&["released"]).map_err(io)?;
        shared.step(&format!(
            "pid {new} is ready; it takes the registry socket and the admin listener"
        ));
        expect(channel, "serving")
    })();
    if released.is_err() {
        (handing.pause)(false);
    }
    released
}

/// Waits for the message `verb` from the new process.
fn expect(channel: &Channel, verb: &str) -> Result<(), String> {
    match channel.recv() {
        Ok(Some(message)) if message.verb() == verb => Ok(()),
        Ok(Some(message)) if message.verb() == "error" => Err(message.word(1).to_string()),
        Ok(Some(message)) => Err(format!(
            "it said `{}` where `{verb}` was expected",
            message.verb()
        )),
        Ok(None) => Err(format!("it went away before saying `{verb}`")),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(format!(
            "it did not say `{verb}` within {} s",
            READY_TIMEOUT.as_secs()
        )),
        Err(e) => Err(format!("the connection failed: {e}")),
    }
}
