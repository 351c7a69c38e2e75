//! Unix socket files that appear with their final mode: the registry socket
//! and the upgrade socket. A leaf module.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Binds a listening socket at `path` (with `bind`, given the path to bind
/// at) whose file has `mode` from the moment it appears there: it is bound
/// in a fresh private (0700) directory beside `path`, given its mode, and
/// renamed into place. Binding then chmod'ing in place would leave a window
/// where the umask's mode applies; binding under a narrower umask would
/// not, but the umask is process-wide and other threads create files
/// meanwhile.
pub fn place<T>(
    path: &Path,
    mode: u32,
    bind: impl FnOnce(&Path) -> io::Result<T>,
) -> io::Result<T> {
    let parent = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Short names: the staged path must fit in a Unix socket address too.
    let private = parent.join(format!(".l4m-{:08x}", fastrand::u32(..)));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    // A Unix socket address holds at most 107 bytes of path, and the staged
    // path may be longer than `path` itself: then bind through the
    // directory's descriptor, whose /proc path is always short.
    let directory;
    let bind_at = if staged.as_os_str().len() <= MAX_SOCKET_PATH {
        staged.clone()
    } else {
        directory = std::fs::File::open(&private)?;
        PathBuf::from(format!("/proc/self/fd/{}/s", directory.as_raw_fd()))
    };
    let placed = bind(&bind_at).and_then(|listener| {
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
