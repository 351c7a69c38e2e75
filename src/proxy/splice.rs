//! Zero-copy forwarding: socket → pipe → socket with `splice(2)`, called
//! when a socket is ready (on any loop that reports readiness).
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
//! copied instead ([`CopyPump`]), so no connection fails for it.
//!
//! With `forward = "auto"` each direction starts by copying through the
//! worker's scratch buffer (a recv and a send cost less than two splices
//! for small messages) and splices once a read fills it, until a splice
//! moves less than that again.

use super::copy::CopyPump;
use super::io::Socket;
use super::pipes::{Pipe, PipePool};
use super::pump::{Failure, Pump, read_draining, when_ready};
use super::relay::Shared;
use crate::log_limit::RESOURCE_ERRORS;
use rustix::pipe::{SpliceFlags, splice};
use std::io;
use tokio::io::Interest;

/// Splices each chunk through a pipe of the worker's [`PipePool`], copying
/// small ones first when asked to (`forward = "auto"`) and any chunk no
/// pipe can be had for.
#[derive(Debug, Clone, Copy)]
pub struct SplicePump<'a> {
    pipes: &'a PipePool,
    copy: CopyPump<'a>,
    small_first: bool,
}

impl<'a> SplicePump<'a> {
    /// Splices through `pipes`; copies with `copy` the chunks it cannot
    /// splice, and with `small_first` every chunk until a read fills
    /// `copy`'s scratch buffer (and again once a splice moves less).
    pub fn new(pipes: &'a PipePool, copy: CopyPump<'a>, small_first: bool) -> SplicePump<'a> {
        SplicePump {
            pipes,
            copy,
            small_first,
        }
    }
}

impl Pump for SplicePump<'_> {
    /// Whether this direction splices now (rather than copying small
    /// chunks first).
    type State = bool;

    fn start(&self) -> bool {
        !self.small_first
    }

    /// A pipe is taken from the pool only once `from` is readable and goes
    /// back, empty, as soon as the chunk is through: an idle connection
    /// holds no pipe (and no pipe descriptors). If no pipe can be had (out
    /// of descriptors), the chunk is copied through a pooled buffer instead.
    async fn chunk<S: Socket>(
        &self,
        splicing: &mut bool,
        from: &S,
        to: &S,
        shared: &Shared,
    ) -> Result<Option<usize>, Failure> {
        let bulk = self.copy.chunk_size();
        if !*splicing {
            let moved = self.copy.copy(from, to, shared).await;
            // A read that filled the scratch buffer: a bulk stream; splice.
            *splicing = matches!(moved, Ok(Some(n)) if n == bulk);
            return moved;
        }
        let pipe = match self.pipes.take() {
            Ok(pipe) => pipe,
            Err(e) => {
                if RESOURCE_ERRORS.allow().is_some() {
                    log::warn!("no pipe for splicing ({e}); copying through a buffer instead");
                }
                return self.copy.copy(from, to, shared).await;
            }
        };
        let spliced = splice_chunk(from, to, &pipe, shared).await;
        // A pipe is clean unless the chunk failed halfway.
        if spliced.is_ok() {
            self.pipes.give_back(pipe);
        } else {
            self.pipes.forget(pipe);
        }
        match spliced? {
            Spliced::Chunk(moved) => {
                // Back to copying once the chunks are small.
                *splicing = moved >= bulk || !self.small_first;
                Ok(Some(moved))
            }
            Spliced::Unspliced => self.copy.copy(from, to, shared).await,
        }
    }
}

/// Every splice: pages moved, not copied, where the kernel can; never
/// blocking (readiness says when to call).
const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

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
async fn splice_chunk<S: Socket>(
    from: &S,
    to: &S,
    pipe: &Pipe,
    shared: &Shared,
) -> Result<Spliced, Failure> {
    let mut unspliced = false;
    // Every pipe slot holds at least a byte, so a fill of fewer bytes than
    // the pipe has slots did not stop on a full pipe: it took all the
    // socket had.
    let filled = read_draining(from, pipe.slots, || {
        match splice(from, None, &pipe.write, None, pipe.capacity, FLAGS) {
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
    // Drained at once if `to` takes it all; else the rest waits for room
    // in a boxed future: the wait would otherwise make every connection's
    // task larger (RSS per idle connection), and costs more than the box.
    let left = match to.try_io(Interest::WRITABLE, || pour(pipe, to, n)) {
        Ok(m) => {
            shared.progress();
            n - m
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => n,
        Err(e) => return Err(Failure::Write(e)),
    };
    if left > 0 {
        Box::pin(drain(to, pipe, left, shared)).await?;
    }
    Ok(Spliced::Chunk(n))
}

/// One non-blocking splice of up to `len` bytes from `pipe` into `to`.
fn pour<S: Socket>(pipe: &Pipe, to: &S, len: usize) -> io::Result<usize> {
    Ok(splice(&pipe.read, None, to, None, len, FLAGS)?)
}

/// Splices the `left` bytes still in `pipe` into `to`, waiting for room.
async fn drain<S: Socket>(
    to: &S,
    pipe: &Pipe,
    mut left: usize,
    shared: &Shared,
) -> Result<(), Failure> {
    while left > 0 {
        left -= when_ready(to, Interest::WRITABLE, || pour(pipe, to, left))
            .await
            .map_err(Failure::Write)?;
        // Every partial splice is progress: a slow reader drains a full
        // pipe for longer than idle_timeout.
        shared.progress();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::epoll::Epoll;
    use super::super::io::EventLoop;
    use super::super::pump::Pumps;
    use super::super::relay::Meters;
    use crate::config::ForwardMode;
    use crate::routing::Counter;
    use std::net::Shutdown;
    use std::time::Duration;
    use tokio::net::TcpStream;
    use tokio::sync::watch;

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
            // No pipe may be open: every chunk is copied.
            let epoll = Epoll::new(Pumps::new(ForwardMode::Splice, 16384, 65536, 0, 1));
            let (rx, tx) = (Counter::default(), Counter::default());
            let (_drain_tx, drain) = watch::channel(false);
            let meters = Meters { rx: &rx, tx: &tx };
            let idle = Duration::from_secs(10);
            let outcome = epoll.relay(downstream, upstream, meters, idle, drain).await;
            assert_eq!((outcome.rx, outcome.tx), (300_000, 300_000));
            assert_eq!((rx.get(), tx.get()), (300_000, 300_000));
            client.join().unwrap();
        });
    }
}
