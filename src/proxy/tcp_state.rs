//! What the kernel knows about a forwarded TCP socket, and how to end one
//! with a reset.
//!
//! - [`flow`] reads `TCP_INFO`: bytes the peer acknowledged and bytes that
//!   arrived, and whether any byte is still queued to go out. The idle timer
//!   asks it only when it fires, so a slow reader draining a full send queue
//!   (no system call of ours moves, the wire does) is not taken for idle, at
//!   no cost per byte moved.
//! - [`reset`] aborts a socket: `SO_LINGER` 0 and a disconnect
//!   (`connect(AF_UNSPEC)`), which sends the peer an RST at once and wakes
//!   every operation pending on the socket (epoll readiness and io_uring
//!   ops alike) with an error, so both directions of a relay return.

use socket2::SockRef;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// A socket's traffic as the kernel counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Flow {
    /// Bytes the peer acknowledged plus bytes received from it: grows
    /// whenever a byte moves on the wire, either way.
    pub moved: u64,
    /// Some byte is written but not yet sent or not yet acknowledged.
    pub in_flight: bool,
}

impl Flow {
    /// Both sockets of a connection together.
    pub fn add(self, other: Flow) -> Flow {
        Flow {
            moved: self.moved.wrapping_add(other.moved),
            in_flight: self.in_flight || other.in_flight,
        }
    }
}

/// The kernel's count of what moved on `socket` (`TCP_INFO`).
#[allow(unsafe_code)]
pub(super) fn flow(socket: BorrowedFd<'_>) -> io::Result<Flow> {
    // SAFETY: tcp_info is plain integers, for which all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable tcp_info of `len` bytes; the kernel
    // writes at most `len` bytes and stores how many it wrote in `len`. An
    // older kernel writes fewer fields; the rest stay zero.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Flow {
        moved: info.tcpi_bytes_acked.wrapping_add(info.tcpi_bytes_received),
        in_flight: info.tcpi_unacked > 0 || info.tcpi_notsent_bytes > 0,
    })
}

/// Ends `socket` with a reset: the peer's next read or write fails with
/// `ECONNRESET` instead of seeing a clean EOF, and every operation pending
/// on the socket here returns with an error. Errors are ignored: a socket
/// that cannot be disconnected is already closed.
pub(super) fn reset(socket: BorrowedFd<'_>) {
    let sock = SockRef::from(&socket);
    // Linger 0: should the disconnect fail, close() still resets.
    let _ = sock.set_linger(Some(Duration::ZERO));
    if rustix::net::connect_unspec(socket).is_err() {
        // Wakes pending reads without sending a FIN; close() resets later.
        let _ = sock.shutdown(std::net::Shutdown::Read);
    }
}

/// A connection's two sockets, whatever path moves their bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pair<'a>(pub BorrowedFd<'a>, pub BorrowedFd<'a>);

impl Pair<'_> {
    /// What moved on both, `None` if the kernel would not say.
    pub fn flow(self) -> Option<Flow> {
        Some(flow(self.0).ok()?.add(flow(self.1).ok()?))
    }

    /// Resets both (see [`reset`]).
    pub fn reset(self) {
        reset(self.0);
        reset(self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn it_should_count_bytes_that_move_and_those_still_queued() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let before = flow(client.as_fd()).unwrap();
        client.write_all(&[7; 1000]).unwrap();
        let mut got = [0; 1000];
        server.read_exact(&mut got).unwrap();
        server.write_all(&[1; 10]).unwrap();
        let mut reply = [0; 10];
        client.read_exact(&mut reply).unwrap();
        let after = flow(client.as_fd()).unwrap();
        assert_eq!(after.moved - before.moved, 1010);
        assert!(!after.in_flight);
    }

    #[test]
    fn it_should_reset_the_peer_instead_of_ending_it_cleanly() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        reset(server.as_fd());
        let mut byte = [0; 1];
        let error = client.read(&mut byte).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }
}
