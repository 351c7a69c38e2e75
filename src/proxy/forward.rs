//! Copy-path forwarding: both directions run concurrently, each reusing one
//! owned buffer that every io_uring read and write hands back.
//!
//! EOF on one side becomes `shutdown(Write)` on the other (half-close) while
//! the other direction keeps flowing; an error on either side shuts both
//! sockets down so the other direction's pending read returns. Dropping an
//! in-flight tokio-uring read does not cancel it in the kernel, so every way
//! out (idle timeout, drain) shuts the sockets down first and then waits for
//! both directions to return their buffers.

use super::buffers::BufferPool;
use crate::metrics::Counter;
use std::cell::Cell;
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
    /// No bytes moved either way for `idle_timeout`.
    Idle,
    /// Closed by a graceful shutdown that ran out of time.
    Drained,
    /// A read or write failed (a reset, usually).
    Error(io::Error),
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
    /// When a byte last moved either way.
    pub last_active: Cell<Instant>,
    /// The direction that ended first, once one has.
    pub first_done: Cell<Option<Direction>>,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            last_active: Cell::new(Instant::now()),
            first_done: Cell::new(None),
        }
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
    drive(&shared, both, idle_timeout, drain, || {
        close(client, upstream)
    })
    .await
}

/// Runs both directions (`both`) until they end, or until the connection
/// idles or is drained: then `close` shuts the sockets down, which makes the
/// pending operations return, and both directions are awaited all the same
/// (their buffers or pipes are still in the kernel's hands until then).
pub(super) async fn drive(
    shared: &Shared,
    both: impl std::future::Future<Output = (Pumped, Pumped)>,
    idle_timeout: Duration,
    mut drain: watch::Receiver<bool>,
    close: impl Fn(),
) -> Outcome {
    tokio::pin!(both);
    let forced = tokio::select! {
        (up, down) = &mut both => return outcome(up, down, None, shared),
        () = idle(&shared.last_active, idle_timeout) => End::Idle,
        _ = drain.wait_for(|draining| *draining) => End::Drained,
    };
    close();
    let (up, down) = both.await;
    outcome(up, down, Some(forced), shared)
}

fn outcome(up: Pumped, down: Pumped, forced: Option<End>, shared: &Shared) -> Outcome {
    let end = match (forced, up.error, down.error) {
        (Some(end), _, _) => end,
        (None, Some(e), _) | (None, None, Some(e)) => End::Error(e),
        (None, None, None) => End::Closed {
            client_first: shared.first_done.get() == Some(Direction::FromClient),
        },
    };
    Outcome {
        rx: up.bytes,
        tx: down.bytes,
        end,
    }
}

/// What one direction moved, and the error that stopped it, if any.
#[derive(Debug)]
pub(super) struct Pumped {
    /// Bytes moved.
    pub bytes: u64,
    /// The error that stopped it.
    pub error: Option<io::Error>,
}

/// Copies `from` → `to` until EOF (then half-closes `to`) or an error (then
/// shuts both sockets down, which ends the other direction too), counting
/// the bytes of every read in `meter`.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    buffers: &BufferPool,
    shared: &Shared,
    direction: Direction,
    meter: &Counter,
) -> Pumped {
    let mut buffer = buffers.take();
    let mut bytes = 0u64;
    let error = loop {
        let (read, returned) = from.read(buffer).await;
        buffer = returned;
        let n = match read {
            Ok(0) => {
                // The half-close; its error means the peer is gone already.
                if !shared.other_done() {
                    let _ = to.shutdown(Shutdown::Write);
                }
                break None;
            }
            Ok(n) => n,
            Err(e) => break Some(e),
        };
        shared.last_active.set(Instant::now());
        meter.add(n as u64);
        let (written, slice) = to.write_all(buffer.slice(..n)).await;
        buffer = slice.into_inner();
        if let Err(e) = written {
            break Some(e);
        }
        bytes += n as u64;
        shared.last_active.set(Instant::now());
    };
    buffers.give_back(buffer);
    shared.done(direction);
    if error.is_some() {
        close(from, to);
    }
    Pumped { bytes, error }
}

/// Shuts both sockets down both ways, so pending reads on them return.
fn close(a: &TcpStream, b: &TcpStream) {
    // Errors here mean a socket is already closed, which is the goal.
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// Completes once no byte has moved for `timeout`.
pub(super) async fn idle(last_active: &Cell<Instant>, timeout: Duration) {
    loop {
        let deadline = last_active.get() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}
