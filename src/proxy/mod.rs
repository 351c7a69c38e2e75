//! The data path: binding listener sockets, connecting upstream with
//! failover, and forwarding bytes both ways for one connection.

pub mod buffers;
pub mod connect;
pub mod forward;
pub mod io;
pub mod listener;
pub mod ring;
pub mod session;
pub mod splice;
mod tcp_state;
