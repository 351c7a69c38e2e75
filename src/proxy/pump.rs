//! Relaying on readiness: each direction waits until its source socket is
//! readable, has a [`Pump`] move what is there, counts it, and ends on EOF
//! (half-closing the other socket) or on a failure (resetting both). The
//! pump is the way one chunk moves, chosen by type: through a pipe
//! ([`SplicePump`]) or through the worker's scratch buffer ([`CopyPump`]).
//! Both work on any [`Socket`] whose event loop reports readiness, so the
//! same relay serves on any loop.
//!
//! [`Pumps`] is what a worker owns for them (its scratch buffer, its
//! buffers and, when it splices, its pipes) and picks the pump that
//! `forward` asks for.

use super::buffers::BufferPool;
use super::copy::{CopyPump, Scratch};
use super::io::{Socket, Timer};
use super::pipes::PipePool;
use super::relay::{Direction, Meters, Outcome, Shared, both_ways};
use super::ring_copy::Spares;
use super::splice::SplicePump;
use crate::config::{ForwardMode, SCRATCH_BYTES};
use crate::routing::Counter;
use rustix::net::{SendFlags, send};
use socket2::SockRef;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::time::Duration;
use tokio::io::Interest;
use tokio::sync::watch;

/// A way of moving one direction's bytes, one chunk per readiness.
pub trait Pump: Copy {
    /// What one direction remembers between chunks.
    type State;

    /// A direction's state before its first chunk.
    fn start(&self) -> Self::State;

    /// Moves what `from` holds now to `to`, once `from` was reported
    /// readable; every read and every partial write is progress on
    /// `shared`. `Ok(None)` is EOF, `Ok(Some(0))` nothing after all (a
    /// spurious wake, now cleared), `Ok(Some(n))` `n` bytes moved.
    fn chunk<S: Socket>(
        &self,
        state: &mut Self::State,
        from: &S,
        to: &S,
        shared: &Shared,
    ) -> impl Future<Output = Result<Option<usize>, Failure>>;
}

/// Which end of a chunk's way failed.
#[derive(Debug)]
pub enum Failure {
    /// Reading from the source socket.
    Read(io::Error),
    /// Writing to the destination socket.
    Write(io::Error),
}

/// Forwards `client` ↔ `upstream` with `pump` until both directions end,
/// the connection idles for `idle_timeout` on `timer`'s clock, or `drain`
/// turns true (then both are reset; see [`both_ways`]). A plain function
/// returning [`both_ways`]' future: an async one would keep a copy of the
/// arguments in every connection's task.
pub fn relay<T: Timer, S: Socket, P: Pump>(
    timer: &T,
    client: &S,
    upstream: &S,
    pump: P,
    meters: Meters<'_>,
    idle_timeout: Duration,
    drain: watch::Receiver<bool>,
) -> impl Future<Output = Outcome> {
    let direction = async move |from: &_, to: &_, shared: &Shared, way, meter: &Counter| {
        run(from, to, pump, shared, way, meter).await
    };
    both_ways(
        timer,
        client,
        upstream,
        meters,
        idle_timeout,
        drain,
        direction,
    )
}

/// Moves `from` → `to` until EOF (then half-closes `to`) or an error (then
/// resets both, which ends the other direction too), counting every chunk
/// in `meter`; returns the bytes moved.
async fn run<S: Socket, P: Pump>(
    from: &S,
    to: &S,
    pump: P,
    shared: &Shared,
    direction: Direction,
    meter: &Counter,
) -> u64 {
    let (from_side, to_side) = direction.sides();
    let mut state = pump.start();
    let mut bytes = 0u64;
    let failed = loop {
        if let Err(e) = from.ready(Interest::READABLE).await {
            shared.fail(from_side, e);
            break true;
        }
        match pump.chunk(&mut state, from, to, shared).await {
            // Spurious readiness: nothing was there after all.
            Ok(Some(0)) => continue,
            Ok(Some(n)) => {
                meter.add(n as u64);
                bytes += n as u64;
            }
            Ok(None) => {
                // EOF: the half-close; its error means the peer is gone already.
                if !shared.other_done() {
                    let _ = SockRef::from(to).shutdown(Shutdown::Write);
                }
                break false;
            }
            Err(Failure::Read(e)) => {
                shared.fail(from_side, e);
                break true;
            }
            Err(Failure::Write(e)) => {
                shared.fail(to_side, e);
                break true;
            }
        }
    };
    shared.end(direction, failed, from.as_fd(), to.as_fd());
    bytes
}

/// Runs `read` (one non-blocking read from `from`) if `from` is marked
/// readable. A read of 1 to `below - 1` bytes took all the socket had, so
/// the readiness is cleared right there (a `WouldBlock` from the closure
/// does, see [`Socket::try_io`]), as tokio's own `poll_read` does after a
/// short read, instead of paying for a read that can only say EAGAIN. Data
/// arriving later is a new edge; an EOF seen already stays set (the loop
/// keeps "closed" readiness). `Err(WouldBlock)`: nothing was read.
pub(super) fn read_draining<S: Socket>(
    from: &S,
    below: usize,
    read: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut drained = 0;
    let result = from.try_io(Interest::READABLE, || {
        let n = read()?;
        if n > 0 && n < below {
            drained = n;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && drained > 0 => Ok(drained),
        other => other,
    }
}

/// Runs `op` (one non-blocking I/O call on `socket`) once `socket` is ready
/// for `interest`, waiting again for as long as it would block.
pub(super) async fn when_ready<S: Socket, R>(
    socket: &S,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    loop {
        socket.ready(interest).await?;
        match socket.try_io(interest, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
    }
}

/// Writes what `to` takes of `bytes` now, without waiting (`WouldBlock`
/// when it takes nothing).
pub(super) fn try_send<S: Socket>(to: &S, bytes: &[u8]) -> io::Result<usize> {
    to.try_io(Interest::WRITABLE, || {
        Ok(send(to, bytes, SendFlags::NOSIGNAL)?)
    })
}

/// Writes all of `bytes` to `to`, waiting for room as needed; every
/// partial write is progress.
pub(super) async fn write_all<S: Socket>(to: &S, bytes: &[u8], shared: &Shared) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        let m = when_ready(to, Interest::WRITABLE, || {
            Ok(send(to, rest, SendFlags::NOSIGNAL)?)
        })
        .await?;
        sent += m;
        shared.progress();
    }
    Ok(())
}

/// What a worker owns to move bytes on readiness, and the pump its
/// `forward` mode asks for: the splice pump for `"auto"` (small chunks
/// copied first) and `"splice"`, the scratch-copy pump for `"copy"`.
#[derive(Debug)]
pub struct Pumps {
    scratch: Scratch,
    buffers: BufferPool,
    /// The worker's pipes, when it splices.
    pipes: Option<PipePool>,
    /// `forward = "auto"`: each direction copies until a read fills the
    /// scratch buffer, and splices from then on.
    small_first: bool,
}

impl Pumps {
    /// A worker's pumps for `forward`: pooled buffers of `buffer_size`
    /// bytes (at most `keep` idle) for chunks a peer cannot take at once;
    /// when splicing, pipes of `pipe_size` bytes (at most `keep` idle,
    /// `max_pipes` open) and a [`SCRATCH_BYTES`] scratch buffer; when
    /// copying, a scratch buffer of `buffer_size` bytes, so each read takes
    /// up to `buffer_size` as the buffers do and what is left of a chunk
    /// always fits a pooled buffer.
    pub fn new(
        forward: ForwardMode,
        buffer_size: usize,
        pipe_size: usize,
        max_pipes: usize,
        keep: usize,
    ) -> Pumps {
        let splices = forward.splices();
        let scratch = if splices { SCRATCH_BYTES } else { buffer_size };
        Pumps {
            scratch: Scratch::new(scratch),
            buffers: BufferPool::new(buffer_size, keep),
            pipes: splices.then(|| PipePool::new(pipe_size, keep, max_pipes)),
            small_first: forward == ForwardMode::Auto,
        }
    }

    /// What the ring's copy pump borrows from these: the pooled buffers,
    /// and for `forward = "auto"` the splice pump for bulk streams.
    pub fn spares(&self) -> Spares<'_> {
        let copy = CopyPump::new(&self.scratch, &self.buffers);
        Spares {
            buffers: &self.buffers,
            splice: self
                .pipes
                .as_ref()
                .filter(|_| self.small_first)
                .map(|pipes| SplicePump::new(pipes, copy, false)),
        }
    }

    /// Forwards `client` ↔ `upstream` with the pump `forward` asked for (see
    /// [`relay`]).
    pub async fn relay<T: Timer, S: Socket>(
        &self,
        timer: &T,
        client: &S,
        upstream: &S,
        meters: Meters<'_>,
        idle_timeout: Duration,
        drain: watch::Receiver<bool>,
    ) -> Outcome {
        let copy = CopyPump::new(&self.scratch, &self.buffers);
        match &self.pipes {
            Some(pipes) => {
                let pump = SplicePump::new(pipes, copy, self.small_first);
                relay(timer, client, upstream, pump, meters, idle_timeout, drain).await
            }
            None => relay(timer, client, upstream, copy, meters, idle_timeout, drain).await,
        }
    }
}
