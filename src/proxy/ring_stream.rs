//! A TCP socket on the worker's ring: readiness comes from the ring's
//! `POLL_ADD` (so the splice and scratch-copy pumps run on it unchanged),
//! the ring's own ops take its descriptor directly, and it is closed
//! through the ring.

use super::io::Socket;
use super::ring::op;
use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use tokio::io::Interest;

/// A connected, non-blocking TCP socket driven by the current ring loop.
#[derive(Debug)]
pub struct RingStream {
    /// `None` only while being dropped.
    fd: Option<OwnedFd>,
    /// Marked readable (by a poll) and not yet found empty.
    readable: Cell<bool>,
    /// Marked writable and not yet found full.
    writable: Cell<bool>,
}

impl RingStream {
    /// Wraps a connected non-blocking socket. It starts marked writable (a
    /// new connection's send queue is empty) and not readable (a poll
    /// through the ring says when bytes are there, at no system call).
    pub fn new(fd: OwnedFd) -> RingStream {
        RingStream {
            fd: Some(fd),
            readable: Cell::new(false),
            writable: Cell::new(true),
        }
    }

    /// The descriptor, for the ring's ops.
    pub fn raw(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }

    fn mark(&self, interest: Interest) -> &Cell<bool> {
        if interest.is_readable() {
            &self.readable
        } else {
            &self.writable
        }
    }
}

impl AsFd for RingStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("a ring stream has its descriptor until dropped")
            .as_fd()
    }
}

impl Socket for RingStream {
    async fn ready(&self, interest: Interest) -> io::Result<()> {
        if self.mark(interest).get() {
            return Ok(());
        }
        let events = if interest.is_readable() {
            libc::POLLIN | libc::POLLRDHUP
        } else {
            libc::POLLOUT
        };
        op::poll(self.raw(), events as u32).await?;
        self.mark(interest).set(true);
        Ok(())
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let mark = self.mark(interest);
        if !mark.get() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let result = f();
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            mark.set(false);
        }
        result
    }
}

impl Drop for RingStream {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            op::close(fd);
        }
    }
}
