//! Hitless binary upgrade: a new l4mesh takes the running one's listening
//! sockets (and its registry socket, admin listener and registered
//! endpoints) over a Unix socket (`[runtime] upgrade_socket`), so that no
//! client is refused or reset while the binary is replaced. The running
//! process's side is [`handover`], the new one's [`takeover`], the wire
//! between them [`wire`], and `l4mesh upgrade` is [`cli`].

pub mod cli;
pub mod handover;
pub mod takeover;
pub mod wire;

pub use handover::{Handing, UpgradeServer};
pub use takeover::{Received, Takeover, TakeoverError};
