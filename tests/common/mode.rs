//! How a test runs the data path: the forward mode and the workers' event
//! loop, and `per_mode!`, which runs one test body in every combination.

use std::fmt;

/// A forward mode (`runtime.forward`) on an event loop
/// (`runtime.event_loop`), as the config spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// `"auto"`, `"splice"` or `"copy"`.
    pub forward: &'static str,
    /// `"auto"` (the default), `"io_uring"` or `"epoll"`.
    pub event_loop: &'static str,
}

impl Mode {
    /// `forward` on `event_loop`.
    pub const fn new(forward: &'static str, event_loop: &'static str) -> Mode {
        Mode {
            forward,
            event_loop,
        }
    }

    /// The defaults: `auto` forwarding on the `auto` event loop.
    pub const DEFAULT: Mode = Mode::new("auto", "auto");

    /// `forward` on the default event loop (`"auto"`).
    pub const fn forward(forward: &'static str) -> Mode {
        Mode::new(forward, "auto")
    }

    /// Every combination `per_mode!` runs: each forward mode on the default
    /// loop, then each on the epoll loop.
    pub const ALL: [Mode; 6] = [
        Mode::new("auto", "auto"),
        Mode::new("splice", "auto"),
        Mode::new("copy", "auto"),
        Mode::new("auto", "epoll"),
        Mode::new("splice", "epoll"),
        Mode::new("copy", "epoll"),
    ];

    /// The `[runtime]` keys that select this mode, one per line.
    pub fn runtime_keys(self) -> String {
        format!(
            "forward = \"{}\"\nevent_loop = \"{}\"\n",
            self.forward, self.event_loop
        )
    }
}

/// `copy/epoll`: the forward mode, then the event loop.
impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.forward, self.event_loop)
    }
}

/// The config text with `mode`'s keys first in its `[runtime]` table (which
/// `text` must have).
pub fn with_mode(text: &str, mode: Mode) -> String {
    assert!(text.contains("[runtime]\n"), "no [runtime] table in {text}");
    text.replacen(
        "[runtime]\n",
        &format!("[runtime]\n{}", mode.runtime_keys()),
        1,
    )
}

/// Defines a test once per [`Mode`]: `per_mode!(fn name(mode) { .. })`
/// makes `name::auto`, `name::splice` and `name::copy` on the default event
/// loop and `name::auto_epoll`, `name::splice_epoll` and `name::copy_epoll`
/// on the epoll loop, which run in parallel and each name the mode that
/// failed.
#[macro_export]
macro_rules! per_mode {
    ($(#[$meta:meta])* fn $name:ident($mode:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::common::Mode;

            fn run($mode: Mode) $body

            #[test]
            fn auto() {
                run(Mode::new("auto", "auto"))
            }

            #[test]
            fn splice() {
                run(Mode::new("splice", "auto"))
            }

            #[test]
            fn copy() {
                run(Mode::new("copy", "auto"))
            }

            #[test]
            fn auto_epoll() {
                run(Mode::new("auto", "epoll"))
            }

            #[test]
            fn splice_epoll() {
                run(Mode::new("splice", "epoll"))
            }

            #[test]
            fn copy_epoll() {
                run(Mode::new("copy", "epoll"))
            }
        }
    };
}
