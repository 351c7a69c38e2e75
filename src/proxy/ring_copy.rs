//! The ring's copy pump: each direction receives into a buffer the kernel
//! picks from the worker's provided-buffer ring when bytes arrive, and
//! sends it on through the ring, one send in flight per direction (two
//! could reorder bytes). A connection waiting for bytes holds no buffer; a
//! buffer goes back to the ring as soon as its send completes.
//!
//! Out of provided buffers (every one is in a send that a slow reader
//! holds up), a recv fails with `ENOBUFS`: that chunk is received into a
//! pooled buffer instead, so no direction stops for it.
//!
//! With `forward = "auto"` a recv that fills its buffer marks a bulk
//! stream: the direction then splices on readiness ([`SplicePump`], the
//! zero-copy path) until a splice moves less than a buffer, and goes back
//! to the ring's recvs.

use super::buffers::BufferPool;
use super::io::{Socket, Timer};
use super::pump::{Failure, Pump};
use super::relay::{Direction, Meters, Outcome, Shared, both_ways};
use super::ring::{self, op};
use super::ring_stream::RingStream;
use super::splice::SplicePump;
use crate::routing::Counter;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;
use tokio::io::Interest;
use tokio::sync::watch;

/// What a direction may use besides the ring's provided buffers.
#[derive(Debug, Clone, Copy)]
pub struct Spares<'a> {
    /// Pooled buffers, for a chunk received when every provided buffer is
    /// in use.
    pub buffers: &'a BufferPool,
    /// The splice pump for bulk streams (`forward = "auto"`), if any.
    pub splice: Option<SplicePump<'a>>,
}

/// Forwards `client` ↔ `upstream` through the ring until both directions
/// end, the connection idles for `idle_timeout` on `timer`'s clock, or
/// `drain` turns true (see [`both_ways`]; a plain function, as
/// [`super::pump::relay`]).
pub fn relay<T: Timer>(
    timer: &T,
    client: &RingStream,
    upstream: &RingStream,
    spares: Spares<'_>,
    meters: Meters<'_>,
    idle_timeout: Duration,
    drain: watch::Receiver<bool>,
) -> impl Future<Output = Outcome> {
    let direction = async move |from: &_, to: &_, shared: &Shared, way, meter: &Counter| {
        pump(from, to, spares, shared, way, meter).await
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

/// A provided buffer taken out of the ring: it goes back when dropped
/// (after the send that used it, or with an orphaned send's slot).
struct Lease(u16);

impl Drop for Lease {
    fn drop(&mut self) {
        ring::try_current(|runtime| runtime.driver.buffers.give_back(self.0));
    }
}

/// Moves `from` → `to` until EOF (then half-closes `to`) or an error (then
/// resets both sockets, which ends the other direction too), counting the
/// bytes of every recv in `meter`. Returns the bytes moved.
async fn pump(
    from: &RingStream,
    to: &RingStream,
    spares: Spares<'_>,
    shared: &Shared,
    direction: Direction,
    meter: &Counter,
) -> u64 {
    let (from_side, to_side) = direction.sides();
    let spare = spares.buffers;
    let size = ring::current().driver.buffers.size();
    let mut bytes = 0u64;
    let mut bulk = false;
    // The next recv, armed while the last chunk's send is in flight: the
    // send and the recv go to the kernel in one enter, and a reply that is
    // already there is not left waiting for another loop turn.
    let mut next: Option<op::RecvProvided> = None;
    let failed = loop {
        if bulk && let Some(splice) = &spares.splice {
            if let Err(e) = from.ready(Interest::READABLE).await {
                shared.fail(from_side, e);
                break true;
            }
            let mut splicing = true;
            // Boxed: a bulk chunk's future is large and rare next to the
            // recv/send states every idle connection sits in, so it does not
            // make every connection's task that large (RSS per idle
            // connection).
            match Box::pin(splice.chunk(&mut splicing, from, to, shared)).await {
                // Spurious readiness: nothing was there after all.
                Ok(Some(0)) => {}
                Ok(Some(n)) => {
                    meter.add(n as u64);
                    bytes += n as u64;
                    // Back to the ring's recvs once the chunks are small.
                    bulk = n >= size;
                }
                Ok(None) => {
                    half_close(to, shared).await;
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
            continue;
        }
        let got = match next.take() {
            Some(recv) => recv.await,
            None => op::recv_provided(from.raw(), size).await,
        };
        let sent = match got.into_result() {
            Ok(0) => {
                half_close(to, shared).await;
                break false;
            }
            Ok(n) => {
                let Some(id) = got.buffer() else {
                    shared.fail(
                        from_side,
                        io::Error::other("a recv filled no provided buffer"),
                    );
                    break true;
                };
                let lease = Lease(id);
                shared.progress();
                meter.add(u64::from(n));
                // A full buffer: more is likely waiting; splice it.
                bulk = n as usize == size;
                if !bulk || spares.splice.is_none() {
                    next = Some(op::recv_provided(from.raw(), size));
                }
                send_provided(to, lease, n as usize, shared).await
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Boxed, as the splice above: rare, and not to be carried
                // by every connection's task.
                match Box::pin(copy_spare(from, to, spare, shared, meter)).await {
                    Ok(None) => {
                        half_close(to, shared).await;
                        break false;
                    }
                    Ok(Some(n)) => Ok(n),
                    Err(Failure::Read(e)) => {
                        shared.fail(from_side, e);
                        break true;
                    }
                    Err(Failure::Write(e)) => Err(e),
                }
            }
            Err(e) => {
                shared.fail(from_side, e);
                break true;
            }
        };
        match sent {
            Ok(n) => bytes += n as u64,
            Err(e) => {
                shared.fail(to_side, e);
                break true;
            }
        }
    };
    shared.end(direction, failed, from.as_fd(), to.as_fd());
    bytes
}

/// One chunk received into a pooled buffer (every provided buffer is in
/// use) and sent on: `Ok(None)` is EOF.
async fn copy_spare(
    from: &RingStream,
    to: &RingStream,
    spare: &BufferPool,
    shared: &Shared,
    meter: &Counter,
) -> Result<Option<usize>, Failure> {
    match op::recv(from.raw(), spare.take()).await {
        (Ok(0), buffer) => {
            spare.give_back(buffer);
            Ok(None)
        }
        (Ok(n), buffer) => {
            shared.progress();
            meter.add(u64::from(n));
            let (sent, buffer) = send_owned(to, buffer, shared).await;
            spare.give_back(buffer);
            sent.map(|()| Some(n as usize)).map_err(Failure::Write)
        }
        (Err(e), buffer) => {
            spare.give_back(buffer);
            Err(Failure::Read(e))
        }
    }
}

/// Passes the EOF on as a half-close of `to`, unless the other direction
/// has ended already (then both sockets close right after, and the close
/// sends the FIN); its error means the peer is gone already.
async fn half_close(to: &RingStream, shared: &Shared) {
    if !shared.other_done() {
        let _ = op::shutdown(to.raw(), libc::SHUT_WR).await;
    }
}

/// Sends the first `n` bytes of the leased buffer, piece by piece: every
/// partial send is progress (a slow reader drains a chunk for longer than
/// idle_timeout). Returns `n`.
async fn send_provided(
    to: &RingStream,
    mut lease: Lease,
    n: usize,
    shared: &Shared,
) -> io::Result<usize> {
    let runtime = ring::current();
    let start = runtime.driver.buffers.get(lease.0, n).as_ptr();
    let mut sent = 0;
    while sent < n {
        // SAFETY: the bytes live in the worker's buffer ring, which
        // outlives every op, and stay out of the kernel's reach while the
        // op holds the lease.
        #[allow(unsafe_code)]
        let (result, back) = unsafe { op::send(to.raw(), start.add(sent), n - sent, lease) }.await;
        lease = back;
        sent += sent_bytes(result)?;
        shared.progress();
    }
    Ok(n)
}

/// Sends all of `buffer`, returning it.
async fn send_owned(
    to: &RingStream,
    mut buffer: Vec<u8>,
    shared: &Shared,
) -> (io::Result<()>, Vec<u8>) {
    let mut sent = 0;
    while sent < buffer.len() {
        let (ptr, len) = (buffer[sent..].as_ptr(), buffer.len() - sent);
        // SAFETY: the pointer is into the vector's heap memory, which the op
        // keeps and which does not move when the vector does.
        #[allow(unsafe_code)]
        let (result, back) = unsafe { op::send(to.raw(), ptr, len, buffer) }.await;
        buffer = back;
        match sent_bytes(result) {
            Ok(m) => {
                sent += m;
                shared.progress();
            }
            Err(e) => return (Err(e), buffer),
        }
    }
    (Ok(()), buffer)
}

/// A send's byte count; a send of nothing on a stream socket is an error.
fn sent_bytes(result: io::Result<u32>) -> io::Result<usize> {
    match result? {
        0 => Err(io::ErrorKind::WriteZero.into()),
        m => Ok(m as usize),
    }
}
