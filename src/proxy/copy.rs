//! Copying on readiness through the worker's one scratch buffer: a recv
//! into it and a send out of it, within one poll. No buffer is held per
//! connection, idle or not: a chunk the peer cannot take at once moves to a
//! pooled buffer, which waits for room and goes back to the pool once
//! sent. `forward = "copy"` moves every chunk this way; the splice pump
//! moves small chunks this way (a recv and a send cost less than two
//! splices for requests, responses and ping-pongs), and any chunk it cannot
//! splice.

use super::buffers::BufferPool;
use super::io::Socket;
use super::pump::{Failure, Pump, read_draining, try_send, write_all};
use super::relay::Shared;
use rustix::net::{RecvFlags, recv};
use std::cell::RefCell;
use std::fmt;
use std::io;

/// The worker's one buffer for chunks copied on readiness. It is borrowed
/// only within a poll, never across an await, so one serves every
/// connection of the worker.
pub struct Scratch(RefCell<Vec<u8>>);

impl Scratch {
    /// A scratch buffer of `size` bytes.
    pub fn new(size: usize) -> Scratch {
        Scratch(RefCell::new(vec![0; size]))
    }

    /// Its size: a read that fills it marks a bulk stream.
    pub fn size(&self) -> usize {
        self.0.borrow().len()
    }
}

impl fmt::Debug for Scratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scratch({} bytes)", self.size())
    }
}

/// Moves each chunk through the worker's [`Scratch`] buffer, and what the
/// peer cannot take at once through a buffer of `buffers`.
#[derive(Debug, Clone, Copy)]
pub struct CopyPump<'a> {
    scratch: &'a Scratch,
    buffers: &'a BufferPool,
}

impl<'a> CopyPump<'a> {
    /// Copies through `scratch`, keeping leftovers in `buffers`' buffers
    /// (which should be at least as large as `scratch`, or every leftover
    /// reallocates).
    pub fn new(scratch: &'a Scratch, buffers: &'a BufferPool) -> CopyPump<'a> {
        CopyPump { scratch, buffers }
    }

    /// The scratch buffer's size: a chunk this large is a bulk stream.
    pub(super) fn chunk_size(&self) -> usize {
        self.scratch.size()
    }

    /// One chunk through the scratch buffer. A read shorter than the buffer
    /// took all the socket had, so it clears readiness at once (see
    /// [`read_draining`]). Bytes the peer cannot take yet move to a pooled
    /// buffer, which waits for room. `Ok(None)` is EOF, `Ok(Some(0))`
    /// nothing after all.
    pub(super) async fn copy<S: Socket>(
        &self,
        from: &S,
        to: &S,
        shared: &Shared,
    ) -> Result<Option<usize>, Failure> {
        let (n, rest) = {
            let mut scratch = self.scratch.0.borrow_mut();
            let below = scratch.len();
            let read = read_draining(from, below, || {
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
                match try_send(to, &scratch[sent..n]) {
                    Ok(m) => sent += m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(Failure::Write(e)),
                }
            }
            // The scratch buffer is the worker's: what is left moves out of
            // it before this task waits.
            let rest = (sent < n).then(|| {
                let mut buffer = self.buffers.take();
                buffer.clear();
                buffer.extend_from_slice(&scratch[sent..n]);
                buffer
            });
            (n, rest)
        };
        if let Some(buffer) = rest {
            // Boxed: only a peer slower than its sender gets here, and the
            // wait would otherwise make every connection's task larger
            // (RSS per idle connection).
            let written = Box::pin(write_all(to, &buffer, shared)).await;
            self.buffers.give_back(buffer);
            written.map_err(Failure::Write)?;
        }
        Ok(Some(n))
    }
}

impl Pump for CopyPump<'_> {
    type State = ();

    fn start(&self) -> Self::State {}

    async fn chunk<S: Socket>(
        &self,
        _state: &mut (),
        from: &S,
        to: &S,
        shared: &Shared,
    ) -> Result<Option<usize>, Failure> {
        self.copy(from, to, shared).await
    }
}
