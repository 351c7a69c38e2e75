//! Listener sockets: one `SO_REUSEPORT` socket per worker for each
//! configured listener, all on the same address, so the kernel spreads new
//! connections over the workers without any shared accept lock.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};
use tokio::io::unix::AsyncFd;

/// Binds `count` sockets to `addr` with `SO_REUSEPORT`. When `addr` has port
/// 0, the first socket picks the port and the others join it.
pub fn bind_group(addr: SocketAddr, count: usize, backlog: u32) -> io::Result<Vec<TcpListener>> {
    let first = bind_one(addr, backlog)?;
    let addr = first.local_addr()?;
    let mut group = vec![first];
    for _ in 1..count {
        group.push(bind_one(addr, backlog)?);
    }
    Ok(group)
}

/// `socket`, made non-blocking and registered with the current tokio
/// runtime's reactor, so a worker can wait until a client is there before
/// deciding to accept it (tokio's own listener only waits and accepts in
/// one step). Must be called on a tokio runtime.
pub fn readiness(socket: TcpListener) -> io::Result<AsyncFd<TcpListener>> {
    socket.set_nonblocking(true)?;
    // SAFETY: the `AsyncFd` owns `socket`, so the descriptor it registers
    // stays open, and is the same one, until the `AsyncFd` is dropped (it
    // is never taken back out with `into_inner`).
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register(socket) };
    registered.map_err(io::Error::from)
}

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = bind_unlistened(addr)?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// A socket bound to `addr` as a member of its `SO_REUSEPORT` group would
/// be, but not listening yet: the kernel gives it no clients until
/// `listen(2)`, so a process can join a group it took over only once it is
/// ready to accept.
pub fn bind_unlistened(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: one setsockopt
    // here instead of one per connection.
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_should_share_one_port_between_the_group() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &group {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn it_should_wake_a_registered_listener_when_a_client_arrives() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let group = bind_group("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
            let addr = group[0].local_addr().unwrap();
            let listener = readiness(group.into_iter().next().unwrap()).unwrap();
            let _client = std::net::TcpStream::connect(addr).unwrap();
            let mut ready = listener.readable().await.unwrap();
            let accepted = ready.try_io(|l| l.get_ref().accept()).unwrap().unwrap();
            assert_eq!(accepted.1.ip(), addr.ip());
        });
    }

    #[test]
    fn it_should_hand_out_sockets_with_nodelay_already_set() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
        let _client = std::net::TcpStream::connect(group[0].local_addr().unwrap()).unwrap();
        let (accepted, _) = group[0].accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
