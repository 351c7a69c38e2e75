//! Watching the config file. The directory that holds it is watched (with
//! inotify, through the `notify` crate), not the file itself, so every way a
//! file really changes is seen: an in-place write, an editor's
//! write-temp-then-rename, and a Kubernetes ConfigMap's `..data` symlink
//! swap. Events are debounced (an editor's save is several events: 100 ms of
//! quiet, but never more than 500 ms after the first, so a file rewritten
//! constantly is still read) and then the controller re-reads the file,
//! skipping it if the content is unchanged.
//! Where inotify is unavailable, the directory is polled every 500 ms.

use super::controller::ControlHandle;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{Event, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
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
    source: notify::Error,
}

/// Watches the config file while alive.
pub struct ConfigWatcher {
    _watcher: Box<dyn Watcher + Send>,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigWatcher")
    }
}

impl ConfigWatcher {
    /// Starts watching the directory of `path`; changes become reload
    /// requests on `control`.
    pub fn start(path: &Path, control: ControlHandle) -> Result<ConfigWatcher, WatchError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (events, debounced) = crossbeam_channel::unbounded::<()>();
        std::thread::Builder::new()
            .name("l4mesh-watch".into())
            .spawn(move || {
                while debounced.recv().is_ok() {
                    let first = std::time::Instant::now();
                    while first.elapsed() < MAX_DELAY && debounced.recv_timeout(DEBOUNCE).is_ok() {}
                    control.request_reload(false);
                }
            })
            .map_err(|e| WatchError {
                dir: dir.clone(),
                source: notify::Error::io(e),
            })?;
        let polled = events.clone();
        // With inotify, an in-place write is read once it is closed
        // (IN_CLOSE_WRITE), never between its truncate and its write.
        let inotify_handler = move |event: notify::Result<Event>| {
            if event.is_ok_and(|e| marks_a_finished_change(&e.kind)) {
                let _ = events.send(());
            }
        };
        let handler = move |event: notify::Result<Event>| {
            if event.is_ok() {
                let _ = polled.send(());
            }
        };
        let inotify = RecommendedWatcher::new(inotify_handler, notify::Config::default())
            .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let watcher: Box<dyn Watcher + Send> = match inotify {
            Ok(watcher) => Box::new(watcher),
            Err(e) => {
                log::warn!(
                    "inotify is unavailable ({e}); polling {} every {POLL_INTERVAL:?}",
                    dir.display()
                );
                let config = notify::Config::default()
                    .with_poll_interval(POLL_INTERVAL)
                    .with_compare_contents(true);
                let mut poll = PollWatcher::new(handler, config).map_err(|source| WatchError {
                    dir: dir.clone(),
                    source,
                })?;
                poll.watch(&dir, RecursiveMode::NonRecursive)
                    .map_err(|source| WatchError {
                        dir: dir.clone(),
                        source,
                    })?;
                Box::new(poll)
            }
        };
        Ok(ConfigWatcher { _watcher: watcher })
    }
}

/// Whether an inotify event ends a change: a closed write, a create, a
/// rename (editors, ConfigMap symlink swaps), a removal or a metadata change.
/// Plain data writes and opens are skipped: the close that follows counts.
fn marks_a_finished_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Data(_)) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RenameMode};

    #[test]
    fn it_should_wait_for_the_close_of_an_in_place_write() {
        assert!(!marks_a_finished_change(&EventKind::Modify(
            ModifyKind::Data(DataChange::Any)
        )));
        assert!(!marks_a_finished_change(&EventKind::Access(
            AccessKind::Open(AccessMode::Any)
        )));
        assert!(marks_a_finished_change(&EventKind::Access(
            AccessKind::Close(AccessMode::Write)
        )));
        assert!(marks_a_finished_change(&EventKind::Modify(
            ModifyKind::Name(RenameMode::To)
        )));
        assert!(marks_a_finished_change(&EventKind::Create(
            CreateKind::File
        )));
    }
}
