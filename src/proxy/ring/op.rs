//! Ops as futures: each submits its entries to the current loop's ring
//! and completes with the kernel's answer. What an entry points at (a
//! socket address, a timespec, a buffer) is owned by the op's future and,
//! should the future be dropped first, by the driver until the kernel is
//! done with it (see [`super::driver`]).

#![allow(unsafe_code)]

use super::buffers::GROUP;
use super::current;
use super::driver::IGNORED;
use io_uring::{opcode, squeue, types};
use socket2::{SockAddr, SockAddrStorage};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A single-shot op in flight, keeping `T` (what its entries point at)
/// alive until it completes.
pub struct Op<T: 'static> {
    id: u64,
    keep: Option<T>,
    /// Its result is a descriptor (an accept's): closed if nobody takes it.
    fds: bool,
}

/// A completed op: the kernel's result (negative: an errno) and flags.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The result: a count, a descriptor, or `-errno`.
    pub result: i32,
    /// The completion's flags (which provided buffer, more to come).
    pub flags: u32,
}

impl Completion {
    /// The result as an `io::Result`.
    pub fn into_result(self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }

    /// The provided buffer the completion filled, if any.
    pub fn buffer(self) -> Option<u16> {
        io_uring::cqueue::buffer_select(self.flags)
    }
}

impl<T: 'static> Op<T> {
    /// Submits `entries` keeping `keep` alive; the completion of entry
    /// `own` is the op's, those of the others (linked to it) are ignored.
    ///
    /// # Safety
    /// The entries may point only at memory owned by `keep` (heap memory
    /// that does not move when `keep` does) or at nothing.
    unsafe fn submit(entries: &mut [squeue::Entry], own: usize, keep: T) -> Op<T> {
        let runtime = current();
        let id = runtime.driver.register();
        for (i, entry) in entries.iter_mut().enumerate() {
            let user_data = if i == own { id } else { IGNORED };
            *entry = entry.clone().user_data(user_data);
        }
        // SAFETY: forwarded from the caller; `keep` lives in the op and
        // then in the driver's orphan slot until the completion.
        unsafe { runtime.driver.push(entries) };
        Op {
            id,
            keep: Some(keep),
            fds: false,
        }
    }

    /// Submits the one entry `entry`, keeping `keep` alive. A plain
    /// function, so that an `async fn` awaiting the op keeps none of the
    /// entry (64 bytes) in its future, as `submit(&mut [entry], ..).await`
    /// would: the array is a temporary that lives across the await.
    ///
    /// # Safety
    /// As for [`Op::submit`].
    unsafe fn one(entry: squeue::Entry, keep: T) -> Op<T> {
        // SAFETY: forwarded from the caller.
        unsafe { Op::submit(&mut [entry], 0, keep) }
    }

    /// Asks the kernel to end the op early; it still completes (with
    /// `ECANCELED`, or with what it did before the cancel arrived).
    pub fn cancel(&self) {
        if self.keep.is_some() {
            current().driver.cancel(self.id);
        }
    }
}

impl<T: Unpin + 'static> Future for Op<T> {
    type Output = (Completion, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((result, flags)) = current().driver.poll_op(self.id, cx.waker()) else {
            return Poll::Pending;
        };
        let keep = self.keep.take().expect("an op completes once");
        Poll::Ready((Completion { result, flags }, keep))
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        if let Some(keep) = self.keep.take() {
            let fds = self.fds;
            super::try_current(|runtime| runtime.driver.abandon(self.id, Box::new(keep), fds));
        }
    }
}

/// Where an accept writes the client's address.
struct PeerBuf {
    addr: SockAddrStorage,
    len: libc::socklen_t,
}

/// Accepts one client on listening socket `fd`: its socket (non-blocking,
/// close-on-exec) and its address, which the accept itself returns (no
/// `getpeername` afterwards, which would fail on a client that reset
/// before it was looked at). Dropped or cancelled late, a client it
/// accepted anyway is closed.
pub fn accept(fd: RawFd) -> Accept {
    let addr = SockAddrStorage::zeroed();
    let len = addr.size_of();
    let mut peer = Box::new(PeerBuf { addr, len });
    let entry = opcode::Accept::new(
        types::Fd(fd),
        (&raw mut peer.addr).cast(),
        &raw mut peer.len,
    )
    .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
    .build();
    // SAFETY: the entry points into the boxed buffer the op keeps.
    let mut op = unsafe { Op::submit(&mut [entry], 0, peer) };
    op.fds = true;
    Accept(op)
}

/// One accept in flight (see [`accept`]).
pub struct Accept(Op<Box<PeerBuf>>);

impl Accept {
    /// Asks the kernel to stop waiting for a client; the accept still
    /// completes, with a client if one came first.
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

impl Future for Accept {
    type Output = io::Result<(OwnedFd, SocketAddr)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (done, peer) = std::task::ready!(Pin::new(&mut self.0).poll(cx));
        let fd = done.into_result()? as RawFd;
        // SAFETY: a successful accept's result is a new descriptor that
        // nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the kernel wrote an address of `len` bytes (at most the
        // storage's size) into the storage.
        let PeerBuf { addr, len } = *peer;
        let addr = unsafe { SockAddr::new(addr, len) };
        match addr.as_socket() {
            Some(addr) => Poll::Ready(Ok((fd, addr))),
            None => Poll::Ready(Err(io::Error::other("the client has no IP address"))),
        }
    }
}

/// What a connect keeps alive: the address, the linked timeout's span and
/// the `TCP_NODELAY` value.
struct ConnectArgs {
    addr: SockAddr,
    timeout: types::Timespec,
    one: libc::c_int,
}

/// Connects socket `fd` to `addr`, failing with `ECANCELED` after
/// `timeout` (a `LINK_TIMEOUT` linked to the `CONNECT`: the kernel aborts
/// the handshake, no timer of ours runs). With `nodelay`, a `SETSOCKOPT`
/// of `TCP_NODELAY` is linked before the connect (the caller checked that
/// the kernel has it): one ring op instead of a system call.
pub async fn connect(
    fd: RawFd,
    addr: &SockAddr,
    timeout: Duration,
    nodelay: bool,
) -> io::Result<()> {
    let (done, _) = submit_connect(fd, addr, timeout, nodelay).await;
    done.into_result().map(|_| ())
}

/// The chain of [`connect`], submitted (a plain function, so that the
/// entries are not kept in the future that awaits it).
fn submit_connect(
    fd: RawFd,
    addr: &SockAddr,
    timeout: Duration,
    nodelay: bool,
) -> Op<Box<ConnectArgs>> {
    let args = Box::new(ConnectArgs {
        addr: addr.clone(),
        timeout: types::Timespec::from(timeout),
        one: 1,
    });
    let connect = opcode::Connect::new(types::Fd(fd), args.addr.as_ptr().cast(), args.addr.len())
        .build()
        .flags(squeue::Flags::IO_LINK);
    let expire = opcode::LinkTimeout::new(&args.timeout).build();
    // The connect's completion is the op's; the others' are ignored. All
    // point into the boxed args, which the op keeps.
    if nodelay {
        let set = opcode::SetSockOpt::new(
            types::Fd(fd),
            libc::IPPROTO_TCP as u32,
            libc::TCP_NODELAY as u32,
            (&args.one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
        .build()
        .flags(squeue::Flags::IO_LINK);
        // SAFETY: the entries point into `args`, a box the op keeps.
        unsafe { Op::submit(&mut [set, connect, expire], 1, args) }
    } else {
        // SAFETY: as above.
        unsafe { Op::submit(&mut [connect, expire], 0, args) }
    }
}

/// Waits until `fd` is ready for `events` (`POLLIN`, `POLLOUT`); returns
/// the events that are.
pub async fn poll(fd: RawFd, events: u32) -> io::Result<u32> {
    let entry = opcode::PollAdd::new(types::Fd(fd), events).build();
    // SAFETY: a poll points at nothing.
    let (done, ()) = unsafe { Op::one(entry, ()) }.await;
    done.into_result()
}

/// Receives from `fd` into a provided buffer the kernel picks when bytes
/// arrive; the completion names the buffer (see [`Completion::buffer`]).
/// Submitted at once, not when first polled: a relay arms the next recv
/// while the send of the last chunk is still in flight.
pub fn recv_provided(fd: RawFd, max: usize) -> RecvProvided {
    let entry = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), max as u32)
        .buf_group(GROUP)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT);
    // SAFETY: the kernel writes into a buffer of the worker's buffer ring,
    // which outlives every op; the op points at nothing else.
    RecvProvided(unsafe { Op::submit(&mut [entry], 0, ()) })
}

/// A recv into a provided buffer, in flight (see [`recv_provided`]).
pub struct RecvProvided(Op<()>);

impl Future for RecvProvided {
    type Output = Completion;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        Pin::new(&mut self.0).poll(cx).map(|(done, ())| done)
    }
}

/// Sends `len` bytes at `ptr` on `fd`, keeping `owner` (what owns those
/// bytes) alive until the kernel is done; returns the bytes sent and
/// `owner`.
///
/// # Safety
/// `ptr..ptr + len` must be owned by `owner` and stay where it is while
/// `owner` lives (heap memory, or a provided buffer `owner` leases).
pub async unsafe fn send<T: Unpin + 'static>(
    fd: RawFd,
    ptr: *const u8,
    len: usize,
    owner: T,
) -> (io::Result<u32>, T) {
    let entry = opcode::Send::new(types::Fd(fd), ptr, len as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build();
    // SAFETY: forwarded from the caller.
    let (done, owner) = unsafe { Op::one(entry, owner) }.await;
    (done.into_result(), owner)
}

/// Receives from `fd` into `buffer` (up to its capacity, replacing what it
/// held); returns the completion and the buffer, its length set to what
/// arrived.
pub async fn recv(fd: RawFd, mut buffer: Vec<u8>) -> (io::Result<u32>, Vec<u8>) {
    buffer.clear();
    let entry =
        opcode::Recv::new(types::Fd(fd), buffer.as_mut_ptr(), buffer.capacity() as u32).build();
    // SAFETY: the entry points into the vector's heap memory, which the op
    // keeps and which does not move when the vector does.
    let (done, mut buffer) = unsafe { Op::one(entry, buffer) }.await;
    let result = done.into_result();
    if let Ok(n) = result {
        // SAFETY: the kernel initialised the first `n` bytes, and n <= capacity.
        unsafe { buffer.set_len(n as usize) };
    }
    (result, buffer)
}

/// Shuts down `fd` for `how` (`SHUT_WR` for a half-close).
pub async fn shutdown(fd: RawFd, how: i32) -> io::Result<()> {
    let entry = opcode::Shutdown::new(types::Fd(fd), how).build();
    // SAFETY: a shutdown points at nothing.
    let (done, ()) = unsafe { Op::one(entry, ()) }.await;
    done.into_result().map(|_| ())
}

/// Closes `fd` through the ring without waiting for it (with no loop on
/// this thread, at once).
pub fn close(fd: OwnedFd) {
    let mut fd = Some(fd);
    super::try_current(|runtime| {
        if let Some(fd) = fd.take() {
            let raw = fd.into_raw_fd();
            let entry = opcode::Close::new(types::Fd(raw))
                .build()
                .user_data(IGNORED);
            // SAFETY: a close points at nothing; the descriptor is the
            // ring's to close from here on.
            unsafe { runtime.driver.push(&[entry]) };
        }
    });
}

/// Reads an eventfd's counter (8 bytes) into the op's own buffer.
pub async fn read_eventfd(fd: RawFd) -> io::Result<u64> {
    let mut buf = Box::new([0u8; 8]);
    let entry = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), 8).build();
    // SAFETY: the entry points into the boxed buffer the op keeps.
    let (done, buf) = unsafe { Op::one(entry, buf) }.await;
    done.into_result()?;
    Ok(u64::from_ne_bytes(*buf))
}
