//! The upgrade socket's connections: `SOCK_SEQPACKET` Unix sockets, so each
//! message arrives whole and on its own, as one line of tab-separated words
//! with the descriptors it carries (`SCM_RIGHTS`) attached to it and to no
//! other message.

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType, UCred,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 32;
/// The longest message, in bytes.
const MAX_MESSAGE: usize = 16 * 1024;

/// One received message: its words and the descriptors it carried.
#[derive(Debug)]
pub struct Message {
    /// The line, split at tabs.
    pub words: Vec<String>,
    /// The descriptors, in the order sent.
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// The first word.
    pub fn verb(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    /// Word `i`, or "" when there is none.
    pub fn word(&self, i: usize) -> &str {
        self.words.get(i).map_or("", String::as_str)
    }
}

/// One end of a connection on the upgrade socket.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// Connects to the upgrade socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Channel> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
        Ok(Channel { fd })
    }

    /// The connection accepted as `fd`.
    pub fn accepted(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// Who is at the other end.
    pub fn peer(&self) -> io::Result<UCred> {
        Ok(rustix::net::sockopt::socket_peercred(&self.fd)?)
    }

    /// How long a receive or a send may wait (`None`: a receive for ever,
    /// a send [`SEND_TIMEOUT`]).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        use rustix::net::sockopt::{Timeout, set_socket_timeout};
        set_socket_timeout(&self.fd, Timeout::Recv, timeout)?;
        set_socket_timeout(&self.fd, Timeout::Send, timeout.or(Some(SEND_TIMEOUT)))?;
        Ok(())
    }

    /// Sends `words` as one message.
    pub fn send(&self, words: &[&str]) -> io::Result<()> {
        self.send_fds(words, &[])
    }

    /// Sends `words` with `fds` attached, as one message.
    pub fn send_fds(&self, words: &[&str], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let line = words.join("\t");
        if line.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "upgrade message too large",
            ));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        let iov = [IoSlice::new(line.as_bytes())];
        rustix::net::sendmsg(&self.fd, &iov, &mut control, SendFlags::NOSIGNAL)?;
        Ok(())
    }

    /// Receives one message; `None` once the other end has closed.
    pub fn recv(&self) -> io::Result<Option<Message>> {
        let mut bytes = vec![0u8; MAX_MESSAGE];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut bytes)];
        let got = rustix::net::recvmsg(&self.fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.bytes == 0 && fds.is_empty() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&bytes[..got.bytes]);
        let words = text.split('\t').map(str::to_string).collect();
        Ok(Some(Message { words, fds }))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How long a send may wait for a peer that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A listening upgrade socket bound at `path` with mode 0600 (owner only).
/// It is non-blocking, in every process that holds it (see [`accept`]).
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    crate::socket_file::place(path, 0o600, |at| {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(at)?)?;
        rustix::net::listen(&fd, 16)?;
        Ok(fd)
    })
}

/// Accepts one connection on the listening upgrade socket `listener`,
/// waiting for one at most `within`: `None` if none came. The socket is
/// shared with the process it was handed to (or taken from), so a process
/// never blocks in accept(2), where it could take a client meant for the
/// other after it has handed over; it waits in poll(2) and looks again.
pub fn accept(listener: &OwnedFd, within: Duration) -> io::Result<Option<Channel>> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let timeout = Timespec::try_from(within).map_err(|_| io::ErrorKind::InvalidInput)?;
    poll(&mut [PollFd::new(listener, PollFlags::IN)], Some(&timeout))?;
    match rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
        Ok(fd) => Ok(Some(Channel::accepted(fd))),
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn it_should_carry_each_message_whole_with_its_own_descriptors() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let (a, b) = (Channel::accepted(a), Channel::accepted(b));
        let mut file = tempfile_with(b"passed");
        a.send(&["first", "no fds"]).unwrap();
        a.send_fds(&["second"], &[file.as_fd()]).unwrap();
        a.send(&["third"]).unwrap();
        let first = b.recv().unwrap().unwrap();
        assert_eq!(first.words, ["first", "no fds"]);
        assert!(first.fds.is_empty());
        let second = b.recv().unwrap().unwrap();
        assert_eq!(second.verb(), "second");
        assert_eq!(second.fds.len(), 1);
        let mut passed = std::fs::File::from(second.fds.into_iter().next().unwrap());
        passed.rewind().unwrap();
        let mut text = String::new();
        passed.read_to_string(&mut text).unwrap();
        assert_eq!(text, "passed");
        assert_eq!(b.recv().unwrap().unwrap().verb(), "third");
        drop(a);
        assert!(b.recv().unwrap().is_none());
        file.flush().unwrap();
    }

    fn tempfile_with(bytes: &[u8]) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("l4mesh-wire-{:x}", fastrand::u64(..)));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.write_all(bytes).unwrap();
        file
    }
}
