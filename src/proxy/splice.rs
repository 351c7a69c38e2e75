//! Zero-copy forwarding: socket → pipe → socket with `splice(2)`, driven by
//! socket readiness on the worker's runtime (tokio-uring runs on a tokio
//! current-thread runtime, so epoll readiness is there too).
//!
//! Why not io_uring's own SPLICE op: the kernel runs it on io-wq worker
//! threads, one per blocked splice, which measured no faster than copying
//! and grew to about a thousand threads for 500 idle connections. A
//! non-blocking splice called when the socket is ready never blocks.
//!
//! Each direction owns a pipe from the worker's [`PipePool`]. A pipe is
//! filled only when it is empty and then drained fully, so an `EAGAIN` from
//! socket → pipe can only mean "no data" and one from pipe → socket only
//! "no room", which is what readiness is cleared for. An idle connection's
//! pipes hold no pages: they are filled only while bytes are in flight.

use super::forward::{Direction, Meters, Outcome, Pumped, Shared, drive};
use crate::metrics::Counter;
use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use socket2::SockRef;
use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// One pipe: its two ends and its capacity.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A non-blocking pipe resized to `capacity` bytes where the kernel allows.
    fn new(capacity: usize) -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // The kernel rounds up to pages and may refuse sizes above
        // /proc/sys/fs/pipe-max-size; the default (64 KiB) then stays.
        let capacity = fcntl_setpipe_size(&write, capacity).unwrap_or(65536);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// A worker's idle pipes, reused across connections. Owned by one thread.
#[derive(Debug)]
pub struct PipePool {
    capacity: usize,
    keep: usize,
    free: RefCell<Vec<Pipe>>,
}

impl PipePool {
    /// A pool of `capacity`-byte pipes keeping at most `keep` idle ones.
    pub fn new(capacity: usize, keep: usize) -> PipePool {
        PipePool {
            capacity,
            keep,
            free: RefCell::new(Vec::new()),
        }
    }

    /// Two pipes for one connection, or the error (usually EMFILE) that
    /// makes the caller fall back to copying.
    pub fn take_pair(&self) -> io::Result<(Pipe, Pipe)> {
        let first = self.take()?;
        match self.take() {
            Ok(second) => Ok((first, second)),
            Err(e) => {
                self.give_back(first);
                Err(e)
            }
        }
    }

    fn take(&self) -> io::Result<Pipe> {
        match self.free.borrow_mut().pop() {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(self.capacity),
        }
    }

    /// Returns a pipe known to be empty; beyond `keep` idle ones it is closed.
    fn give_back(&self, pipe: Pipe) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep {
            free.push(pipe);
        }
    }
}

/// Forwards between `client` and `upstream` through `pipes`, with the same
/// half-close, idle-timeout, drain and byte-counting behaviour as the copy
/// path. Clean pipes go back to `pool`; a pipe that may hold bytes (the
/// connection died mid-transfer) is closed.
pub async fn forward(
    client: &TcpStream,
    upstream: &TcpStream,
    pipes: (Pipe, Pipe),
    pool: &PipePool,
    meters: Meters<'_>,
    idle_timeout: Duration,
    drain: watch::Receiver<bool>,
) -> Outcome {
    let shared = Shared::new();
    let (up_pipe, down_pipe) = pipes;
    let both = async {
        tokio::join!(
            pump(
                client,
                upstream,
                &up_pipe,
                &shared,
                Direction::FromClient,
                meters.rx
            ),
            pump(
                upstream,
                client,
                &down_pipe,
                &shared,
                Direction::ToClient,
                meters.tx
            )
        )
    };
    let outcome = drive(&shared, both, idle_timeout, drain, || {
        close(client, upstream)
    })
    .await;
    if matches!(outcome.end, super::forward::End::Closed { .. }) {
        pool.give_back(up_pipe);
        pool.give_back(down_pipe);
    }
    outcome
}

/// Moves `from` → pipe → `to` until EOF (then half-closes `to`) or an
/// error (then shuts both down, which ends the other direction too).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    shared: &Shared,
    direction: Direction,
    meter: &Counter,
) -> Pumped {
    let mut bytes = 0u64;
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let error = 'moving: loop {
        let filled = from
            .async_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe.write, None, pipe.capacity, flags)?)
            })
            .await;
        let n = match filled {
            Ok(0) => {
                // The half-close; its error means the peer is gone already.
                if !shared.other_done() {
                    let _ = SockRef::from(to).shutdown(Shutdown::Write);
                }
                break None;
            }
            Ok(n) => n,
            Err(e) => break Some(e),
        };
        shared.last_active.set(Instant::now());
        meter.add(n as u64);
        let mut left = n;
        while left > 0 {
            let drained = to
                .async_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe.read, None, to, None, left, flags)?)
                })
                .await;
            match drained {
                Ok(m) => left -= m,
                Err(e) => break 'moving Some(e),
            }
        }
        bytes += n as u64;
        shared.last_active.set(Instant::now());
    };
    shared.done(direction);
    if error.is_some() {
        close(from, to);
    }
    Pumped { bytes, error }
}

/// Shuts both sockets down both ways, so pending waits on them return.
fn close(a: &TcpStream, b: &TcpStream) {
    // Errors mean a socket is already closed, which is the goal.
    let _ = SockRef::from(a).shutdown(Shutdown::Both);
    let _ = SockRef::from(b).shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_reuse_pipes_and_size_them() {
        let pool = PipePool::new(256 * 1024, 2);
        let (a, b) = pool.take_pair().unwrap();
        assert!(a.capacity >= 65536);
        pool.give_back(a);
        pool.give_back(b);
        assert_eq!(pool.free.borrow().len(), 2);
        let (c, _) = pool.take_pair().unwrap();
        pool.give_back(c);
        assert_eq!(pool.free.borrow().len(), 1);
    }
}
