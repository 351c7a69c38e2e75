//! The registry socket: a Unix stream socket where instances register and
//! deregister at run time. One request per line, one JSON reply line per
//! request (see [`super::protocol`]); a malformed request gets an error
//! reply, never a crash.
//!
//! Silent and slow clients cannot keep others out: one thread runs an event
//! loop (a current-thread tokio runtime) that serves up to
//! [`MAX_CLIENTS`] connections at once, each idle one costing a descriptor
//! and about a kilobyte, not a thread, and every request line must arrive whole within
//! [`REQUEST_DEADLINE`] of the server starting to wait for it (a deadline
//! for the whole line, not per read, so a client dripping a byte at a time
//! is cut off as surely as a silent one). A client past the limit has its
//! first line read (for a second at most) and is told to try again; past
//! 64 of those, clients wait in the listen backlog. Requests go to the
//! controller from a small pool of blocking threads, since the controller
//! answers one at a time anyway.

use super::Handler;
use super::protocol::{self, MAX_LINE};
use crate::accept_gate::{Seat, accept_gated, unless_paused};
use crate::config::RegistryConfig;
use crate::socket_file;
use serde_json::{Value, json};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};

/// How long one request line may take to arrive, from the moment the
/// server waits for it (the connection opened, or the previous reply was
/// sent); then the client gets an error reply and is disconnected.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Clients served at once; more are told to retry and disconnected.
pub const MAX_CLIENTS: usize = 1024;
/// Clients past [`MAX_CLIENTS`] being told to retry at once; past these,
/// clients wait in the listen backlog.
const MAX_BUSY_CLIENTS: usize = 64;
/// How long the first line of a client past [`MAX_CLIENTS`] is waited for.
const BUSY_DEADLINE: Duration = Duration::from_secs(1);
/// Threads that wait for the controller's answers.
const ANSWER_THREADS: usize = 4;
/// Bytes read at a time from a client (lines may be longer).
const READ_BUFFER: usize = 1024;
/// How long a reply may take to be written.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// Why the registry socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A live process already answers on the path.
    #[error(
        "registry.socket = {0:?}: another l4mesh already answers there; stop it, or give this one \
         another registry.socket"
    )]
    InUse(PathBuf),
    /// Something that is not a socket is in the way.
    #[error(
        "registry.socket = {0:?}: exists and is not a socket; refusing to replace it (remove it or choose another path)"
    )]
    NotSocket(PathBuf),
    /// Creating, binding or setting the mode failed.
    #[error("registry.socket = {path:?}: cannot create the socket: {source}")]
    Create {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// The running registry socket; closing it removes the socket file, unless
/// told to keep it (see [`RegistryServer::keep_file`]).
#[derive(Debug)]
pub struct RegistryServer {
    path: PathBuf,
    /// A copy of the listening socket, to hand to a new process.
    socket: std::os::unix::net::UnixListener,
    paused: watch::Sender<bool>,
    keep_file: AtomicBool,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RegistryServer {
    /// Creates the socket (replacing a stale one), sets its mode and starts
    /// handing each request to `control` (the controller) for its reply.
    pub fn start(config: &RegistryConfig, control: Handler) -> Result<Self, RegistryError> {
        let path = config.socket.clone();
        let create = |source| RegistryError::Create {
            path: path.clone(),
            source,
        };
        remove_stale(&path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(create)?;
        }
        let listener = bind_with_mode(&path, config.mode).map_err(create)?;
        log::info!(
            "registry socket on {} (mode {:04o})",
            path.display(),
            config.mode
        );
        RegistryServer::serve(path.clone(), listener, control, false).map_err(create)
    }

    /// Serves `listener`, the socket at `path` (bound already, or taken
    /// over from another process), paused from the start if `paused`.
    pub fn serve(
        path: PathBuf,
        listener: std::os::unix::net::UnixListener,
        control: Handler,
        paused: bool,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let socket = listener.try_clone()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(ANSWER_THREADS)
            .thread_name("l4mesh-registry-answer")
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let (pause, paused) = watch::channel(paused);
        let thread = std::thread::Builder::new()
            .name("l4mesh-registry".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match UnixListener::from_std(listener) {
                        Ok(listener) => {
                            let run = || accept(&listener, control.clone());
                            tokio::select! {
                                () = unless_paused(paused, run) => {}
                                _ = stopped => {}
                            }
                        }
                        Err(e) => log::error!("registry: cannot serve the socket: {e}"),
                    }
                });
                // Answers still waiting for the controller are abandoned.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(RegistryServer {
            path,
            socket,
            paused: pause,
            keep_file: AtomicBool::new(false),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket, for a new process to take over.
    pub fn socket(&self) -> &std::os::unix::net::UnixListener {
        &self.socket
    }

    /// Stops accepting (clients wait in the backlog) or starts again.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Whether to leave the socket file in place when this server closes:
    /// true while another process serves it too (a new one it was handed
    /// to, or the old one it was taken over from).
    pub fn keep_file(&self, keep: bool) {
        self.keep_file.store(keep, Ordering::Relaxed);
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if !self.keep_file.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a socket file nobody answers on; refuses to touch a live socket
/// or anything that is not a socket.
fn remove_stale(path: &Path) -> Result<(), RegistryError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(RegistryError::NotSocket(path.to_path_buf()));
    }
    if StdUnixStream::connect(path).is_ok() {
        return Err(RegistryError::InUse(path.to_path_buf()));
    }
    log::info!("registry: replacing the stale socket {}", path.display());
    std::fs::remove_file(path).map_err(|source| RegistryError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// Binds a listening socket at `path` whose file has `mode` from the moment
/// it appears there (see [`socket_file::place`]).
fn bind_with_mode(path: &Path, mode: u32) -> io::Result<std::os::unix::net::UnixListener> {
    socket_file::place(path, mode, |at| std::os::unix::net::UnixListener::bind(at))
}

/// Accepts clients until the task is dropped; each is served on its own
/// task while fewer than [`MAX_CLIENTS`] are.
async fn accept(listener: &UnixListener, control: Handler) {
    let serve = |(stream, _), seat: Seat| {
        let control = control.clone();
        tokio::spawn(async move {
            if seat.is_busy() {
                turn_away(stream).await;
            } else if let Err(e) = serve(stream, control).await {
                log::debug!("registry client: {e}");
            }
            drop(seat);
        });
    };
    accept_gated(
        "registry",
        MAX_CLIENTS,
        MAX_BUSY_CLIENTS,
        || listener.accept(),
        serve,
    )
    .await;
}

/// Tells a client past [`MAX_CLIENTS`] to try again, after reading its
/// first line for at most [`BUSY_DEADLINE`]: answering at once could close
/// the connection before the client has written its request, and the client
/// would see a broken pipe instead of the reason.
async fn turn_away(stream: UnixStream) {
    let (reader, mut writer) = stream.into_split();
    let mut line = Vec::new();
    let mut limited = BufReader::with_capacity(READ_BUFFER, reader).take(MAX_LINE as u64 + 1);
    let _ = tokio::time::timeout(BUSY_DEADLINE, limited.read_until(b'\n', &mut line)).await;
    let busy = format!("too many registry clients at once ({MAX_CLIENTS}); try again");
    let _ = write_reply(&mut writer, &json!({"ok": false, "error": busy})).await;
}

/// Serves one client: a reply line per request line until EOF, an
/// over-long line, or a line that does not arrive within
/// [`REQUEST_DEADLINE`].
async fn serve(stream: UnixStream, control: Handler) -> io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    loop {
        let mut line = Vec::new();
        let limit = MAX_LINE as u64 + 1;
        let mut limited = (&mut reader).take(limit);
        let read = limited.read_until(b'\n', &mut line);
        let n = match tokio::time::timeout(REQUEST_DEADLINE, read).await {
            Ok(n) => n?,
            Err(_) => {
                let error = format!(
                    "no complete request line within {}s; closing the connection (send each \
                     request as one line ending in a newline)",
                    REQUEST_DEADLINE.as_secs()
                );
                return write_reply(&mut writer, &json!({"ok": false, "error": error})).await;
            }
        };
        if n == 0 {
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        } else if line.len() > MAX_LINE {
            let error = format!("request longer than {MAX_LINE} bytes; closing the connection");
            return write_reply(&mut writer, &json!({"ok": false, "error": error})).await;
        }
        let reply = match std::str::from_utf8(&line) {
            Err(_) => json!({"ok": false, "error": "the request is not UTF-8 text"}),
            Ok(text) => match protocol::parse(text) {
                Ok(request) => {
                    let control = control.clone();
                    tokio::task::spawn_blocking(move || control(request))
                        .await
                        .unwrap_or_else(|_| json!({"ok": false, "error": "l4mesh is stopping"}))
                }
                Err(error) => json!({"ok": false, "error": error}),
            },
        };
        write_reply(&mut writer, &reply).await?;
        if !complete {
            return Ok(());
        }
    }
}

/// Writes one reply line within [`WRITE_DEADLINE`] (a client that does not
/// read its replies is disconnected).
async fn write_reply(writer: &mut (impl AsyncWriteExt + Unpin), reply: &Value) -> io::Result<()> {
    let mut line = reply.to_string();
    line.push('\n');
    match tokio::time::timeout(WRITE_DEADLINE, writer.write_all(line.as_bytes())).await {
        Ok(written) => written,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use std::mem::MaybeUninit;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system temp dir.
    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "l4mesh-registry-unit-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Every inotify event on `name` in the watched directory so far.
    fn events_on(fd: &rustix::fd::OwnedFd, name: &str) -> Vec<ReadFlags> {
        let mut buf = [MaybeUninit::uninit(); 4096];
        let mut reader = inotify::Reader::new(fd, &mut buf);
        let mut found = Vec::new();
        while let Ok(event) = reader.next() {
            if event
                .file_name()
                .is_some_and(|n| n.to_bytes() == name.as_bytes())
            {
                found.push(event.events());
            }
        }
        found
    }

    #[test]
    fn it_should_make_the_socket_appear_with_its_final_mode_and_never_change_it() {
        for mode in [0o600, 0o660, 0o666] {
            let dir = temp_dir();
            let path = dir.join("registry.sock");
            let watch = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
            inotify::add_watch(
                &watch,
                &dir,
                WatchFlags::CREATE | WatchFlags::ATTRIB | WatchFlags::MOVED_TO,
            )
            .unwrap();
            let _listener = bind_with_mode(&path, mode).unwrap();
            // Born by a rename, with no mode change after: the file never
            // had any other mode at this path (bind in place shows CREATE
            // then ATTRIB).
            assert_eq!(
                events_on(&watch, "registry.sock"),
                [ReadFlags::MOVED_TO],
                "mode {mode:o}"
            );
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(meta.file_type().is_socket());
            assert_eq!(meta.permissions().mode() & 0o7777, mode);
            // The private directory is gone and the socket answers.
            let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
            assert_eq!(left.len(), 1, "{left:?}");
            StdUnixStream::connect(&path).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn it_should_place_a_socket_whose_staging_path_is_too_long_for_an_address() {
        let dir = temp_dir();
        // The final path fits in a socket address (105 bytes); the staged
        // one, DIR/.l4m-XXXXXXXX/s, would not (114).
        let deep = dir.join("d".repeat(98 - dir.as_os_str().len() - 1));
        std::fs::create_dir(&deep).unwrap();
        let path = deep.join("r.sock");
        assert_eq!(path.as_os_str().len(), 105);
        let listener = bind_with_mode(&path, 0o600).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let mut client = StdUnixStream::connect(&path).unwrap();
        let (mut served, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut client, b"x").unwrap();
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut served, &mut byte).unwrap();
        assert_eq!(&byte, b"x");
        assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn it_should_leave_nothing_behind_when_the_socket_cannot_be_placed() {
        let dir = temp_dir();
        // A directory in the way: rename(2) refuses to replace it.
        let path = dir.join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), b"").unwrap();
        assert!(bind_with_mode(&path, 0o600).is_err());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn it_should_give_the_started_server_the_configured_mode() {
        let dir = temp_dir();
        let config = RegistryConfig {
            socket: dir.join("r.sock"),
            mode: 0o640,
        };
        let control: Handler = std::sync::Arc::new(|_| serde_json::json!({ "ok": true }));
        let server = RegistryServer::start(&config, control).unwrap();
        let mode = std::fs::metadata(server.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
