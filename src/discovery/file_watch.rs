//! Watching the config file. The directory that holds it is watched with
//! inotify, not the file itself, so every way a file really changes is seen:
//! an in-place write, an editor's write-temp-then-rename, and a Kubernetes
//! ConfigMap's `..data` symlink swap. Events are debounced (an editor's save
//! is several events: 100 ms of quiet, but never more than 500 ms after the
//! first, so a file rewritten constantly is still read) and then the
//! controller re-reads the file, skipping it if the content is unchanged.
//!
//! Only events that end a change are asked for: a closed write (so an
//! in-place write is read after it, never between its truncate and its
//! write), a create, a removal, a rename, a metadata change. Opens, reads
//! and data writes are not, so a busy file next to the config (an access
//! log, say) wakes nothing. Where inotify is unavailable, or the directory
//! goes away, the file is read every 500 ms and compared.

use crossbeam_channel::Sender;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Quiet time after the last event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// The longest a reload waits for quiet: a file rewritten more often than
/// the debounce is still read at least this often.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// The polling fallback's interval.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Why the config file cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {dir:?} for changes to the config file: {source}")]
pub struct WatchError {
    dir: PathBuf,
    source: io::Error,
}

/// Watches the config file while alive; dropping it ends the watch.
#[derive(Debug)]
pub struct ConfigWatcher {
    stop: Arc<AtomicBool>,
    /// The inotify descriptor and watch, when not polling: removing the
    /// watch wakes the reading thread so it can see `stop`.
    inotify: Option<(Arc<OwnedFd>, i32)>,
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some((fd, wd)) = &self.inotify {
            let _ = inotify::remove_watch(fd.as_ref(), *wd);
        }
    }
}

impl ConfigWatcher {
    /// Starts watching the directory of `path`; changes become reload
    /// requests by calling `reload`.
    pub fn start(
        path: &Path,
        reload: impl Fn() + Send + 'static,
    ) -> Result<ConfigWatcher, WatchError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let fail = |source: io::Error| WatchError {
            dir: dir.clone(),
            source,
        };
        let (events, debounced) = crossbeam_channel::unbounded::<()>();
        // Ends when the event source's thread ends and drops `events`.
        std::thread::Builder::new()
            .name("l4mesh-watch".into())
            .spawn(move || {
                while debounced.recv().is_ok() {
                    let first = std::time::Instant::now();
                    while first.elapsed() < MAX_DELAY && debounced.recv_timeout(DEBOUNCE).is_ok() {}
                    reload();
                }
            })
            .map_err(&fail)?;
        let stop = Arc::new(AtomicBool::new(false));
        let inotify = match watch_directory(&dir) {
            Ok((fd, wd)) => {
                let (reader, stopped) = (Arc::clone(&fd), Arc::clone(&stop));
                let path = path.to_path_buf();
                std::thread::Builder::new()
                    .name("l4mesh-inotify".into())
                    .spawn(move || {
                        if read_events(&reader, &path, &events, &stopped) {
                            poll(&path, &events, &stopped);
                        }
                    })
                    .map_err(&fail)?;
                Some((fd, wd))
            }
            Err(e) => {
                log::warn!(
                    "inotify is unavailable ({e}); polling {} every {POLL_INTERVAL:?}",
                    path.display()
                );
                let (path, stopped) = (path.to_path_buf(), Arc::clone(&stop));
                std::thread::Builder::new()
                    .name("l4mesh-poll".into())
                    .spawn(move || poll(&path, &events, &stopped))
                    .map_err(&fail)?;
                None
            }
        };
        Ok(ConfigWatcher { stop, inotify })
    }
}

/// The events that end a change to an entry of the directory, and the
/// directory's own removal or move.
fn wanted() -> WatchFlags {
    WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
}

/// An inotify descriptor (blocking reads) watching `dir`, and the watch.
fn watch_directory(dir: &Path) -> io::Result<(Arc<OwnedFd>, i32)> {
    let fd = inotify::init(CreateFlags::CLOEXEC)?;
    let wd = inotify::add_watch(&fd, dir, wanted())?;
    Ok((Arc::new(fd), wd))
}

/// What one inotify event means for the watch.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Something in the directory changed (or events were lost): reload.
    Change,
    /// The directory itself was removed or moved away.
    DirectoryGone,
    /// The watch was removed (the watcher was dropped, or the directory is
    /// gone): stop reading.
    WatchEnded,
}

fn classify(flags: ReadFlags) -> Seen {
    if flags.contains(ReadFlags::IGNORED) {
        Seen::WatchEnded
    } else if flags.intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF) {
        Seen::DirectoryGone
    } else {
        Seen::Change
    }
}

/// Reads events until the watch ends, sending one reload request per event.
/// Returns whether the file should be polled from now on: the directory
/// went away (a deploy that replaces it, say) or the watch failed, and the
/// watcher was not dropped.
fn read_events(fd: &OwnedFd, path: &Path, events: &Sender<()>, stop: &AtomicBool) -> bool {
    let mut buf = [MaybeUninit::uninit(); 4096];
    let mut reader = inotify::Reader::new(fd, &mut buf);
    let why = loop {
        let flags = match reader.next() {
            Ok(event) => event.events(),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => break format!("the inotify watch failed: {e}"),
        };
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match classify(flags) {
            Seen::Change => {
                let _ = events.send(());
            }
            Seen::DirectoryGone => break "its directory was removed or moved".to_string(),
            // Only dropping the watcher removes the watch while the
            // directory is there; otherwise it went with the directory.
            Seen::WatchEnded => break "its directory's watch ended".to_string(),
        }
    };
    if stop.load(Ordering::Relaxed) {
        return false;
    }
    log::warn!(
        "watching {}: {why}; polling the file every {POLL_INTERVAL:?} from now on",
        path.display()
    );
    // A directory created in the old one's place is a new change too.
    let _ = events.send(());
    true
}

/// The fallback: reads the file (following symlinks) every
/// [`POLL_INTERVAL`] and asks for a reload when its content changed, so a
/// rewrite within one timestamp tick is not missed. Config files are small;
/// `None` while it cannot be read.
fn poll(path: &Path, events: &Sender<()>, stop: &AtomicBool) {
    let mut last = std::fs::read(path).ok();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL_INTERVAL);
        let now = std::fs::read(path).ok();
        if now != last {
            last = now;
            let _ = events.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_reload_on_changes_and_stop_when_the_watch_ends() {
        assert_eq!(classify(ReadFlags::CLOSE_WRITE), Seen::Change);
        assert_eq!(classify(ReadFlags::MOVED_TO), Seen::Change);
        assert_eq!(classify(ReadFlags::QUEUE_OVERFLOW), Seen::Change);
        assert_eq!(classify(ReadFlags::DELETE_SELF), Seen::DirectoryGone);
        assert_eq!(classify(ReadFlags::IGNORED), Seen::WatchEnded);
    }

    /// Writes to a file next to the config are not asked for; closing a
    /// write, creating and renaming are.
    #[test]
    fn it_should_only_see_events_that_end_a_change() {
        let dir = std::env::temp_dir().join(format!("l4mesh-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (fd, wd) = watch_directory(&dir).unwrap();
        let nonblocking = |fd: &OwnedFd| {
            let flags = rustix::fs::fcntl_getfl(fd).unwrap();
            rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK).unwrap();
        };
        nonblocking(&fd);
        let drain = || {
            let mut buf = [MaybeUninit::uninit(); 4096];
            let mut reader = inotify::Reader::new(fd.as_ref(), &mut buf);
            let mut seen = Vec::new();
            while let Ok(event) = reader.next() {
                seen.push(classify(event.events()));
            }
            seen
        };
        let mut log = std::fs::File::create(dir.join("access.log")).unwrap();
        drain();
        use std::io::Write;
        for _ in 0..100 {
            log.write_all(b"a line\n").unwrap();
        }
        assert!(drain().is_empty(), "plain writes woke the watcher");
        drop(log);
        assert_eq!(drain(), [Seen::Change]);
        std::fs::write(dir.join("next.toml"), "x").unwrap();
        std::fs::rename(dir.join("next.toml"), dir.join("l4mesh.toml")).unwrap();
        assert!(drain().len() >= 3); // create, close_write, moved_from/to
        inotify::remove_watch(fd.as_ref(), wd).unwrap();
        assert_eq!(drain(), [Seen::WatchEnded]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
