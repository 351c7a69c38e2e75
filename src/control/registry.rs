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
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
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
        let listener = UnixListener::bind(&path).map_err(create)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(config.mode))
            .map_err(create)?;
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
