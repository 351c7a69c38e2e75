//! Zero-copy forwarding: socket → pipe → socket with `splice(2)`, driven by
//! socket readiness on the worker's tokio current-thread runtime (epoll).
//!
//! Why not io_uring's own SPLICE op: the kernel runs it on io-wq worker
//! threads, one per blocked splice, which measured no faster than copying
//! and grew to about a thousand threads for 500 idle connections. A
//! non-blocking splice called when the socket is ready never blocks.
//!
//! A direction takes a pipe from the worker's [`PipePool`] only when its
//! socket is readable, fills it (only ever when empty) and drains it fully
//! before giving it back, so an `EAGAIN` from socket → pipe can only mean
//! "no data" and one from pipe → socket only "no room", which is what
//! readiness is cleared for. An idle connection holds no pipe: two
//! descriptors, no pipe pages. Out of descriptors for a pipe, a chunk is
//! copied instead, so no connection fails for it.
//!
//! With `forward = "auto"` each direction starts by copying through the
//! worker's 16 KiB scratch buffer (a recv and a send cost less than two
//! splices for small messages) and splices once a read fills it, until a
//! splice moves less than that again.

use super::buffers::BufferPool;
use super::forward::{Direction, Meters, Outcome, Shared, drive};
use super::tcp_state::Pair;
use crate::log_limit::RESOURCE_ERRORS;
use crate::routing::Counter;
use rustix::net::{RecvFlags, recv};
use rustix::param::page_size;
use rustix::pipe::{
    PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice,
};
use socket2::SockRef;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// One pipe: its two ends, its capacity and its slot count.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// How many buffers (one page each at most) the pipe holds: a fill of
    /// fewer bytes than this cannot have stopped on a full pipe.
    slots: usize,
}

impl Pipe {
    /// A non-blocking pipe resized to `capacity` bytes where the kernel allows.
    fn new(capacity: usize) -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // The kernel rounds up to pages and refuses sizes above
        // /proc/sys/fs/pipe-max-size (or an unprivileged user's page quota);
        // then the pipe keeps what it was made with, which past that quota
        // is as little as one or two pages: ask. A pipe whose size cannot be
        // read counts as one page, so no fill is ever taken for short.
        let capacity = fcntl_setpipe_size(&write, capacity)
            .or_else(|_| fcntl_getpipe_size(&write))
            .unwrap_or_else(|_| page_size());
        Ok(Pipe {
            read,
            write,
            capacity,
            slots: capacity / page_size(),
        })
    }
}

/// A worker's pipes: idle ones reused across connections, and a budget of
/// how many may be open at once (two descriptors each). Owned by one thread.
#[derive(Debug)]
pub struct PipePool {
    capacity: usize,
    keep: usize,
    limit: usize,
    open: Cell<usize>,
    free: RefCell<Vec<Pipe>>,
    /// `forward = "auto"`: each direction copies through `scratch` until a
    /// read fills it, and splices from then on (see [`copy_small`]).
    small_first: bool,
    /// The worker's one buffer for small chunks; held only within a poll,
    /// never across an await, so one serves every connection.
    scratch: RefCell<Vec<u8>>,
}

impl PipePool {
    /// A pool of `capacity`-byte pipes keeping at most `keep` idle ones and
    /// at most `limit` open in all; with `small_first`, small chunks are
    /// copied rather than spliced (`forward = "auto"`).
    pub fn new(capacity: usize, keep: usize, limit: usize, small_first: bool) -> PipePool {
        PipePool {
            capacity,
            keep,
            limit,
            open: Cell::new(0),
            free: RefCell::new(Vec::new()),
            small_first,
            scratch: RefCell::new(vec![0; SMALL]),
        }
    }

    /// An empty pipe, or the error (the budget is spent, or EMFILE) that
    /// makes the caller copy instead.
    fn take(&self) -> io::Result<Pipe> {
        if let Some(pipe) = self.free.borrow_mut().pop() {
            return Ok(pipe);
        }
        if self.open.get() >= self.limit {
            let why = format!("all {} pipes of this worker are in use", self.limit);
            return Err(io::Error::other(why));
        }
        let pipe = Pipe::new(self.capacity)?;
        self.open.set(self.open.get() + 1);
        Ok(pipe)
    }

    /// Returns a pipe known to be empty; beyond `keep` idle ones it is closed.
    fn give_back(&self, pipe: Pipe) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep {
            free.push(pipe);
        } else {
            self.forget(pipe);
        }
    }

    /// Closes a pipe (one that may hold bytes, or one too many).
    fn forget(&self, pipe: Pipe) {
        drop(pipe);
        self.open.set(self.open.get().saturating_sub(1));
    }
}

/// Forwards between `client` and `upstream` with the same half-close,
/// idle-timeout, drain and byte-counting behaviour as the copy path.
pub async fn forward(
    client: &TcpStream,
    upstream: &TcpStream,
    pool: &PipePool,
    buffers: &BufferPool,
    meters: Meters<'_>,
    idle_timeout: Duration,
    drain: watch::Receiver<bool>,
) -> Outcome {
    let shared = Shared::new();
    let spares = Spares { pool, buffers };
    let both = async {
        tokio::join!(
            pump(
                client,
                upstream,
                spares,
                &shared,
                Direction::FromClient,
                meters.rx
            ),
            pump(
                upstream,
                client,
                spares,
                &shared,
                Direction::ToClient,
                meters.tx
            )
        )
    };
    let sockets = Pair(client.as_fd(), upstream.as_fd());
    drive(&shared, both, idle_timeout, drain, sockets).await
}

/// Where a direction gets a pipe, or a buffer when no pipe can be had.
#[derive(Clone, Copy)]
struct Spares<'a> {
    pool: &'a PipePool,
    buffers: &'a BufferPool,
}

/// Moves `from` → `to` until EOF (then half-closes `to`) or an error (then
/// resets both, which ends the other direction too); returns the bytes moved.
///
/// A pipe is taken from the pool only once `from` is readable and goes back,
/// empty, as soon as the chunk is through: an idle connection holds no pipe
/// (and no pipe descriptors). If no pipe can be had (out of descriptors),
/// the chunk is copied through a pooled buffer instead.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    spares: Spares<'_>,
    shared: &Shared,
    direction: Direction,
    meter: &Counter,
) -> u64 {
    let (from_side, to_side) = direction.sides();
    let mut bytes = 0u64;
    let mut splicing = !spares.pool.small_first;
    let failed = loop {
        if let Err(e) = from.readable().await {
            shared.fail(from_side, e);
            break true;
        }
        let moved = if !splicing {
            let moved = copy_small(from, to, spares, shared).await;
            // A read that filled the scratch buffer: a bulk stream; splice.
            splicing = matches!(moved, Ok(Some(SMALL)));
            moved
        } else {
            match spares.pool.take() {
                Ok(pipe) => {
                    let spliced = splice_chunk(from, to, &pipe, shared).await;
                    // A pipe is clean unless the chunk failed halfway.
                    if spliced.is_ok() {
                        spares.pool.give_back(pipe);
                    } else {
                        spares.pool.forget(pipe);
                    }
                    match spliced {
                        Ok(Spliced::Chunk(moved)) => {
                            // Back to copying once the chunks are small.
                            splicing = moved >= SMALL || !spares.pool.small_first;
                            Ok(Some(moved))
                        }
                        Ok(Spliced::Unspliced) => copy_small(from, to, spares, shared).await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => {
                    if RESOURCE_ERRORS.allow().is_some() {
                        log::warn!("no pipe for splicing ({e}); copying through a buffer instead");
                    }
                    copy_small(from, to, spares, shared).await
                }
            }
        };
        match moved {
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
    shared.done(direction);
    if failed {
        // Both peers see a reset, and the other direction's pending wait
        // returns.
        Pair(from.as_fd(), to.as_fd()).reset();
    }
    bytes
}

/// Which end of a chunk's way failed.
enum Failure {
    /// Reading from the source socket.
    Read(io::Error),
    /// Writing to the destination socket.
    Write(io::Error),
}

/// What one splice chunk did.
enum Spliced {
    /// Bytes moved (0: spurious readiness, now cleared).
    Chunk(usize),
    /// The splice moved nothing (EAGAIN or 0): a copy decides between
    /// nothing, EOF and bytes waiting behind TCP urgent data. The socket is
    /// still marked readable, so the copy's recv does run.
    Unspliced,
}

/// One chunk through an empty pipe: fills it from `from` (without waiting)
/// and drains it fully into `to`; a splice that moves nothing hands over to
/// a copy (see [`Spliced::Unspliced`]).
async fn splice_chunk(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    shared: &Shared,
) -> Result<Spliced, Failure> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut unspliced = false;
    // Every pipe slot holds at least a byte, so a fill of fewer bytes than
    // the pipe has slots did not stop on a full pipe: it took all the
    // socket had.
    let filled = read_draining(from, pipe.slots, || {
        match splice(from, None, &pipe.write, None, pipe.capacity, flags) {
            // splice(2) stops at TCP urgent data's mark and never passes it:
            // it answers EAGAIN, or 0 once the FIN is in, while bytes wait
            // behind the mark (and FIONREAD counts only those before it).
            // So "nothing" and "EOF" are left to a recv, with readiness
            // kept: recv skips the urgent byte, as the copy path, HAProxy
            // and nginx do, and carries the rest. One recv per direction at
            // EOF, and one per (now rare) EAGAIN.
            Ok(0) | Err(rustix::io::Errno::AGAIN) => {
                unspliced = true;
                Ok(0)
            }
            n => Ok(n?),
        }
    });
    let n = match filled {
        Ok(_) if unspliced => return Ok(Spliced::Unspliced),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Spliced::Chunk(0)),
        Err(e) => return Err(Failure::Read(e)),
    };
    shared.progress();
    let mut left = n;
    while left > 0 {
        left -= to
            .async_io(Interest::WRITABLE, || {
                Ok(splice(&pipe.read, None, to, None, left, flags)?)
            })
            .await
            .map_err(Failure::Write)?;
        // Every partial splice is progress: a slow reader drains a full
        // pipe for longer than idle_timeout.
        shared.progress();
    }
    Ok(Spliced::Chunk(n))
}

/// The scratch buffer's size: a read that fills it marks a bulk stream.
const SMALL: usize = crate::config::SCRATCH_BYTES;

/// One chunk copied through the worker's scratch buffer: for small chunks
/// (requests, responses, ping-pongs) a recv and a send cost less than two
/// splices, and nothing is held per connection. A read shorter than the
/// buffer took all the socket had, so it clears readiness at once (as
/// tokio's `poll_read` does). Bytes the peer cannot take yet move to a
/// pooled buffer, which waits for room. Also the path when no pipe can be
/// had, and after a splice that moved nothing (recv passes TCP urgent data,
/// where splice stops). `Ok(None)` is EOF, `Ok(Some(0))` nothing after all.
async fn copy_small(
    from: &TcpStream,
    to: &TcpStream,
    spares: Spares<'_>,
    shared: &Shared,
) -> Result<Option<usize>, Failure> {
    let (n, rest) = {
        let mut scratch = spares.pool.scratch.borrow_mut();
        let read = read_draining(from, SMALL, || {
            Ok(recv(from, &mut scratch[..], RecvFlags::empty())?.0)
        });
        let n = match read {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(0)),
            Err(e) => return Err(Failure::Read(e)),
        };
        shared.progress();
        let mut sent = 0;
        while sent < n {
            match to.try_write(&scratch[sent..n]) {
                Ok(m) => sent += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Failure::Write(e)),
            }
        }
        // The scratch buffer is the worker's: what is left moves out of it
        // before this task waits.
        let rest = (sent < n).then(|| {
            let mut buffer = spares.buffers.take();
            buffer.clear();
            buffer.extend_from_slice(&scratch[sent..n]);
            buffer
        });
        (n, rest)
    };
    if let Some(buffer) = rest {
        let written = write_all(to, &buffer, shared).await;
        spares.buffers.give_back(buffer);
        written.map_err(Failure::Write)?;
    }
    Ok(Some(n))
}

/// Runs `read` (one non-blocking read from `from`) if `from` is marked
/// readable. A read of 1 to `below - 1` bytes took all the socket had, so
/// the readiness is cleared right there (a `WouldBlock` from the closure
/// does), as tokio's own `poll_read` does after a short read, instead of
/// paying for a read that can only say EAGAIN. Data arriving later is a new
/// edge; an EOF seen already stays set (tokio keeps "closed" readiness).
/// `Err(WouldBlock)`: nothing was read.
fn read_draining(
    from: &TcpStream,
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

/// Writes all of `bytes` to `to`, waiting for room as needed; every
/// partial write is progress.
async fn write_all(to: &TcpStream, bytes: &[u8], shared: &Shared) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        to.writable().await?;
        match to.try_write(&bytes[sent..]) {
            Ok(m) => {
                sent += m;
                shared.progress();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_reuse_pipes_and_size_them() {
        // 256 KiB is under the default pipe-max-size (1 MiB) and four times
        // the kernel's default pipe size, so only a resize gives it.
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(max >= 256 * 1024, "pipe-max-size {max} is below 256 KiB");
        let pool = PipePool::new(256 * 1024, 2, 8, true);
        let (a, b) = (pool.take().unwrap(), pool.take().unwrap());
        assert_eq!(fcntl_getpipe_size(&a.write).unwrap(), 256 * 1024);
        assert_eq!(
            (a.capacity, a.slots),
            (256 * 1024, 256 * 1024 / page_size())
        );
        pool.give_back(a);
        pool.give_back(b);
        assert_eq!(pool.free.borrow().len(), 2);
        let c = pool.take().unwrap();
        pool.give_back(c);
        pool.give_back(pool.take().unwrap());
        pool.give_back(Pipe::new(65536).unwrap());
        assert_eq!(pool.free.borrow().len(), 2);
    }

    #[test]
    fn it_should_record_the_size_the_kernel_gave_when_it_refuses_the_one_asked_for() {
        // Past pipe-max-size an unprivileged process is refused (and keeps
        // what the pipe had); root may go past it. Either way the pipe's
        // recorded capacity is the one the kernel reports.
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pipe = Pipe::new(max * 2).unwrap();
        assert_eq!(pipe.capacity, fcntl_getpipe_size(&pipe.write).unwrap());
        assert_eq!(pipe.slots, pipe.capacity / page_size());
    }

    #[test]
    fn it_should_refuse_pipes_beyond_its_budget() {
        let pool = PipePool::new(65536, 0, 1, true);
        let one = pool.take().unwrap();
        assert!(pool.take().unwrap_err().to_string().contains("all 1 pipes"));
        pool.give_back(one);
        assert!(pool.take().is_ok());
    }

    /// With no pipe to be had, every chunk is copied instead, exactly.
    #[test]
    fn it_should_copy_when_no_pipe_can_be_had() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let echo_addr = echo.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut s, _) = echo.accept().unwrap();
                let mut r = s.try_clone().unwrap();
                std::io::copy(&mut r, &mut s).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
            });
            let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let front_addr = front.local_addr().unwrap();
            let client = std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut c = std::net::TcpStream::connect(front_addr).unwrap();
                let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
                c.write_all(&sent).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                let mut back = Vec::new();
                c.read_to_end(&mut back).unwrap();
                assert!(back == sent);
            });
            let (downstream, _) = front.accept().await.unwrap();
            let upstream = TcpStream::connect(echo_addr).await.unwrap();
            let (pool, buffers) = (PipePool::new(65536, 0, 0, true), BufferPool::new(4096, 1));
            let (rx, tx) = (Counter::default(), Counter::default());
            let (_drain_tx, drain) = watch::channel(false);
            let meters = Meters { rx: &rx, tx: &tx };
            let idle = Duration::from_secs(10);
            let outcome =
                forward(&downstream, &upstream, &pool, &buffers, meters, idle, drain).await;
            drop((downstream, upstream));
            assert_eq!((outcome.rx, outcome.tx), (300_000, 300_000));
            assert_eq!((rx.get(), tx.get()), (300_000, 300_000));
            client.join().unwrap();
        });
    }
}
