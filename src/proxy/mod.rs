//! The data path: binding listener sockets, connecting upstream with
//! failover, and relaying bytes both ways for one connection, on whichever
//! event loop the worker runs ([`io`] says what the data path needs of it;
//! [`epoll`] is the epoll loop's side).

mod admit;
pub mod buffers;
pub mod connect;
pub mod copy;
pub mod epoll;
pub mod io;
pub mod listener;
pub mod pipes;
mod preamble;
pub mod pump;
pub mod relay;
pub mod ring;
pub mod ring_copy;
pub mod ring_stream;
pub mod session;
pub mod splice;
mod tcp_state;
#[cfg(test)]
mod test_streams;
pub mod uring;
