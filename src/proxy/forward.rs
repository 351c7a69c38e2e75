//! Copy-path forwarding: both directions run concurrently, each reusing one
//! owned buffer that every io_uring read and write hands back; and what
//! every forwarding path shares: how a connection ends and when it is idle.
//!
//! The stream tells the truth. EOF on one side becomes `shutdown(Write)` on
//! the other (half-close) while the other direction keeps flowing. An error
//! on either side (a reset, usually) resets both sockets, so the other peer
//! sees a reset too and never mistakes a cut stream for a complete one; so
//! do the cuts l4mesh makes itself (idle timeout, drain at shutdown). The
//! reset also makes every pending operation return: dropping an in-flight
//! tokio-uring read does not cancel it in the kernel, so every way out
//! resets the sockets first and then waits for both directions to return
//! their buffers.
//!
//! Idle means no byte moved either way for `idle_timeout`. Every read and
//! every partial write or splice stamps the connection's "last progress"
//! (a clock read, no timer re-arm); one timer per connection sleeps until
//! stamp + timeout and, when it finds the stamp stale, asks the kernel
//! ([`super::tcp_state`]) whether bytes are still draining from a send
//! queue, as they do towards a slow reader while our write waits.

use super::buffers::BufferPool;
use super::tcp_state::{Flow, Pair, borrow_uring};
use crate::routing::Counter;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

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
pub(super) struct Shared {
    /// When a byte last moved either way (a read, or any part of a write).
    pub last_active: Cell<Instant>,
    /// The direction that ended first, once one has.
    pub first_done: Cell<Option<Direction>>,
    /// The first failure, which reset the connection.
    failure: RefCell<Option<(Side, io::Error)>>,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            last_active: Cell::new(Instant::now()),
            first_done: Cell::new(None),
            failure: RefCell::new(None),
        }
    }

    /// Notes that a byte moved now.
    pub(super) fn progress(&self) {
        self.last_active.set(Instant::now());
    }

    /// Records `error` on `side` unless a failure was recorded already (the
    /// other direction then fails only because of the reset that followed).
    pub(super) fn fail(&self, side: Side, error: io::Error) {
        self.failure.borrow_mut().get_or_insert((side, error));
    }

    /// Whether the other direction has already ended: then this one's EOF
    /// needs no half-close, since both sockets close right after and
    /// close() sends the FIN.
    pub(super) fn other_done(&self) -> bool {
        self.first_done.get().is_some()
    }

    /// Marks `direction` as ended (the first to end is remembered).
    pub(super) fn done(&self, direction: Direction) {
        if self.first_done.get().is_none() {
            self.first_done.set(Some(direction));
        }
    }
}

/// Which way a pump moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    FromClient,
    ToClient,
}

impl Direction {
    /// The sides it reads from and writes to.
    pub(super) fn sides(self) -> (Side, Side) {
        match self {
            Direction::FromClient => (Side::Client, Side::Upstream),
            Direction::ToClient => (Side::Upstream, Side::Client),
        }
    }
}

/// Forwards between `client` and `upstream` with io_uring reads and writes
/// through owned buffers, until both directions end, the connection idles
/// for `idle_timeout`, or `drain` turns true.
pub async fn forward(
    client: &TcpStream,
    upstream: &TcpStream,
    buffers: &BufferPool,
    meters: Meters<'_>,
    idle_timeout: Duration,
    drain: watch::Receiver<bool>,
) -> Outcome {
    let shared = Shared::new();
    let both = async {
        tokio::join!(
            pump(
                client,
                upstream,
                buffers,
                &shared,
                Direction::FromClient,
                meters.rx
            ),
            pump(
                upstream,
                client,
                buffers,
                &shared,
                Direction::ToClient,
                meters.tx
            )
        )
    };
    let sockets = Pair(borrow_uring(client), borrow_uring(upstream));
    drive(&shared, both, idle_timeout, drain, sockets).await
}

/// Runs both directions (`both`) until they end, or until the connection
/// idles or is drained: then both sockets are reset, which makes the
/// pending operations return, and both directions are awaited all the same
/// (their buffers or pipes are still in the kernel's hands until then).
pub(super) async fn drive(
    shared: &Shared,
    both: impl std::future::Future<Output = (u64, u64)>,
    idle_timeout: Duration,
    mut drain: watch::Receiver<bool>,
    sockets: Pair<'_>,
) -> Outcome {
    tokio::pin!(both);
    let forced = tokio::select! {
        (rx, tx) = &mut both => return outcome(rx, tx, None, shared),
        () = idle(shared, idle_timeout, sockets) => End::Idle,
        _ = drain.wait_for(|draining| *draining) => End::Drained,
    };
    sockets.reset();
    let (rx, tx) = both.await;
    outcome(rx, tx, Some(forced), shared)
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

/// Copies `from` → `to` until EOF (then half-closes `to`) or an error (then
/// resets both sockets, which ends the other direction too), counting the
/// bytes of every read in `meter`. Returns the bytes moved.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    buffers: &BufferPool,
    shared: &Shared,
    direction: Direction,
    meter: &Counter,
) -> u64 {
    let (from_side, to_side) = direction.sides();
    let mut buffer = buffers.take();
    let mut bytes = 0u64;
    let failed = loop {
        let (read, returned) = from.read(buffer).await;
        buffer = returned;
        let n = match read {
            Ok(0) => {
                // The half-close; its error means the peer is gone already.
                if !shared.other_done() {
                    let _ = to.shutdown(Shutdown::Write);
                }
                break false;
            }
            Ok(n) => n,
            Err(e) => {
                shared.fail(from_side, e);
                break true;
            }
        };
        shared.progress();
        meter.add(n as u64);
        // Written piece by piece, so that every partial write counts as
        // progress: a slow reader drains a chunk for longer than idle_timeout.
        let mut sent = 0;
        while sent < n {
            let (written, slice) = to.write(buffer.slice(sent..n)).submit().await;
            buffer = slice.into_inner();
            match written {
                Ok(0) => {
                    shared.fail(to_side, io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(m) => {
                    sent += m;
                    shared.progress();
                }
                Err(e) => {
                    shared.fail(to_side, e);
                    break;
                }
            }
        }
        bytes += sent as u64;
        if sent < n {
            break true;
        }
    };
    buffers.give_back(buffer);
    shared.done(direction);
    if failed {
        // Both peers see a reset, and the other direction's pending read
        // returns.
        Pair(borrow_uring(from), borrow_uring(to)).reset();
    }
    bytes
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
async fn idle(shared: &Shared, timeout: Duration, sockets: Pair<'_>) {
    let mut seen: Option<Flow> = None;
    loop {
        let deadline = shared.last_active.get() + timeout;
        if Instant::now() < deadline {
            tokio::time::sleep_until(deadline.into()).await;
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
