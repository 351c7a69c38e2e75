//! l4mesh: a thread-per-core L4 TCP proxy: one io_uring ring per worker
//! (an epoll loop where io_uring is refused), splice(2) for bulk bytes.
//!
//! The binary in `main.rs` only parses arguments; everything else lives here so
//! tests drive the real proxy: [`config`] turns a TOML file into validated
//! runtime types, [`control`] builds the immutable routing [`control::Snapshot`]
//! published through `arc-swap`, [`balance`] picks endpoints, [`proxy`] accepts,
//! connects and forwards, and [`runtime`] runs one worker per core.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod accept_gate;
pub mod admin;
pub mod balance;
pub mod config;
pub mod control;
pub mod discovery;
pub mod health;
mod log_limit;
pub mod metrics;
pub mod notify;
pub mod preamble;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod server;
mod socket_file;
pub mod upgrade;

pub use config::Config;
pub use runtime::{Proxy, StartError};
pub use server::{Server, ServerError};
