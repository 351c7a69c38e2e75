//! The registry socket: a Unix stream socket where instances register and
//! deregister at run time. One request per line, one JSON reply line per
//! request (see [`super::protocol`]). Each client has its own thread and a
//! read timeout, so a silent or slow client cannot block the others; a
//! malformed request gets an error reply, never a crash.

use super::controller::ControlHandle;
use super::protocol::{self, MAX_LINE};
use crate::config::RegistryConfig;
use serde_json::{Value, json};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A client that sends nothing for this long is disconnected.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once; more are told to retry.
const MAX_CLIENTS: usize = 64;

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

/// The running registry socket; closing it removes the socket file.
#[derive(Debug)]
pub struct RegistryServer {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl RegistryServer {
    /// Creates the socket (replacing a stale one), sets its mode and starts
    /// serving requests against `control`.
    pub fn start(config: &RegistryConfig, control: ControlHandle) -> Result<Self, RegistryError> {
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
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let acceptor = std::thread::Builder::new()
            .name("l4mesh-registry".into())
            .spawn(move || accept(listener, control, flag))
            .map_err(create)?;
        log::info!(
            "registry socket on {} (mode {:04o})",
            path.display(),
            config.mode
        );
        Ok(RegistryServer {
            path,
            stopping,
            acceptor: Some(acceptor),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Wakes the acceptor blocked in accept(), which then sees the flag
        // and ends. If the socket file was already removed, nothing can wake
        // it, so it is joined only when the wake-up went through.
        let woken = UnixStream::connect(&self.path).is_ok();
        if let Some(acceptor) = self.acceptor.take().filter(|_| woken) {
            let _ = acceptor.join();
        }
        let _ = std::fs::remove_file(&self.path);
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
    if UnixStream::connect(path).is_ok() {
        return Err(RegistryError::InUse(path.to_path_buf()));
    }
    log::info!("registry: replacing the stale socket {}", path.display());
    std::fs::remove_file(path).map_err(|source| RegistryError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// Binds a listening socket at `path` whose file has `mode` from the moment
/// it appears there: it is bound in a fresh private (0700) directory beside
/// `path`, given its mode, and renamed into place. Binding then chmod'ing in
/// place would leave a window where the umask's mode applies; binding under
/// a narrower umask would not, but the umask is process-wide and other
/// threads create files meanwhile.
fn bind_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let parent = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Short names: the staged path must fit in a Unix socket address too.
    let private = parent.join(format!(".l4m-{:08x}", fastrand::u32(..)));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let placed = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    if placed.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    let _ = std::fs::remove_dir(&private);
    placed
}

fn accept(listener: UnixListener, control: ControlHandle, stopping: Arc<AtomicBool>) {
    let clients = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stopping.load(Ordering::Relaxed) {
            return;
        }
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("registry: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::Relaxed);
            let busy = format!("too many registry clients at once ({MAX_CLIENTS}); try again");
            let _ = write_reply(&mut stream, &json!({"ok": false, "error": busy}));
            continue;
        }
        let (control, clients) = (control.clone(), Arc::clone(&clients));
        let spawned = std::thread::Builder::new()
            .name("l4mesh-registry-client".into())
            .spawn(move || {
                if let Err(e) = serve(stream, &control) {
                    log::debug!("registry client: {e}");
                }
                clients.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            log::warn!("registry: cannot start a client thread: {e}");
        }
    }
}

/// Serves one client: a reply line per request line until EOF, a timeout,
/// or an over-long line.
fn serve(stream: UnixStream, control: &ControlHandle) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let limit = MAX_LINE as u64 + 1;
        let n = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
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
            return write_reply(&mut writer, &json!({"ok": false, "error": error}));
        }
        let reply = match std::str::from_utf8(&line) {
            Err(_) => json!({"ok": false, "error": "the request is not UTF-8 text"}),
            Ok(text) => match protocol::parse(text) {
                Ok(request) => control.registry(request),
                Err(error) => json!({"ok": false, "error": error}),
            },
        };
        write_reply(&mut writer, &reply)?;
        if !complete {
            return Ok(());
        }
    }
}

fn write_reply(stream: &mut UnixStream, reply: &Value) -> io::Result<()> {
    let mut line = reply.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use std::mem::MaybeUninit;

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
            UnixStream::connect(&path).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
        }
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
        let (control, _commands) = ControlHandle::channel();
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
