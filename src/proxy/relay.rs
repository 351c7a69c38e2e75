//! What every relay shares, whatever moves its bytes: how a connection
//! ends, what it moved, and when it is idle or drained.
//!
//! The stream tells the truth. EOF on one side becomes `shutdown(Write)` on
//! the other (half-close) while the other direction keeps flowing. An error
//! on either side (a reset, usually) resets both sockets, so the other peer
//! sees a reset too and never mistakes a cut stream for a complete one; so
//! do the cuts l4mesh makes itself (idle timeout, drain at shutdown). The
//! reset also makes every pending wait or operation on the sockets return,
//! so every way out resets the sockets first and then waits for both
//! directions to return (a pump may hold a pipe or a buffer until then).
//!
//! Idle means no byte moved either way for `idle_timeout`. Every read and
//! every partial write or splice stamps the connection's "last progress"
//! (a clock read, no timer re-arm); one timer per connection, on the event
//! loop's own clock ([`Timer`]), sleeps until stamp + timeout and, when it
//! finds the stamp stale, asks the kernel ([`super::tcp_state`]) whether
//! bytes are still draining from a send queue, as they do towards a slow
//! reader while our write waits.

use super::io::Timer;
use super::tcp_state::{Flow, Pair};
use crate::routing::Counter;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a forwarded connection ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their write side: the normal end. `client_first`
    /// says who closed first.
    Closed {
        /// The client sent its EOF before the upstream did.
        client_first: bool,
    },
    /// No bytes moved either way for `idle_timeout`: both sides reset.
    Idle,
    /// Cut by a graceful shutdown that ran out of time: both sides reset.
    Drained,
    /// A read or write on `side` failed (a reset, usually): the other side
    /// was reset too.
    Reset {
        /// The side whose socket failed first.
        side: Side,
        /// How it failed.
        error: io::Error,
    },
}

/// One of a connection's two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream client's socket.
    Client,
    /// The upstream endpoint's socket.
    Upstream,
}

impl Side {
    /// The name used in logs.
    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

/// What a forwarded connection moved and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes from the client to the upstream.
    pub rx: u64,
    /// Bytes from the upstream to the client.
    pub tx: u64,
    /// How it ended.
    pub end: End,
}

/// Where the bytes of each direction are counted, per I/O operation.
#[derive(Debug, Clone, Copy)]
pub struct Meters<'a> {
    /// Bytes read from the client.
    pub rx: &'a Counter,
    /// Bytes written to the client.
    pub tx: &'a Counter,
}

/// What both directions of one connection share, whatever moves the bytes.
#[derive(Debug)]
pub struct Shared {
    /// When a byte last moved either way (a read, or any part of a write).
    last_active: Cell<Instant>,
    /// The direction that ended first, once one has.
    first_done: Cell<Option<Direction>>,
    /// The first failure, which reset the connection.
    failure: RefCell<Option<(Side, io::Error)>>,
}

impl Default for Shared {
    /// A connection that has just started: progress now, nothing ended.
    fn default() -> Shared {
        Shared {
            last_active: Cell::new(Instant::now()),
            first_done: Cell::new(None),
            failure: RefCell::new(None),
        }
    }
}

impl Shared {
    /// Notes that a byte moved now.
    pub fn progress(&self) {
        self.last_active.set(Instant::now());
    }

    /// Records `error` on `side` unless a failure was recorded already (the
    /// other direction then fails only because of the reset that followed).
    pub fn fail(&self, side: Side, error: io::Error) {
        self.failure.borrow_mut().get_or_insert((side, error));
    }

    /// Whether the other direction has already ended: then this one's EOF
    /// needs no half-close, since both sockets close right after and
    /// close() sends the FIN.
    pub fn other_done(&self) -> bool {
        self.first_done.get().is_some()
    }

    /// Marks `direction` as ended (the first to end is remembered).
    pub fn done(&self, direction: Direction) {
        if self.first_done.get().is_none() {
            self.first_done.set(Some(direction));
        }
    }

    /// Ends `direction`, which moved `from` → `to`: after a failure both
    /// sockets are reset, so both peers see a reset and the other
    /// direction's pending wait or op returns.
    pub fn end(
        &self,
        direction: Direction,
        failed: bool,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
    ) {
        self.done(direction);
        if failed {
            Pair(from, to).reset();
        }
    }
}

/// Which way a pump moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → upstream.
    FromClient,
    /// Upstream → client.
    ToClient,
}

impl Direction {
    /// The sides it reads from and writes to.
    pub fn sides(self) -> (Side, Side) {
        match self {
            Direction::FromClient => (Side::Client, Side::Upstream),
            Direction::ToClient => (Side::Upstream, Side::Client),
        }
    }
}

/// Runs `direction` (one way's loop: from, to, the shared state, which
/// way, where its bytes are counted) both ways between `client` and
/// `upstream` at once, until both end, or until the connection idles (on
/// `timer`'s clock) or is drained: then both sockets are reset, which makes
/// the pending waits and operations return, and both directions are
/// awaited all the same (a pipe or buffer may be in the kernel's hands
/// until then). Every relay, whatever moves its bytes, is this.
///
/// Its future is part of every connection's task, idle or not, so it is
/// kept small: one async fn (each level of nesting keeps its own copy of
/// the arguments), and the two directions pinned where they are made (a
/// future moved from local to argument to local keeps room for itself at
/// each step, which once tripled their share).
pub async fn both_ways<T: Timer, S: AsFd>(
    timer: &T,
    client: &S,
    upstream: &S,
    meters: Meters<'_>,
    idle_timeout: Duration,
    mut drain: watch::Receiver<bool>,
    direction: impl AsyncFn(&S, &S, &Shared, Direction, &Counter) -> u64,
) -> Outcome {
    let shared = Shared::default();
    let mut both = std::pin::pin!(async {
        tokio::join!(
            direction(client, upstream, &shared, Direction::FromClient, meters.rx),
            direction(upstream, client, &shared, Direction::ToClient, meters.tx)
        )
    });
    let sockets = Pair(client.as_fd(), upstream.as_fd());
    let forced = tokio::select! {
        (rx, tx) = &mut both => return outcome(rx, tx, None, &shared),
        () = idle(timer, &shared, idle_timeout, sockets) => End::Idle,
        _ = drain.wait_for(|draining| *draining) => End::Drained,
    };
    sockets.reset();
    let (rx, tx) = both.await;
    outcome(rx, tx, Some(forced), &shared)
}

fn outcome(rx: u64, tx: u64, forced: Option<End>, shared: &Shared) -> Outcome {
    let end = match (forced, shared.failure.take()) {
        (Some(end), _) => end,
        (None, Some((side, error))) => End::Reset { side, error },
        (None, None) => End::Closed {
            client_first: shared.first_done.get() == Some(Direction::FromClient),
        },
    };
    Outcome { rx, tx, end }
}

/// Completes once no byte has moved either way for `timeout`.
///
/// Sleeps until the last progress stamp plus `timeout`. A stale stamp is
/// not the last word: our write may be waiting while the kernel drains a
/// full send queue to a slow reader. So the kernel is asked. At
/// the first look the connection is idle if nothing is queued to go out;
/// once a look found bytes queued, only if nothing moved on the wire since
/// that look, `timeout` ago or more. A connection whose queue drained (or
/// whose peer stopped reading) is therefore cut between `timeout` and twice
/// `timeout` after its last byte; every other idle connection at `timeout`.
async fn idle<T: Timer>(timer: &T, shared: &Shared, timeout: Duration, sockets: Pair<'_>) {
    let mut seen: Option<Flow> = None;
    loop {
        let deadline = shared.last_active.get() + timeout;
        if Instant::now() < deadline {
            timer.sleep_until(deadline).await;
            continue;
        }
        let now = sockets.flow();
        match now {
            // First look: bytes still queued to go out. Later looks: bytes
            // moved since the last (a queue that drained empty since then
            // counts: its last byte went less than `timeout` ago). Either
            // way, look again in `timeout`.
            Some(now) if seen.map_or(now.in_flight, |seen| seen.moved != now.moved) => {
                seen = Some(now);
                shared.progress();
            }
            _ => return,
        }
    }
}
